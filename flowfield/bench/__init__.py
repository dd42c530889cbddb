"""`flowfield bench`: end-to-end /score throughput against the reference computation.

One run, one model, one set of rollouts, four ways of computing the per-token deviations:

  reference  the authors' design (docs/method.md#cost), written plainly here: a full forward with
             output_hidden_states over each group's right-padded batch (all positions, final
             norm and LM head included, as their RL forward computes logits), then the flow
             on EVERY position of the padded batch for every hooked layer and timestep
  library    FlowScorer.score on all the round's samples (shared prompts encoded once)
  no-share   the same with LatentEncoder.share_prompts switched off
  http       `flowfield serve` in a subprocess, one POST /v1/score per group, all groups of a
             round sent at once from a thread pool

Throughput is response tokens per second. The paths take turns round by round (their order
rotates), so the server never computes while the reference does and slow phases of a shared
machine hit every path alike; ratios are medians of the per-round ratios. The first round
(smaller, `warmup_groups`) is excluded from the timings. The in-process paths run on one model
thread, like the service's scheduler (see run_bench: it decides libgomp's spin-waiting). Every
path's deviations are checked against each other before anything is reported.

Modules, one idea each: workload.py (the configuration, the random policy and flow, the
rollouts), reference.py (the reference computation), driver.py (the live server over HTTP, the
rounds, the agreement checks), report.py (the numbers, tables and the BENCHMARKS.md section),
cli.py (the typer commands `flowfield bench [score] | update | graph`), timing.py (one
path's measured rounds).

update.py is a second benchmark on the same footing: the online update path of the demo
server (POST /v1/update -> new flow version served; /score throughput while the learner
trains), run by `flowfield bench update`; graph.py a third, RewardFlow graph propagation
against the authors' synchronous sweeps (`flowfield bench graph`, no torch). Each writes its
own BENCHMARKS.md section through report.replace_section's `title`.

Heavy imports (torch, transformers, httpx, the library) are local to the functions that need
them, so registering `bench` in the CLI does not slow down `flowfield --help`.
"""

from __future__ import annotations

from flowfield.bench.driver import PATHS, run_bench
from flowfield.bench.report import SECTION, format_table, markdown_section, replace_section
from flowfield.bench.workload import BenchConfig

__all__ = [
    "PATHS",
    "SECTION",
    "BenchConfig",
    "format_table",
    "markdown_section",
    "replace_section",
    "run_bench",
]
