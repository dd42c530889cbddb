"""`flowfield fit` defaults for real models: the schedule bounded by the data (an epoch cap,
early stopping on the held-out loss with the best weights kept), the width rule, the time
estimate, the latent cache on disk, the shared-prefix encoding, a served folder without the
optimiser state, and the report's same-class corruption."""

import logging
import random

import pytest
import torch
from helpers import random_samples

from flowfield.checkpoint import load_flow
from flowfield.encoder import LatentEncoder, shared_prefix_length
from flowfield.flownet import FlowNet, flow_for_encoder
from flowfield.training import FitConfig, Sample, fit_flow
from flowfield.training.fit import (
    MAX_DEFAULT_WIDTH,
    TRAINER_STATE,
    EarlyStopping,
    default_width,
    resolve_schedule,
)
from flowfield.training.latents import LatentCache
from flowfield.training.report import Corrupter, split_holdout, token_class


def _samples(n=60, seed=0, prefix=0):
    prompts, responses = random_samples(n, seed=seed, response_range=(4, 12))
    head = list(range(2, 2 + prefix))
    return [Sample(tuple(head + p), tuple(r)) for p, r in zip(prompts, responses)]


def test_width_rule_bounds_the_flow_from_small_to_large_models():
    assert [default_width(d) for d in (128, 576, 4096)] == [128, 256, 256]
    for d, most in ((576, 2.5e6), (4096, 5.5e6)):  # d=576 at W=d would be 9.3M parameters
        net = FlowNet(flow_for_encoder(d, (0.25, 0.5, 0.75), default_width(d)))
        assert net.config.width == MAX_DEFAULT_WIDTH and net.num_parameters() < most


def test_epochs_are_capped_on_small_data_and_the_demo_recipe_is_kept():
    tiny = resolve_schedule(FitConfig(), tokens=8_700, width=256)  # 1,000 steps = 59 epochs
    assert tiny.epochs == 20 and tiny.batch_tokens == 512
    uncapped = resolve_schedule(FitConfig(max_epochs=None), tokens=8_700, width=256)
    assert uncapped.epochs == pytest.approx(1000 * 512 / 8_700)
    # the bundled demo's recipe (--batch-tokens 672 --min-steps 4000): 17 epochs, under the cap
    demo = resolve_schedule(FitConfig(batch_tokens=672, min_steps=4000), tokens=156_600, width=128)
    assert demo.epochs == pytest.approx(4000 * 672 / 156_600)
    given = resolve_schedule(FitConfig(epochs=50, batch_tokens=64), tokens=1000, width=8)
    assert given.epochs == 50  # given epochs are never capped


def test_early_stopping_keeps_the_best_weights_and_says_so(tmp_path, llama_dir, caplog):
    enc = LatentEncoder(llama_dir)
    samples = _samples(80)
    cfg = FitConfig(
        epochs=40, batch_tokens=64, lr=3e-3, depth=1, eval_every=2, patience=2, holdout=8
    )
    with caplog.at_level(logging.INFO, logger="flowfield.fit"):
        res = fit_flow(enc, samples, tmp_path / "flow", cfg, progress=False)
    assert res.stopped_early and res.steps < res.planned_steps
    assert res.best_step is not None and res.best_step <= res.steps
    text = caplog.text
    assert "early stopping on (held-out loss" in text and "estimate:" in text
    assert "at most" in text and "min more" in text and "flow trained in float32" in text
    assert "early stopping: stopped at step" in res.summary()
    # the saved weights are the best evaluation's: their held-out loss is the recorded one
    net, meta = load_flow(tmp_path / "flow", enc.identity)
    assert meta.extra["early_stopping"]["best_step"] == res.best_step
    _, held = split_holdout(samples, cfg.holdout)
    probe = EarlyStopping(enc, held, net.config.context, 2, 2, cfg.seed)
    assert probe.loss(net) == pytest.approx(res.heldout_loss, rel=1e-5)
    # a finished fit keeps no optimiser state in the served folder, and cannot be resumed
    assert not (tmp_path / "flow" / TRAINER_STATE).exists()
    with pytest.raises(ValueError, match="is complete"):
        fit_flow(enc, samples, tmp_path / "flow", cfg, resume=True, progress=False)


def test_trainer_state_is_kept_on_request_and_while_paused(tmp_path, llama_dir):
    enc = LatentEncoder(llama_dir)
    samples = _samples(30)
    cfg = FitConfig(epochs=2, batch_tokens=64, depth=1)
    fit_flow(enc, samples, tmp_path / "a", cfg, progress=False, stop_after=2)
    assert (tmp_path / "a" / TRAINER_STATE).is_file()  # paused: --resume needs it
    fit_flow(enc, samples, tmp_path / "a", cfg, resume=True, progress=False)
    assert not (tmp_path / "a" / TRAINER_STATE).exists()
    keep = FitConfig(epochs=2, batch_tokens=64, depth=1, keep_trainer_state=True)
    fit_flow(enc, samples, tmp_path / "b", keep, progress=False)
    assert (tmp_path / "b" / TRAINER_STATE).is_file()


def test_disk_cache_gives_the_memory_cache_and_is_removed(tmp_path, llama_dir, caplog):
    enc = LatentEncoder(llama_dir)
    samples = _samples(20, seed=4)
    mem = LatentCache(enc, samples, chunk=7, progress=False)
    disk = LatentCache(enc, samples, chunk=7, progress=False, storage=tmp_path / "c" / "h.f32")
    assert (tmp_path / "c" / "h.f32").stat().st_size == mem.nbytes
    pick = [3, 0, 19, 7]
    for a, b in zip(mem.batch(pick), disk.batch(pick)):
        assert torch.equal(a, b)
    cfg = FitConfig(epochs=1, batch_tokens=64, depth=1, cache_gb=0.0)
    with caplog.at_level(logging.INFO, logger="flowfield.fit"):
        fit_flow(enc, samples, tmp_path / "flow", cfg, progress=False)
    assert "cached on disk" in caplog.text
    assert sorted(p.name for p in (tmp_path / "flow").iterdir()) == [
        "flow.json",
        "flow.safetensors",
    ]


def test_a_shared_prompt_prefix_is_encoded_once_with_the_same_latents(llama_dir):
    enc = LatentEncoder(llama_dir)
    samples = _samples(9, seed=2, prefix=40)
    prompts = [s.prompt_ids for s in samples]
    responses = [s.response_ids for s in samples]
    assert shared_prefix_length(prompts) >= 40
    plain = enc.encode(prompts, responses)
    shared = enc.encode(prompts, responses, share_prefix=True)
    for a, b in ((plain.h, shared.h), (plain.prev, shared.prev), (plain.next, shared.next)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert shared_prefix_length([[1, 2, 3], [1, 2]]) == 1  # a prompt keeps its last token
    assert shared_prefix_length([[1, 2], []]) == 0


def test_corruption_replaces_a_token_by_one_of_its_class():
    assert [token_class(t) for t in ("4", " 4", "12", " The", "answer", ".", " =", " ")] == [
        "digits1",
        "_digits1",
        "digits2",
        "_word",
        "word",
        "punct",
        "_punct",
        "space",
    ]
    texts = {i: str(i) for i in range(10)} | {10: " The", 11: " answer", 12: ".", 13: " "}
    expert = [1, 2, 3, 4, 10, 11, 12, 13] * 5
    c = Corrupter(expert, texts)
    rng = random.Random(0)
    for _ in range(50):
        response = [1, 13, 10, 12]
        bad = c.corrupt(response, rng, 0.05)
        (i,) = [k for k in range(4) if bad[k] != response[k]]  # exactly one token changed
        assert token_class(texts[bad[i]]) == token_class(texts[response[i]])
        assert i in (0, 2)  # "." and " " have no other token of their class in the data
    assert Corrupter(expert).kind == "expert-frequency"  # no tokenizer: no classes


@pytest.mark.slow
def test_cli_fit_names_the_encoder_and_prints_setup_estimate_and_early_stopping(tmp_path):
    import json
    import subprocess
    import sys

    from helpers import chat_tokenizer, save_tiny_chat_model

    model = save_tiny_chat_model(tmp_path / "policy")
    tok = chat_tokenizer()
    rng = random.Random(0)
    with open(tmp_path / "expert.jsonl", "w") as f:
        for _ in range(60):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            convo = [{"role": "user", "content": f"{a}+{b}?"}]
            f.write(
                json.dumps({"messages": [*convo, {"role": "assistant", "content": f"{a + b}."}]})
            )
            f.write("\n")
    cmd = [sys.executable, "-m", "flowfield.cli", "fit", "--model", str(model), "--data",
           str(tmp_path / "expert.jsonl"), "--out", str(tmp_path / "flow"), "--depth", "1",
           "--encoder-name", "tiny-chat", "--eval-every", "5", "--patience", "2"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "width 32 (min(d = 32, 256))" in out.stderr and "estimate:" in out.stderr
    assert "early stopping:" in out.stdout and "corruption           5% of response" in out.stdout
    _, meta = load_flow(tmp_path / "flow")
    assert meta.encoder["name"] == "tiny-chat" and meta.extra["complete"]
    assert len(tok("1", add_special_tokens=False)["input_ids"]) == 1


def test_a_paused_fit_with_early_stopping_resumes_as_if_uninterrupted(tmp_path, llama_dir):
    enc = LatentEncoder(llama_dir)
    samples = _samples(60, seed=6)
    cfg = FitConfig(epochs=4, batch_tokens=96, lr=3e-3, depth=1, eval_every=3, patience=50)
    full = fit_flow(enc, samples, tmp_path / "full", cfg, progress=False)
    part = fit_flow(enc, samples, tmp_path / "part", cfg, progress=False, stop_after=7)
    assert part.steps == 7 and part.best_step is None
    resumed = fit_flow(enc, samples, tmp_path / "part", cfg, resume=True, progress=False)
    assert (resumed.steps, resumed.best_step) == (full.steps, full.best_step)
    assert resumed.heldout_loss == pytest.approx(full.heldout_loss, rel=1e-5)
    a, _ = load_flow(tmp_path / "full")
    b, _ = load_flow(tmp_path / "part")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=k)
