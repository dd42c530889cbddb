"""Flow-matching loss and per-token deviation (docs/method.md, "Objective" and "Deviation").

The objective knows the path and takes any velocity network with the FlowNet signature;
it knows nothing of HTTP, tokenisers or reward shaping.

Layout convention: latents come as [L, N, d] (hooked layer, packed token, hidden dim).
Everything that is evaluated for several (timestep, noise draw, layer) combinations is
flattened into one batch of rows so the network runs once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from flowfield import defaults
from flowfield.path import interpolate, score_weight, target_velocity


def flow_matching_loss(
    net: nn.Module,
    x1: torch.Tensor,
    ctx: torch.Tensor,
    layer_fractions: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over rows and dims of ||v(x_t, t, c, l) - (x1 - eps)||^2.

    x1, ctx, eps: [M, d]; layer_fractions, t: [M]; optional per-row weight [M] (e.g. the
    soft weight of a not-quite-accepted sample). x1 and ctx are treated as data (detached).
    """
    x1 = x1.detach()
    ctx = ctx.detach()
    xt = interpolate(x1, eps, t)
    v = net(xt, t, ctx, layer_fractions)
    per_row = (v.float() - target_velocity(x1, eps).float()).pow(2).mean(dim=-1)  # [M]
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp_min(1e-12)


def rows_for_training(
    h: torch.Tensor,
    ctx: torch.Tensor,
    layer_fractions: Sequence[float],
    replicas: int,
    t_sampler,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten [L, N, d] latents into training rows, each token replicated with fresh (t, eps).

    Returns x1, ctx, layer_fraction, t, eps with R * L * N rows.
    """
    L, N, d = h.shape
    x1 = h.reshape(L * N, d).repeat(replicas, 1)
    c = ctx.reshape(L * N, d).repeat(replicas, 1)
    lf = torch.tensor(layer_fractions, dtype=torch.float32, device=h.device)
    lf = lf[:, None].expand(L, N).reshape(-1).repeat(replicas)
    m = x1.shape[0]
    t = t_sampler(m, generator).to(h.device)
    eps = torch.randn(m, d, generator=generator).to(device=h.device, dtype=h.dtype)
    return x1, c, lf, t.to(torch.float32), eps


class NoiseBank:
    """Fixed, seeded noise eps[slot, layer, position] for deterministic rewards.

    The authors redraw noise on every call, so the same rollout gets a different reward
    each time. Here the noise for response position k, hooked layer l and draw slot j is a
    pure function of (seed, j, l, k): the same request gives the same numbers, a sample's
    numbers do not depend on its batch-mates, and tokens at the same position in different
    samples share their noise (common random numbers, which makes in-group comparisons
    less noisy). Generated in blocks of `block` positions.

    Memory is bounded: blocks sit in an LRU cache of at most `max_cache_bytes` (an evicted
    block is regenerated bit-identically when needed again), and the stacked tensors `take`
    returns are kept only for the last `max_stacked` small shapes (at most
    `max_stacked_bytes` each, e.g. the default options' single slot); larger ones are built
    from the blocks for the call and not kept.
    """

    def __init__(
        self,
        dim: int,
        seed: int = 0,
        block: int = 256,
        max_cache_bytes: int = 256 << 20,
        max_stacked: int = 4,
        max_stacked_bytes: int = 16 << 20,
    ) -> None:
        self.dim = dim
        self.seed = seed
        self.block = block
        self.max_blocks = max(1, max_cache_bytes // (block * dim * 4))
        self.max_stacked = max_stacked
        self.max_stacked_bytes = max_stacked_bytes
        self._cache: OrderedDict[tuple[int, int, int], torch.Tensor] = OrderedDict()
        self._stacked: OrderedDict[tuple[int, int, int, int], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def _block(self, slot: int, layer: int, index: int) -> torch.Tensor:
        key = (slot, layer, index)
        out = self._cache.get(key)
        if out is not None:
            self._cache.move_to_end(key)
            return out
        digest = hashlib.blake2b(
            f"{self.seed}:{slot}:{layer}:{index}".encode(), digest_size=8
        ).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
        out = torch.randn(self.block, self.dim, generator=g)
        self._cache[key] = out
        while len(self._cache) > self.max_blocks:
            self._cache.popitem(last=False)
        return out

    def take(self, slots: int, layers: int, max_len: int, first: int = 0) -> torch.Tensor:
        """Noise for positions 0..max_len-1: [slots, layers, >= max_len, d] (float32, CPU),
        of draw slots first..first+slots-1.

        A small shape gets whole blocks (callers index the positions they need), so its
        stacked tensor can be cached per (slots, layers, blocks); a large one gets exactly
        max_len positions and is not kept. Callers must not modify the result.
        """
        nblocks = (max_len + self.block - 1) // self.block
        key = (first, slots, layers, nblocks)
        with self._lock:
            out = self._stacked.get(key)
            if out is not None:
                self._stacked.move_to_end(key)
                return out
            n = nblocks * self.block
            keep = self.max_stacked > 0 and slots * layers * n * self.dim * 4 <= (
                self.max_stacked_bytes
            )
            if not keep:
                n = max_len  # built for this call only: just the positions asked for
            out = torch.empty(slots, layers, n, self.dim)
            for j in range(slots):
                for layer in range(layers):
                    for b in range(nblocks):
                        lo = b * self.block
                        hi = min(lo + self.block, n)
                        out[j, layer, lo:hi] = self._block(first + j, layer, b)[: hi - lo]
            if keep:
                self._stacked[key] = out
                while len(self._stacked) > self.max_stacked:
                    self._stacked.popitem(last=False)
            return out


def token_deviations(
    net: nn.Module,
    h: torch.Tensor,
    ctx: torch.Tensor,
    positions: torch.Tensor,
    layer_fractions: Sequence[float],
    timesteps: Sequence[float],
    noise: NoiseBank,
    noise_draws: int = defaults.NOISE_DRAWS,
    **options: Any,
) -> torch.Tensor:
    """Raw per-token deviation e for N packed tokens: [N] (float32).

    options: `deviation_sum`'s max_rows, fixed_rows and check; every (timestep, draw) pair.

    e = mean over timesteps t, noise draws j and layers l of
        t/(1-t) * (1/d) ||v(t h + (1-t) eps, t, c, l) - (h - eps)||^2
    h, ctx: [L, N, d]; positions: [N] response index of each token (selects its noise).
    All (t, draw, layer, token) rows go through the network in one batch (chunked at
    max_rows rows only to bound memory).

    fixed_rows > 0: batch invariance. The rows go through the network in chunks of exactly
    fixed_rows rows (the last one padded), so every matrix product has the same shape
    whatever else is in the batch, and the per-token mean is a fixed sequence of
    elementwise operations: a token's e is bit-identical with any batch-mates (given the
    same device, dtype and thread settings). check, if given, is called before each chunk
    and may raise to abandon the computation (shutdown).

    This is `deviation_sum` over every (timestep, draw) pair divided by T*K*L: with
    fixed_rows, the same operations in the same order as summing the pairs in several parts.
    """
    L, N, _ = h.shape
    if N == 0:
        return torch.zeros(0)
    total = deviation_sum(
        net, h, ctx, positions, layer_fractions, timesteps, noise, noise_draws, **options
    )
    return total / (len(timesteps) * noise_draws * L)


def deviation_sum(
    net: nn.Module,
    h: torch.Tensor,
    ctx: torch.Tensor,
    positions: torch.Tensor,
    layer_fractions: Sequence[float],
    timesteps: Sequence[float],
    noise: NoiseBank,
    noise_draws: int = defaults.NOISE_DRAWS,
    pairs: tuple[int, int] | None = None,
    carry: torch.Tensor | None = None,
    max_rows: int = 1 << 16,
    fixed_rows: int = 0,
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """carry + the sum over pairs [lo, hi) and layers of t/(1-t) * (1/d)||v - u||^2: [N]
    (float32, on h's device); the other arguments are `token_deviations`'.

    e is a mean over the T*K (timestep, draw) pairs (pair p = timestep p // K, draw p % K)
    and the L layers. pairs: (lo, hi), the pairs to evaluate (None = all); carry: [N], the
    running sum of the pairs before lo (None: nothing before). The weighted errors are added
    to carry slice by slice in the order (pair, layer), so summing [0, a), then [a, b) with
    that carry, ..., then dividing by T*K*L performs exactly the additions of one call over
    all pairs (with fixed_rows, where the sum is elementwise): splitting an expensive
    sample's evaluations into parts (the scoring scheduler's work units) gives the same bits
    as not splitting it. Without fixed_rows each call reduces its own slices first (close,
    not bit-identical).
    """
    L, N, d = h.shape
    T, K = len(timesteps), noise_draws
    lo, hi = pairs if pairs is not None else (0, T * K)
    if not 0 <= lo < hi <= T * K:
        raise ValueError(f"pairs {(lo, hi)} outside [0, {T * K})")
    P = hi - lo
    device = h.device
    if N == 0:
        return torch.zeros(0, device=device)
    # The path and the target velocity are formed in float32 whatever the network's dtype:
    # e is the small residual of two large vectors, so in bf16 the rounding of x_t, u and eps
    # would be a visible share of it; only the network's inputs and arithmetic are in its dtype.
    net_dtype = next(net.parameters()).dtype
    h, ctx = h.float(), ctx.to(net_dtype)
    max_len = int(positions.max().item()) + 1
    # eps slot p = t*K + k for timestep t, draw k: independent across timesteps and draws
    bank = noise.take(P, L, max_len, first=lo)  # [P, L, max_len, d]
    eps = bank[:, :, positions.cpu()].to(device=device, dtype=torch.float32)  # [P, L, N, d]
    ts = torch.tensor(timesteps, dtype=torch.float32, device=device)
    lf = torch.tensor(layer_fractions, dtype=torch.float32, device=device)
    pair_t = torch.arange(lo, hi, device=device) // K  # timestep index of each pair

    x1 = h[None].expand(P, L, N, d)
    c = ctx[None].expand(P, L, N, d)
    t_rows = ts[pair_t][:, None, None].expand(P, L, N)
    l_rows = lf[None, :, None].expand(P, L, N)

    x1, c, eps = (a.reshape(-1, d) for a in (x1, c, eps))
    t_rows, l_rows = t_rows.reshape(-1), l_rows.reshape(-1)
    xt = interpolate(x1, eps, t_rows).to(net_dtype)
    u = target_velocity(x1, eps)
    # the weight of each (pair, layer) slice: t/(1-t) of the pair's timestep
    w = score_weight(ts).repeat_interleave(K * L)[lo * L : hi * L]  # [P*L]
    if fixed_rows > 0:
        err = _fixed_shape_errors(net, xt, t_rows, c, l_rows, u, fixed_rows, check)
        err = err.reshape(P * L, N)
        acc = err[0] * w[0] if carry is None else carry.to(device) + err[0] * w[0]
        for i in range(1, P * L):  # elementwise only: no reduction whose order could vary
            acc = acc + err[i] * w[i]
        return acc
    err = torch.empty(x1.shape[0], dtype=torch.float32, device=device)
    for s in range(0, x1.shape[0], max_rows):
        if check is not None:
            check()
        e = slice(s, s + max_rows)
        v = net(xt[e], t_rows[e], c[e], l_rows[e])
        err[e] = (v.float() - u[e].float()).pow(2).mean(dim=-1)
    total = (err.reshape(P * L, N) * w[:, None]).sum(dim=0)
    return total if carry is None else carry.to(device) + total


def _fixed_shape_errors(
    net: nn.Module,
    xt: torch.Tensor,
    t_rows: torch.Tensor,
    c: torch.Tensor,
    l_rows: torch.Tensor,
    u: torch.Tensor,
    rows: int,
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """(1/d) ||v - u||^2 per row [M], every network call and reduction on exactly `rows` rows.

    The last chunk is padded with zero rows (computed and dropped), so a row's result
    depends on its own inputs and on `rows`, not on how many rows there are in all.
    """
    m = xt.shape[0]
    err = torch.empty(m, dtype=torch.float32, device=xt.device)
    for s in range(0, m, rows):
        if check is not None:
            check()
        n = min(rows, m - s)
        chunk = [a[s : s + n] for a in (xt, t_rows, c, l_rows, u)]
        if n < rows:
            chunk = [_pad_rows(a, rows) for a in chunk]
        x_c, t_c, c_c, l_c, u_c = chunk
        v = net(x_c, t_c, c_c, l_c)
        err[s : s + n] = (v.float() - u_c.float()).pow(2).mean(dim=-1)[:n]
    return err


def _pad_rows(a: torch.Tensor, rows: int) -> torch.Tensor:
    out = a.new_zeros((rows, *a.shape[1:]))
    out[: a.shape[0]] = a
    return out
