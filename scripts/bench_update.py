"""Benchmark the online update path of a live `flowfield serve` on the bundled demo: the time
from POST /v1/update of `--samples` accepted samples until GET /v1/flow reports the new flow
version (p50, p95), and /score throughput with the learner idle vs. while it trains.
What exactly is measured: flowfield/bench/update.py.

    FLOWFIELD_THREADS=1 python scripts/bench_update.py                 # 10 updates of 64
    FLOWFIELD_THREADS=1 python scripts/bench_update.py --markdown BENCHMARKS.md
"""

from __future__ import annotations

import json
import os

import typer

from flowfield.bench import update  # the benchmark itself: configuration, run, report
from flowfield.bench.report import replace_section
from flowfield.cli_options import Outputs, config_command, measuring_args


def run(cfg: update.UpdateBenchConfig, out: Outputs) -> None:
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
        env = os.environ.get("FLOWFIELD_THREADS")
        args = measuring_args(("--json", "--workdir"))
        command = "python " + " ".join(["scripts/bench_update.py", *args])
        if env is not None:
            command = f"FLOWFIELD_THREADS={env} {command}"
        replace_section(out.markdown, update.markdown_section(res, command), update.SECTION)
        typer.echo(f"updated {out.markdown}", err=True)


if __name__ == "__main__":
    outputs = {
        "json": "write all numbers as JSON here",
        "markdown": f"replace this file's '{update.SECTION}' section",
        "workdir": "keep the server's log and checkpoints here",
    }
    typer.run(config_command(update.UpdateBenchConfig, run, outputs))
