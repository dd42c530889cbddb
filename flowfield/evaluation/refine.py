"""One round of online refinement for the before/after comparison (docs/method.md).

The accepted rollouts of one round (verifier reward >= the accept threshold) refine the flow
with OnlineRefiner, the same grad-enabled update the service's learner runs: Adam (betas
0.9, 0.95), flow-matching loss at the rewarding timesteps, cosine from lr to lr / 10 over
the round. The round is `epochs` passes over the accepted rollouts in shuffled batches.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from flowfield import defaults
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet
from flowfield.progress import progress_bar
from flowfield.training import OnlineRefiner


@dataclass(frozen=True)
class RefineConfig:
    rollouts: int = 500  # problems sampled (one rollout each) in the refinement round
    epochs: int = 4  # passes over the accepted rollouts
    batch_size: int = 32  # accepted rollouts per optimiser step
    lr: float = 3e-4  # peak; cosine to lr / 10 over the round
    accept_threshold: float = defaults.ACCEPT_THRESHOLD
    seed: int = 0


@dataclass
class RefineResult:
    accepted: int
    rejected: int
    steps: int
    loss_before: float  # flow-matching loss on the accepted rollouts, before and after
    loss_after: float
    seconds: float
    config: RefineConfig

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["config"] = asdict(self.config)
        return d


def refine_round(
    encoder: LatentEncoder,
    flow: FlowNet,
    meta: FlowMetadata,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    cfg: RefineConfig,
    timesteps: Sequence[float] = defaults.TIMESTEPS,
    progress: bool = True,
) -> tuple[FlowNet, FlowMetadata, RefineResult]:
    """Refine a copy of `flow` on the accepted samples; returns the next flow version."""
    t0 = time.time()
    accepted = [i for i, r in enumerate(rewards) if r >= cfg.accept_threshold]
    steps_per_epoch = (len(accepted) + cfg.batch_size - 1) // cfg.batch_size
    total = max(1, cfg.epochs * steps_per_epoch)
    refiner = OnlineRefiner(
        encoder,
        flow,
        meta,
        lr=cfg.lr,
        min_lr=cfg.lr / 10,
        horizon=total,
        timesteps=tuple(timesteps),
        seed=cfg.seed,
    )
    acc_p = [prompts[i] for i in accepted]
    acc_r = [responses[i] for i in accepted]
    before = refiner.loss_on(acc_p, acc_r) if accepted else float("nan")
    rng = random.Random(cfg.seed)
    bar = progress_bar(cfg.epochs * steps_per_epoch, "refine", "step", progress)
    for _ in range(cfg.epochs if accepted else 0):
        order = list(range(len(accepted)))
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            loss = refiner.step([acc_p[i] for i in idx], [acc_r[i] for i in idx])
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)
    bar.close()
    after = refiner.loss_on(acc_p, acc_r) if accepted else float("nan")
    net, new_meta = refiner.export()
    result = RefineResult(
        accepted=len(accepted),
        rejected=len(rewards) - len(accepted),
        steps=refiner.steps,
        loss_before=before,
        loss_after=after,
        seconds=time.time() - t0,
        config=cfg,
    )
    return net, new_meta, result
