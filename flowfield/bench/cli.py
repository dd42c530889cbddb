"""`flowfield bench`: the typer command (registered by service/cli.py).

Standard library and typer only at import: torch loads when the command runs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flowfield.bench.driver import run_bench
from flowfield.bench.report import command_line, format_table, markdown_section, replace_section
from flowfield.bench.workload import BenchConfig
from flowfield.cli_options import comma_separated


def bench_command(
    groups: int = typer.Option(4, help="groups per measured round"),
    group_size: int = typer.Option(8, help="responses per group (sharing one prompt)"),
    prompt_tokens: int = typer.Option(128, help="typical prompt length (+-12.5%)"),
    min_response: int = typer.Option(64, help="shortest response"),
    max_response: int = typer.Option(256, help="longest response"),
    rounds: int = typer.Option(4, help="measured rounds (after one warm-up round)"),
    warmup_groups: int = typer.Option(1, help="groups in the warm-up round"),
    hidden: int = typer.Option(512, help="policy hidden size d (and flow width W)"),
    layers: int = typer.Option(8, help="policy decoder blocks"),
    heads: int = typer.Option(8, help="attention heads"),
    kv_heads: int = typer.Option(2, help="key/value heads"),
    intermediate: int = typer.Option(1536, help="MLP size"),
    vocab: int = typer.Option(32000, help="vocabulary size"),
    flow_depth: int = typer.Option(4, help="flow residual blocks"),
    timesteps: str = typer.Option("0.8", help="comma-separated flow timesteps"),
    threads: int = typer.Option(2, help="torch threads for every path (and the server)"),
    batch_max_tokens: int = typer.Option(32768, help="scheduler / encoder batch budget"),
    http: bool = typer.Option(True, help="also measure the service over HTTP"),
    seed: int = typer.Option(0, help="weights and workload seed"),
    json_out: Path = typer.Option(None, "--json", help="write all numbers as JSON here"),
    markdown: Path = typer.Option(
        None, help="replace the '## /score throughput' section of this file (BENCHMARKS.md)"
    ),
    workdir: Path = typer.Option(None, help="keep model, flow and server log here"),
) -> None:
    """End-to-end /score throughput vs. the reference computation (RLFR.md s8), as ratios."""
    cfg = BenchConfig(
        groups=groups,
        group_size=group_size,
        prompt_tokens=prompt_tokens,
        min_response=min_response,
        max_response=max_response,
        rounds=rounds,
        warmup_groups=warmup_groups,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        vocab=vocab,
        flow_depth=flow_depth,
        timesteps=comma_separated(timesteps, float, "timesteps"),
        threads=threads,
        batch_max_tokens=batch_max_tokens,
        http=http,
        seed=seed,
    )
    if min(groups, group_size, rounds, warmup_groups) < 1 or min_response > max_response:
        raise typer.BadParameter("sizes must be positive and min-response <= max-response")
    res = run_bench(cfg, workdir, log=lambda m: typer.echo(m, err=True))
    typer.echo(format_table(res))
    for key, value in res["ratios"].items():
        typer.echo(f"{key}: {value:.3f}")
    typer.echo("checks (max rel. diff): " + json.dumps(res["checks"]))
    if json_out:
        json_out.write_text(json.dumps(res, indent=2) + "\n")
    if markdown:
        replace_section(markdown, markdown_section(res, command_line(cfg, markdown)))


if __name__ == "__main__":
    typer.run(bench_command)
