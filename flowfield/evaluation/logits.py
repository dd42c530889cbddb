"""Logit-space baselines: per-token negative log-likelihood and entropy under the policy.

One forward of the full causal LM (every block, final norm, LM head) over prompt + response.
The prediction of response token k is read at the position before it, so
    nll[k]     = -log p(a_k | prompt, a_<k)
    entropy[k] = -sum_v p(v | prompt, a_<k) log p(v | prompt, a_<k)
under the model's own distribution (temperature 1), whatever temperature sampled the rollout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.inference_mode()
def token_logit_stats(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int = 0,
    max_batch_tokens: int = 16384,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(nll [n], entropy [n]) per sample, float32 on the CPU, in input order.

    A response token with no prompt token before it (an empty prompt) has no prediction;
    its nll and entropy are NaN.
    """
    model.eval()
    device = next(model.parameters()).device
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(lengths)
    start = 0
    while start < len(order):
        width = max(1, lengths[order[start]])
        rows = order[start : start + max(1, max_batch_tokens // width)]
        start += len(rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, i in enumerate(rows):
            seq = list(prompts[i]) + list(responses[i])
            ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[b, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logp = F.log_softmax(logits.float(), dim=-1).cpu()  # [B, T, V]
        for b, i in enumerate(rows):
            p, r = len(prompts[i]), len(responses[i])
            nll = torch.full((r,), float("nan"))
            ent = torch.full((r,), float("nan"))
            first = 1 if p == 0 else 0  # response token 0 has no prediction without a prompt
            if r > first:
                pos = torch.arange(p + first - 1, p + r - 1)  # positions that predict a_k
                lp = logp[b, pos]  # [r', V]
                targets = torch.tensor(list(responses[i])[first:], dtype=torch.long)
                nll[first:] = -lp.gather(1, targets[:, None]).squeeze(1)
                ent[first:] = -(lp.exp() * lp).sum(dim=-1)
            out[i] = (nll, ent)
    return out  # type: ignore[return-value]
