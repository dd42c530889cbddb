"""From raw deviations to dense token rewards and token advantages (docs/method.md#flow-rewards).

Per sample (a 1-D tensor of its response tokens' deviations e):
  1. normalise to s (defaults.NORMALIZATIONS names each mode by what it does):
     - "bilateral": per-sequence min-max to [-1, 1], s = 2 ((e - min) / (max - min) - 0.5);
       "unilateral": per-sequence min-max to [0, 1], s = (e - min) / (max - min), so every
       reward is <= 0 (the authors' released scripts' setting). Every sample spans the same
       range whatever its deviation level, so a sample's sum of rewards says nothing about
       how far it is from the expert data (a spiky incorrect rollout can even get a higher
       return than a clean correct one).
     - "expert": z-score of the log deviation against the deviations of held-out expert
       data recorded in the flow checkpoint (its calibration): z = (log e - mean) / std,
       s = clip(z / 3, -1, 1). A token the flow explains as well as typical expert tokens
       gets s ~ 0, one three standard deviations worse s = 1, so a rollout with larger
       deviations gets a lower return: the sequence-level sign is kept.
     Without a normalisation asked for, `resolve_normalization` picks the default
     (defaults.NORMALIZATION, "expert") or its fallback ("bilateral").
  2. zero every |s| <= eta; if more than K tokens survive, keep the top K
     (bilateral: the ceil(K/2) highest and the floor(K/2) lowest survivors; unilateral: the
     highest; expert: the largest |s|)
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

from flowfield import defaults

NORMALIZATIONS = tuple(defaults.NORMALIZATIONS)  # ("bilateral", "unilateral", "expert")
# "expert" mode: a token EXPERT_Z_SCALE standard deviations above the expert mean gets s = 1
EXPERT_Z_SCALE = 3.0


@dataclass(frozen=True)
class Calibration:
    """Log-deviation statistics of held-out expert tokens under one flow (see module doc)."""

    log_mean: float
    log_std: float
    timesteps: tuple[float, ...] = defaults.TIMESTEPS
    noise_draws: int = defaults.NOISE_DRAWS
    tokens: int = 0  # how many expert tokens the statistics come from

    def __post_init__(self) -> None:
        if not (math.isfinite(self.log_mean) and math.isfinite(self.log_std)):
            raise ValueError("calibration statistics must be finite")
        if self.log_std <= 0:
            raise ValueError("calibration log_std must be > 0")
        object.__setattr__(self, "timesteps", tuple(float(t) for t in self.timesteps))

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(
            log_mean=float(d["log_mean"]),
            log_std=float(d["log_std"]),
            timesteps=tuple(d.get("timesteps", defaults.TIMESTEPS)),
            noise_draws=int(d.get("noise_draws", defaults.NOISE_DRAWS)),
            tokens=int(d.get("tokens", 0)),
        )

    def to_dict(self) -> dict:
        return {
            "log_mean": self.log_mean,
            "log_std": self.log_std,
            "timesteps": list(self.timesteps),
            "noise_draws": self.noise_draws,
            "tokens": self.tokens,
        }

    @classmethod
    def from_deviations(
        cls, e: torch.Tensor, timesteps: Sequence[float], noise_draws: int = defaults.NOISE_DRAWS
    ) -> Calibration:
        """Statistics of a 1-D tensor of expert-token deviations."""
        le = torch.log(e.to(torch.float64).clamp_min(_TINY))
        if le.numel() < 2:
            raise ValueError("calibration needs at least two expert tokens")
        return cls(
            float(le.mean()),
            float(le.std().clamp_min(1e-6)),
            tuple(timesteps),
            noise_draws,
            int(le.numel()),
        )

    def fits(self, timesteps: Sequence[float]) -> bool:
        """Whether deviations taken at these timesteps can use it (the calibrated ones)."""
        return tuple(float(t) for t in timesteps) == self.timesteps

    def check(self, timesteps: Sequence[float]) -> None:
        """Raise ValueError unless deviations taken at these timesteps can use it."""
        if not self.fits(timesteps):
            raise ValueError(
                "normalization 'expert' is calibrated at timesteps "
                f"{list(self.timesteps)}; the request asks for {list(timesteps)}"
            )


_TINY = 1e-12


def resolve_normalization(
    requested: str | None,
    calibration: Calibration | None,
    timesteps: Sequence[float] | None = None,
    default: str = defaults.NORMALIZATION,
) -> str:
    """The normalisation a sample is shaped with: the one asked for, else `default`.

    The fallback rule, written only here: a default of "expert" becomes
    defaults.FALLBACK_NORMALIZATION ("bilateral") where the flow cannot serve it, i.e. it
    has no calibration (an older checkpoint, or a fit with too few samples to hold out), or
    `timesteps` (when given) differ from the calibrated ones. An explicit "expert" is never
    replaced: shaping with it fails instead (FlowScorer.check_options, `normalize`).
    """
    if requested:
        return requested
    if default == "expert" and (
        calibration is None or (timesteps is not None and not calibration.fits(timesteps))
    ):
        return defaults.FALLBACK_NORMALIZATION
    return default


@dataclass(frozen=True)
class RewardOptions:
    """How deviations become token rewards (defaults: flowfield.defaults).

    normalization None: the default, resolved per flow by `resolve_normalization` ("expert"
    where the flow is calibrated at the scoring timesteps, else "bilateral").
    """

    normalization: str | None = None
    beta: float = defaults.BETA
    threshold: float = defaults.THRESHOLD  # eta
    top_k: int = defaults.TOP_K  # K; 0 keeps every surviving token

    def __post_init__(self) -> None:
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            # r = -beta * s: a negative beta would silently reward the deviations it penalises
            raise ValueError("beta must be a finite number >= 0")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError("threshold must be a finite number >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")


def normalize(
    e: torch.Tensor, mode: str | None = None, calibration: Calibration | None = None
) -> torch.Tensor:
    """Deviations [n] of one sample -> normalised s [n] (float64); see the module doc.

    mode None: the default for this calibration (`resolve_normalization`).

    Per-sequence modes: a sequence whose deviations are all equal (including a single
    token) carries no ranking information and maps to 0 everywhere.
    """
    mode = resolve_normalization(mode, calibration)
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
    e = e.to(torch.float64)
    if e.numel() == 0:
        return e
    if mode == "expert":
        if calibration is None:
            raise ValueError("normalization 'expert' needs a flow with a calibration")
        z = (torch.log(e.clamp_min(_TINY)) - calibration.log_mean) / calibration.log_std
        return (z / EXPERT_Z_SCALE).clamp(-1.0, 1.0)
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
    elif mode == "expert":
        by_size = torch.sort(vals.abs(), descending=True, stable=True).indices
        keep = alive[by_size[:top_k]]
    else:
        n_high = (top_k + 1) // 2
        n_low = top_k // 2
        low = order.flip(0)[:n_low] if n_low else order[:0]
        keep = torch.cat([alive[order[:n_high]], alive[low]])
    out = torch.zeros_like(s)
    out[keep] = s[keep]
    return out


def token_rewards(
    e: torch.Tensor, options: RewardOptions, calibration: Calibration | None = None
) -> torch.Tensor:
    """Deviations [n] of one sample -> shaped dense rewards [n] (float64).

    A default normalisation (None) is resolved against `calibration` alone; FlowScorer
    resolves it first, with the scoring timesteps too."""
    mode = resolve_normalization(options.normalization, calibration)
    s = normalize(e, mode, calibration)
    s = filter_tokens(s, options.threshold, options.top_k, mode)
    return -options.beta * s + 0.0  # + 0.0 turns -0.0 into 0.0 in the JSON


def reward_to_go(r: torch.Tensor) -> torch.Tensor:
    """sum_{s >= k} r_s for every k (gamma = 1)."""
    return r.flip(0).cumsum(0).flip(0)


def outcome_advantages(rewards: Sequence[float]) -> list[float]:
    """(R - mean) / (std + 1e-9) within one group; std is the sample std (n - 1).

    A group of one has no baseline: its outcome advantage is 0.

    Computed on the rewards divided by a power of two at least max |R| (exact, so the result
    is unchanged wherever the plain formula is finite): with rewards beyond ~1e154 the
    squares of the variance, and near 1e308 the sum of the mean, would overflow to inf and
    silently turn every advantage into 0 or NaN. The 1e-9 is scaled alike.
    """
    if len(rewards) < 2:
        return [0.0] * len(rewards)
    r = torch.tensor(rewards, dtype=torch.float64)
    eps = 1e-9
    top = float(r.abs().max())
    if math.isfinite(top) and top > 1.0:
        exp = math.frexp(top)[1]  # top < 2**exp, 1 <= exp <= 1024
        r = r * 2.0**-exp
        eps = eps * 2.0**-exp
    return ((r - r.mean()) / (r.std() + eps)).tolist()


def grouped_outcome_advantages(
    rewards: Sequence[float], group_ids: Sequence[str]
) -> list[float]:
    """The outcome advantage of every sample within its group (grouped by id, not position)."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        members.setdefault(g, []).append(i)
    out = [0.0] * len(rewards)
    for idx in members.values():
        for i, a in zip(idx, outcome_advantages([rewards[i] for i in idx])):
            out[i] = a
    return out


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
    outcome = grouped_outcome_advantages(outcome_rewards, group_ids)
    return [
        outcome[i] + reward_to_go(r.to(torch.float64))
        for i, r in enumerate(token_rewards_per_sample)
    ]
