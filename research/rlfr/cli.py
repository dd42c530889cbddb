"""`python -m research rlfr` (the RLFR toy experiment) and `python -m research rlfr-report`.

    python -m research rlfr --smoke                     # the loop end to end, ~2 minutes
    python -m research rlfr --split eval                # 5 arms x 3 seeds, ~45 minutes
    python -m research rlfr-report runs/experiments/rlfr-toy/results.json --plot curves.png
    python -m research rlfr --probe --betas 0.01,0.1,1.0 --batches 6 --json probe.json

Every numeric option defaults to the preset (full, or --smoke); a value given on the
command line wins over the preset. Needs matplotlib and the client package
(`pip install matplotlib -e clients/flowfield-client`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from research.cli import run_command
from research.harness.commands import (
    JsonOption,
    MarkdownOption,
    PlotOption,
    VerboseOption,
    parse_ints,
    parse_names,
    report_command_for,
    run_experiment_command,
)

if TYPE_CHECKING:
    from research.rlfr.config import ExperimentConfig

DEFAULT_OUT = Path("runs/experiments/rlfr-toy")


def rlfr_command(
    arms: str = typer.Option(
        None, help="comma-separated arms: rlvr, rlfr, rlfr-frozen, rlfr-expert, "
        "rlfr-unilateral, oracle, oracle-local, shuffled, entropy, nll, or all "
        "(default rlvr,rlfr,rlfr-frozen,entropy,nll)"
    ),
    seeds: str = typer.Option(None, help="comma-separated seeds (default 0,1,2; smoke 0)"),
    steps: int = typer.Option(None, help="policy-gradient steps per arm and seed"),
    prompts_per_step: int = typer.Option(None, help="problems per step"),
    group_size: int = typer.Option(None, help="G: rollouts per problem"),
    lr: float = typer.Option(None, help="policy learning rate (AdamW)"),
    temperature: float = typer.Option(None, help="rollout sampling temperature"),
    normalization: str = typer.Option(
        None, help="score option, passed to the service as is (bilateral, unilateral, ...)"
    ),
    beta: float = typer.Option(None, help="token reward scale r = -beta * s"),
    threshold: float = typer.Option(None, help="eta: zero tokens with |s| <= eta"),
    top_k: int = typer.Option(None, help="K: keep at most K shaped tokens (0 = all)"),
    shape_uniform_only: bool = typer.Option(
        None, "--shape-uniform-only/--shape-all-groups",
        help="token shaping only in groups that are all right or all wrong (the ablation)",
    ),
    sync_every: int = typer.Option(None, help="push the policy to the service every K steps"),
    update: str = typer.Option(
        None, help="online refinement: auto (as each arm defines it), on or off for every arm"
    ),
    learner_lr: float = typer.Option(None, help="the service learner's learning rate"),
    split: str = typer.Option(
        None, help="held-out metrics on dev (choosing settings) or eval (final numbers only)"
    ),
    eval_every: int = typer.Option(None, help="take held-out metrics every N steps"),
    eval_size: int = typer.Option(None, help="held-out problems per evaluation"),
    seen_size: int = typer.Option(None, help="training prompts re-evaluated for the gap"),
    target: float = typer.Option(None, help="pass@1 for 'steps to reach' (a fraction)"),
    pass_k: int = typer.Option(
        None, help="also pass@k at T=1 (k samples per held-out problem) at start and end; 0 off"
    ),
    probe_batches: int = typer.Option(
        None, help="gradient pre-check on this many first batches before the runs (0 = off)"
    ),
    probe: bool = typer.Option(
        False, "--probe", help="only the gradient pre-check (no RL): a table and --json"
    ),
    betas: str = typer.Option(None, help="--probe: comma-separated betas (default 0.01,0.1,1.0)"),
    batches: int = typer.Option(None, help="--probe: batches (default 6)"),
    policy: Path = typer.Option(None, help="start policy (default: the bundled demo policy)"),
    flow: Path = typer.Option(None, help="start flow (default: the bundled demo flow)"),
    threads: int = typer.Option(None, help="trainer torch threads (the service has its own)"),
    smoke: bool = typer.Option(False, help="2 steps per arm, one seed: the loop in CI time"),
    out: Path = typer.Option(DEFAULT_OUT, help="output folder (results, plot, table, logs)"),
    json_out: JsonOption = None,
    plot: PlotOption = None,
    markdown: MarkdownOption = None,
    keep_work: bool = typer.Option(False, help="keep each run's checkpoints and policies"),
    verbose: VerboseOption = False,
) -> None:
    """GRPO on the demo task through a live service: RLVR vs RLFR vs logit shaping."""
    from research.rlfr.config import preset
    from research.rlfr.plot import plot_curves
    from research.rlfr.report import markdown_table
    from research.rlfr.runner import run_experiment

    def make_config() -> ExperimentConfig:
        return preset(smoke).with_overrides(
            arms=parse_names(arms), seeds=parse_ints(seeds), steps=steps,
            prompts_per_step=prompts_per_step, group_size=group_size, lr=lr,
            temperature=temperature, normalization=normalization, beta=beta,
            threshold=threshold, top_k=top_k, sync_every=sync_every, update=update,
            learner_lr=learner_lr, split=split, eval_every=eval_every, eval_size=eval_size,
            seen_size=seen_size, target=target, policy=policy, flow=flow, threads=threads,
            shape_uniform_only=shape_uniform_only, pass_k=pass_k, probe_batches=probe_batches,
        )

    if probe:
        run_probe_command(make_config, arms, betas, batches, out, json_out)
        return

    def describe(cfg: ExperimentConfig) -> str:
        return (f"rlfr experiment: {len(cfg.arms) * len(cfg.seeds)} runs ({', '.join(cfg.arms)}"
                f" x seeds {', '.join(map(str, cfg.seeds))}), {cfg.steps} steps of "
                f"{cfg.prompts_per_step}x{cfg.group_size} rollouts, held-out split {cfg.split}")

    run_experiment_command(
        make_config, describe,
        lambda cfg, json_path: run_experiment(cfg, out, json_path=json_path,
                                              keep_work=keep_work),
        markdown_table, plot_curves,
        out=out, json_out=json_out, plot=plot, markdown=markdown, verbose=verbose,
    )


PROBE_ARMS = "rlvr,oracle,shuffled,rlfr,rlfr-unilateral,rlfr-expert,nll,entropy"


def run_probe_command(make_config: Callable[[], ExperimentConfig], arms: str | None,
                      betas: str | None, batches: int | None, out: Path,
                      json_out: Path | None) -> None:
    """`--probe`: the gradient pre-check alone, its table on stdout and its JSON."""
    from flowfield.cli_options import comma_separated, fail
    from research.harness.common import new_results, write_json
    from research.rlfr.arms import parse_arms
    from research.rlfr.probe import DEFAULT_BETAS, probe_table, run_probe
    from research.rlfr.runner import collect_versions

    try:
        cfg = make_config()
        chosen = parse_arms(arms or PROBE_ARMS)
        beta_list = comma_separated(betas, float, "numbers") if betas else DEFAULT_BETAS
        if batches is not None and batches < 1:
            raise ValueError("batches must be at least 1")
    except ValueError as e:
        raise fail(str(e)) from None
    if chosen[0].name != "rlvr":  # the reference row first
        chosen = parse_arms("rlvr") + [a for a in chosen if a.name != "rlvr"]
    record = run_probe(cfg, chosen, betas=beta_list, batches=batches or 6,
                       seed=cfg.seeds[0])
    table = probe_table(record)
    typer.echo(table)
    path = json_out or out / "probe.json"
    results = new_results("rlfr-probe", collect_versions(cfg.policy, cfg.flow), cfg.to_dict(),
                          probe=record)
    results.pop("runs")
    results.pop("summary")
    results["seconds"] = record["seconds"]
    write_json(results, path)
    typer.echo(f"wrote {path} ({record['seconds']:.0f}s)")


def _rlfr_report_parts() -> tuple[Callable, Callable, Callable]:
    from research.rlfr.plot import plot_curves
    from research.rlfr.report import markdown_table, summarize

    return summarize, markdown_table, plot_curves


report_command = report_command_for(
    "rlfr", "Rebuild the tables (and plot) from a results JSON without running anything.",
    _rlfr_report_parts,
)


def main(argv: list[str]) -> int:
    return run_command(rlfr_command, argv, "rlfr")


def report_main(argv: list[str]) -> int:
    return run_command(report_command, argv, "rlfr-report")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
