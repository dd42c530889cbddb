"""From raw deviations to dense token rewards and token advantages (RLFR.md s5.2-5.5).

Per sample (a 1-D tensor of its response tokens' deviations e):
  1. min-max normalise over the sample's tokens: s = (e - min) / (max - min);
     "bilateral" maps to [-1, 1] by 2 (s - 0.5), "unilateral" keeps [0, 1]
  2. zero every |s| <= eta; if more than K tokens survive, keep the top K
     (bilateral: the ceil(K/2) highest and the floor(K/2) lowest survivors)
  3. r = -beta * s: a large deviation is a penalty
Per group (samples that share a prompt), with verifier rewards R:
  A_k = (R - mean_g R) / (std_g R + 1e-9) + sum_{s >= k} r_s

Pure tensor functions; no model, no I/O. Loops run over samples, never over tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

NORMALIZATIONS = ("bilateral", "unilateral")


@dataclass(frozen=True)
class RewardOptions:
    normalization: str = "bilateral"
    beta: float = 0.01
    threshold: float = 0.6  # eta
    top_k: int = 15  # K; 0 keeps every surviving token

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}")
        if not math.isfinite(self.beta):
            raise ValueError("beta must be finite")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError("threshold must be a finite number >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")


def normalize(e: torch.Tensor, mode: str = "bilateral") -> torch.Tensor:
    """Per-sequence min-max normalisation of deviations [n] -> [n].

    A sequence whose deviations are all equal (including a single token) carries no
    ranking information and maps to 0 everywhere, in both modes.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
    e = e.to(torch.float64)
    if e.numel() == 0:
        return e
    lo, hi = e.min(), e.max()
    span = hi - lo
    if not torch.isfinite(span) or span <= 0:
        return torch.zeros_like(e)
    s = (e - lo) / span
    return 2 * (s - 0.5) if mode == "bilateral" else s


def filter_tokens(s: torch.Tensor, threshold: float, top_k: int, mode: str) -> torch.Tensor:
    """Zero |s| <= threshold, then keep at most top_k survivors (see module doc)."""
    s = torch.where(s.abs() > threshold, s, torch.zeros_like(s))
    alive = torch.nonzero(s != 0).flatten()
    if top_k <= 0 or alive.numel() <= top_k:
        return s
    vals = s[alive]
    # stable sort: among equal values the earlier token wins, so results are reproducible
    order = torch.sort(vals, descending=True, stable=True).indices
    if mode == "unilateral":
        keep = alive[order[:top_k]]
    else:
        n_high = (top_k + 1) // 2
        n_low = top_k // 2
        low = order.flip(0)[:n_low] if n_low else order[:0]
        keep = torch.cat([alive[order[:n_high]], alive[low]])
    out = torch.zeros_like(s)
    out[keep] = s[keep]
    return out


def token_rewards(e: torch.Tensor, options: RewardOptions) -> torch.Tensor:
    """Deviations [n] of one sample -> shaped dense rewards [n] (float64)."""
    s = normalize(e, options.normalization)
    s = filter_tokens(s, options.threshold, options.top_k, options.normalization)
    return -options.beta * s + 0.0  # + 0.0 turns -0.0 into 0.0 in the JSON


def reward_to_go(r: torch.Tensor) -> torch.Tensor:
    """sum_{s >= k} r_s for every k (gamma = 1)."""
    return r.flip(0).cumsum(0).flip(0)


def outcome_advantages(rewards: Sequence[float]) -> list[float]:
    """(R - mean) / (std + 1e-9) within one group; std is the sample std (n - 1).

    A group of one has no baseline: its outcome advantage is 0.
    """
    if len(rewards) < 2:
        return [0.0] * len(rewards)
    r = torch.tensor(rewards, dtype=torch.float64)
    return ((r - r.mean()) / (r.std() + 1e-9)).tolist()


def group_advantages(
    token_rewards_per_sample: Sequence[torch.Tensor],
    outcome_rewards: Sequence[float],
    group_ids: Sequence[str],
) -> list[torch.Tensor]:
    """Token advantages A_k = outcome advantage of the sample's group + reward-to-go.

    Samples are grouped by group id (not by position); each gets a [n_i] tensor.
    """
    if not (len(token_rewards_per_sample) == len(outcome_rewards) == len(group_ids)):
        raise ValueError("token rewards, outcome rewards and group ids differ in length")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        members.setdefault(g, []).append(i)
    outcome = [0.0] * len(group_ids)
    for idx in members.values():
        for i, a in zip(idx, outcome_advantages([outcome_rewards[i] for i in idx])):
            outcome[i] = a
    return [
        outcome[i] + reward_to_go(r.to(torch.float64))
        for i, r in enumerate(token_rewards_per_sample)
    ]
