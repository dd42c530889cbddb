"""One forward of the policy over its own rollouts: log-probs for the loss, logit signals.

The policy-gradient step is on-policy with a single optimiser step per batch, so the PPO
ratio is 1 and needs no clipping, and there is no KL term (RLFR's GRPO variant has none):

    loss = - sum_{i, k} A_{i,k} log pi(y_{i,k} | x_i, y_{i,<k}) / (number of trained tokens)

The trained tokens are the response tokens plus the end-of-sequence token when the policy
emitted one: stopping is a decision of the policy too, and a rollout's length is one of the
reward-hacking signs the experiment watches. The end token has no flow reward (the service
scores response tokens only); its advantage is the outcome advantage alone.

The same forward gives the logit-space signals of the entropy and NLL arms (detached), the
way RLFR reads its latents from the forward that computes the old log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flowfield.demo.policy import MAX_RESPONSE_TOKENS, Rollout


def ended(rollout: Rollout) -> bool:
    """Whether the policy emitted the end token (sample_rollouts strips it from the ids).

    The sampler stops at MAX_RESPONSE_TOKENS; a shorter response can only have ended there.
    """
    return len(rollout.response_ids) < MAX_RESPONSE_TOKENS


@dataclass
class PolicyForward:
    """Per rollout i: `logp[i]` [n_i (+1)] log-probs of its trained tokens (with grad);
    `nll[i]`, `entropy[i]` [n_i] detached signals at its response tokens (no end token)."""

    logp: list[torch.Tensor]
    nll: list[torch.Tensor]
    entropy: list[torch.Tensor]


def policy_forward(
    model: torch.nn.Module, rollouts: Sequence[Rollout], eos_id: int, pad_id: int
) -> PolicyForward:
    """Forward a right-padded batch of prompt + response (+ end token) with gradients."""
    seqs = []
    for r in rollouts:
        tail = [eos_id] if ended(r) else []
        seqs.append(list(r.prompt_ids) + list(r.response_ids) + tail)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    # logits at position j predict the token at j + 1
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logprobs = F.log_softmax(logits, dim=-1)  # [B, T-1, V]
    taken = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)  # [B, T-1]
    with torch.no_grad():
        ent = -(logprobs.exp() * logprobs).sum(-1)  # [B, T-1]
    out = PolicyForward([], [], [])
    for i, (r, s) in enumerate(zip(rollouts, seqs)):
        p, n = len(r.prompt_ids), len(r.response_ids)
        first = p - 1  # the position that predicts response token 0
        out.logp.append(taken[i, first : len(s) - 1])
        out.nll.append(-taken[i, first : first + n].detach())
        out.entropy.append(ent[i, first : first + n])
    return out


def policy_gradient_loss(
    logp: Sequence[torch.Tensor], advantages: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Token-mean of -A * log pi over every trained token of the batch."""
    if len(logp) != len(advantages):
        raise ValueError("one advantage vector per rollout is needed")
    total = torch.zeros(())
    count = 0
    for lp, adv in zip(logp, advantages):
        if lp.shape != adv.shape:
            raise ValueError(f"advantages {tuple(adv.shape)} do not match tokens {tuple(lp.shape)}")
        total = total - (adv.to(lp.dtype) * lp).sum()
        count += lp.numel()
    return total / max(count, 1)
