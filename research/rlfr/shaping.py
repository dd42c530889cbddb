"""Token advantages per arm, in one place, so that the arms differ only in their signal.

All arms share the GRPO outcome advantage (R - mean_g R) / (std_g R + 1e-9) of
`flowfield.rewards`. The dense part is the reward-to-go of shaped token rewards:

- flow: the service's own token advantages (/v1/score with `return_advantages`), which are
  that outcome advantage plus the reward-to-go of the flow token rewards;
- entropy / nll: the trainer's per-token signal goes through the very functions the service
  applies to flow deviations (`flowfield.rewards.token_rewards`: min-max normalisation,
  threshold, top-k, r = -beta * s; then `group_advantages`), so a high entropy or NLL is a
  penalty exactly as a large flow deviation is;
- none: the outcome advantage on every token (RLVR);
- oracle (positive control): a deviation of 1 at the first wrong token of every incorrect
  rollout and 0 elsewhere, shaped with "unilateral" (min-max to [0, 1]): a penalty of -beta
  at that token and nothing elsewhere, then the same reward-to-go. Correct rollouts get no
  token reward. Its normalisation is fixed whatever the run's: under "bilateral" an
  indicator would turn into a bonus on every other token;
- oracle-local: the oracle's token rewards without the reward-to-go (the penalty on the
  wrong token alone, its prefix untouched). Under the reward-to-go a penalty at token k is
  also a penalty on every token before it, i.e. on the correct prefix of the rollout, which
  is mostly more of what the negative outcome advantage already says; this arm separates
  the signal from that shape;
- shuffled (negative control): the flow's token rewards, permuted within each rollout with
  a seeded generator (`shuffle_token_rewards`), then the same reward-to-go.

`uniform_only` (the `--shape-uniform-only` ablation) keeps the token shaping only in groups
whose rollouts all have the same outcome, where RLVR has no gradient; mixed groups get the
outcome advantage alone.

The end token (see policy_gradient.py) gets the outcome advantage alone.

With the "expert" normalisation (deviations standardised against expert statistics stored
in the flow checkpoint), the logit arms need expert statistics of their own signal: they are
taken once per run from the start policy on expert solutions the policy never trained on
(`logit_calibration`), as the flow's are taken from held-out expert data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from flowfield.demo.policy import Rollout, expert_rollout
from flowfield.evaluation.problems import expert_problems
from flowfield.rewards import (
    RewardOptions,
    group_advantages,
    grouped_outcome_advantages,
    token_rewards,
)
from research.rlfr.policy_gradient import policy_forward

CALIBRATION_PROBLEMS = 256  # expert solutions (~11k tokens) for the logit arms' statistics


@dataclass
class Shaped:
    """Per rollout: the advantage of each trained token, and the sum of its shaped token
    rewards (its dense return; 0 for RLVR)."""

    advantages: list[torch.Tensor]
    dense_return: list[float]


def _with_end(adv: torch.Tensor, outcome: float, has_end: bool) -> torch.Tensor:
    adv = adv.to(torch.float32)
    if not has_end:
        return adv
    return torch.cat([adv, torch.tensor([outcome], dtype=torch.float32)])


def shape_outcome(
    lengths: Sequence[int], rewards: Sequence[float], group_ids: Sequence[str],
    has_end: Sequence[bool],
) -> Shaped:
    """RLVR: the outcome advantage on every response token (and the end token)."""
    outcome = grouped_outcome_advantages(rewards, group_ids)
    adv = [
        torch.full((n + int(e),), a, dtype=torch.float32)
        for n, a, e in zip(lengths, outcome, has_end)
    ]
    return Shaped(adv, [0.0] * len(lengths))


def shape_token_rewards(
    shaped: Sequence[torch.Tensor], rewards: Sequence[float], group_ids: Sequence[str],
    has_end: Sequence[bool],
) -> Shaped:
    """Token rewards [n_i] per rollout -> outcome advantage + reward-to-go (as the service)."""
    adv = group_advantages(shaped, rewards, group_ids)
    outcome = grouped_outcome_advantages(rewards, group_ids)
    return Shaped(
        [_with_end(a, o, e) for a, o, e in zip(adv, outcome, has_end)],
        [float(r.sum()) for r in shaped],
    )


def shape_signal(
    signals: Sequence[torch.Tensor], rewards: Sequence[float], group_ids: Sequence[str],
    has_end: Sequence[bool], options: RewardOptions, calibration: Any = None,
) -> Shaped:
    """Logit-space shaping: each sample's per-token signal [n_i] is treated as a deviation."""
    # the calibration goes in only when there is one: normalisations without expert
    # statistics take the same call as in the service
    extra = {"calibration": calibration} if calibration is not None else {}
    shaped = [
        token_rewards(s.detach().to(torch.float64).cpu(), options, **extra) for s in signals
    ]
    return shape_token_rewards(shaped, rewards, group_ids, has_end)


ORACLE_NORMALIZATION = "unilateral"


def oracle_deviations(rollouts: Sequence[Rollout]) -> list[torch.Tensor]:
    """Per rollout [n]: 1.0 at the first wrong response token of an incorrect rollout (the
    demo task's `first_error`; a response cut short: its last token), 0.0 elsewhere."""
    out = []
    for r in rollouts:
        e = torch.zeros(len(r.response_ids), dtype=torch.float64)
        if r.reward < 1.0 and r.first_error is not None and len(e):
            e[min(r.first_error, len(e) - 1)] = 1.0
        out.append(e)
    return out


def oracle_options(options: RewardOptions) -> RewardOptions:
    """The run's beta, threshold and top-k with the oracle's fixed normalisation."""
    return RewardOptions(ORACLE_NORMALIZATION, options.beta, options.threshold, options.top_k)


def shuffle_seed(seed: int, step: int) -> int:
    """The permutation seed of a step's rollouts (the probe uses the same rule)."""
    return 7_919 * seed + step


def shuffle_token_rewards(shaped: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Each rollout's token rewards permuted among its own tokens (same multiset)."""
    g = torch.Generator().manual_seed(seed)
    return [r[torch.randperm(len(r), generator=g)] for r in shaped]


def mixed_groups(rewards: Sequence[float], group_ids: Sequence[str]) -> set[str]:
    """The groups whose rollouts do not all have the same outcome."""
    seen: dict[str, set[float]] = {}
    for r, g in zip(rewards, group_ids):
        seen.setdefault(g, set()).add(float(r))
    return {g for g, vals in seen.items() if len(vals) > 1}


def uniform_only(
    shaped: Shaped, lengths: Sequence[int], rewards: Sequence[float], group_ids: Sequence[str],
    has_end: Sequence[bool],
) -> Shaped:
    """The ablation: token shaping kept in uniform groups only; mixed groups get the outcome
    advantage alone (and a dense return of 0)."""
    mixed = mixed_groups(rewards, group_ids)
    base = shape_outcome(lengths, rewards, group_ids, has_end)
    adv = [b if g in mixed else a for a, b, g in zip(shaped.advantages, base.advantages, group_ids)]
    dense = [0.0 if g in mixed else d for d, g in zip(shaped.dense_return, group_ids)]
    return Shaped(adv, dense)


def shape_arm(
    signal: str,
    options: RewardOptions,
    rollouts: Sequence[Rollout],
    group_ids: Sequence[str],
    *,
    fwd: Any = None,
    flow_token_rewards: Sequence[torch.Tensor | None] | None = None,
    flow_advantages: Sequence[Sequence[float] | None] | None = None,
    flow_returns: Sequence[float | None] | None = None,
    calibration: Any = None,
    shuffle: int = 0,
    uniform: bool = False,
) -> Shaped:
    """The token advantages of an arm with signal `signal` (arms.py) on one batch.

    flow: the service's advantages (`flow_advantages`, the trainer) or the flow's token
    rewards (`flow_token_rewards`, the in-process probe); shuffled: `flow_token_rewards`
    permuted with seed `shuffle`; entropy / nll: `fwd`'s signals; oracle: `first_error`.
    A rollout without flow token rewards (the service could not score it) gets none.
    """
    from research.rlfr.policy_gradient import ended

    rewards = [r.reward for r in rollouts]
    lengths = [len(r.response_ids) for r in rollouts]
    has_end = [ended(r) for r in rollouts]

    def flow_rewards() -> list[torch.Tensor]:
        if flow_token_rewards is None:
            raise ValueError(f"the {signal} signal needs the flow's token rewards")
        return [
            torch.zeros(n, dtype=torch.float64)
            if r is None or len(r) != n else torch.as_tensor(r, dtype=torch.float64)
            for r, n in zip(flow_token_rewards, lengths)
        ]

    if signal == "none":
        shaped = shape_outcome(lengths, rewards, group_ids, has_end)
    elif signal == "flow" and flow_advantages is not None:
        returns = flow_returns if flow_returns is not None else [None] * len(rollouts)
        shaped = shape_service(flow_advantages, returns, lengths, rewards, group_ids, has_end)
    elif signal == "flow":
        shaped = shape_token_rewards(flow_rewards(), rewards, group_ids, has_end)
    elif signal == "shuffled":
        shaped = shape_token_rewards(shuffle_token_rewards(flow_rewards(), shuffle), rewards,
                                     group_ids, has_end)
    elif signal == "oracle":
        shaped = shape_signal(oracle_deviations(rollouts), rewards, group_ids, has_end,
                              oracle_options(options))
    elif signal == "oracle-local":
        tr = [token_rewards(e, oracle_options(options)) for e in oracle_deviations(rollouts)]
        outcome = grouped_outcome_advantages(rewards, group_ids)
        shaped = Shaped(
            [_with_end(o + r, o, e) for r, o, e in zip(tr, outcome, has_end)],
            [float(r.sum()) for r in tr],
        )
    elif signal in ("entropy", "nll"):
        signals = fwd.entropy if signal == "entropy" else fwd.nll
        shaped = shape_signal(signals, rewards, group_ids, has_end, options, calibration)
    else:
        raise ValueError(f"unknown signal {signal!r}")
    if uniform:
        shaped = uniform_only(shaped, lengths, rewards, group_ids, has_end)
    return shaped


def shape_service(
    service_advantages: Sequence[Sequence[float] | None],
    flow_returns: Sequence[float | None],
    lengths: Sequence[int],
    rewards: Sequence[float],
    group_ids: Sequence[str],
    has_end: Sequence[bool],
) -> Shaped:
    """The service's token advantages. A sample it could not score (an empty response is an
    error there) falls back to the outcome advantage, which the service would have given it."""
    outcome = grouped_outcome_advantages(rewards, group_ids)
    adv = []
    for a_svc, n, o, e in zip(service_advantages, lengths, outcome, has_end):
        if a_svc is None or len(a_svc) != n:
            base = torch.full((n,), o, dtype=torch.float32)
        else:
            base = torch.tensor(a_svc, dtype=torch.float32)
        adv.append(_with_end(base, o, e))
    return Shaped(adv, [float(r or 0.0) for r in flow_returns])


@torch.no_grad()
def logit_calibration(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, kind: str,
    n: int = CALIBRATION_PROBLEMS,
) -> Any:
    """Expert statistics of the policy's `kind` signal ("entropy" or "nll") for the
    "expert" normalisation: the flow's expert problems, which the policy never trained on."""
    from flowfield.rewards import Calibration  # only where "expert" normalisation exists

    rollouts = [expert_rollout(p, tokenizer) for p in expert_problems()[:n]]
    fwd = policy_forward(model, rollouts, tokenizer.eos_token_id, tokenizer.pad_token_id)
    signals = fwd.entropy if kind == "entropy" else fwd.nll
    values = torch.cat([s.flatten() for s in signals]).to(torch.float64)
    return Calibration.from_deviations(values, timesteps=(), noise_draws=1)
