"""The one training loop of the flow: optimiser, learning-rate schedule, the step, progress.

Every way a flow is trained runs its optimiser steps through `TrainLoop`: the offline fit
(fit.py: batches by token budget, checkpoints, a held-out report), online refinement
(online.py: the learner's accepted samples, one step per call, state kept across calls) and
the diagnosis refits on cached latents (research/diagnose). Each adds only what differs:
where a step's loss comes from, when to stop, what to save.

The optimiser is AdamW (weight_decay 0 makes it plain Adam, as online refinement uses it);
the schedule is linear warm-up to the peak learning rate, then cosine decay to
`min_ratio` x peak over `total_steps` (held there after). A step is: zero the gradients,
backward, clip the gradient norm, update, advance the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from flowfield.progress import progress_bar


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine to min_ratio."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class TrainLoop:
    """AdamW + warm-up/cosine schedule + clipped steps over `params`, with a progress bar.

    Args:
        lr: peak learning rate.
        total_steps: length of the schedule (the cosine reaches min_ratio there).
        warmup_steps: linear warm-up steps (0: start at the peak).
        min_ratio: the schedule's floor, as a fraction of lr.
        weight_decay, betas: AdamW's.
        grad_clip: largest gradient norm (0 = no clipping).
        progress: show a bar over total_steps (`desc` names it; `initial` steps already done).
        smoothing: weight of each new loss in the loss's moving average (`smoothed`).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        min_ratio: float = 0.0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        grad_clip: float = 1.0,
        progress: bool = False,
        desc: str = "fit",
        initial: int = 0,
        smoothing: float = 0.05,
    ) -> None:
        self.params = list(params)
        self.grad_clip = grad_clip
        self.smoothing = smoothing
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: cosine_with_warmup(s, total_steps, warmup_steps, min_ratio)
        )
        self.steps = initial  # optimiser steps taken (the caller restores it on resume)
        self.last_loss = float("nan")
        self.smoothed: float | None = None
        self._bar = (
            progress_bar(total_steps, desc, "step", True, initial=initial) if progress else None
        )

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return self.sched.get_last_lr()[0]

    def step(self, loss: torch.Tensor) -> float:
        """One optimiser step on `loss` (a scalar with a graph); returns its value."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        self.sched.step()
        self.steps += 1
        self.last_loss = loss.item()
        self.smoothed = (
            self.last_loss
            if self.smoothed is None
            else (1 - self.smoothing) * self.smoothed + self.smoothing * self.last_loss
        )
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{self.smoothed:.4f}", lr=f"{self.lr:.2e}", refresh=False)
            self._bar.update(1)
        return self.last_loss

    def close(self) -> None:
        """End the progress bar (if any)."""
        if self._bar is not None:
            self._bar.close()

    def state_dict(self) -> dict:
        """The optimiser's and the schedule's state (to resume exactly)."""
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
