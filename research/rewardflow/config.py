"""Settings of the RewardFlow toy experiment: environments, arms and the two presets."""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from research.envs.grid_rooms import GridLayout
from research.harness.common import Settings

ARMS = {
    "outcome": "outcome-only GRPO: A = R_i - mean of the group's R, on every step",
    "rewardflow": "RewardFlow: the advantages of POST /v1/score/graph (episode + step)",
    "rewardflow-gamma": "RewardFlow values from the service, step reward gamma * V(s') - V(s)",
    "mc": "Monte-Carlo: discounted return-to-go minus the group's mean at the same time step",
}
DEFAULT_ARMS = tuple(ARMS)


@dataclass(frozen=True)
class EnvSetting:
    """A grid house (`trap_house`): width x height rooms, `objects` objects (the task names one
    target; the others are traps), one window (failure), and an episode step limit."""

    name: str
    width: int
    height: int
    objects: int
    max_steps: int
    steps: int  # default environment-step budget of a run
    layout_seed: int = 0

    def layout(self) -> GridLayout:
        return GridLayout.make(self.width, self.height, self.objects, self.layout_seed)

    def describe(self) -> str:
        return (f"{self.width}x{self.height} rooms, {self.objects} objects "
                f"({self.objects - 1} traps) + window, {self.max_steps} steps max")


ENVIRONMENTS = {
    "easy": EnvSetting("easy", 4, 4, 3, 32, steps=400_000),
    "hard": EnvSetting("hard", 7, 7, 8, 64, steps=2_000_000),
}


def is_heldout(setting: str, start: tuple[int, int, int], fraction: float) -> bool:
    """A fixed split of the (start room, target, goal) triples, by hash: held-out starts are
    never used in training, whatever the seed."""
    text = f"{setting}:{start[0]}:{start[1]}:{start[2]}".encode()
    h = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def split_starts(
    setting: EnvSetting, fraction: float, eval_size: int
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(training starts, the evaluation's held-out starts); the held-out sample depends on the
    setting only, so every arm and seed is measured on the same starts."""
    starts = setting.layout().all_starts()
    train = [s for s in starts if not is_heldout(setting.name, s, fraction)]
    held = [s for s in starts if is_heldout(setting.name, s, fraction)]
    rng = random.Random(f"heldout:{setting.name}")
    return train, rng.sample(held, min(eval_size, len(held)))


@dataclass(frozen=True)
class RewardFlowConfig(Settings):
    arms: tuple[str, ...] = DEFAULT_ARMS
    envs: tuple[str, ...] = ("easy", "hard")
    seeds: tuple[int, ...] = (0, 1, 2)
    # environment steps per run, the same for every arm (None: each environment's own budget)
    steps: int | None = None
    groups: int = 16  # starts per update
    group_size: int = 8  # G rollouts from each start
    hidden: int = 64  # policy MLP width (two hidden layers)
    lr: float = 3e-3  # Adam
    grad_clip: float = 1.0
    gamma: float = 0.9  # RewardFlow propagation (the paper's value)
    step_weight: float = 1.0  # w in A = A_episode + w * A_step
    mc_gamma: float = 0.99  # discount of the Monte-Carlo arm's return-to-go
    heldout_fraction: float = 0.2
    evals: int = 20  # held-out evaluations per run after the start (every budget / evals steps)
    eval_size: int = 256  # held-out starts per evaluation (one sampled episode each)
    target: float = 0.5  # held-out success rate whose first crossing is "steps to target"
    threads: int = 1  # torch threads of the trainer
    service_threads: int = 1
    smoke: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ValueError(f"unknown arms {bad}; choose from {', '.join(ARMS)}")
        bad = [e for e in self.envs if e not in ENVIRONMENTS]
        if bad or not self.envs:
            raise ValueError(f"unknown environments {bad}; choose from {', '.join(ENVIRONMENTS)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be at least 1")
        self._check_common(
            at_least_one=("groups", "hidden", "evals", "eval_size", "threads", "service_threads"),
            finite=("lr", "grad_clip", "gamma", "step_weight", "mc_gamma", "target"),
        )
        if not 0.0 <= self.gamma < 1.0 or not 0.0 < self.mc_gamma <= 1.0:
            raise ValueError("gamma must be in [0, 1) and mc_gamma in (0, 1]")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError("heldout_fraction must be in (0, 1)")

    @property
    def rollouts_per_update(self) -> int:
        return self.groups * self.group_size

    def budget(self, env: str) -> int:
        """Environment steps per run in `env`."""
        return self.steps if self.steps is not None else ENVIRONMENTS[env].steps

    def checkpoints(self, env: str) -> list[int]:
        """Nominal environment-step counts of the held-out evaluations (0 = start policy)."""
        budget = self.budget(env)
        return sorted({round(budget * k / self.evals) for k in range(self.evals + 1)})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("arms", "envs", "seeds"):
            d[k] = list(d[k])
        d["environments"] = {e: asdict(ENVIRONMENTS[e]) for e in self.envs}
        d["budget"] = {e: self.budget(e) for e in self.envs}
        return d


FULL = RewardFlowConfig()

# every arm, both environments, one seed, a few updates: the loop end to end in CI time
SMOKE = replace(
    FULL, seeds=(0,), steps=6_000, groups=4, evals=2, eval_size=32, smoke=True
)


def preset(smoke: bool) -> RewardFlowConfig:
    return SMOKE if smoke else FULL
