"""The demo policy's sampler and rollouts (the policy itself, a tiny GPT-2-shaped causal LM, is
trained by research/demo_build/train_policy.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from flowfield.demo.task import Problem, expert_solution, first_error, verify
from flowfield.encoder import cache_argument

MAX_RESPONSE_TOKENS = 48


@dataclass
class Rollout:
    problem: Problem
    prompt_ids: list[int]
    response_ids: list[int]  # without the end-of-sequence token
    response: str
    reward: float  # the verifier's outcome reward
    first_error: int | None  # index of the first wrong response token, None if expert-exact


@torch.inference_mode()
def sample_rollouts(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
) -> list[Rollout]:
    """Sample one response per problem (ancestral sampling, no top-k/top-p), verify it.

    Every demo prompt has the same length, so a batch needs no padding.
    """
    gen = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    cache_kw = cache_argument(model)
    out: list[Rollout] = []
    model.eval()
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        ids = torch.tensor(
            [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in chunk]
        )
        done = torch.zeros(len(chunk), dtype=torch.bool)
        new_tokens = []
        past = None
        step_input = ids
        for _ in range(MAX_RESPONSE_TOKENS):
            res = model(input_ids=step_input, **{cache_kw: past}, use_cache=True)
            past = res.cache if cache_kw == "cache" else res.past_key_values
            logits = res.logits[:, -1, :].float()
            probs = torch.softmax(logits / max(temperature, 1e-6), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            new_tokens.append(nxt)
            done |= nxt == eos
            if bool(done.all()):
                break
            step_input = nxt[:, None]
        gen_ids = torch.stack(new_tokens, dim=1).tolist()
        for p, prompt_ids, toks in zip(chunk, ids.tolist(), gen_ids):
            resp = toks[: toks.index(eos)] if eos in toks else toks
            text = tokenizer.decode(resp)
            out.append(Rollout(p, prompt_ids, resp, text, verify(p, text), first_error(p, text)))
    return out


def expert_rollout(problem: Problem, tokenizer: PreTrainedTokenizerBase) -> Rollout:
    text = expert_solution(problem)
    return Rollout(
        problem,
        tokenizer(problem.prompt, add_special_tokens=False)["input_ids"],
        tokenizer(text, add_special_tokens=False)["input_ids"],
        text,
        1.0,
        None,
    )
