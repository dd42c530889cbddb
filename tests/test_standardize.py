"""Latent standardisation: statistics from the fit data, stored with the weights, applied the
same way in fit, scoring and online refinement; the latent cache; fit defaults and report."""

import json

import pytest
import torch
from helpers import random_samples
from safetensors.torch import load_file, save_file

from flowfield.checkpoint import FlowMismatchError, load_flow, save_flow
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowConfig, FlowMetadata, FlowNet
from flowfield.objective import NoiseBank, token_deviations
from flowfield.scorer import FlowScorer
from flowfield.training import FitConfig, OnlineRefiner, Sample, fit_flow
from flowfield.training.fit import resolve_schedule
from flowfield.training.latents import LatentCache
from flowfield.training.report import split_holdout


def _samples(n=60, seed=0):
    prompts, responses = random_samples(n, seed=seed, response_range=(4, 12))
    return [Sample(tuple(p), tuple(r)) for p, r in zip(prompts, responses)]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, llama_dir):
    """A small standardised fit (60 samples: 6 held out for the report)."""
    enc = LatentEncoder(llama_dir)
    out = tmp_path_factory.mktemp("std") / "flow"
    cfg = FitConfig(epochs=3, batch_tokens=128, lr=3e-3, depth=1, min_steps=10, standardize=True)
    res = fit_flow(enc, _samples(), out, cfg, progress=False)
    return enc, out, res


def test_latent_cache_gives_the_encoders_latents_and_neighbours(llama_dir):
    enc = LatentEncoder(llama_dir)
    samples = _samples(12, seed=3)
    cache = LatentCache(enc, samples, chunk=5, progress=False)
    pick = [7, 2, 11, 0]
    h, prev, nxt = cache.batch(pick)
    ref = enc.encode([samples[i].prompt_ids for i in pick], [samples[i].response_ids for i in pick])
    torch.testing.assert_close(h, ref.h.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prev, ref.prev.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nxt, ref.next.float(), atol=1e-5, rtol=1e-5)


def test_stats_come_from_the_training_split_and_travel_with_the_weights(fitted):
    enc, out, res = fitted
    net, meta = load_flow(out, enc.identity, enc.layer_fractions)
    assert meta.config.standardize
    train, held = split_holdout(_samples(), FitConfig().holdout)
    assert len(held) == 6 and len(train) == 54
    h = enc.encode([s.prompt_ids for s in train], [s.response_ids for s in train]).h.double()
    torch.testing.assert_close(net.latent_mean, h.mean(1).float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(net.latent_std, h.std(1).float(), atol=1e-5, rtol=1e-4)
    # the flow models standardised latents: about zero mean, unit spread per dimension
    z = net.standardize(h.float())
    assert z.mean(1).abs().max() < 1e-4 and (z.std(1) - 1).abs().max() < 1e-3


def test_scoring_and_refinement_use_the_standardised_space(fitted):
    enc, out, _ = fitted
    net, meta = load_flow(out, enc.identity, enc.layer_fractions)
    s = _samples(4, seed=8)
    p, r = [x.prompt_ids for x in s], [x.response_ids for x in s]
    got = torch.cat(FlowScorer(enc, net, meta).deviations(p, r))
    batch = enc.encode(p, r)
    counts = torch.tensor([len(x) for x in r])
    pos = torch.arange(int(counts.sum())) - torch.tensor(batch.offsets[:-1]).repeat_interleave(
        counts
    )
    fr = meta.config.layer_fractions
    with torch.inference_mode():
        h, ctx = net.standardize(batch.h), net.standardize(batch.next)
        want = token_deviations(net, h, ctx, pos, fr, (0.8,), NoiseBank(32))
        raw = token_deviations(net, batch.h, batch.next, pos, fr, (0.8,), NoiseBank(32))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, raw)  # the statistics make a difference
    refiner = OnlineRefiner(enc, net, meta)
    rh, rctx = refiner._latents(p, r)
    torch.testing.assert_close(rh, h.float())
    torch.testing.assert_close(rctx, ctx.float())


def test_stats_that_do_not_fit_are_a_load_error_naming_them(fitted, tmp_path):
    enc, out, _ = fitted
    net, meta = load_flow(out)
    bad = tmp_path / "bad"
    save_flow(bad, net, meta)
    weights = bad / "flow.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        header = f.metadata()
    state = load_file(str(weights))
    state["latent_std"] = torch.ones(2, 32)  # two layers' statistics for a three-layer flow
    save_file(state, str(weights), metadata=header)
    with pytest.raises(FlowMismatchError, match=r"std has shape \[2, 32\], expected \[3, 32\]"):
        load_flow(bad, enc.identity)
    state["latent_std"] = torch.zeros(3, 32)
    save_file(state, str(weights), metadata=header)
    with pytest.raises(FlowMismatchError, match="std must be > 0"):
        load_flow(bad)


def test_checkpoints_without_standardisation_load_as_before(tmp_path, llama_dir):
    enc = LatentEncoder(llama_dir)
    cfg = FlowConfig(hidden_size=32, width=32, depth=1)
    net = FlowNet(cfg)
    meta = FlowMetadata(config=cfg, encoder={"name": "x"})
    save_flow(tmp_path / "old", net, meta)
    # an old checkpoint's metadata has neither "standardize" nor "calibration"
    weights = tmp_path / "old" / "flow.safetensors"
    state = load_file(str(weights))
    old = meta.to_dict()
    del old["config"]["standardize"], old["calibration"]
    save_file(state, str(weights), metadata={"flowfield": json.dumps(old)})
    loaded, m = load_flow(tmp_path / "old", enc.identity)
    assert not m.config.standardize and m.calibration is None
    h = torch.randn(3, 5, 32)
    assert torch.equal(loaded.standardize(h), h)


def test_fit_report_calibrates_and_compares_corrupted_samples(fitted):
    enc, out, res = fitted
    rep = res.report
    assert rep is not None and rep.samples == 6
    assert rep.zero_loss > 0 and rep.loss > 0
    _, meta = load_flow(out)
    assert meta.calibration == rep.calibration.to_dict()
    assert meta.calibration["timesteps"] == [0.8] and meta.calibration["log_std"] > 0
    assert meta.extra["report"]["heldout_samples"] == 6
    lines = "\n".join(rep.lines())
    assert "untrained field" in lines and "corrupted" in lines


def test_default_schedule_reaches_the_step_target_on_small_data():
    small = resolve_schedule(FitConfig(), tokens=126_000, width=128)
    steps = small.epochs * 126_000 / small.batch_tokens
    assert small.batch_tokens == 512 and steps == pytest.approx(1000, rel=0.01)
    assert small.lr == pytest.approx(1e-3)
    large = resolve_schedule(FitConfig(), tokens=50_000_000, width=1536)
    assert (large.epochs, large.batch_tokens) == (2.0, 4096)
    assert large.lr == pytest.approx(1.39e-4, rel=0.01)
    given = resolve_schedule(FitConfig(epochs=1, batch_tokens=64, lr=0.1), tokens=1000, width=8)
    assert (given.epochs, given.batch_tokens, given.lr) == (1.0, 64, 0.1)
