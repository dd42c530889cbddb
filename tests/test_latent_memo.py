"""LatentMemo: what scoring encoded, the learner takes instead of running the policy again."""

import torch
from helpers import random_samples

from flowfield.encoder import LatentEncoder
from flowfield.latent_memo import LatentMemo, memo_key


def _forwards(enc: LatentEncoder) -> list[int]:
    """Count the encoder's forward passes (a list that grows by one per pass)."""
    calls: list[int] = []
    inner = enc._forward

    def counted(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    enc._forward = counted
    return calls


def test_memo_is_least_recently_used_first_out_within_its_bytes():
    one = torch.zeros(4, 8)  # 128 bytes
    memo = LatentMemo(max_bytes=3 * 128)
    for i in range(3):
        memo.put(memo_key([i], [i]), one + i)
    assert memo.get(memo_key([0], [0])) is not None  # 0 is now the most recent
    memo.put(memo_key([3], [3]), one + 3)  # evicts 1, the least recently used
    assert len(memo) == 3 and memo.bytes == 3 * 128
    assert memo.get(memo_key([1], [1])) is None
    assert torch.equal(memo.get(memo_key([0], [0])), one)
    memo.put(memo_key([0], [0]), one + 9)  # replacing does not count twice
    assert memo.bytes == 3 * 128 and torch.equal(memo.get(memo_key([0], [0])), one + 9)
    memo.put(memo_key([9], [9]), torch.zeros(100, 8))  # larger than the memo: skipped
    assert memo.get(memo_key([9], [9])) is None and len(memo) == 3
    assert (memo.hits, memo.misses) == (3, 2)


def test_memo_keeps_a_copy_not_a_view_of_a_batch():
    batch = torch.randn(3, 10, 8)
    memo = LatentMemo(max_bytes=1 << 20)
    memo.put(memo_key([], [1]), batch[:, 2:5])
    got = memo.get(memo_key([], [1]))
    assert got._base is None and got.numel() == 3 * 3 * 8
    batch.zero_()
    assert got.abs().sum() > 0


def test_reuse_takes_scored_latents_without_a_forward(model_dirs):
    enc = LatentEncoder(model_dirs["gpt2"], memo_bytes=1 << 24)
    prompts, responses = random_samples(6, seed=3)
    scored = enc.encode(prompts, responses, fixed_shapes=True, remember=True)  # /score
    calls = _forwards(enc)
    # the learner's batch: three scored samples (in another order) and one new one
    pick = [4, 0, 2]
    extra_p, extra_r = random_samples(1, seed=99)
    got = enc.encode([prompts[i] for i in pick] + extra_p,
                     [responses[i] for i in pick] + extra_r, reuse=True)
    assert enc.memo.hits == 3
    reused = len(calls)
    calls.clear()
    enc.encode(extra_p, extra_r)  # the new sample alone
    assert reused == len(calls) > 0  # only the new sample ran
    fresh = LatentEncoder(model_dirs["gpt2"]).encode(
        [prompts[i] for i in pick] + extra_p, [responses[i] for i in pick] + extra_r,
        fixed_shapes=True,
    )
    o, s = got.offsets, scored.offsets
    for j, i in enumerate(pick):
        assert torch.equal(got.h[:, o[j] : o[j + 1]], scored.h[:, s[i] : s[i + 1]])
        assert torch.equal(got.prev[:, o[j] : o[j + 1]], scored.prev[:, s[i] : s[i + 1]])
        assert torch.equal(got.next[:, o[j] : o[j + 1]], scored.next[:, s[i] : s[i + 1]])
    torch.testing.assert_close(got.h, fresh.h, atol=1e-5, rtol=1e-5)


def test_scoring_never_reads_the_memo(model_dirs):
    """A score must not depend on what was scored before: remember writes, never reads."""
    enc = LatentEncoder(model_dirs["gpt2"], memo_bytes=1 << 24)
    prompts, responses = random_samples(3, seed=5)
    first = enc.encode(prompts, responses, fixed_shapes=True, remember=True)
    calls = _forwards(enc)
    again = enc.encode(prompts, responses, fixed_shapes=True, remember=True)
    assert len(calls) > 0 and enc.memo.hits == 0
    assert torch.equal(first.h, again.h)


def test_no_memo_by_default(model_dirs):
    enc = LatentEncoder(model_dirs["gpt2"])
    prompts, responses = random_samples(2, seed=7)
    enc.encode(prompts, responses, remember=True)
    calls = _forwards(enc)
    enc.encode(prompts, responses, reuse=True)
    assert enc.memo is None and len(calls) > 0
