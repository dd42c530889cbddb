"""Refit the demo flow with one lever changed, for the reward-quality study.

    python -m research levers --lever context-none --out runs/levers/context-none
    flowfield eval --flow runs/levers/context-none --split dev --demo 500

Every lever starts from the recipe of the first bundled demo flow (LEGACY_FIT: 10 epochs
over 4,000 expert solutions at 2,048 tokens a step, i.e. 860 steps, lr 1e-3, W = d = 128,
depth 4, next-token context, layers 0.25/0.5/0.75, raw latents) and changes one thing
(width-256-prev: two). Levers are compared on the dev split, never on the held-out
evaluation set. Never write into flowfield/demo/assets. (The demo flow is now fitted with
`flowfield fit`'s defaults; see research/diagnose/diagnose.py for why.)
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

import typer

from flowfield.demo import DEMO_POLICY
from flowfield.encoder import DEFAULT_LAYER_FRACTIONS, LatentEncoder
from flowfield.evaluation.problems import expert_problems
from flowfield.training import FitConfig, fit_flow, load_jsonl
from research.cli import run_command
from research.demo_build.data import write_expert_jsonl

LEGACY_FIT = FitConfig(
    epochs=10, batch_tokens=2048, lr=1e-3, replicas=2, depth=4, seed=0, standardize=False,
    holdout=0,
)  # fmt: skip

# lever -> (changes to the fit recipe, extra expert problems, layer fractions)
LEVERS: dict[str, tuple[dict, int, tuple[float, ...]]] = {
    "control-seed1": ({"seed": 1}, 0, DEFAULT_LAYER_FRACTIONS),  # refit noise: same recipe
    "context-none": ({"context": "none"}, 0, DEFAULT_LAYER_FRACTIONS),
    "context-prev": ({"context": "prev"}, 0, DEFAULT_LAYER_FRACTIONS),
    # 4x the expert solutions at the same number of optimiser steps
    "data-4x": ({"epochs": 2.5}, 12_000, DEFAULT_LAYER_FRACTIONS),
    # 4x the expert solutions and 4x the steps
    "data-4x-long": ({}, 12_000, DEFAULT_LAYER_FRACTIONS),
    "width-256": ({"width": 256}, 0, DEFAULT_LAYER_FRACTIONS),
    # the two changes that moved localisation, together
    "width-256-prev": ({"width": 256, "context": "prev"}, 0, DEFAULT_LAYER_FRACTIONS),
    "layers-deep": ({}, 0, (0.75,)),
    "layers-all": ({}, 0, (0.0, 0.25, 0.5, 0.75)),
}


def lever_config(lever: str) -> tuple[FitConfig, int, tuple[float, ...]]:
    if lever not in LEVERS:
        raise ValueError(f"unknown lever {lever!r}; one of {sorted(LEVERS)}")
    changes, extra, fractions = LEVERS[lever]
    return dataclasses.replace(LEGACY_FIT, **changes), extra, fractions


def command(
    lever: str = typer.Option(..., help=f"one of {', '.join(LEVERS)}"),
    out: Path = typer.Option(..., help="checkpoint directory to write (under runs/)"),
    model: Path = typer.Option(DEMO_POLICY, help="policy directory"),
    threads: int = typer.Option(0, help="torch CPU threads (0 = default)"),
) -> None:
    """Refit the demo flow with one lever changed (then `flowfield eval --split dev`)."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if threads:
        torch.set_num_threads(threads)
    cfg, extra, fractions = lever_config(lever)
    encoder = LatentEncoder(model, layer_fractions=fractions)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_expert_jsonl(Path(tmp) / "expert.jsonl", expert_problems(extra))
        samples = load_jsonl(data, encoder)
    res = fit_flow(encoder, samples, out, cfg)
    (Path(out) / "trainer_state.pt").unlink(missing_ok=True)
    typer.echo(f"{lever}: {res.steps} steps, final loss {res.final_loss:.4f} -> {res.out}")


def main(argv: list[str]) -> int:
    return run_command(command, argv, "levers")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
