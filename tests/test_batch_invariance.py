"""Batch invariance: a sample's scores are bit-identical alone and with any batch-mates.

Scored through the scheduler's batch function (what concurrent /score requests become), with
group mates that share the sample's prompt, other prompts, an empty prompt, different lengths,
several timesteps and noise draws, and flow chunk sizes that put the sample's rows at
different places in differently padded chunks.
"""

from __future__ import annotations

import pytest
import torch
from helpers import VOCAB

from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder
from flowfield.rewards import RewardOptions
from flowfield.scorer import FlowScorer, ScoreOptions
from service.scheduler import ScoreJob, run_batch


def _ids(g: torch.Generator, n: int) -> list[int]:
    return torch.randint(2, VOCAB, (n,), generator=g).tolist()


def _scorer(model_dir, chunk_rows: int | None = None, invariant: bool = True) -> FlowScorer:
    enc = LatentEncoder(model_dir)
    torch.manual_seed(0)
    net = FlowNet(flow_for_encoder(enc.hidden_size, enc.layer_fractions, depth=2))
    with torch.no_grad():  # an untrained flow is v = 0; give it real work to do
        for p in net.parameters():
            if p.dim() == 2 and not p.any():
                p.normal_(std=0.05)
    meta = FlowMetadata(net.config, {})
    return FlowScorer(enc, net, meta, batch_invariant=invariant, flow_chunk_rows=chunk_rows)


def _job(prompts, responses, timesteps=(0.8,), draws=1, top_k=4) -> ScoreJob:
    opts = RewardOptions("bilateral", threshold=0.2, top_k=top_k)
    return ScoreJob(prompts, responses, ScoreOptions(opts, tuple(timesteps), draws))


def _batch_mates(seed: int, prompt: list[int]) -> list[tuple[list[list[int]], list[list[int]]]]:
    """Other requests' (prompts, responses): group mates, other prompts, no prompt, long."""
    g = torch.Generator().manual_seed(seed)
    return [
        ([prompt] * 3, [_ids(g, n) for n in (3, 17, 9)]),  # share the sample's prompt
        ([_ids(g, 5), _ids(g, 11)], [_ids(g, 30), _ids(g, 2)]),
        ([[], prompt[:4]], [_ids(g, 7), _ids(g, 12)]),  # no prompt; a prefix of its prompt
        ([_ids(g, 20)] * 2, [_ids(g, 40), _ids(g, 1)]),  # another group, a long response
    ]


def _assert_identical(a, b) -> None:
    assert torch.equal(a.deviations, b.deviations), (a.deviations - b.deviations).abs().max()
    assert torch.equal(a.token_rewards, b.token_rewards)
    assert a.flow_return == b.flow_return


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_a_sample_scores_the_same_bits_alone_and_in_any_batch(
    model_dirs, arch, chunk_rows, one_thread
):
    """One torch thread (FLOWFIELD_THREADS=1): with more, a BLAS may split a chunk of 7 rows
    over threads into blocks too small to be position-independent; see the next test."""
    scorer = _scorer(model_dirs[arch], chunk_rows)
    g = torch.Generator().manual_seed(1)
    prompt, response = _ids(g, 9), _ids(g, 14)
    for timesteps, draws in (((0.8,), 1), ((0.3, 0.8), 3)):
        alone = run_batch(scorer, [_job([prompt], [response], timesteps, draws)])[0].scores[0]
        assert alone.deviations.shape == (14,) and bool((alone.deviations > 0).all())
        mates = _batch_mates(2, prompt)
        # other requests in the same scheduler batch, before and after it
        for k in range(len(mates) + 1):
            jobs = [_job(p, r, timesteps, draws) for p, r in mates[:k]]
            jobs.append(_job([prompt], [response], timesteps, draws))
            jobs += [_job(p, r, timesteps, draws) for p, r in mates[k:]]
            res = run_batch(scorer, jobs)
            _assert_identical(alone, res[k].scores[0])
        # batch-mates inside its own request
        p_all = [p for p, _ in mates for p in p] + [prompt]
        r_all = [r for _, r in mates for r in r] + [response]
        mine = run_batch(scorer, [_job(p_all, r_all, timesteps, draws)])[0].scores[-1]
        _assert_identical(alone, mine)


def test_invariance_holds_with_more_threads(model_dirs):
    """Two threads with the default chunk (at least 32 rows per thread)."""
    scorer = _scorer(model_dirs["qwen2"])
    g = torch.Generator().manual_seed(3)
    prompt, response = _ids(g, 6), _ids(g, 25)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        alone = run_batch(scorer, [_job([prompt], [response])])[0].scores[0]
        jobs = [_job(p, r) for p, r in _batch_mates(4, prompt)] + [_job([prompt], [response])]
        _assert_identical(alone, run_batch(scorer, jobs)[-1].scores[0])
    finally:
        torch.set_num_threads(before)


def test_the_batched_path_agrees_closely(model_dirs):
    """batch_invariant=False (padded batches, unchunked flow) computes the same numbers up
    to float rounding."""
    fixed = _scorer(model_dirs["llama"])
    free = _scorer(model_dirs["llama"], invariant=False)
    g = torch.Generator().manual_seed(5)
    prompt = _ids(g, 8)
    prompts = [prompt] * 3 + [_ids(g, 4), []]
    responses = [_ids(g, n) for n in (5, 12, 1, 9, 6)]
    for a, b in zip(fixed.deviations(prompts, responses), free.deviations(prompts, responses)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_chunk_rows_must_be_positive(model_dirs):
    with pytest.raises(ValueError, match="flow_chunk_rows"):
        _scorer(model_dirs["gpt2"], chunk_rows=0)
