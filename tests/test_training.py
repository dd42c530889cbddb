"""Offline fit (loss falls, resumable, checkpoints) and online refinement (the flow moves)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import random_samples

from flowfield.checkpoint import load_flow
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowNet
from flowfield.training import FitConfig, OnlineRefiner, Sample, fit_flow, token_budget_batches


def _samples(n=40, seed=0):
    prompts, responses = random_samples(n, seed=seed, response_range=(4, 12))
    return [Sample(tuple(p), tuple(r)) for p, r in zip(prompts, responses)]


def test_token_budget_batches_cover_everything_within_budget():
    samples = _samples(30)
    batches = token_budget_batches(samples, budget=40, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(30))
    for b in batches:
        assert len(b) == 1 or sum(len(samples[i].response_ids) for i in b) <= 40
    assert batches == token_budget_batches(samples, budget=40, seed=1)


def test_fit_lowers_the_loss_and_writes_a_checkpoint(tmp_path, llama_dir):
    enc = LatentEncoder(llama_dir)
    samples = _samples()
    cfg = FitConfig(epochs=6, batch_tokens=128, lr=3e-3, depth=2, replicas=2, standardize=False)
    res = fit_flow(enc, samples, tmp_path / "flow", cfg, progress=False)
    net, meta = load_flow(tmp_path / "flow", enc.identity)
    assert meta.samples_trained == len(samples)
    assert meta.extra["steps"] == res.steps > 10
    first = meta.extra["fit"]  # the config is recorded with the weights
    assert first["depth"] == 2
    # the fitted field explains these latents better than the untrained one (v = 0)
    untrained = FlowNet(net.config)
    refiner_fit = OnlineRefiner(enc, net, meta, timesteps=None)
    refiner_zero = OnlineRefiner(enc, untrained, meta, timesteps=None)
    p = [s.prompt_ids for s in samples]
    r = [s.response_ids for s in samples]
    assert refiner_fit.loss_on(p, r) < 0.8 * refiner_zero.loss_on(p, r)


def test_resumed_fit_matches_an_uninterrupted_one(tmp_path, llama_dir):
    enc = LatentEncoder(llama_dir)
    samples = _samples(24, seed=5)
    cfg = FitConfig(epochs=2, batch_tokens=64, lr=1e-3, depth=1)
    full = fit_flow(enc, samples, tmp_path / "full", cfg, progress=False)
    paused = fit_flow(enc, samples, tmp_path / "part", cfg, progress=False, stop_after=3)
    assert paused.steps == 3 < full.steps
    assert torch.load(tmp_path / "part" / "trainer_state.pt", weights_only=False)["step"] == 3
    resumed = fit_flow(enc, samples, tmp_path / "part", cfg, resume=True, progress=False)
    assert resumed.steps == full.steps
    a, _ = load_flow(tmp_path / "full")
    b, meta = load_flow(tmp_path / "part")
    assert meta.extra["steps"] == full.steps
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=k)


def test_online_refinement_moves_the_flow_and_lowers_its_loss(tmp_path, llama_dir):
    enc = LatentEncoder(llama_dir)
    samples = _samples(16, seed=9)
    fit_flow(
        enc,
        samples,
        tmp_path / "flow",
        FitConfig(epochs=1, batch_tokens=64, depth=1),
        progress=False,
    )
    net, meta = load_flow(tmp_path / "flow", enc.identity)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    accepted = _samples(8, seed=11)
    p = [s.prompt_ids for s in accepted]
    r = [s.response_ids for s in accepted]
    refiner = OnlineRefiner(enc, net, meta, lr=3e-3, min_lr=3e-4, horizon=50)
    loss0 = refiner.loss_on(p, r)
    for _ in range(30):
        refiner.step(p, r)
    loss1 = refiner.loss_on(p, r)
    assert loss1 < 0.7 * loss0, (loss0, loss1)
    new_net, new_meta = refiner.export()
    assert new_meta.version == meta.version + 1
    assert new_meta.samples_trained == meta.samples_trained + 30 * len(accepted)
    changed = [k for k, v in new_net.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > 0.9 * len(before)
    # the scorer's flow is untouched until the export is swapped in
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    # optimiser state survives a save/restore
    state = refiner.state_dict()
    again = OnlineRefiner(enc, new_net, new_meta, lr=3e-3)
    again.load_state_dict(state)
    assert again.steps == 30 and again.opt.state_dict()["state"]


def _fit_cli(model: Path, data: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    """`python -m flowfield.cli fit` in a subprocess, as a user runs it."""
    cmd = [sys.executable, "-m", "flowfield.cli", "fit", "--model", str(model),
           "--data", str(data), "--out", str(out), *options]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_fit_prints_a_summary(tmp_path, llama_dir):
    data = tmp_path / "expert.jsonl"
    with open(data, "w") as f:
        f.write(json.dumps({"prompt": "Q:12+34\n", "response": "A:46."}) + "\n")
        f.write(json.dumps({"prompt_ids": [3, 4], "response_ids": [5, 6, 7]}) + "\n")
        f.write(json.dumps({"text": "1+1=2"}) + "\n")
    out = _fit_cli(llama_dir, data, tmp_path / "flow", "--epochs", "2", "--depth", "1")
    assert out.returncode == 0, out.stderr
    assert "fit: 2 steps" in out.stdout and "final loss" in out.stdout
    assert "fit:" in out.stderr  # the progress bar
    assert (tmp_path / "flow" / "flow.safetensors").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_ids": [1], "response_ids": [999]}\n')
    out = _fit_cli(llama_dir, bad, tmp_path / "f2")
    assert (
        out.returncode != 0
        and "bad.jsonl:1: response_ids holds token id 999, outside the vocabulary [0, 64)"
        in out.stderr
    )
