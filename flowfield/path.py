"""The rectified (linear) probability path of conditional flow matching (docs/method.md#objective).

    x_t = t * x1 + (1 - t) * eps,   eps ~ N(0, I),   data at t = 1
    u   = x1 - eps                  (the target velocity, constant along the path)

Only the path lives here: no network, no loss.
"""

from __future__ import annotations

import torch


def interpolate(x1: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t for data x1 [..., d], noise eps [..., d] and time t [...]."""
    t = t[..., None].to(x1.dtype)
    return t * x1 + (1 - t) * eps


def target_velocity(x1: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return x1 - eps


def score_weight(t: torch.Tensor) -> torch.Tensor:
    """t / (1 - t): how a velocity error scales into a score error on this path.

    With x_t = t x1 + (1-t) eps, grad log p_t(x) = (t v(x, t) - x) / (1 - t), so an error
    dv in the velocity is an error t dv / (1 - t) in the score.
    """
    return t / (1 - t)


def logit_normal(
    n: int, generator: torch.Generator | None = None, mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """n times t = sigmoid(N(mean, std^2)): the offline training distribution."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))
