"""Rebuild the bundled demo from scratch: policy, expert data, flow, sanity check.

    python -m research build-demo --out flowfield/demo/assets

About 7 minutes for the policy (one thread) and 10 for the flow on two CPU cores. The
committed assets were made by exactly this command (seed 0); another machine's kernels can
change the last bits. The policy trains until it solves 75% of its validation problems at
temperature 1 (650 steps): stopped at 50%, as it was before, its latents gave the flow
0.05-0.11 less dev AUROC (docs/evaluation.md, "How long the policy trains").
The flow is fitted like `flowfield fit --batch-tokens 672 --min-steps 4000 --context prev`
(raw latents, 4,120 steps of 672 response tokens, lr 1e-3, conditioned on the previous
token's latent), with a held-out report and calibration: on the dev split the longer fit
beat `fit`'s defaults (2,145 steps of 512 tokens) by 0.01 in mean and 0.03 in max-deviation
AUROC, and the previous-token context added 0.04 and 0.02 more (docs/evaluation.md,
"Diagnosis").
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import typer

from flowfield.checkpoint import load_flow
from flowfield.demo import ASSETS
from flowfield.demo.task import split_problems
from flowfield.encoder import LatentEncoder
from flowfield.scorer import FlowScorer
from flowfield.training import FitConfig, fit_flow, load_jsonl
from research.cli import run_command
from research.demo_build.check import clean_vs_corrupted
from research.demo_build.data import write_expert_jsonl

# the demo flow's recipe: `flowfield fit`'s defaults of when it was fitted with more, smaller
# steps, and the previous token's latent as the context: 4,120 steps (17.2 epochs), no early
# stopping, no epoch cap (`flowfield fit ... --batch-tokens 672 --min-steps 4000
# --no-early-stop --max-epochs 0 --context prev`); its width is min(d, 256) = d = 128
DEMO_FIT = FitConfig(
    batch_tokens=672, min_steps=4000, seed=0, context="prev", early_stop=False, max_epochs=None
)
REPO = Path(__file__).resolve().parents[2]


def command(
    out: Path = typer.Option(ASSETS),
    work: Path = typer.Option(Path("runs/demo"), help="scratch directory for data"),
    skip_policy: bool = typer.Option(False, help="reuse the policy already in --out"),
) -> None:
    """Rebuild the bundled demo: policy, expert data, flow, sanity check."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    policy, flow = out / "policy", out / "flow"
    if not skip_policy:
        subprocess.run(
            # one thread: the committed policy was trained so, and the thread count changes
            # the bits of every step (and so where training stops)
            [sys.executable, "-m", "research", "train-policy", "--out", str(policy),
             "--threads", "1"],
            check=True,
            # `research` is not installed: importable from the checkout this file is in
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
        )
    _, flow_problems, _ = split_problems(0)
    data = write_expert_jsonl(work / "expert.jsonl", flow_problems)
    enc = LatentEncoder(policy)
    res = fit_flow(enc, load_jsonl(data, enc), flow, DEMO_FIT)
    (flow / "trainer_state.pt").unlink(missing_ok=True)  # optimiser state: not shipped
    if res.report is not None:
        typer.echo("\n".join(res.report.lines()))
    net, meta = load_flow(flow, enc.identity, enc.layer_fractions)
    res = clean_vs_corrupted(FlowScorer(enc, net, meta))
    typer.echo(json.dumps({**res.__dict__, "ratio": res.ratio}, indent=2))


def main(argv: list[str]) -> int:
    return run_command(command, argv, "build-demo")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
