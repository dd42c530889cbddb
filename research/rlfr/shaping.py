"""Token advantages per arm, in one place, so that the arms differ only in their signal.

All arms share the GRPO outcome advantage (R - mean_g R) / (std_g R + 1e-9) of
`flowfield.rewards`. The dense part is the reward-to-go of shaped token rewards:

- flow: the service's own token advantages (/v1/score with `return_advantages`), which are
  that outcome advantage plus the reward-to-go of the flow token rewards;
- entropy / nll: the trainer's per-token signal goes through the very functions the service
  applies to flow deviations (`flowfield.rewards.token_rewards`: min-max normalisation,
  threshold, top-k, r = -beta * s; then `group_advantages`), so a high entropy or NLL is a
  penalty exactly as a large flow deviation is;
- none: the outcome advantage on every token (RLVR).

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

from flowfield.demo.policy import expert_rollout
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
    adv = group_advantages(shaped, rewards, group_ids)
    outcome = grouped_outcome_advantages(rewards, group_ids)
    return Shaped(
        [_with_end(a, o, e) for a, o, e in zip(adv, outcome, has_end)],
        [float(r.sum()) for r in shaped],
    )


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
