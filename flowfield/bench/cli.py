"""`flowfield bench`: the typer command (registered by service/cli.py). Its options are the
fields of BenchConfig (flowfield/bench/workload.py), plus where the output goes.

Standard library and typer only at import: torch loads when the command runs."""

from __future__ import annotations

import json

import typer

from flowfield.bench.driver import run_bench
from flowfield.bench.report import (
    command_line,
    format_table,
    markdown_section,
    replace_section,
    section_title,
)
from flowfield.bench.workload import BenchConfig
from flowfield.cli_options import Outputs, config_command


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
    doc="End-to-end /score throughput vs. the reference computation (RLFR.md s8), as ratios.",
)


if __name__ == "__main__":
    typer.run(bench_command)
