"""Settings of the RLFR toy experiment, and the two presets (full and smoke).

The full preset is sized so that 5 arms x 3 seeds run in about 45 minutes on two CPU cores
(one for the trainer, one for the service); the smoke preset runs the whole loop (scoring,
refinement, policy sync, evaluation) for 2 steps per arm with one seed, for CI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flowfield import defaults
from flowfield.demo import ASSETS
from flowfield.evaluation.problems import SPLITS
from research.harness.common import Settings
from research.rlfr.arms import DEFAULT_ARMS, parse_arms

DEMO_POLICY = ASSETS / "policy"
DEMO_FLOW = ASSETS / "flow"


@dataclass(frozen=True)
class ExperimentConfig(Settings):
    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 50  # policy-gradient steps per arm and seed
    prompts_per_step: int = 8  # problems per step
    group_size: int = 8  # G rollouts per problem
    lr: float = 5e-5  # policy AdamW learning rate
    grad_clip: float = 1.0
    temperature: float = 1.0  # rollout sampling temperature
    # scoring / shaping (the service's score options; the logit arms use the same ones).
    # normalization: the RLFR arm's, per-sequence min-max to [-1, 1] as in the paper's text,
    # on purpose not the service default (expert), which has an arm of its own (arms.py);
    # passed through to the service as it is
    normalization: str = "bilateral"
    beta: float = defaults.BETA
    threshold: float = defaults.THRESHOLD
    top_k: int = defaults.TOP_K
    # the ablation: token shaping only in groups whose rollouts share one outcome (all right
    # or all wrong), where RLVR has no gradient; mixed groups get the outcome advantage alone
    shape_uniform_only: bool = False
    # service side
    sync_every: int = 5  # push the policy to the service every K steps (0 = never)
    update: str = "auto"  # refinement: auto (as the arm defines), on, off
    learner_lr: float = defaults.ONLINE_LR  # online refinement learning rate (the paper's)
    learner_timeout_s: float = 120.0  # longest wait for the learner to publish a step
    # evaluation
    split: str = "dev"  # held-out problems: dev (choosing levers) or eval (final numbers)
    eval_every: int = 5
    eval_size: int = 400  # held-out problems per evaluation (greedy and T=1)
    seen_size: int = 128  # already-trained prompts re-evaluated for the train/held-out gap
    target: float = 0.75  # T=1 pass@1 whose first crossing is "steps to target"
    # pass@k at T=1 (k samples per held-out problem) at the start and the end only; 0 = off
    pass_k: int = 0
    # the gradient pre-check (probe.py) on the first N batches of the first seed, before the
    # runs, for the run's own arms and beta; 0 = off
    probe_batches: int = 6
    # files and machine
    policy: Path = DEMO_POLICY
    flow: Path = DEMO_FLOW
    threads: int = 1  # trainer torch threads
    service_threads: int = 1
    smoke: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_arms(",".join(self.arms))
        self._check_common(
            at_least_one=("steps", "prompts_per_step", "eval_every", "eval_size", "threads",
                          "service_threads"),
            finite=("lr", "beta", "threshold", "temperature", "learner_lr", "target"),
        )
        if min(self.sync_every, self.seen_size, self.top_k, self.pass_k,
               self.probe_batches) < 0:
            raise ValueError("sync_every, seen_size, top_k, pass_k and probe_batches must be >= 0")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.update not in ("auto", "on", "off"):
            raise ValueError(f"update must be auto, on or off, got {self.update!r}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")

    @property
    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    def eval_steps(self) -> list[int]:
        """Steps after which the held-out metrics are taken (0 = the start policy)."""
        steps = sorted({0, self.steps, *range(self.eval_every, self.steps + 1, self.eval_every)})
        return steps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["policy"], d["flow"] = str(self.policy), str(self.flow)
        d["arms"], d["seeds"] = list(self.arms), list(self.seeds)
        return d


FULL = ExperimentConfig()

# 2 steps per arm, one seed, policy sync after every step (so the encoder revision changes
# within the run) and tiny evaluations: the loop end to end in CI time.
SMOKE = replace(
    FULL,
    seeds=(0,),
    steps=2,
    prompts_per_step=2,
    sync_every=1,
    eval_every=1,
    eval_size=16,
    seen_size=4,
    probe_batches=1,
    smoke=True,
)


def preset(smoke: bool) -> ExperimentConfig:
    return SMOKE if smoke else FULL
