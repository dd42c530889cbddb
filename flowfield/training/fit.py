"""Offline fit of a flow on expert latents (docs/method.md).

AdamW with linear warm-up and cosine decay, a progress bar (the shared loop, loop.py);
t ~ logit-normal; every token replicated with fresh (t, eps); batches by response-token
budget; periodic and final checkpoints; resumable (weights in the checkpoint,
optimiser/schedule/step in trainer_state.pt beside them while the fit is unfinished). Each
step's randomness is seeded by (seed, step), so a resumed fit continues exactly as an
uninterrupted one would.

Defaults that work on small data and on real models (see resolve_schedule, default_width):
- the number of steps: at least `min_steps` (smaller batches on small data, down to 512
  tokens), but at most `max_epochs` passes over the data;
- early stopping: every `eval_every` steps the flow-matching loss on held-out expert tokens
  (fixed noise, so evaluations compare like with like) is measured; the fit stops when it
  has not improved by 0.1% for `patience` evaluations and keeps the best weights;
- the width: W = min(d, 256), so the flow stays at ~2-5M parameters from d = 576 to 4096;
- the latents are encoded once and cached (in memory up to `cache_gb`, else memory-mapped
  on disk); a few steps are timed and the fit says how long it will take before it goes on.
Part of the data is held out, and the fit ends with a report on it (report.py) that says
whether the flow is any good, with a warning when it is not.
"""

from __future__ import annotations

import logging
import math
import shutil
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
# the default flow width: W = min(d, MAX_DEFAULT_WIDTH). The trunk then has at most
# (7 + 5 * depth) * 256^2 ~ 1.8M parameters and the layers that read and write the latents
# 3 * d * W (0.44M at d = 576, 3.1M at d = 4096): a fit of 1,000 samples costs minutes on a
# CPU, not an hour (W = d = 576 is 9.3M parameters, ~4x the FLOPs per row)
MAX_DEFAULT_WIDTH = 256
MAX_EPOCHS = 20.0  # default cap on passes over the data (9k tokens: 1,000 steps = 59 epochs)
EARLY_STOP_DELTA = 1e-3  # an evaluation improves when its loss is below best * (1 - this)
EARLY_STOP_TOKENS = 4096  # held-out response tokens the early-stopping loss is measured on
TIMED_STEPS = 10  # steps timed (after 2 warm-up steps) for the estimate printed up front


@dataclass
class FitConfig:
    epochs: float | None = None  # None: chosen from the data size (resolve_schedule)
    batch_tokens: int | None = None  # response tokens per step (x layers x replicas rows)
    lr: float | None = None  # None: default_lr(width)
    # with epochs or batch_tokens unset, take at least this many steps: 1,000 steps of W = 256
    # fit 1,000 samples of ~100 response tokens in ~4.5 min on two CPU cores (README)
    min_steps: int = 1000
    # with epochs unset, at most this many passes over the data (None or 0: no cap)
    max_epochs: float | None = MAX_EPOCHS
    # early stopping on the held-out flow-matching loss (needs held-out samples): evaluate
    # every eval_every steps (0: total/40, within 25..250), stop after `patience`
    # evaluations without improvement and keep the best weights
    early_stop: bool = True
    eval_every: int = 0
    patience: int = 5
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all steps
    replicas: int = 2  # fresh (t, eps) draws per token per step
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0 = only the final checkpoint
    width: int | None = None  # flow width W; None = default_width(d) = min(d, 256)
    depth: int = 4
    context: str = "next"
    # per layer and dimension latent standardisation (stored with the weights); off by default:
    # on the demo task it lowered the AUROC (docs/evaluation.md, "Diagnosis")
    standardize: bool = False
    holdout: int = 500  # expert samples held out for the report (at most 10% of the data)
    cache_gb: float = 2.0  # latents up to this size are cached in memory, larger on disk
    cache_dir: str | None = None  # where a disk cache goes (None: <out>/latent-cache)
    keep_trainer_state: bool = False  # keep trainer_state.pt once the fit is complete


# trainer states written before these options existed resume as they were fitted
_LEGACY_OPTIONS = {"max_epochs": None, "early_stop": False}


@dataclass
class FitResult:
    steps: int
    tokens: int
    final_loss: float
    seconds: float
    out: Path
    report: FitReport | None = None
    planned_steps: int = 0  # the schedule's length (steps < planned_steps: stopped early)
    stopped_early: bool = False
    best_step: int | None = None  # the step whose weights were kept (early stopping)
    heldout_loss: float | None = None  # the early-stopping loss of the kept weights

    def summary(self) -> str:
        """What `flowfield fit` prints at the end: the fit's line, then early stopping's."""
        line = (
            f"fit: {self.steps} steps, {self.tokens} tokens, final loss {self.final_loss:.4f}, "
            f"{self.seconds:.1f}s -> {self.out}"
        )
        if self.best_step is None or self.heldout_loss is None:
            return line
        how = (
            f"stopped at step {self.steps} of {self.planned_steps} planned (the held-out loss "
            "stopped improving)"
            if self.stopped_early
            else f"ran all {self.planned_steps} planned steps"
        )
        return (
            f"{line}\nearly stopping: {how}; kept the weights of step {self.best_step} "
            f"(held-out flow-matching loss {self.heldout_loss:.4f})"
        )


def default_width(hidden_size: int) -> int:
    """W = min(d, 256): see MAX_DEFAULT_WIDTH."""
    return min(int(hidden_size), MAX_DEFAULT_WIDTH)


def default_lr(width: int) -> float:
    """1e-3 for flows up to W = 256, falling to ~1.4e-4 at W = 1536 (RLFR's 1e-4 at 65M+)."""
    return 1e-3 * min(1.0, 256 / width) ** 1.1


def resolve_schedule(cfg: FitConfig, tokens: int, width: int) -> FitConfig:
    """The config with epochs, batch_tokens and lr filled in for `tokens` response tokens.

    Given both epochs and batch size, they are kept. Otherwise large data gets 2 epochs at
    4096 tokens a step, and data too small for `min_steps` steps at that gets smaller
    batches (down to 512 tokens) and more epochs until it reaches `min_steps`, but at most
    `max_epochs` (so tiny data is not passed over a hundred times; early stopping usually
    ends the fit before either).
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
        if cfg.max_epochs:
            epochs = min(epochs, cfg.max_epochs)
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
        h = encoder.encode(
            [s.prompt_ids for s in part], [s.response_ids for s in part], share_prefix=True
        ).h
        h = h.double()
        s1 = h.sum(1) if s1 is None else s1 + h.sum(1)
        s2 = (h * h).sum(1) if s2 is None else s2 + (h * h).sum(1)
        n += h.shape[1]
    mean = s1 / n
    var = (s2 / n - mean * mean).clamp_min(0) * n / max(1, n - 1)
    return mean.float().cpu(), var.sqrt().clamp_min(1e-6).float().cpu()


class EarlyStopping:
    """The held-out flow-matching loss, measured every `every` steps, and the best weights.

    The loss is taken on up to EARLY_STOP_TOKENS response tokens of held-out expert samples
    (their latents are encoded once) with the same (t, eps) draws at every evaluation, so two
    evaluations differ only by the weights. An evaluation improves when its loss is below
    best * (1 - EARLY_STOP_DELTA); after `patience` evaluations without one the fit stops.
    The best weights (any lower loss) are kept and restored at the end.
    """

    def __init__(
        self,
        encoder: LatentEncoder,
        held: Sequence[Sample],
        context: str,
        every: int,
        patience: int,
        seed: int,
    ) -> None:
        part, budget = [], EARLY_STOP_TOKENS
        for s in held:
            if part and len(s.response_ids) > budget:
                break
            part.append(s)
            budget -= len(s.response_ids)
        enc = encoder.encode(
            [s.prompt_ids for s in part], [s.response_ids for s in part], share_prefix=True
        )
        self.h = enc.h.float().cpu().clone()
        self.ctx = enc.context(context).float().cpu().clone()
        self.samples, self.tokens = len(part), int(self.h.shape[1])
        self.layer_fractions = encoder.layer_fractions
        self.device = encoder.device
        self.every, self.patience, self.seed = max(1, every), max(1, patience), seed
        self.best = math.inf  # the lowest loss so far
        self.reference = math.inf  # the loss the next evaluation must beat by the delta
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad = 0  # evaluations since the last improvement
        self.history: list[tuple[int, float]] = []
        self.seconds = 0.0  # time the last evaluation took

    @torch.no_grad()
    def loss(self, net: FlowNet, chunk: int = 1024) -> float:
        total, rows = 0.0, 0
        for k, a in enumerate(range(0, self.tokens, chunk)):
            h = self.h[:, a : a + chunk].to(self.device)
            ctx = self.ctx[:, a : a + chunk].to(self.device)
            h, ctx = net.prepare(h, ctx)
            g = torch.Generator().manual_seed(self.seed * 7_919 + k)
            x1, c, lf, t, eps = rows_for_training(h, ctx, self.layer_fractions, 2, logit_normal, g)
            total += flow_matching_loss(net, x1, c, lf, t, eps).item() * x1.shape[0]
            rows += x1.shape[0]
        return total / max(1, rows)

    def evaluate(self, net: FlowNet, step: int) -> bool:
        """Measure the loss at `step`; True when the fit should stop."""
        t0 = time.time()
        loss = self.loss(net)
        self.seconds = time.time() - t0
        self.history.append((step, loss))
        if loss < self.best:
            self.best, self.best_step = loss, step
            self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if loss < self.reference * (1 - EARLY_STOP_DELTA):
            self.reference, self.bad = loss, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def restore_best(self, net: FlowNet) -> None:
        if self.best_state is not None:
            net.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        keys = ("best", "reference", "best_step", "best_state", "bad", "history")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def _eval_every(cfg: FitConfig, total: int) -> int:
    return cfg.eval_every or min(250, max(25, total // 40))


def _cache_storage(cfg: FitConfig, out: Path, need: int) -> tuple[Path | None, str]:
    """Where the latent cache goes: (None, "memory"), (file, "disk") or (None, "none")."""
    if need <= cfg.cache_gb * (1 << 30):
        return None, "memory"
    directory = Path(cfg.cache_dir) if cfg.cache_dir else out / "latent-cache"
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need * 1.1 + (1 << 30):
        log.warning(
            "the latents (%.2f GiB) fit neither the memory budget (--cache-gb %.1f) nor the "
            "disk at %s (%.1f GiB free): every batch is encoded again (slow)",
            need / 2**30,
            cfg.cache_gb,
            probe,
            free / 2**30,
        )
        return None, "none"
    return directory / "latents.f32", "disk"


def _describe_storage(kind: str, need: int, path: Path | None) -> str:
    if kind == "memory":
        return f"cached in memory ({need / 2**30:.2f} GiB float32)"
    if kind == "disk":
        return f"cached on disk ({need / 2**30:.2f} GiB float32, memory-mapped: {path})"
    return "encoded every step (no cache)"


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
    width = cfg.width or default_width(encoder.hidden_size)
    cfg = resolve_schedule(replace(cfg, width=width), tokens_total, width)
    if resume and (out / TRAINER_STATE).is_file():
        net, meta = load_flow(out, encoder.identity, encoder.layer_fractions)
        state = torch.load(out / TRAINER_STATE, weights_only=False)
        saved = FitConfig(**{**_LEGACY_OPTIONS, **state["config"]})
        if saved != cfg:
            log.warning("resuming with the configuration saved in the checkpoint: %s", saved)
        cfg = saved
        start_step, tokens = int(state["step"]), int(state["tokens"])
    else:
        if resume and (out / "flow.safetensors").is_file():
            done = load_flow(out)[1].extra
            if done.get("complete", "report" in done):
                raise ValueError(
                    f"the fit in {out} is complete (its trainer state was not kept: "
                    "--keep-trainer-state keeps it); nothing to resume"
                )
        config = flow_for_encoder(
            encoder.hidden_size, encoder.layer_fractions, cfg.width, cfg.depth, cfg.context
        )
        net = FlowNet(replace(config, standardize=cfg.standardize))
        meta = FlowMetadata(config=net.config, encoder=asdict(encoder.identity))
        state, start_step, tokens = None, 0, 0

    need = cache_bytes(train, encoder)
    storage, kind = _cache_storage(cfg, out, need)
    made_dir = storage is not None and not storage.parent.exists()
    try:
        return _fit(
            encoder,
            train,
            held,
            out,
            cfg,
            net,
            meta,
            state,
            start_step,
            tokens,
            progress,
            stop_after,
            storage,
            kind,
            need,
        )
    finally:
        if storage is not None:
            storage.unlink(missing_ok=True)
            if made_dir:
                shutil.rmtree(storage.parent, ignore_errors=True)


def _fit(
    encoder: LatentEncoder,
    train: list[Sample],
    held: list[Sample],
    out: Path,
    cfg: FitConfig,
    net: FlowNet,
    meta: FlowMetadata,
    state: dict | None,
    start_step: int,
    tokens: int,
    progress: bool,
    stop_after: int | None,
    storage: Path | None,
    kind: str,
    need: int,
) -> FitResult:
    cache = None
    if kind != "none":
        cache = LatentCache(encoder, train, progress=progress, storage=storage)
    if cfg.standardize and state is None:
        mean, std = cache.layer_stats() if cache is not None else _streamed_stats(encoder, train)
        net.set_latent_stats(mean, std)

    net = net.to(encoder.device).train()
    batches = _schedule(train, cfg)
    total = len(batches)
    early = None
    if cfg.early_stop and held:
        early = EarlyStopping(
            encoder, held, net.config.context, _eval_every(cfg, total), cfg.patience, cfg.seed
        )
        if state is not None and state.get("early"):
            early.load_state_dict(state["early"])
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
    tokens_total = sum(len(s.response_ids) for s in train)
    log.info(
        "fitting flow: %d samples (%d held out), %d response tokens, at most %d steps (%.1f "
        "epochs of %d tokens), lr %.2e; flow width %d (%s), depth %d, %.2fM parameters, "
        "context %s, standardize %s; hooked blocks %s (depth fractions %s); dtype: encoder %s "
        "(%s), flow trained in float32; latents %s; early stopping %s",
        len(train),
        len(held),
        tokens_total,
        total,
        cfg.epochs,
        cfg.batch_tokens,
        cfg.lr,
        net.config.width,
        f"min(d = {encoder.hidden_size}, {MAX_DEFAULT_WIDTH})"
        if net.config.width == default_width(encoder.hidden_size)
        else "given",
        net.config.depth,
        net.num_parameters() / 1e6,
        cfg.context,
        cfg.standardize,
        list(encoder.layers),
        list(encoder.layer_fractions),
        encoder.precision.name,
        encoder.precision.reason,
        _describe_storage(kind, need, storage),
        f"on (held-out loss on {early.tokens} tokens of {early.samples} samples every "
        f"{early.every} steps, patience {early.patience})"
        if early is not None
        else ("off" if not cfg.early_stop else "off (no held-out samples)"),
    )
    if total < TOO_FEW_STEPS and early is None:
        log.warning(
            "only %d optimiser steps: flows fitted this briefly usually carry no signal; "
            "lower --batch-tokens or raise --epochs (or --min-steps)",
            total,
        )

    def checkpoint(step: int, complete: bool) -> None:
        meta.samples_trained = min(len(train), sum(len(b) for b in batches[:step]))
        meta.tokens_trained = tokens
        meta.extra = {
            "fit": asdict(cfg),
            "steps": step,
            "planned_steps": total,
            "last_loss": loop.last_loss,
            "complete": complete,
        }
        if early is not None and early.best_step is not None:
            meta.extra["early_stopping"] = {
                "best_step": early.best_step,
                "heldout_loss": early.best,
                "stopped": complete and step < total,
                "every": early.every,
                "patience": early.patience,
                "tokens": early.tokens,
            }
        save_flow(out, net, meta)
        trainer = out / TRAINER_STATE
        if complete and not cfg.keep_trainer_state:
            trainer.unlink(missing_ok=True)  # serving needs none of it (--resume, nothing else)
            return
        torch.save(
            {
                "config": asdict(cfg),
                "step": step,
                "tokens": tokens,
                **loop.state_dict(),
                "early": None if early is None else early.state_dict(),
                "complete": complete,
            },
            trainer,
        )

    t0 = time.time()
    end = total if stop_after is None else max(start_step, min(total, stop_after))
    stopped = False
    if state is not None and state.get("complete"):  # a kept trainer state of a finished fit
        end, stopped = start_step, start_step < total
    timed_from = start_step + 2  # the first steps warm up (allocations, caches)
    t_timed = None
    if early is not None and start_step == 0 and not early.history:
        early.evaluate(net, 0)  # the untrained field's loss (and the time one evaluation takes)
    step = start_step
    while step < end:
        if step == timed_from:
            t_timed = time.time()
        if cache is not None:
            h, ctx = cache.context(batches[step], net.config.context)
            h, ctx = h.to(encoder.device), ctx.to(encoder.device)
        else:
            batch = [train[i] for i in batches[step]]
            enc = encoder.encode(
                [s.prompt_ids for s in batch], [s.response_ids for s in batch], share_prefix=True
            )
            # latents come out of inference mode; clone them into ordinary (detached) tensors
            h, ctx = enc.h.clone().float(), enc.context(net.config.context).clone().float()
        h, ctx = net.prepare(h, ctx)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x1, c, lf, t, eps = rows_for_training(
            h, ctx, encoder.layer_fractions, cfg.replicas, logit_normal, g
        )
        loop.step(flow_matching_loss(net, x1, c, lf, t, eps))
        tokens += h.shape[1]
        step += 1
        if t_timed is not None and step == timed_from + TIMED_STEPS:
            _log_estimate((time.time() - t_timed) / TIMED_STEPS, step, end, early)
        at_eval = early is not None and (step % early.every == 0 or step == total)
        if at_eval and early.evaluate(net, step):
            stopped = step < total
            break
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            checkpoint(step, complete=False)
    loop.close()
    end = step
    complete = end == total or stopped
    if complete and early is not None:
        if early.history[-1][0] != end:  # stopped between evaluations: measure the last one
            early.evaluate(net, end)
        early.restore_best(net)
    report = None
    if complete and held:
        # the held-out report, and the calibration the "expert" normalisation needs
        report = fit_report(encoder, net.eval(), meta, held, train, seed=cfg.seed)
        meta.calibration = report.calibration.to_dict()
    checkpoint(end, complete)
    if report is not None:
        meta.extra["report"] = report.to_dict()
        save_flow(out, net, meta)
        for warning in report.warnings:
            log.warning("%s", warning)
    if complete and early is not None and not stopped and early.best_step == end:
        log.warning(
            "the held-out loss was still falling when the fit ended (%d steps): a longer "
            "fit may do better (--max-epochs, --min-steps)",
            end,
        )
    seconds = time.time() - t0
    final = loop.smoothed if loop.smoothed is not None else loop.last_loss
    result = FitResult(
        end,
        tokens,
        final,
        seconds,
        out,
        report,
        planned_steps=total,
        stopped_early=stopped,
        best_step=None if early is None or not complete else early.best_step,
        heldout_loss=None if early is None or not complete else early.best,
    )
    log.info("fit %s", "done" if complete else f"paused at step {end} of {total}")
    return result


def _log_estimate(per_step: float, done: int, end: int, early: EarlyStopping | None) -> None:
    """'about N steps, ~M min' from the steps timed so far."""
    left = end - done
    evals = 0 if early is None else left // early.every
    seconds = left * per_step + evals * (early.seconds if early is not None else 0.0)
    log.info(
        "estimate: %.3f s/step (timed over %d steps): %s%d steps, ~%.1f min more%s, then the "
        "held-out report",
        per_step,
        TIMED_STEPS,
        "at most " if early is not None else "about ",
        end,
        seconds / 60,
        " (early stopping may end it sooner)" if early is not None else "",
    )
