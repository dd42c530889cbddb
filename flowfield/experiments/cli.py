"""`flowfield experiment ...`: the RLFR toy experiment and its report.

    flowfield experiment rlfr --smoke                     # the loop end to end, ~2 minutes
    flowfield experiment rlfr --split eval                # 5 arms x 3 seeds, ~45 minutes
    flowfield experiment report runs/experiments/rlfr-toy/results.json --plot curves.png

Every numeric option defaults to the preset (full, or --smoke); a value given on the
command line wins over the preset.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
from pathlib import Path

import typer

experiment_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Experiments that train a policy against a live flowfield service.",
)

DEFAULT_OUT = Path("runs/experiments/rlfr-toy")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _ints(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@experiment_app.command("rlfr")
def rlfr_command(
    arms: str = typer.Option(
        None, help="comma-separated arms: rlvr,rlfr,rlfr-frozen,entropy,nll (default all)"
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
    policy: Path = typer.Option(None, help="start policy (default: the bundled demo policy)"),
    flow: Path = typer.Option(None, help="start flow (default: the bundled demo flow)"),
    threads: int = typer.Option(None, help="trainer torch threads (the service has its own)"),
    smoke: bool = typer.Option(False, help="2 steps per arm, one seed: the loop in CI time"),
    out: Path = typer.Option(DEFAULT_OUT, help="output folder (results, plot, table, logs)"),
    json_out: Path = typer.Option(None, "--json", help="results JSON (default OUT/results.json)"),
    plot: Path = typer.Option(None, help="learning-curve PNG (default OUT/curves.png)"),
    markdown: Path = typer.Option(None, help="markdown tables (default OUT/table.md)"),
    keep_work: bool = typer.Option(False, help="keep each run's checkpoints and policies"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every step"),
) -> None:
    """GRPO on the demo task through a live service: RLVR vs RLFR vs logit shaping."""
    # a SIGTERM (kill, a job scheduler) unwinds like Ctrl-C, so every run's `flowfield serve`
    # is stopped by its context manager instead of being left running as an orphan
    signal.signal(signal.SIGTERM, _terminate)
    from flowfield.experiments.config import preset
    from flowfield.experiments.plot import plot_curves
    from flowfield.experiments.report import markdown_table
    from flowfield.experiments.runner import run_experiment

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = preset(smoke).with_overrides(
            arms=tuple(a.strip() for a in arms.split(",")) if arms and arms != "all" else None,
            seeds=_ints(seeds),
            steps=steps,
            prompts_per_step=prompts_per_step,
            group_size=group_size,
            lr=lr,
            temperature=temperature,
            normalization=normalization,
            beta=beta,
            threshold=threshold,
            top_k=top_k,
            sync_every=sync_every,
            update=update,
            learner_lr=learner_lr,
            split=split,
            eval_every=eval_every,
            eval_size=eval_size,
            seen_size=seen_size,
            target=target,
            policy=policy,
            flow=flow,
            threads=threads,
        )
    except ValueError as e:
        raise _fail(str(e)) from None
    missing = [m for m in ("matplotlib", "flowfield_client") if importlib.util.find_spec(m) is None]
    if missing:  # found out now, not after the last run
        raise _fail(
            f"missing {', '.join(missing)}: pip install matplotlib -e clients/flowfield-client "
            "(or the project's dev extra)"
        )
    json_path = json_out or out / "results.json"
    plot_path = plot or out / "curves.png"
    md_path = markdown or out / "table.md"
    n_runs = len(cfg.arms) * len(cfg.seeds)
    typer.echo(
        f"rlfr experiment: {n_runs} runs ({', '.join(cfg.arms)} x seeds "
        f"{', '.join(map(str, cfg.seeds))}), {cfg.steps} steps of {cfg.prompts_per_step}x"
        f"{cfg.group_size} rollouts, held-out split {cfg.split} -> {out}",
        err=True,
    )
    from flowfield_client import FlowfieldError

    try:
        results = run_experiment(cfg, out, json_path=json_path, keep_work=keep_work)
    except (OSError, ValueError, RuntimeError, FlowfieldError) as e:
        # e.g. a score option the service refuses (422): the runs so far are in the JSON
        raise _fail(f"{type(e).__name__}: {e}") from None
    table = markdown_table(results)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(table)
    plot_curves(results, plot_path)
    typer.echo(table)
    typer.echo(f"wrote {json_path}, {plot_path}, {md_path} ({results['seconds']:.0f}s)")


@experiment_app.command("report")
def report_command(
    results_json: Path = typer.Argument(..., help="results JSON of `flowfield experiment rlfr`"),
    plot: Path = typer.Option(None, help="write the learning curves here (PNG)"),
    markdown: Path = typer.Option(None, help="write the markdown tables here"),
) -> None:
    """Rebuild the tables (and plot) from a results JSON without running anything."""
    import json

    from flowfield.experiments.plot import plot_curves
    from flowfield.experiments.report import markdown_table, summarize

    try:
        results = json.loads(results_json.read_text())
    except (OSError, ValueError) as e:
        raise _fail(f"cannot read {results_json}: {e}") from None
    results["summary"] = summarize(results)
    table = markdown_table(results)
    typer.echo(table)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(table)
        typer.echo(f"wrote {markdown}")
    if plot is not None:
        plot_curves(results, plot)
        typer.echo(f"wrote {plot}")
