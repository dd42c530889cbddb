"""Shared-prompt encoding (KV reuse): a group's prompt runs once, the latents do not change."""

import pytest
import torch
from helpers import VOCAB, random_samples, save_tiny_model

from flowfield.encoder import EncodedBatch, LatentEncoder

ATOL = 1e-5


def _grouped_workload(seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Three groups (prompts of 7, 12 and 1 tokens; responses of 1..20 tokens) mixed with
    ungrouped samples (one without a prompt, one whose prompt is a prefix of a group's, one
    with an empty response in a group's prompt), in a shuffled order."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(2, VOCAB, (n,), generator=g).tolist()

    shared = {"a": ids(7), "b": ids(12), "c": ids(1)}
    samples = [(shared["a"], ids(n)) for n in (1, 20, 5, 13)]
    samples += [(shared["b"], ids(n)) for n in (9, 2, 17)]
    samples += [(shared["c"], ids(n)) for n in (4, 4)]
    samples += [([], ids(6)), (shared["b"][:5], ids(8)), (shared["a"], [])]
    extra_p, extra_r = random_samples(3, seed=seed + 1)
    samples += list(zip(extra_p, extra_r))
    order = torch.randperm(len(samples), generator=g).tolist()
    return [samples[i][0] for i in order], [samples[i][1] for i in order]


def _assert_same_latents(a: EncodedBatch, b: EncodedBatch) -> None:
    assert a.offsets == b.offsets
    for name in ("h", "prev", "next"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=ATOL, rtol=ATOL)


def _count_embedded_tokens(enc: LatentEncoder) -> list[int]:
    seen: list[int] = []
    enc.model.get_input_embeddings().register_forward_pre_hook(
        lambda m, args: seen.append(args[0].numel())
    )
    return seen


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_shared_prompt_latents_equal_the_per_sample_path(model_dirs, arch):
    shared = LatentEncoder(model_dirs[arch])
    plain = LatentEncoder(model_dirs[arch], share_prompts=False)
    assert shared.share_prompts and not plain.share_prompts
    prompts, responses = _grouped_workload()
    got = shared.encode(prompts, responses)
    _assert_same_latents(got, plain.encode(prompts, responses))
    # and each sample alone, in input order
    for i, (p, r) in enumerate(zip(prompts, responses)):
        alone = plain.encode([p], [r])
        sl = slice(got.offsets[i], got.offsets[i + 1])
        torch.testing.assert_close(got.h[:, sl], alone.h, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(got.prev[:, sl], alone.prev, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(got.next[:, sl], alone.next, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_shared_prompts_split_over_many_micro_batches(model_dirs, arch):
    # 24 tokens per batch: prompts go in several chunks, responses in several batches each
    shared = LatentEncoder(model_dirs[arch], max_batch_tokens=24)
    plain = LatentEncoder(model_dirs[arch], share_prompts=False)
    prompts, responses = _grouped_workload(seed=3)
    _assert_same_latents(shared.encode(prompts, responses), plain.encode(prompts, responses))


def test_first_response_token_gets_the_last_prompt_latent_as_prev(llama_dir):
    enc = LatentEncoder(llama_dir)
    p = [3, 4, 5, 6]
    b = enc.encode([p, p], [[7, 8], [9]])
    whole = enc.encode([[]], [p])  # every prompt token as a "response" token
    torch.testing.assert_close(b.prev[:, 0], whole.h[:, -1], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(b.prev[:, 2], whole.h[:, -1], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(b.prev[:, 1], b.h[:, 0])
    assert torch.all(b.next[:, 1] == 0) and torch.all(b.next[:, 2] == 0)  # past each end


def test_a_group_prompt_runs_once(llama_dir):
    shared = LatentEncoder(llama_dir)
    plain = LatentEncoder(llama_dir, share_prompts=False)
    n_shared, n_plain = _count_embedded_tokens(shared), _count_embedded_tokens(plain)
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(2, VOCAB, (30,), generator=g).tolist()
    responses = [torch.randint(2, VOCAB, (5,), generator=g).tolist() for _ in range(8)]
    a = shared.encode([prompt] * 8, responses)
    b = plain.encode([prompt] * 8, responses)
    _assert_same_latents(a, b)
    assert sum(n_plain) == 8 * (30 + 5)
    assert sum(n_shared) == 30 + 8 * 5  # the prompt once, then only response tokens


def test_forward_still_stops_after_the_deepest_hooked_block(llama_dir):
    enc = LatentEncoder(llama_dir)
    ran = []
    for i, block in enumerate(enc.model.model.layers):
        block.register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
    enc.model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head"))
    enc.encode([[3, 4, 5]] * 2, [[6, 7], [8]])
    deepest = max(enc.layers)
    assert ran == list(range(deepest + 1)) * 2  # prompt pass, then the response pass


def test_sliding_window_models_keep_the_plain_path(tmp_path):
    save_tiny_model(tmp_path, "mistral", layers=4, hidden=32, sliding_window=16)
    enc = LatentEncoder(tmp_path)
    assert not enc.share_prompts
    prompts, responses = _grouped_workload()
    batch = enc.encode(prompts, responses)
    assert batch.offsets[-1] == sum(len(r) for r in responses)


def test_micro_batches_bound_padding_once_a_batch_has_work(llama_dir):
    enc = LatentEncoder(llama_dir, max_batch_tokens=32768)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(64, 257, (64,), generator=g).tolist()  # GRPO-like responses
    one = enc.micro_batches(lengths, max_padding=1.0)  # the size bound alone: one batch
    cut = enc.micro_batches(lengths)

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert len(one) == 1 and padded(one) > 1.4 * sum(lengths)
    assert sorted(i for b in cut for i in b) == list(range(64))
    assert padded(cut) < 1.15 * sum(lengths)
    for b in cut[:-1]:
        assert sum(lengths[i] for i in b) >= enc.min_batch_tokens
