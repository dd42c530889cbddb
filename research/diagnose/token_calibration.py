"""Does calibrating each token's deviation against expert data of the same token id lift the
mean-deviation AUROC? A dev-split check of the token-type confound (docs/evaluation.md).

    python -m research token-calibration --policy flowfield/demo/assets/policy

Fits the `prev` flow of `python -m research diagnose` on the cached expert
latents (same recipe and seed), scores 1,000 expert solutions the flow never saw (the extra
expert pool) to get each token id's deviation mean and spread, and compares sequence scores
of the 500 dev rollouts: the raw mean and max deviation, the mean of per-token-id z-scores
(of the deviation and of its log), the ratio to the token's expert mean, and the mean of
each rollout's 5 largest deviations. Dev split only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import typer

from flowfield.demo import DEMO_POLICY
from flowfield.demo.task import expert_solution
from flowfield.encoder import LatentEncoder
from flowfield.evaluation.metrics import auroc
from flowfield.evaluation.problems import eval_problems, expert_problems
from research.cli import run_command
from research.diagnose.diagnose import (
    BASE,
    CONFIGS,
    _cache,
    default_cache,
    fit_flow_on_cache,
    packed_deviations,
)

MIN_COUNT = 20  # token ids seen fewer times in the expert pool use the global statistics


def command(
    policy: Path = typer.Option(DEMO_POLICY, help="policy directory (a 4-block demo policy)"),
    cache: Path = typer.Option(
        None, help="latent cache file (default runs/diagnose/NAME-REVISION.pt)"
    ),
    threads: int = typer.Option(2, help="torch CPU threads"),
) -> None:
    """Does per-token-id calibration of deviations lift the dev AUROC?"""
    torch.set_num_threads(threads)
    c = _cache(cache or default_cache(policy), policy, 500)
    cfg = {**BASE, **CONFIGS["prev"]}
    net, fracs, _ = fit_flow_on_cache(c, cfg, "prev")

    def deviations(h: torch.Tensor, ctx: torch.Tensor, off: list[int]) -> torch.Tensor:
        return packed_deviations(net, h, ctx, off, fracs)

    enc = LatentEncoder(policy, layer_fractions=tuple(fracs))
    tok = enc.tokenizer
    pool = expert_problems(1000)[-1000:]  # expert solutions the flow was not fitted on
    x_ids = [tok(expert_solution(p), add_special_tokens=False)["input_ids"] for p in pool]
    xb = enc.encode([tok(p.prompt, add_special_tokens=False)["input_ids"] for p in pool], x_ids)
    xe = deviations(xb.h.float(), xb.prev.float(), xb.offsets)
    xt = torch.tensor([t for r in x_ids for t in r])

    from transformers import AutoModelForCausalLM

    from flowfield.evaluation.run import demo_rollouts

    lm = AutoModelForCausalLM.from_pretrained(policy).eval()
    ro = demo_rollouts(lm, tok, eval_problems(500, "dev"), 1.0, 0, False)  # the cache's
    assert [x.reward for x in ro] == c["reward"], "the cache is not this policy's"
    rt = torch.tensor([t for x in ro for t in x.response_ids])
    layers = list(cfg["layers"])
    rd = deviations(c["Rh"][layers].float(), c["Rp"][layers].float(), c["Roff"])

    vocab = int(max(xt.max(), rt.max())) + 1
    log_mu = torch.full((vocab,), float(xe.log().mean()))
    log_sd = torch.full((vocab,), float(xe.log().std()))
    mu = torch.full((vocab,), float(xe.mean()))
    sd = torch.full((vocab,), float(xe.std()))
    for v in range(vocab):
        m = xt == v
        if int(m.sum()) >= MIN_COUNT:
            log_mu[v], log_sd[v] = xe[m].log().mean(), xe[m].log().std()
            mu[v], sd[v] = xe[m].mean(), xe[m].std()
    off, bad = c["Roff"], np.array(c["reward"]) < 1

    def seq(values: torch.Tensor, f=np.mean) -> np.ndarray:
        return np.array([f(values[off[i] : off[i + 1]].numpy()) for i in range(len(off) - 1)])

    def top5(a: np.ndarray) -> float:
        return float(np.sort(a)[-5:].mean())

    res = {
        "raw mean": auroc(seq(rd), bad),
        "raw max": auroc(seq(rd, np.max), bad),
        "mean log deviation": auroc(seq(rd.log()), bad),
        "token-id z of log deviation, mean": auroc(seq((rd.log() - log_mu[rt]) / log_sd[rt]), bad),
        "token-id z of deviation, mean": auroc(seq((rd - mu[rt]) / sd[rt]), bad),
        "ratio to the token id's expert mean, mean": auroc(seq(rd / mu[rt]), bad),
        "raw, mean of the 5 largest": auroc(seq(rd, top5), bad),
    }
    typer.echo(json.dumps({"policy": str(policy), **{k: round(v, 3) for k, v in res.items()}}))


def main(argv: list[str]) -> int:
    return run_command(command, argv, "token-calibration")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
