"""`flowfield bench`: the benchmark commands (registered by service/cli.py).

    flowfield bench [score] ...    /score throughput vs. the reference (BenchConfig, workload.py);
                                   the default: `flowfield bench --rounds 6` is `... score ...`
    flowfield bench update ...     the online update path of a live demo server (update.py)
    flowfield bench graph ...      RewardFlow graph propagation, ours vs. naive sweeps (graph.py)
    flowfield bench invariance ... FLOWFIELD_BATCH_INVARIANT on vs. off over HTTP (invariance.py)

Each command's options are the fields of its config dataclass, plus where the output goes.
Standard library and typer only at import: torch loads when a command runs."""

from __future__ import annotations

import json
import os

import click
import typer
from typer.core import TyperGroup

from flowfield.bench import graph, invariance, update
from flowfield.bench.driver import run_bench
from flowfield.bench.report import (
    command_line,
    format_table,
    markdown_section,
    replace_section,
    section_title,
)
from flowfield.bench.workload import BenchConfig
from flowfield.cli_options import Outputs, config_command, measuring_args


def run(cfg: BenchConfig, out: Outputs) -> None:
    res = run_bench(cfg, out.workdir, log=lambda m: typer.echo(m, err=True))
    typer.echo(format_table(res))
    for key, value in res["ratios"].items():
        typer.echo(f"{key}: {value:.3f}")
    typer.echo("checks (max rel. diff): " + json.dumps(res["checks"]))
    if out.json:
        out.json.write_text(json.dumps(res, indent=2) + "\n")
    if out.markdown:
        section = markdown_section(res, command_line(cfg, out.markdown))
        replace_section(out.markdown, section, section_title(res))


bench_command = config_command(
    BenchConfig,
    run,
    {
        "json": "write all numbers as JSON here",
        "markdown": "replace this file's section of this dtype and device (BENCHMARKS.md)",
        "workdir": "keep model, flow and server log here",
    },
    doc="End-to-end /score throughput vs. the reference computation "
    "(docs/method.md#cost), as ratios.",
)



def _command(sub: str, drop: tuple[str, ...]) -> str:
    """The `flowfield bench SUB ...` command of this run, less the options in `drop` (where
    output goes), as a benchmark records it."""
    args = measuring_args(drop)
    if sub in args:
        args = args[args.index(sub) + 1 :]
    return " ".join(["flowfield bench", sub, *args])


def run_update(cfg: update.UpdateBenchConfig, out: Outputs) -> None:
    res = update.run_update_bench(cfg, out.workdir, log=lambda m: typer.echo(m, err=True))
    lat, thr = res["latency"], res["throughput"]
    typer.echo(
        f"update served (no other load): p50 {lat['served_p50_s']:.3f}s "
        f"p95 {lat['served_p95_s']:.3f}s (goal p50 < {lat['goal_p50_s']:.0f}s: "
        f"{'met' if lat['meets_goal'] else 'missed'})"
    )
    typer.echo(
        f"update served (scoring saturated): p50 {thr['updates']['served_p50_s']:.3f}s "
        f"p95 {thr['updates']['served_p95_s']:.3f}s"
    )
    typer.echo(
        f"/score tokens/s: idle {thr['idle_tokens_per_s']:.0f}, training "
        f"{thr['training_tokens_per_s']:.0f} (drop {100 * thr['drop']:.1f}%); lost "
        f"{thr['lost_s_per_update']:.3f}s per update = {thr['lost_per_update_in_batches']:.2f} "
        f"batches of {thr['batch_s']:.3f}s (goal <= 1: {'met' if thr['meets_goal'] else 'missed'})"
    )
    v = res["versions"]
    typer.echo(f"flow versions: {v['start']} -> {v['end']} (expected {v['expected_end']})")
    if out.json:
        out.json.write_text(json.dumps(res, indent=2) + "\n")
    if out.markdown:
        command = _command("update", ("--json", "--workdir"))
        env = os.environ.get("FLOWFIELD_THREADS")
        if env is not None:
            command = f"FLOWFIELD_THREADS={env} {command}"
        replace_section(out.markdown, update.markdown_section(res, command), update.SECTION)
        typer.echo(f"updated {out.markdown}", err=True)


update_command = config_command(
    update.UpdateBenchConfig,
    run_update,
    {
        "json": "write all numbers as JSON here",
        "markdown": f"replace this file's '{update.SECTION}' section",
        "workdir": "keep the server's log and checkpoints here",
    },
)


def run_graph(cfg: graph.GraphBenchConfig, out: Outputs) -> None:
    try:
        res = graph.run_graph_bench(cfg)
    except RuntimeError as e:  # the two propagations disagree
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    lines = graph.report_lines(res, cfg, _command("graph", ("--json",)))
    typer.echo("\n".join(lines))
    if out.json:
        out.json.write_text(json.dumps(res, indent=2) + "\n")
    if out.markdown:
        replace_section(out.markdown, f"{graph.SECTION}\n\n" + "\n".join(lines) + "\n",
                        graph.SECTION)
        typer.echo(f"updated {out.markdown}", err=True)


graph_command = config_command(
    graph.GraphBenchConfig,
    run_graph,
    {"json": "write all numbers as JSON here", "markdown": f"replace its '{graph.SECTION}'"},
)


def run_invariance(cfg: invariance.InvarianceBenchConfig, out: Outputs) -> None:
    res = invariance.run_invariance_bench(cfg, out.workdir, log=lambda m: typer.echo(m, err=True))
    lines = invariance.report_lines(res, _command("invariance", ("--json", "--workdir")))
    typer.echo("\n".join(lines))
    if out.json:
        out.json.write_text(json.dumps(res, indent=2) + "\n")
    if out.markdown:
        section = f"{invariance.SECTION}\n\n" + "\n".join(lines) + "\n"
        replace_section(out.markdown, section, invariance.SECTION)
        typer.echo(f"updated {out.markdown}", err=True)


invariance_command = config_command(
    invariance.InvarianceBenchConfig,
    run_invariance,
    {
        "json": "write all numbers as JSON here",
        "markdown": f"replace its '{invariance.SECTION}' section",
        "workdir": "keep the servers' logs (and the long workload's policy) here",
    },
)


class ScoreByDefault(TyperGroup):
    """`flowfield bench` with no command name (nothing, or options first) runs `score`, so
    `flowfield bench` and `flowfield bench --rounds 6` work as before the group had other
    commands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ctx.help_option_names):
            args = ["score", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(
    cls=ScoreByDefault,
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    help="Benchmarks: /score throughput (score, the default), the online update path "
    "(update), graph propagation (graph), batch invariance on vs. off (invariance).",
)
bench_app.command("score")(bench_command)
bench_app.command("update")(update_command)
bench_app.command("graph")(graph_command)
bench_app.command("invariance")(invariance_command)


if __name__ == "__main__":
    bench_app()
