"""Online refinement of the flow from verifier-accepted rollouts (docs/method.md#online-refinement).

The authors' released update runs the flow under no_grad (reentrant checkpointing), so the
flow never moves during RL. Here refinement is its own pass: latents are computed in
inference mode and detached, then a grad-enabled flow-matching step is taken on a training
copy of the flow. Optimiser state (Adam betas 0.9/0.95, cosine from lr to min_lr over
`horizon` steps: the shared loop of loop.py, one step per call) persists across calls and can
be saved with the checkpoint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch

from flowfield import defaults
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet
from flowfield.objective import flow_matching_loss, rows_for_training
from flowfield.path import logit_normal
from flowfield.training.loop import TrainLoop


class OnlineRefiner:
    def __init__(
        self,
        encoder: LatentEncoder,
        flow: FlowNet,
        meta: FlowMetadata,
        lr: float = defaults.ONLINE_LR,
        min_lr: float = defaults.ONLINE_MIN_LR,
        betas: tuple[float, float] = defaults.ONLINE_BETAS,
        horizon: int = defaults.ONLINE_HORIZON,
        timesteps: Sequence[float] | None = defaults.TIMESTEPS,
        replicas: int = 1,
        grad_clip: float = 1.0,
        seed: int = 0,
    ) -> None:
        """timesteps: the rewarding timesteps to train at (RLFR); None = logit-normal t."""
        self.encoder = encoder
        # a private training copy: the scorer's flow is only replaced by export()
        self.flow = copy.deepcopy(flow).to(encoder.device).float().train()
        self.meta = copy.deepcopy(meta)
        self.timesteps = tuple(timesteps) if timesteps else None
        self.replicas = replicas
        self.seed = seed
        # Adam (no weight decay), no warm-up, cosine from lr to min_lr over `horizon` steps
        self.loop = TrainLoop(
            self.flow.parameters(),
            lr=lr,
            total_steps=horizon,
            min_ratio=min_lr / lr,
            betas=betas,
            grad_clip=grad_clip,
        )

    @property
    def steps(self) -> int:
        """Optimiser steps taken (across calls, and before a restored state)."""
        return self.loop.steps

    @property
    def opt(self) -> torch.optim.Optimizer:
        return self.loop.opt

    @property
    def sched(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.loop.sched

    def _t_sampler(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.timesteps is None:
            return logit_normal(n, generator)
        ts = torch.tensor(self.timesteps, dtype=torch.float32)
        return ts[torch.randint(0, len(ts), (n,), generator=generator)]

    def loss_on(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        seed: int = 12345,
    ) -> float:
        """The flow-matching loss of the current training flow on these samples (no update)."""
        h, ctx = self._latents(prompts, responses)
        g = torch.Generator().manual_seed(seed)
        rows = rows_for_training(h, ctx, self.encoder.layer_fractions, 4, self._t_sampler, g)
        with torch.no_grad():
            return flow_matching_loss(self.flow, *rows).item()

    def latents(
        self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples' latents and context latents as the flow models them ([L, N, d] each,
        float32): the policy's part of a step, which `step` can be given ready-made."""
        return self._latents(prompts, responses)

    def _latents(self, prompts, responses) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder.encode(prompts, responses, reuse=True)  # scored ones: memo
        h, ctx = enc.h.clone().float(), enc.context(self.meta.config.context).clone().float()
        return self.flow.prepare(h, ctx)

    def step(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        weights: Sequence[float] | None = None,
        latents: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> float:
        """One optimiser step on these accepted samples; returns the loss before the step.

        weights: optional per-sample weight (1 for accepted; a soft weight for others).
        latents: `latents(prompts, responses)` if already computed (the service encodes and
        trains as two jobs, so scoring can run between them).
        """
        h, ctx = latents if latents is not None else self._latents(prompts, responses)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)
        x1, c, lf, t, eps = rows_for_training(
            h, ctx, self.encoder.layer_fractions, self.replicas, self._t_sampler, g
        )
        w = None
        if weights is not None:
            per_token = torch.repeat_interleave(
                torch.tensor(weights, dtype=torch.float32),
                torch.tensor([len(r) for r in responses]),
            )
            L = h.shape[0]
            w = per_token.repeat(L).repeat(self.replicas).to(h.device)
        loss = self.loop.step(flow_matching_loss(self.flow, x1, c, lf, t, eps, weight=w))
        self.meta.samples_trained += len(responses)
        self.meta.tokens_trained += int(h.shape[1])
        return loss

    def export(self) -> tuple[FlowNet, FlowMetadata]:
        """A frozen copy of the refined flow with the next version number."""
        self.meta.version += 1
        self.meta.created_at = time.time()
        self.meta.extra = {**self.meta.extra, "online_steps": self.steps}
        net = copy.deepcopy(self.flow).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net, copy.deepcopy(self.meta)

    def state_dict(self) -> dict:
        return {**self.loop.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.loop.load_state_dict(state)
        self.loop.steps = int(state["steps"])
