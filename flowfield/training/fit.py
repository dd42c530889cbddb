"""Offline fit of a flow on expert latents (RLFR.md s4).

AdamW with linear warm-up and cosine decay; t ~ logit-normal; every token replicated with
fresh (t, eps); batches by response-token budget; a progress bar; periodic and final
checkpoints; resumable (weights in the checkpoint, optimiser/schedule/step beside them).
Each step's randomness is seeded by (seed, step), so a resumed fit continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from flowfield.checkpoint import load_flow, save_flow
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder
from flowfield.objective import flow_matching_loss, rows_for_training
from flowfield.path import logit_normal
from flowfield.training.data import Sample, token_budget_batches

log = logging.getLogger("flowfield.fit")
TRAINER_STATE = "trainer_state.pt"


@dataclass
class FitConfig:
    epochs: float = 2.0
    batch_tokens: int = 4096  # response tokens per step (x layers x replicas rows)
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all steps
    replicas: int = 2  # fresh (t, eps) draws per token per step
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0 = only the final checkpoint
    width: int | None = None  # flow width W; None = the encoder's hidden size
    depth: int = 4
    context: str = "next"


@dataclass
class FitResult:
    steps: int
    tokens: int
    final_loss: float
    seconds: float
    out: Path


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine to min_ratio."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _schedule(samples: Sequence[Sample], cfg: FitConfig) -> list[list[int]]:
    """All batches of the fit, epoch after epoch (a fractional last epoch is cut short)."""
    batches: list[list[int]] = []
    full = math.ceil(cfg.epochs)
    for epoch in range(full):
        epoch_batches = token_budget_batches(samples, cfg.batch_tokens, seed=cfg.seed + epoch)
        if epoch == full - 1 and cfg.epochs < full:
            epoch_batches = epoch_batches[
                : max(1, round((cfg.epochs - epoch) * len(epoch_batches)))
            ]
        batches.extend(epoch_batches)
    return batches


def fit_flow(
    encoder: LatentEncoder,
    samples: Sequence[Sample],
    out: str | Path,
    cfg: FitConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> FitResult:
    """Fit (or, with resume, continue fitting) a flow and write it to `out`.

    stop_after: end after this many steps in total with a resumable checkpoint (for
    time-boxed runs); the schedule stays that of the whole fit.
    """
    cfg = cfg or FitConfig()
    out = Path(out)
    torch.manual_seed(cfg.seed)
    if resume and (out / TRAINER_STATE).is_file():
        net, meta = load_flow(out, encoder.identity, encoder.layer_fractions)
        state = torch.load(out / TRAINER_STATE, weights_only=False)
        saved = FitConfig(**state["config"])
        if saved != cfg:
            log.warning("resuming with the configuration saved in the checkpoint: %s", saved)
        cfg = saved
        start_step, tokens = int(state["step"]), int(state["tokens"])
    else:
        net = FlowNet(
            flow_for_encoder(
                encoder.hidden_size, encoder.layer_fractions, cfg.width, cfg.depth, cfg.context
            )
        )
        meta = FlowMetadata(config=net.config, encoder=asdict(encoder.identity))
        state, start_step, tokens = None, 0, 0
    net = net.to(encoder.device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = _schedule(samples, cfg)
    total = len(batches)
    warmup = int(cfg.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, total, warmup))
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    log.info(
        "fitting flow: %d samples, %d steps (%s epochs), width %d depth %d context %s, "
        "%d parameters, layers %s",
        len(samples),
        total,
        cfg.epochs,
        net.config.width,
        net.config.depth,
        cfg.context,
        net.num_parameters(),
        list(encoder.layers),
    )

    def checkpoint(step: int) -> None:
        meta.samples_trained = min(len(samples), sum(len(b) for b in batches[:step]))
        meta.tokens_trained = tokens
        meta.extra = {"fit": asdict(cfg), "steps": step, "last_loss": last_loss}
        save_flow(out, net, meta)
        torch.save(
            {
                "config": asdict(cfg),
                "step": step,
                "tokens": tokens,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
            },
            out / TRAINER_STATE,
        )

    t0 = time.time()
    last_loss = float("nan")
    smooth = None
    end = total if stop_after is None else max(start_step, min(total, stop_after))
    bar = tqdm(
        range(start_step, end),
        initial=start_step,
        total=total,
        desc="fit",
        unit="step",
        disable=not progress,
    )
    for step in bar:
        batch = [samples[i] for i in batches[step]]
        enc = encoder.encode([s.prompt_ids for s in batch], [s.response_ids for s in batch])
        # latents come out of inference mode; clone them into ordinary (detached) tensors
        h = enc.h.clone().float()
        ctx = enc.context(net.config.context).clone().float()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x1, c, lf, t, eps = rows_for_training(
            h, ctx, encoder.layer_fractions, cfg.replicas, logit_normal, g
        )
        loss = flow_matching_loss(net, x1, c, lf, t, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        tokens += h.shape[1]
        last_loss = loss.item()
        smooth = last_loss if smooth is None else 0.95 * smooth + 0.05 * last_loss
        bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            checkpoint(step + 1)
    bar.close()
    checkpoint(end)
    seconds = time.time() - t0
    final = smooth if smooth is not None else last_loss
    log.info(
        "fit %s: %d/%d steps, %d tokens, final loss %.4f, %.1fs -> %s",
        "done" if end == total else "paused",
        end,
        total,
        tokens,
        final,
        seconds,
        out,
    )
    return FitResult(end, tokens, final, seconds, out)
