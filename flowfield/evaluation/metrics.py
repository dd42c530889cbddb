"""Metrics of reward quality: AUROC with a bootstrap interval, and error localisation.

Pure functions on plain numbers (numpy); no model, no I/O.

AUROC orientation: every score is "how likely is this rollout INCORRECT" (higher mean
deviation, lower flow return, higher NLL ...), and the AUROC is that of predicting the
incorrect rollouts: 0.5 is chance, 1.0 ranks every incorrect rollout above every correct
one. It is computed with the rank (Mann-Whitney U) formula, ties getting the average rank
(a tie between an incorrect and a correct rollout counts one half).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (last - (counts - 1) / 2.0)[inverse]


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """P(score of a random positive > score of a random negative), ties counted 1/2.

    NaN when one class is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    if s.shape != y.shape:
        raise ValueError("scores and labels differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class AurocCI:
    auroc: float
    low: float  # 2.5th percentile of the bootstrap distribution
    high: float  # 97.5th percentile
    resamples: int

    def to_dict(self) -> dict:
        return {"auroc": self.auroc, "ci95": [self.low, self.high], "resamples": self.resamples}


def bootstrap_auroc(
    scores: Sequence[float], positive: Sequence[bool], resamples: int = 1000, seed: int = 0
) -> AurocCI:
    """AUROC with a percentile bootstrap 95% interval (rollouts resampled with replacement).

    Resamples where one class is missing are drawn again (stratification is not used, so
    the class balance varies as it would with a fresh evaluation set). resamples = 0 gives
    the point estimate only, with NaN bounds.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    point = auroc(s, y)
    if resamples <= 0 or np.isnan(point):
        return AurocCI(point, float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    n = len(s)
    values = []
    while len(values) < resamples:
        idx = rng.integers(0, n, n)
        yy = y[idx]
        if yy.all() or not yy.any():
            continue
        values.append(auroc(s[idx], yy))
    low, high = np.percentile(values, [2.5, 97.5])
    return AurocCI(point, float(low), float(high), resamples)


# ---- localisation --------------------------------------------------------------------------

# windows around the first error f, as (start offset, end offset), both inclusive
WINDOWS: dict[str, tuple[int, int]] = {
    "f": (0, 0),
    "f..f+1": (0, 1),
    "f..f+2": (0, 2),
    "f-1..f+2": (-1, 2),
}


def most_penalised(
    token_rewards: Sequence[float], deviations: Sequence[float] | None = None
) -> int:
    """Index of the most negative token reward. Ties go to the token with the larger raw
    deviation when `deviations` are given (a normalisation that clips, as `expert` does at
    z = 1, gives many tokens the same reward, and the reward falls as the deviation rises),
    else to the earliest token."""
    r = np.asarray(token_rewards, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no tokens")
    if deviations is None:
        return int(np.argmin(r))  # argmin returns the first of equal minima
    tied = np.flatnonzero(r == r.min())
    return int(tied[np.argmax(np.asarray(deviations, dtype=np.float64)[tied])])


def most_extreme(values: Sequence[float]) -> int:
    """Index of the largest value (e.g. raw deviation, token NLL); ties go to the earliest."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no tokens")
    return int(np.argmax(v))


def in_window(index: int, first_error: int, window: tuple[int, int]) -> bool:
    return first_error + window[0] <= index <= first_error + window[1]


def random_rate(first_error: int, length: int, window: tuple[int, int]) -> float:
    """Chance that a uniformly random token of a `length`-token response lies in the window."""
    lo = max(0, first_error + window[0])
    hi = min(length - 1, first_error + window[1])
    return max(0, hi - lo + 1) / length


@dataclass
class Localisation:
    """How often a chosen token (e.g. the most-penalised one) lies near the first error."""

    n: int  # incorrect rollouts with a first error inside the scored response
    hits: dict[str, float]  # window name -> fraction of those rollouts
    random: dict[str, float]  # window name -> mean rate of a uniformly random position
    offsets: dict[int, int]  # chosen index - first error -> count (the shape of the misses)

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "hits": self.hits,
            "random": self.random,
            "offset_histogram": {str(k): v for k, v in sorted(self.offsets.items())},
        }


def localisation(
    chosen: Sequence[int], first_errors: Sequence[int], lengths: Sequence[int]
) -> Localisation:
    """Hit rates of the chosen token per window, next to a uniformly random position.

    chosen[i] is the index picked in rollout i (of lengths[i] tokens); first_errors[i] its
    first wrong token, which must lie inside the response (0 <= f < length).
    """
    if not (len(chosen) == len(first_errors) == len(lengths)):
        raise ValueError("chosen, first_errors and lengths differ in length")
    n = len(chosen)
    hits = {name: 0.0 for name in WINDOWS}
    rand = {name: 0.0 for name in WINDOWS}
    offsets: dict[int, int] = {}
    for c, f, length in zip(chosen, first_errors, lengths):
        if not 0 <= f < length:
            raise ValueError(f"first error {f} outside a {length}-token response")
        offsets[c - f] = offsets.get(c - f, 0) + 1
        for name, w in WINDOWS.items():
            hits[name] += in_window(c, f, w)
            rand[name] += random_rate(f, length, w)
    if n:
        hits = {k: v / n for k, v in hits.items()}
        rand = {k: v / n for k, v in rand.items()}
    else:
        hits = {k: float("nan") for k in hits}
        rand = {k: float("nan") for k in rand}
    return Localisation(n, hits, rand, offsets)
