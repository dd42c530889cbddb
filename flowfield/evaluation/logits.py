"""Logit-space baselines: per-token negative log-likelihood and entropy under the policy.

A forward of the full causal LM (every block, final norm, LM head) over prompt + response.
The prediction of response token k is read at the position before it, so
    nll[k]     = -log p(a_k | prompt, a_<k)
    entropy[k] = -sum_v p(v | prompt, a_<k) log p(v | prompt, a_<k)
under the model's own distribution (temperature 1), whatever temperature sampled the rollout.

Memory is bounded whatever the vocabulary: the LM head runs only on the positions that
predict response tokens (`logits_to_keep`, where the model's forward takes it; prompt
positions are never projected onto the vocabulary), a batch holds at most `max_logit_bytes`
of logits, and the log-softmax runs in chunks of positions. Rows are batched by prompt
length, so the kept span of a batch is little more than its responses.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F

MAX_LOGIT_BYTES = 256 << 20  # float32 logits per batch (a 49k vocabulary: ~1,300 positions)
SOFTMAX_CHUNK = 256  # positions per log-softmax
SPAN_SLACK = 8  # a batch's kept span may exceed its longest response span by this much


def _vocab_size(model: torch.nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "out_features", None):
        return int(head.out_features)
    return int(model.config.vocab_size)


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return False


@torch.inference_mode()
def token_logit_stats(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int = 0,
    max_batch_tokens: int = 16384,
    max_logit_bytes: int = MAX_LOGIT_BYTES,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(nll [n], entropy [n]) per sample, float32 on the CPU, in input order.

    A response token with no prompt token before it (an empty prompt) has no prediction;
    its nll and entropy are NaN.
    """
    model.eval()
    device = next(model.parameters()).device
    vocab = _vocab_size(model)
    keep = _takes_logits_to_keep(model)
    out: list[tuple[torch.Tensor, torch.Tensor]] = [
        (torch.full((len(r),), float("nan")), torch.full((len(r),), float("nan")))
        for r in responses
    ]
    # positions [lo, hi) of sample i predict its response tokens first_i.. (first = 1 without
    # a prompt: response token 0 has no prediction then)
    spans = {}
    for i, (p, r) in enumerate(zip(prompts, responses)):
        first = 1 if len(p) == 0 else 0
        if len(r) > first:
            spans[i] = (len(p) + first - 1, len(p) + len(r) - 1, first)
    order = sorted(spans, key=lambda i: (len(prompts[i]), len(responses[i]), i))
    start = 0
    while start < len(order):
        rows = [order[start]]
        for i in order[start + 1 :]:
            cand = [*rows, i]
            width = max(len(prompts[j]) + len(responses[j]) for j in cand)
            lo = min(spans[j][0] for j in cand) if keep else 0
            hi = max(spans[j][1] for j in cand) if keep else width
            longest = max(spans[j][1] - spans[j][0] for j in cand)
            if (
                width * len(cand) > max_batch_tokens
                or (hi - lo) * len(cand) * vocab * 4 > max_logit_bytes
                or (keep and hi - lo > longest + SPAN_SLACK)  # prompts of other lengths
            ):
                break
            rows = cand
        start += len(rows)
        width = max(len(prompts[j]) + len(responses[j]) for j in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, i in enumerate(rows):
            seq = list(prompts[i]) + list(responses[i])
            ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[b, : len(seq)] = 1
        kwargs = {}
        lo = 0
        if keep:
            lo, hi = min(spans[j][0] for j in rows), max(spans[j][1] for j in rows)
            kwargs["logits_to_keep"] = torch.arange(lo, hi, device=device)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        for b, i in enumerate(rows):
            a, z, first = spans[i]
            targets = torch.tensor(list(responses[i])[first:], dtype=torch.long, device=device)
            nll, ent = out[i]
            for c in range(0, z - a, SOFTMAX_CHUNK):
                part = logits[b, a - lo + c : min(z, a + c + SOFTMAX_CHUNK) - lo].float()
                lp = F.log_softmax(part, dim=-1)  # [chunk, V]
                t = targets[c : c + lp.shape[0]]
                k = first + c
                nll[k : k + lp.shape[0]] = -lp.gather(1, t[:, None]).squeeze(1).cpu()
                ent[k : k + lp.shape[0]] = -(lp.exp() * lp).sum(dim=-1).cpu()
        del logits
    return out
