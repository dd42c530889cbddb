"""Problems the experiment trains and evaluates on, and the held-out metrics.

Disjoint pools (flowfield/evaluation/problems.py and flowfield/demo/task.py):
- train prompts: the demo policy's own training split (20,000 problems whose expert
  solutions the policy was fitted on), in a seed-dependent order that is the same for every
  arm, so arms at one seed see the same prompts;
- held-out: the "dev" split (choosing levers and settings) or the "eval" split (the final,
  reported numbers only); neither is ever trained on.

Held-out metrics use a fixed sampling seed at every evaluation, so the T=1 curve moves with
the policy rather than with the sampling noise, and arms at one seed share that noise.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

from flowfield.demo.policy import sample_rollouts
from flowfield.demo.task import Problem, split_problems
from flowfield.evaluation.problems import eval_problems

GREEDY_TEMPERATURE = 0.0  # sample_rollouts clamps it to 1e-6: argmax decoding
EVAL_SEED = 20_251_010


@lru_cache(maxsize=1)
def train_pool() -> tuple[Problem, ...]:
    policy_split, _, _ = split_problems(0)
    return tuple(policy_split)


def prompt_schedule(seed: int, steps: int, per_step: int) -> list[list[Problem]]:
    """The training problems of every step for this seed (no problem twice in a run)."""
    pool = train_pool()
    need = steps * per_step
    if need > len(pool):
        raise ValueError(f"{need} training prompts asked for; the pool has {len(pool)}")
    order = random.Random(seed).sample(range(len(pool)), need)
    return [[pool[i] for i in order[s * per_step : (s + 1) * per_step]] for s in range(steps)]


def rollout_seed(seed: int, step: int) -> int:
    """The sampling seed of a training step's rollouts (the trainer's and the probe's)."""
    return seed * 1_000_003 + step


def heldout(split: str, n: int) -> list[Problem]:
    return eval_problems(n, split)


@dataclass
class Accuracy:
    accuracy: float
    mean_length: float  # response tokens (the end token not counted)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    temperature: float,
    seed: int = EVAL_SEED,
) -> Accuracy:
    """Share of problems solved with one rollout each (greedy when temperature is 0)."""
    rollouts = sample_rollouts(model, tokenizer, problems, temperature=temperature, seed=seed)
    n = max(1, len(rollouts))
    return Accuracy(
        sum(r.reward for r in rollouts) / n, sum(len(r.response_ids) for r in rollouts) / n
    )


def pass_at_k(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    k: int,
    temperature: float = 1.0,
    seed: int = EVAL_SEED,
) -> float:
    """Share of problems with at least one correct answer among k samples at T=1."""
    rollouts = sample_rollouts(model, tokenizer, [p for p in problems for _ in range(k)],
                               temperature=temperature, seed=seed + 1)
    solved = [any(r.reward >= 1.0 for r in rollouts[i * k : (i + 1) * k])
              for i in range(len(problems))]
    return sum(solved) / max(1, len(problems))
