"""Deviation and loss formulas, and the determinism of scoring."""

import dataclasses

import pytest
import torch
from helpers import random_samples

from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowConfig, FlowMetadata, FlowNet, flow_for_encoder
from flowfield.objective import NoiseBank, flow_matching_loss, token_deviations
from flowfield.scorer import FlowScorer, ScoreOptions


def test_deviation_of_untrained_field_by_hand():
    # v = 0 everywhere, so e = t/(1-t) * mean_d (h - eps)^2, averaged over layers
    d, L, N = 4, 2, 3
    net = FlowNet(FlowConfig(hidden_size=d, width=d, depth=1, layer_fractions=(0.25, 0.75)))
    h = torch.arange(L * N * d, dtype=torch.float32).reshape(L, N, d) / 10
    positions = torch.tensor([0, 1, 0])  # two samples: lengths 2 and 1
    bank = NoiseBank(d, seed=7)
    e = token_deviations(net, h, torch.zeros_like(h), positions, (0.25, 0.75), [0.8], bank)
    eps = bank.take(1, L, 2)[0]  # [L, >=2, d]
    expected = torch.zeros(N)
    for n, k in enumerate(positions.tolist()):
        per_layer = [((h[layer, n] - eps[layer, k]) ** 2).mean() for layer in range(L)]
        expected[n] = 4.0 * sum(per_layer) / L  # 0.8 / 0.2 = 4
    torch.testing.assert_close(e, expected)


def test_deviation_averages_timesteps_with_their_weights_and_draws():
    d = 3
    net = FlowNet(FlowConfig(hidden_size=d, width=d, depth=1, layer_fractions=(0.5,)))
    h = torch.ones(1, 1, d)
    bank = NoiseBank(d, seed=1)
    pos = torch.tensor([0])
    e = token_deviations(net, h, h, pos, (0.5,), [0.5, 0.8], bank, noise_draws=2)
    eps = bank.take(4, 1, 1)[:, 0, 0]  # slots: (t0, draw0), (t0, draw1), (t1, draw0), (t1, draw1)
    sq = ((1 - eps) ** 2).mean(-1)
    expected = (1.0 * sq[0] + 1.0 * sq[1] + 4.0 * sq[2] + 4.0 * sq[3]) / 4
    assert e.item() == pytest.approx(expected.item(), rel=1e-6)


def test_flow_matching_loss_by_hand():
    d = 2
    net = FlowNet(FlowConfig(hidden_size=d, width=d, depth=1, layer_fractions=(0.5,)))
    x1 = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    eps = torch.tensor([[0.5, 0.0], [0.0, 1.0]])
    t = torch.tensor([0.3, 0.9])
    loss = flow_matching_loss(net, x1, torch.zeros_like(x1), torch.full((2,), 0.5), t, eps)
    # v = 0: mean of (x1 - eps)^2 = mean(.25, 4, 9, 4)
    assert loss.item() == pytest.approx((0.25 + 4 + 9 + 4) / 4)
    w = torch.tensor([1.0, 0.0])
    loss_w = flow_matching_loss(net, x1, torch.zeros_like(x1), torch.full((2,), 0.5), t, eps, w)
    assert loss_w.item() == pytest.approx((0.25 + 4) / 2)


def test_noise_bank_is_a_pure_function_of_seed_slot_layer_position():
    a, b = NoiseBank(8, seed=3, block=4), NoiseBank(8, seed=3, block=4)
    assert torch.equal(a.take(2, 3, 10)[:, :, :10], b.take(2, 3, 10)[:, :, :10])
    # a longer request does not change the earlier positions
    assert torch.equal(a.take(1, 1, 3)[0, 0, :3], a.take(1, 1, 9)[0, 0, :3])
    assert not torch.equal(a.take(1, 1, 4), NoiseBank(8, seed=4, block=4).take(1, 1, 4))


def _trained_looking_scorer(path) -> FlowScorer:
    enc = LatentEncoder(path)
    torch.manual_seed(0)
    net = FlowNet(flow_for_encoder(enc.hidden_size, enc.layer_fractions, depth=2))
    for p in net.parameters():  # a non-zero field, so deviations vary across tokens
        torch.nn.init.normal_(p, std=0.05)
    meta = FlowMetadata(net.config, dataclasses.asdict(enc.identity))
    return FlowScorer(enc, net, meta)


def test_scoring_is_deterministic_bit_for_bit(llama_dir):
    scorer = _trained_looking_scorer(llama_dir)
    prompts, responses = random_samples(6, seed=3)
    opts = ScoreOptions(timesteps=(0.5, 0.8), noise_draws=2)
    a = scorer.score(prompts, responses, opts, [1, 0, 1, 0, 1, 1], ["g"] * 6)
    b = scorer.score(prompts, responses, opts, [1, 0, 1, 0, 1, 1], ["g"] * 6)
    for x, y in zip(a, b):
        assert torch.equal(x.deviations, y.deviations)
        assert torch.equal(x.token_rewards, y.token_rewards)
        assert torch.equal(x.advantages, y.advantages)
    # and a fresh scorer (new process state, same flow) gives the same numbers
    c = _trained_looking_scorer(llama_dir).score(
        prompts, responses, opts, [1, 0, 1, 0, 1, 1], ["g"] * 6
    )
    assert all(torch.equal(x.token_rewards, z.token_rewards) for x, z in zip(a, c))


def test_scores_do_not_depend_on_batch_mates(llama_dir):
    scorer = _trained_looking_scorer(llama_dir)
    prompts, responses = random_samples(8, seed=4)
    together = scorer.deviations(prompts, responses)
    for i in (0, 3, 7):
        alone = scorer.deviations([prompts[i]], [responses[i]])[0]
        torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=1e-5)
        assert together[i].shape == (len(responses[i]),)


def test_score_options_validate():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ScoreOptions(timesteps=(1.0,))
    with pytest.raises(ValueError):
        ScoreOptions(noise_draws=0)


def test_bf16_path_matches_float32_within_bf16_precision(llama_dir):
    # the GPU serving dtype, exercised on the CPU: encoder and flow in bfloat16
    enc32 = LatentEncoder(llama_dir)
    enc16 = LatentEncoder(llama_dir, dtype=torch.bfloat16)
    prompts, responses = random_samples(4, seed=6)
    h32 = enc32.encode(prompts, responses).h
    h16 = enc16.encode(prompts, responses).h
    assert h16.dtype == torch.bfloat16
    rel = (h16.float() - h32).norm() / h32.norm()
    assert rel < 0.05, rel
    scorer = _trained_looking_scorer(llama_dir)
    s16 = FlowScorer(enc16, scorer.flow, scorer.meta)
    d32 = torch.cat(scorer.deviations(prompts, responses))
    d16 = torch.cat(s16.deviations(prompts, responses))
    assert d16.dtype == torch.float32 and torch.isfinite(d16).all()
    assert ((d16 - d32).abs() / d32.abs()).median() < 0.1


def test_outcome_groups_is_the_prompt_unless_a_group_id_is_given():
    from flowfield.scorer import outcome_groups

    prompts = [[1, 2], [1, 2], [3], [1, 2]]
    g = outcome_groups(prompts)
    assert g[0] == g[1] == g[3] != g[2]
    g = outcome_groups(prompts, ["a", None, "a", ""])
    assert g[0] == g[2] == "a" and g[1] == g[3] != "a"
