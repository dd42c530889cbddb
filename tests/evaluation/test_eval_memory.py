"""`flowfield eval`'s policy baselines in bounded memory: the LM head runs on response
positions only, logits come in bounded batches and chunks, and the encoder's own model
serves as the LM (no second copy), with the same numbers as a direct computation."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from flowfield.encoder import LatentEncoder
from flowfield.evaluation import logits as logits_mod
from flowfield.evaluation.logits import token_logit_stats

PROMPTS = [[5, 6, 7] * 10, [8], [], [9, 10] * 12]
RESPONSES = [[9, 10], [11, 12, 13, 14], [15, 16], [17, 18, 19]]


def _direct(model, p, r):
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].float(), -1)
    nll, ent = [], []
    for k, t in enumerate(r):
        pos = len(p) + k - 1
        nll.append(math.nan if pos < 0 else -logp[pos, t].item())
        ent.append(math.nan if pos < 0 else -(logp[pos].exp() * logp[pos]).sum().item())
    return nll, ent


def _check(stats, model):
    for p, r, (nll, ent) in zip(PROMPTS, RESPONSES, stats):
        want_nll, want_ent = _direct(model, p, r)
        assert nll.tolist() == pytest.approx(want_nll, abs=1e-4, nan_ok=True)
        assert ent.tolist() == pytest.approx(want_ent, abs=1e-4, nan_ok=True)


class _NoKeep(torch.nn.Module):
    """A causal LM whose forward has no logits_to_keep (older or remote-code models)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def test_logit_stats_read_only_response_positions(llama_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    seen = []
    model.lm_head.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    stats = token_logit_stats(model, PROMPTS, RESPONSES)
    # the head saw the responses' span of each batch (rows of other prompt lengths widen it
    # by at most SPAN_SLACK), never the 24-30 prompt positions
    assert seen and max(seen) <= 3 + logits_mod.SPAN_SLACK and sum(seen) < 24
    _check(stats, model)
    # tiny budgets: one row per batch, log-softmax in chunks of one position
    monkeypatch.setattr(logits_mod, "SOFTMAX_CHUNK", 1)
    _check(token_logit_stats(model, PROMPTS, RESPONSES, max_logit_bytes=1), model)
    _check(token_logit_stats(_NoKeep(model), PROMPTS, RESPONSES, max_logit_bytes=1), model)


def test_the_encoders_model_is_the_lm_and_its_hooks_stay_out_of_the_way(llama_dir):
    enc = LatentEncoder(llama_dir)
    fresh = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    _check(token_logit_stats(enc.model, PROMPTS, RESPONSES), fresh)
    # and the encoder still stops at its deepest hooked block afterwards
    out = enc.encode(PROMPTS[:2], RESPONSES[:2])
    assert out.h.shape == (3, 6, enc.hidden_size)
