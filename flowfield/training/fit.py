"""Offline fit of a flow on expert latents (docs/method.md).

AdamW with linear warm-up and cosine decay, a progress bar (the shared loop, loop.py);
t ~ logit-normal; every token replicated with fresh (t, eps); batches by response-token
budget; periodic and final checkpoints; resumable (weights in the checkpoint,
optimiser/schedule/step beside them). Each step's randomness is seeded by (seed, step), so
a resumed fit continues exactly as an uninterrupted one would.

Defaults that work on small data too: what makes a flow useful is the number of optimiser
steps, not the number of epochs (a 126k-token data set at RLFR's 2 epochs x 4096 tokens is
about 60 steps, and such a flow says nothing). Unless epochs and batch size are both given,
they are chosen so the fit takes at least `min_steps` steps (see resolve_schedule). Part of
the data is held out, and the fit ends with a report on it (report.py) that says whether
the flow is any good, with a warning when it is not.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from flowfield.checkpoint import load_flow, save_flow
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder
from flowfield.objective import flow_matching_loss, rows_for_training
from flowfield.path import logit_normal
from flowfield.training.data import Sample, token_budget_batches
from flowfield.training.latents import LatentCache, cache_bytes
from flowfield.training.loop import TrainLoop
from flowfield.training.report import FitReport, fit_report, split_holdout

log = logging.getLogger("flowfield.fit")
TRAINER_STATE = "trainer_state.pt"
# large data keeps RLFR's recipe: 2 epochs at 4096 response tokens per step
LARGE_DATA_EPOCHS = 2.0
LARGE_DATA_BATCH = 4096
MIN_BATCH_TOKENS = 512  # smaller batches make the step count cheap but the gradient noisy
TOO_FEW_STEPS = 1000  # fewer optimiser steps than this: warn that the flow may say nothing


@dataclass
class FitConfig:
    epochs: float | None = None  # None: chosen from the data size (resolve_schedule)
    batch_tokens: int | None = None  # response tokens per step (x layers x replicas rows)
    lr: float | None = None  # None: default_lr(width)
    min_steps: int = 2000  # with epochs or batch_tokens unset, take at least this many steps
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all steps
    replicas: int = 2  # fresh (t, eps) draws per token per step
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0 = only the final checkpoint
    width: int | None = None  # flow width W; None = the encoder's hidden size
    depth: int = 4
    context: str = "next"
    # per layer and dimension latent standardisation (stored with the weights); off by default:
    # on the demo task it lowered the AUROC (docs/evaluation.md, "Diagnosis")
    standardize: bool = False
    holdout: int = 500  # expert samples held out for the report (at most 10% of the data)
    cache_gb: float = 2.0  # encode the data once when its latents fit in this much memory


@dataclass
class FitResult:
    steps: int
    tokens: int
    final_loss: float
    seconds: float
    out: Path
    report: FitReport | None = None


def default_lr(width: int) -> float:
    """1e-3 for flows up to W = 256, falling to ~1.4e-4 at W = 1536 (RLFR's 1e-4 at 65M+)."""
    return 1e-3 * min(1.0, 256 / width) ** 1.1


def resolve_schedule(cfg: FitConfig, tokens: int, width: int) -> FitConfig:
    """The config with epochs, batch_tokens and lr filled in for `tokens` response tokens.

    Given both epochs and batch size, they are kept. Otherwise large data gets 2 epochs at
    4096 tokens a step, and data too small for `min_steps` steps at that gets smaller
    batches (down to 512 tokens) and more epochs until it reaches `min_steps`.
    """
    tokens = max(1, tokens)
    epochs, batch = cfg.epochs, cfg.batch_tokens
    if batch is None:
        batch = LARGE_DATA_BATCH
        planned = (epochs or LARGE_DATA_EPOCHS) * tokens / batch
        if planned < cfg.min_steps:
            per_step = (epochs or LARGE_DATA_EPOCHS) * tokens / cfg.min_steps
            batch = int(max(MIN_BATCH_TOKENS, min(LARGE_DATA_BATCH, per_step)))
    if epochs is None:
        epochs = max(LARGE_DATA_EPOCHS, cfg.min_steps * batch / tokens)
    return replace(
        cfg, epochs=float(epochs), batch_tokens=int(batch), lr=cfg.lr or default_lr(width)
    )


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


def _streamed_stats(
    encoder: LatentEncoder, samples: Sequence[Sample], chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer and dimension mean and std of the samples' latents, one pass, float64 sums."""
    n, s1, s2 = 0, None, None
    for start in range(0, len(samples), chunk):
        part = samples[start : start + chunk]
        h = encoder.encode([s.prompt_ids for s in part], [s.response_ids for s in part]).h
        h = h.double()
        s1 = h.sum(1) if s1 is None else s1 + h.sum(1)
        s2 = (h * h).sum(1) if s2 is None else s2 + (h * h).sum(1)
        n += h.shape[1]
    mean = s1 / n
    var = (s2 / n - mean * mean).clamp_min(0) * n / max(1, n - 1)
    return mean.float().cpu(), var.sqrt().clamp_min(1e-6).float().cpu()


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
    out = Path(out)
    cfg = cfg or FitConfig()
    torch.manual_seed(cfg.seed)
    train, held = split_holdout(samples, cfg.holdout)
    tokens_total = sum(len(s.response_ids) for s in train)
    cfg = resolve_schedule(cfg, tokens_total, cfg.width or encoder.hidden_size)
    if resume and (out / TRAINER_STATE).is_file():
        net, meta = load_flow(out, encoder.identity, encoder.layer_fractions)
        state = torch.load(out / TRAINER_STATE, weights_only=False)
        saved = FitConfig(**state["config"])
        if saved != cfg:
            log.warning("resuming with the configuration saved in the checkpoint: %s", saved)
        cfg = saved
        start_step, tokens = int(state["step"]), int(state["tokens"])
    else:
        config = flow_for_encoder(
            encoder.hidden_size, encoder.layer_fractions, cfg.width, cfg.depth, cfg.context
        )
        net = FlowNet(replace(config, standardize=cfg.standardize))
        meta = FlowMetadata(config=net.config, encoder=asdict(encoder.identity))
        state, start_step, tokens = None, 0, 0

    cache = None
    if cache_bytes(train, encoder) <= cfg.cache_gb * (1 << 30):
        cache = LatentCache(encoder, train, progress=progress)
    if cfg.standardize and state is None:
        mean, std = cache.layer_stats() if cache is not None else _streamed_stats(encoder, train)
        net.set_latent_stats(mean, std)

    net = net.to(encoder.device).train()
    batches = _schedule(train, cfg)
    total = len(batches)
    loop = TrainLoop(
        net.parameters(),
        lr=cfg.lr,
        total_steps=total,
        warmup_steps=int(cfg.warmup * total),
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        progress=progress,
        desc="fit",
        initial=start_step,
    )
    if state is not None:
        loop.load_state_dict(state)
    log.info(
        "fitting flow: %d samples (%d held out), %d response tokens, %d steps (%.1f epochs of "
        "%d tokens), lr %.2e, width %d depth %d context %s, standardize %s, %d parameters, "
        "hooked blocks %s (depth fractions %s), latents %s",
        len(train),
        len(held),
        tokens_total,
        total,
        cfg.epochs,
        cfg.batch_tokens,
        cfg.lr,
        net.config.width,
        net.config.depth,
        cfg.context,
        cfg.standardize,
        net.num_parameters(),
        list(encoder.layers),
        list(encoder.layer_fractions),
        "cached in memory" if cache is not None else "encoded every step",
    )
    if total < TOO_FEW_STEPS:
        log.warning(
            "only %d optimiser steps: flows fitted this briefly usually carry no signal; "
            "lower --batch-tokens or raise --epochs (or --min-steps)",
            total,
        )

    def checkpoint(step: int) -> None:
        meta.samples_trained = min(len(train), sum(len(b) for b in batches[:step]))
        meta.tokens_trained = tokens
        meta.extra = {"fit": asdict(cfg), "steps": step, "last_loss": loop.last_loss}
        save_flow(out, net, meta)
        torch.save(
            {"config": asdict(cfg), "step": step, "tokens": tokens, **loop.state_dict()},
            out / TRAINER_STATE,
        )

    t0 = time.time()
    end = total if stop_after is None else max(start_step, min(total, stop_after))
    for step in range(start_step, end):
        if cache is not None:
            h, ctx = cache.context(batches[step], net.config.context)
            h, ctx = h.to(encoder.device), ctx.to(encoder.device)
        else:
            batch = [train[i] for i in batches[step]]
            enc = encoder.encode([s.prompt_ids for s in batch], [s.response_ids for s in batch])
            # latents come out of inference mode; clone them into ordinary (detached) tensors
            h, ctx = enc.h.clone().float(), enc.context(net.config.context).clone().float()
        h, ctx = net.prepare(h, ctx)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x1, c, lf, t, eps = rows_for_training(
            h, ctx, encoder.layer_fractions, cfg.replicas, logit_normal, g
        )
        loop.step(flow_matching_loss(net, x1, c, lf, t, eps))
        tokens += h.shape[1]
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            checkpoint(step + 1)
    loop.close()
    report = None
    if end == total and held:
        # the held-out report, and the calibration the "expert" normalisation needs
        report = fit_report(encoder, net.eval(), meta, held, train, seed=cfg.seed)
        meta.calibration = report.calibration.to_dict()
    checkpoint(end)
    if report is not None:
        meta.extra["report"] = report.to_dict()
        save_flow(out, net, meta)
        for warning in report.warnings:
            log.warning("%s", warning)
    seconds = time.time() - t0
    final = loop.smoothed if loop.smoothed is not None else loop.last_loss
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
    return FitResult(end, tokens, final, seconds, out, report)
