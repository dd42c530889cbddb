"""Disjoint problem sets of the demo task for evaluation, refinement and lever experiments.

The demo's own split (flowfield.demo.task.split_problems) gives the policy's training set,
the flow's expert set and 1,000 held-out problems. Evaluation uses the held-out problems
("eval"). Everything else the evaluation needs is drawn from one extra pool that avoids all
three sets:

    extra[0:2000]       refinement rounds (rollouts whose accepted ones refine the flow)
    extra[2000:4000]    "dev": where levers are compared, so the eval set is never tuned on
    extra[4000:20000]   more expert solutions (the "more expert data" lever)
"""

from __future__ import annotations

from functools import lru_cache

from flowfield.demo.task import Problem, sample_problems, split_problems

SPLITS = ("eval", "dev")
_POOL_SEED = 3
_REFINE = (0, 2000)
_DEV = (2000, 4000)
_EXPERT = (4000, 20000)


@lru_cache(maxsize=1)
def _pool() -> tuple[tuple[Problem, ...], tuple[Problem, ...], tuple[Problem, ...]]:
    policy, flow, held_out = split_problems(0)
    extra = sample_problems(_EXPERT[1], _POOL_SEED, exclude=set(policy) | set(flow) | set(held_out))
    return tuple(flow), tuple(held_out), tuple(extra)


def eval_problems(n: int, split: str = "eval") -> list[Problem]:
    """The first n problems of the held-out set ("eval", 1,000) or of the dev set (2,000)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _, held_out, extra = _pool()
    pool = held_out if split == "eval" else extra[_DEV[0] : _DEV[1]]
    if not 0 < n <= len(pool):
        raise ValueError(f"the demo's {split} set has {len(pool)} problems; asked for {n}")
    return list(pool[:n])


def refine_problems(n: int) -> list[Problem]:
    """Problems for a refinement round: disjoint from eval, dev and all training sets."""
    _, _, extra = _pool()
    size = _REFINE[1] - _REFINE[0]
    if not 0 < n <= size:
        raise ValueError(f"the demo's refinement set has {size} problems; asked for {n}")
    return list(extra[_REFINE[0] : _REFINE[0] + n])


def expert_problems(extra: int = 0) -> list[Problem]:
    """The flow's expert problems (4,000), plus `extra` more from the pool (up to 16,000)."""
    flow, _, pool = _pool()
    size = _EXPERT[1] - _EXPERT[0]
    if not 0 <= extra <= size:
        raise ValueError(f"at most {size} extra expert problems; asked for {extra}")
    return list(flow) + list(pool[_EXPERT[0] : _EXPERT[0] + extra])
