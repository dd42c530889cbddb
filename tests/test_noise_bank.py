"""NoiseBank: bounded caches, and the same noise (so the same rewards) as the seeded formula."""

import hashlib

import torch
from torch import nn

from flowfield.objective import NoiseBank, token_deviations


def reference_noise(seed: int, dim: int, block: int, slots: int, layers: int, n: int):
    """eps[slot, layer, :n] straight from the documented formula: block b of (slot, layer) is
    randn(block, dim) seeded by blake2b(f"{seed}:{slot}:{layer}:{b}"). No cache at all."""
    out = torch.empty(slots, layers, n, dim)
    for j in range(slots):
        for layer in range(layers):
            blocks = []
            for b in range((n + block - 1) // block):
                digest = hashlib.blake2b(f"{seed}:{j}:{layer}:{b}".encode(), digest_size=8)
                g = torch.Generator().manual_seed(
                    int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)
                )
                blocks.append(torch.randn(block, dim, generator=g))
            out[j, layer] = torch.cat(blocks)[:n]
    return out


def cached_bytes(bank: NoiseBank) -> tuple[int, int]:
    blocks = sum(t.numel() * t.element_size() for t in bank._cache.values())
    stacks = sum(t.numel() * t.element_size() for t in bank._stacked.values())
    return blocks, stacks


class Affine(nn.Module):
    """A fixed velocity field with the FlowNet signature: v = W x_t + t c + l."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Linear(d, d)
        torch.nn.init.normal_(self.w.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, xt, t, ctx, lf):
        return self.w(xt) + t[:, None] * ctx + lf[:, None]


def test_take_is_the_seeded_formula_across_blocks_and_evictions():
    d, block = 8, 4
    # room for only 5 blocks and 1 small stack: most calls evict and regenerate
    bank = NoiseBank(d, seed=3, block=block, max_cache_bytes=5 * block * d * 4, max_stacked=1,
                     max_stacked_bytes=2 * block * d * 4)
    for slots, layers, max_len in [(1, 1, 1), (1, 2, 4), (3, 2, 9), (1, 1, 1), (2, 3, 13),
                                   (1, 2, 4), (5, 1, 3)]:
        got = bank.take(slots, layers, max_len)
        assert got.shape[:2] == (slots, layers) and got.shape[2] >= max_len
        want = reference_noise(3, d, block, slots, layers, max_len)
        assert torch.equal(got[:, :, :max_len], want), (slots, layers, max_len)
        assert len(bank._cache) <= 5 and len(bank._stacked) <= 1


def test_caches_stay_bounded_and_deviations_unchanged_over_many_option_mixes():
    torch.manual_seed(0)
    d, L, block = 16, 3, 8
    max_blocks, max_stacked, stack_cap = 24, 3, 6 * block * d * 4
    bounded = NoiseBank(d, seed=5, block=block, max_cache_bytes=max_blocks * block * d * 4,
                        max_stacked=max_stacked, max_stacked_bytes=stack_cap)
    net = Affine(d).eval()
    fracs = (0.25, 0.5, 0.75)
    timestep_sets = [(0.8,), (0.5, 0.8), (0.2, 0.4, 0.6, 0.8)]
    calls = 0
    with torch.inference_mode():
        for draws in (1, 2, 7, 16, 33, 64):  # up to the schema's 64, as in the leaking stream
            for ts in timestep_sets:
                for lengths in ([3], [30, 2, 9]):
                    n = sum(lengths)
                    h, ctx = torch.randn(L, n, d), torch.randn(L, n, d)
                    pos = torch.cat([torch.arange(k) for k in lengths])
                    got = token_deviations(net, h, ctx, pos, fracs, ts, bounded, draws)
                    calls += 1
                    # the same computation from noise built by the formula, without any bank
                    fresh = NoiseBank(d, seed=5, block=block)
                    want = token_deviations(net, h, ctx, pos, fracs, ts, fresh, draws)
                    assert torch.equal(got, want)
                    if draws <= 7:  # the formula in pure Python is slow for many slots
                        eps = bounded.take(len(ts) * draws, L, max(lengths))
                        ref = reference_noise(5, d, block, len(ts) * draws, L, max(lengths))
                        assert torch.equal(eps[:, :, : max(lengths)], ref)
                    blocks, stacks = cached_bytes(bounded)
                    assert len(bounded._cache) <= max_blocks
                    assert blocks <= max_blocks * block * d * 4
                    assert len(bounded._stacked) <= max_stacked
                    assert stacks <= max_stacked * stack_cap
    assert calls == 6 * 3 * 2


def test_default_bank_bounded_for_a_stream_of_growing_noise_draws():
    # the reported leak: 64 requests with noise_draws 1..64 (one timestep, 3 layers, a short
    # response) kept one stacked tensor per request forever
    d = 128
    bank = NoiseBank(d)
    limit = 256 << 20  # the default max_cache_bytes
    for draws in range(1, 65):
        bank.take(draws, 3, 5)
        blocks, stacks = cached_bytes(bank)
        assert blocks <= limit
        assert len(bank._stacked) <= 4 and stacks <= 4 * (16 << 20)
    # the default options' shape (1 slot) is kept and served again as the same tensor
    small = bank.take(1, 3, 5)
    assert bank.take(1, 3, 5) is small
