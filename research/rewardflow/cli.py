"""`python -m research rewardflow` and `python -m research rewardflow-report`.

    python -m research rewardflow --smoke          # every arm, both settings, ~1 minute
    python -m research rewardflow                  # 3 arms x 2 settings x 3 seeds
    python -m research rewardflow-report results.json --plot curves.png --markdown t.md
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from research.cli import run_command
from research.harness import commands  # what every experiment command shares

if TYPE_CHECKING:
    from research.rewardflow.config import RewardFlowConfig

DEFAULT_OUT = Path("runs/experiments/rewardflow-toy")


def rewardflow_command(
    arms: str = typer.Option(None, help="comma-separated arms: outcome,rewardflow,"
                             "rewardflow-gamma,mc (default all)"),
    envs: str = typer.Option(None, help="comma-separated environments: easy,hard (default "
                             "both)"),
    seeds: str = typer.Option(None, help="comma-separated seeds (default 0,1,2; smoke 0)"),
    steps: int = typer.Option(
        None, help="environment steps per run, every arm and environment (default: easy 400k, "
        "hard 2M; smoke 6k)"),
    groups: int = typer.Option(None, help="training starts per update"),
    group_size: int = typer.Option(None, help="G: rollouts per start"),
    hidden: int = typer.Option(None, help="policy MLP width"),
    lr: float = typer.Option(None, help="policy learning rate (Adam)"),
    gamma: float = typer.Option(None, help="RewardFlow propagation discount"),
    step_weight: float = typer.Option(None, help="w in A = A_episode + w * A_step"),
    mc_gamma: float = typer.Option(None, help="discount of the Monte-Carlo arm"),
    evals: int = typer.Option(None, help="held-out evaluations per run (evenly spaced in steps)"),
    eval_size: int = typer.Option(None, help="held-out starts per evaluation"),
    target: float = typer.Option(None, help="held-out success rate for 'steps to reach'"),
    threads: int = typer.Option(None, help="trainer torch threads"),
    smoke: bool = typer.Option(False, help="a few updates per run, one seed: the loop in CI"),
    out: Path = typer.Option(DEFAULT_OUT, help="output folder (results, plot, table)"),
    json_out: commands.JsonOption = None,
    plot: commands.PlotOption = None,
    markdown: commands.MarkdownOption = None,
    verbose: commands.VerboseOption = False,
) -> None:
    """RewardFlow vs outcome-only vs Monte-Carlo advantages, an MLP policy in grid rooms,
    graph rewards from a live service (POST /v1/score/graph)."""
    from research.rewardflow.config import preset
    from research.rewardflow.report import markdown_table, plot_curves
    from research.rewardflow.runner import run_experiment

    def make_config() -> RewardFlowConfig:
        return preset(smoke).with_overrides(
            arms=commands.parse_names(arms), envs=commands.parse_names(envs),
            seeds=commands.parse_ints(seeds),
            steps=steps, groups=groups, group_size=group_size, hidden=hidden, lr=lr,
            gamma=gamma, step_weight=step_weight, mc_gamma=mc_gamma, evals=evals,
            eval_size=eval_size, target=target, threads=threads,
        )

    def describe(cfg: RewardFlowConfig) -> str:
        n = len(cfg.arms) * len(cfg.envs) * len(cfg.seeds)
        budgets = ", ".join(f"{e} {cfg.budget(e):,}" for e in cfg.envs)
        return (f"rewardflow experiment: {n} runs ({', '.join(cfg.arms)} x "
                f"{', '.join(cfg.envs)} x seeds {', '.join(map(str, cfg.seeds))}), env-step "
                f"budget per run: {budgets} (a run stops at the first update that reaches "
                f"it, so it takes up to one update's steps more)")

    commands.run_experiment_command(
        make_config, describe,
        lambda cfg, json_path: run_experiment(cfg, out, json_path=json_path),
        markdown_table, plot_curves,
        out=out, json_out=json_out, plot=plot, markdown=markdown, verbose=verbose,
    )


def _report_parts() -> tuple[Callable, Callable, Callable]:
    from research.rewardflow.report import markdown_table, plot_curves, summarize

    return summarize, markdown_table, plot_curves


rewardflow_report_command = commands.report_command_for(
    "rewardflow",
    "Rebuild the RewardFlow tables (and plot) from a results JSON without running anything.",
    _report_parts,
)


def main(argv: list[str]) -> int:
    return run_command(rewardflow_command, argv, "rewardflow")


def report_main(argv: list[str]) -> int:
    return run_command(rewardflow_report_command, argv, "rewardflow-report")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
