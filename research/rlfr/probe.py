"""The gradient pre-check (issue 24): can an arm's shaping change the policy gradient at all?

On fixed batches (the first training batches of one seed, sampled from the start policy
exactly as the trainer samples them: the same rollouts for every arm, common random numbers)
and at the start policy, for each arm and beta:

- norm ratio ||g_arm - g_rlvr|| / ||g_rlvr||: the shaping term's share of the gradient;
- cosine of g_arm to g_rlvr;
- sign flips: the fraction of parameters whose sign of the first optimiser step differs
  from RLVR's (Adam's first step is -lr * g / (|g| + eps), the sign of the gradient), among
  the parameters with a non-zero gradient in either arm.

g is the gradient of the trainer's loss (policy_gradient.py; before clipping, which scales
but does not turn it). Values are means over the batches where RLVR has a gradient (a batch
whose every group has one outcome has none; those are counted). A setting whose mean cosine
is above COSINE_CANNOT_DIFFER is labelled "cannot differ": its steps are RLVR's to within
a few percent, and a run of it will repeat RLVR's curve.

Flow scores come in-process (the library's FlowScorer with the service's default timesteps,
noise draws and noise seed; no HTTP), from the start flow: at step 0 `rlfr` and
`rlfr-frozen` are the same arm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flowfield.demo.policy import Rollout, sample_rollouts
from flowfield.rewards import RewardOptions, token_rewards
from research.rlfr.arms import Arm
from research.rlfr.config import ExperimentConfig
from research.rlfr.evaluate import prompt_schedule, rollout_seed
from research.rlfr.policy_gradient import policy_forward, policy_gradient_loss
from research.rlfr.shaping import logit_calibration, shape_arm, shuffle_seed

log = logging.getLogger("research.experiments")

COSINE_CANNOT_DIFFER = 0.99
DEFAULT_BETAS = (0.01, 0.1, 1.0)


@dataclass
class Batch:
    step: int
    rollouts: list[Rollout]
    group_ids: list[str]


def probe_batches(cfg: ExperimentConfig, model: torch.nn.Module, tok: Any, seed: int,
                  n: int) -> list[Batch]:
    """The first n training batches of `seed`, as the trainer samples them at step 1..n."""
    schedule = prompt_schedule(seed, max(n, cfg.steps), cfg.prompts_per_step)[:n]
    out = []
    for step, prompts in enumerate(schedule, start=1):
        batch = [p for p in prompts for _ in range(cfg.group_size)]
        rollouts = sample_rollouts(model, tok, batch, temperature=cfg.temperature,
                                   seed=rollout_seed(seed, step))
        gids = [f"{step}-{i // cfg.group_size}" for i in range(len(rollouts))]
        out.append(Batch(step, rollouts, gids))
    return out


def _flat_grad(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                      for g, p in zip(grads, params)]).double()


def compare(g_arm: torch.Tensor, g_ref: torch.Tensor) -> dict[str, float] | None:
    """Norm ratio, cosine and sign flips of g_arm against g_ref (None: g_ref is zero)."""
    ref_norm = float(g_ref.norm())
    if ref_norm == 0.0:
        return None
    diff = float((g_arm - g_ref).norm())
    arm_norm = float(g_arm.norm())
    cos = float(g_arm @ g_ref) / (arm_norm * ref_norm) if arm_norm > 0 else 0.0
    active = (g_arm != 0) | (g_ref != 0)
    flips = (torch.sign(g_arm) != torch.sign(g_ref)) & active
    return {
        "norm_ratio": diff / ref_norm,
        "cosine": cos,
        "sign_flip": float(flips.sum()) / max(1, int(active.sum())),
    }


def _flow_scorer(policy: Path, flow: Path) -> Any:
    from flowfield.checkpoint import load_flow, read_metadata
    from flowfield.encoder import LatentEncoder
    from flowfield.scorer import FlowScorer

    meta = read_metadata(flow)
    encoder = LatentEncoder(policy, layer_fractions=meta.config.layer_fractions,
                            dtype="float32")
    net, meta = load_flow(flow, encoder.identity, encoder.layer_fractions)
    return FlowScorer(encoder, net, meta)


def run_probe(
    cfg: ExperimentConfig,
    arms: Sequence[Arm],
    betas: Sequence[float] | None = None,
    batches: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """The probe's record: settings, per-batch values and per (arm, beta) means."""
    t0 = time.monotonic()
    torch.set_num_threads(cfg.threads)
    betas = tuple(betas) if betas else (cfg.beta,)
    n = batches if batches is not None else cfg.probe_batches
    seed = cfg.seeds[0] if seed is None else seed
    tok = AutoTokenizer.from_pretrained(cfg.policy)
    model = AutoModelForCausalLM.from_pretrained(cfg.policy).float().eval()
    params = [p for p in model.parameters() if p.requires_grad]
    data = probe_batches(cfg, model, tok, seed, n)
    need_flow = any(a.signal in ("flow", "shuffled") for a in arms)
    scorer = _flow_scorer(cfg.policy, cfg.flow) if need_flow else None
    calib: dict[str, Any] = {}
    for a in arms:
        norm = a.normalization or cfg.normalization
        if a.signal in ("entropy", "nll") and norm == "expert" and a.signal not in calib:
            calib[a.signal] = logit_calibration(model, tok, a.signal)

    per_batch: dict[str, list[dict[str, Any]]] = {}
    uniform_batches = 0
    mixed_share = []
    for b in data:
        rewards = [r.reward for r in b.rollouts]
        groups = [rewards[i : i + cfg.group_size] for i in range(0, len(rewards), cfg.group_size)]
        mixed_share.append(sum(0 < sum(g) < len(g) for g in groups) / len(groups))
        devs = (scorer.deviations([r.prompt_ids for r in b.rollouts],
                                  [r.response_ids for r in b.rollouts])
                if scorer is not None else None)
        fwd = policy_forward(model, b.rollouts, tok.eos_token_id, tok.pad_token_id)
        base = RewardOptions(cfg.normalization, cfg.beta, cfg.threshold, cfg.top_k)
        ref = shape_arm("none", base, b.rollouts, b.group_ids)
        g_ref = _flat_grad(policy_gradient_loss(fwd.logp, ref.advantages), params)
        if float(g_ref.norm()) == 0.0:
            uniform_batches += 1
        for a in arms:
            for beta in betas:
                opts = RewardOptions(a.normalization or cfg.normalization, beta, cfg.threshold,
                                     cfg.top_k)
                flow_tr = None
                if devs is not None and a.signal in ("flow", "shuffled"):
                    flow_tr = [token_rewards(e.to(torch.float64), opts, scorer.calibration)
                               for e in devs]
                shaped = shape_arm(
                    a.signal, opts, b.rollouts, b.group_ids, fwd=fwd, flow_token_rewards=flow_tr,
                    calibration=calib.get(a.signal), shuffle=shuffle_seed(seed, b.step),
                    uniform=cfg.shape_uniform_only,
                )
                g = _flat_grad(policy_gradient_loss(fwd.logp, shaped.advantages), params)
                row = compare(g, g_ref)
                per_batch.setdefault(f"{a.name}|{beta:g}", []).append(
                    {"step": b.step, **(row or {}),
                     "dense_return": fmean(shaped.dense_return)}
                )
    table = []
    for a in arms:
        for beta in betas:
            rows = [r for r in per_batch[f"{a.name}|{beta:g}"] if "cosine" in r]
            entry: dict[str, Any] = {"arm": a.name, "beta": beta, "batches": len(rows)}
            for key in ("norm_ratio", "cosine", "sign_flip"):
                vals = [r[key] for r in rows]
                entry[key] = fmean(vals) if vals else None
                entry[f"{key}_range"] = [min(vals), max(vals)] if vals else None
            entry["cannot_differ"] = (entry["cosine"] is not None
                                      and entry["cosine"] > COSINE_CANNOT_DIFFER)
            table.append(entry)
    record = {
        "seed": seed,
        "batches": n,
        "betas": list(betas),
        "arms": [a.name for a in arms],
        "normalization": cfg.normalization,
        "threshold": cfg.threshold,
        "top_k": cfg.top_k,
        "shape_uniform_only": cfg.shape_uniform_only,
        "rollouts_per_batch": cfg.rollouts_per_step,
        "batches_without_rlvr_gradient": uniform_batches,
        "mixed_group_share": fmean(mixed_share) if mixed_share else None,
        "cosine_cannot_differ": COSINE_CANNOT_DIFFER,
        "table": table,
        "per_batch": per_batch,
        "seconds": round(time.monotonic() - t0, 3),
    }
    log.info("gradient probe: %d arms x %d betas on %d batches in %.1fs", len(arms), len(betas),
             n, record["seconds"])
    return record


def suggested_beta(probe: dict[str, Any], arm: str) -> float | None:
    """The smallest beta at which `arm`'s cosine to RLVR is below the threshold."""
    ok = [e["beta"] for e in probe["table"]
          if e["arm"] == arm and e["cosine"] is not None and not e["cannot_differ"]]
    return min(ok) if ok else None


def probe_table(probe: dict[str, Any]) -> str:
    """The probe as a markdown table."""
    lines = [
        f"Gradient probe: {probe['batches']} batches of {probe['rollouts_per_batch']} rollouts "
        f"(seed {probe['seed']}, start policy, same rollouts for every arm; "
        f"{probe['batches_without_rlvr_gradient']} without an RLVR gradient, mixed groups "
        f"{100 * (probe['mixed_group_share'] or 0):.0f}%); normalisation {probe['normalization']}"
        f" unless the arm sets its own, eta {probe['threshold']:g}, K {probe['top_k']}"
        f"{', shaping in uniform groups only' if probe['shape_uniform_only'] else ''}. "
        f"Means over batches (range); 'cannot differ': cosine to RLVR > "
        f"{probe['cosine_cannot_differ']}.",
        "",
        "| arm | beta | \\|\\|g - g_rlvr\\|\\| / \\|\\|g_rlvr\\|\\| | cosine to rlvr "
        "| sign flips of step 1 | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(e: dict[str, Any], key: str, f: str) -> str:
        if e[key] is None:
            return "n/a"
        lo, hi = e[f"{key}_range"]
        return f"{f.format(e[key])} ({f.format(lo)}-{f.format(hi)})"

    for e in probe["table"]:
        verdict = "cannot differ" if e["cannot_differ"] else "can differ"
        if e["arm"] == "rlvr":
            verdict = "reference"
        lines.append(
            f"| {e['arm']} | {e['beta']:g} | {fmt(e, 'norm_ratio', '{:.3f}')} "
            f"| {fmt(e, 'cosine', '{:.4f}')} | {fmt(e, 'sign_flip', '{:.3f}')} | {verdict} |"
        )
    return "\n".join(lines) + "\n"
