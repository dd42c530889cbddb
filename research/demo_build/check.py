"""Sanity check of a demo flow: held-out expert solutions vs the same with digits corrupted.

    python -m research check-demo --flow flowfield/demo/assets/flow

A flow that learned the expert latents must find clean solutions clearly easier to explain
(lower mean deviation) than corrupted ones, which the policy never saw as experts.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import typer

from flowfield.checkpoint import load_flow
from flowfield.demo import ASSETS
from flowfield.demo.task import corrupt_digits, expert_solution, split_problems
from flowfield.encoder import LatentEncoder
from flowfield.scorer import FlowScorer
from research.cli import run_command


@dataclass
class CleanVsCorrupted:
    clean: float  # mean per-token deviation on held-out expert solutions
    corrupted: float  # the same solutions with `digits` digits replaced
    n: int
    digits: int
    frac_pairs_corrupted_higher: float  # per solution: corrupted mean > clean mean

    @property
    def ratio(self) -> float:
        return self.corrupted / self.clean


def clean_vs_corrupted(
    scorer: FlowScorer, n: int = 200, digits: int = 3, seed: int = 0
) -> CleanVsCorrupted:
    _, _, held_out = split_problems()
    problems = held_out[:n]
    rng = random.Random(seed)
    tok = scorer.encoder.tokenizer
    prompts, clean, bad = [], [], []
    for p in problems:
        text = expert_solution(p)
        prompts.append(tok(p.prompt, add_special_tokens=False)["input_ids"])
        clean.append(tok(text, add_special_tokens=False)["input_ids"])
        bad.append(tok(corrupt_digits(text, digits, rng), add_special_tokens=False)["input_ids"])
    d_clean = torch.stack([e.mean() for e in scorer.deviations(prompts, clean)])
    d_bad = torch.stack([e.mean() for e in scorer.deviations(prompts, bad)])
    return CleanVsCorrupted(
        clean=d_clean.mean().item(),
        corrupted=d_bad.mean().item(),
        n=n,
        digits=digits,
        frac_pairs_corrupted_higher=(d_bad > d_clean).float().mean().item(),
    )


def command(
    flow: Path = typer.Option(ASSETS / "flow", help="flow checkpoint"),
    model: Path = typer.Option(ASSETS / "policy", help="policy directory"),
    n: int = 200,
    digits: int = 3,
) -> None:
    """A demo flow: held-out expert solutions vs. the same with digits corrupted."""
    enc = LatentEncoder(model)
    net, meta = load_flow(flow, enc.identity, enc.layer_fractions)
    res = clean_vs_corrupted(FlowScorer(enc, net, meta), n=n, digits=digits)
    typer.echo(json.dumps({**res.__dict__, "ratio": res.ratio}, indent=2))


def main(argv: list[str]) -> int:
    return run_command(command, argv, "check-demo")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
