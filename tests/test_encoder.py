import pytest
import torch
from helpers import random_samples, save_tiny_model
from transformers import AutoModelForCausalLM

from flowfield.encoder import LatentEncoder, layer_indices


def test_layer_indices_follow_round_p_times_l():
    assert layer_indices((0.25, 0.5, 0.75), 28) == [7, 14, 21]
    assert layer_indices((0.25, 0.5, 0.75), 32) == [8, 16, 24]
    assert layer_indices((0.25, 0.5, 0.75), 4) == [1, 2, 3]
    assert layer_indices((0.25, 0.5, 0.75), 6) == [2, 3, 5]  # halves round up
    with pytest.raises(ValueError, match="outside"):
        layer_indices((1.0,), 8)
    with pytest.raises(ValueError, match="repeated"):
        layer_indices((0.5, 0.52), 8)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_truncated_latents_equal_full_forward_hidden_states(model_dirs, arch):
    enc = LatentEncoder(model_dirs[arch])
    assert enc.layers == [2, 4, 6]
    prompts, responses = random_samples(5, seed=1)
    prompts[1] = []  # an empty prompt is allowed
    batch = enc.encode(prompts, responses)
    full = AutoModelForCausalLM.from_pretrained(model_dirs[arch]).eval()
    for i, (p, r) in enumerate(zip(prompts, responses)):
        with torch.no_grad():
            out = full(input_ids=torch.tensor([p + r]), output_hidden_states=True)
        # hidden_states[i + 1] is the output of block i (index 0 is the embeddings)
        ref = torch.stack([out.hidden_states[j + 1][0, len(p) :] for j in enc.layers])
        got = batch.h[:, batch.offsets[i] : batch.offsets[i + 1]]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_forward_stops_after_deepest_hooked_block(llama_dir):
    enc = LatentEncoder(llama_dir)
    ran = []
    blocks = enc.model.model.layers
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
    enc.model.model.norm.register_forward_hook(lambda *a: ran.append("norm"))
    enc.model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head"))
    enc.encode([[3, 4, 5]], [[6, 7]])
    assert ran == list(range(max(enc.layers) + 1))


def test_last_block_is_read_before_the_final_norm(tmp_path):
    # 4 layers -> blocks 1, 2, 3; block 3 is the last, whose output HF returns normed
    path = save_tiny_model(tmp_path / "m4", "llama", layers=4)
    enc = LatentEncoder(path)
    assert enc.layers == [1, 2, 3]
    captured = {}
    full = AutoModelForCausalLM.from_pretrained(path).eval()
    full.model.layers[3].register_forward_hook(
        lambda m, a, o: captured.setdefault("h", o[0] if isinstance(o, tuple) else o)
    )
    ids = [5, 6, 7, 8, 9]
    with torch.no_grad():
        out = full(input_ids=torch.tensor([ids]), output_hidden_states=True)
    got = enc.encode([ids[:2]], [ids[2:]]).h[2]
    torch.testing.assert_close(got, captured["h"][0, 2:])
    assert not torch.allclose(got, out.hidden_states[4][0, 2:])  # that one went through the norm


def test_latents_do_not_depend_on_batch_mates(llama_dir):
    enc = LatentEncoder(llama_dir, max_batch_tokens=64)  # forces several micro-batches
    prompts, responses = random_samples(12, seed=2)
    together = enc.encode(prompts, responses)
    for i in (0, 5, 11):
        alone = enc.encode([prompts[i]], [responses[i]])
        sl = slice(together.offsets[i], together.offsets[i + 1])
        torch.testing.assert_close(together.h[:, sl], alone.h, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together.next[:, sl], alone.next, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together.prev[:, sl], alone.prev, atol=1e-5, rtol=1e-5)


def test_context_neighbours(llama_dir):
    enc = LatentEncoder(llama_dir)
    p, r = [3, 4, 5], [6, 7, 8, 9]
    b = enc.encode([p], [r])
    whole = enc.encode([[]], [p + r])  # every token a "response" token: all positions
    torch.testing.assert_close(b.prev[:, 0], whole.h[:, 2])  # last prompt token
    torch.testing.assert_close(b.prev[:, 1:], b.h[:, :-1])
    torch.testing.assert_close(b.next[:, :-1], b.h[:, 1:])
    assert torch.all(b.next[:, -1] == 0)  # past the end
    assert torch.all(whole.prev[:, 0] == 0)  # no prompt: zero context
    assert torch.equal(b.context("none"), torch.zeros_like(b.h))


def test_identity_and_errors(tmp_path, llama_dir):
    enc = LatentEncoder(llama_dir, name="tiny", revision="step-3")
    assert enc.identity.label() == "tiny@step-3"
    assert enc.identity.hidden_size == 32 and enc.identity.layers == (2, 4, 6)
    with pytest.raises(FileNotFoundError, match="config.json"):
        LatentEncoder(tmp_path)


def test_micro_batches_bound_padded_tokens(llama_dir):
    enc = LatentEncoder(llama_dir, max_batch_tokens=100)
    lengths = [50, 10, 30, 40, 5, 60, 20]
    batches = enc.micro_batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 100
