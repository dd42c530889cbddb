"""Rollouts of the real policy: batched sampling with left padding, verified and located.

Each prompt is the chat template applied to the few-shot conversation with
add_generation_prompt=True (text ending in "<|im_start|>assistant\\n"), tokenised with
add_special_tokens=False, which is how flowfield tokenises a text prompt too (the template's
"<|im_start|>"/"<|im_end|>" are parsed as their special tokens either way).

A response is the generated ids up to, NOT including, the first end-of-turn token
<|im_end|> (id 2, also the pad token); `finished` says whether one was generated at all
(false: cut at max_new_tokens).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flowfield.progress import progress_bar
from research.real.task import Problem, char_to_token, first_error_char, first_step_error, verify


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0 = off (plain temperature sampling)
    max_new_tokens: int = 64
    batch_size: int = 32  # rows (prompt x sample) per generate call
    seed: int = 0


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded prefix (the decoded text is their join)."""
    out, prev = [], ""
    for k in range(1, len(ids) + 1):
        cur = tokenizer.decode(ids[:k])
        out.append(cur[len(prev) :])
        prev = cur
    return out


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def record(
    tokenizer,
    problem: Problem,
    prompt: str,
    prompt_ids: list[int],
    response_ids: list[int],
    finished: bool,
    split: str,
    rid: str,
) -> dict:
    """One rollout as a JSONL row (the `flowfield eval --data` shape, plus task fields)."""
    response = tokenizer.decode(response_ids)
    reward = verify(problem, response)
    texts = token_texts(tokenizer, response_ids)
    fe_char = first_error_char(problem, response)
    fe = None
    if fe_char is not None and "".join(texts) == response:
        fe = char_to_token(texts, fe_char)
    retok = tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
    return {
        "id": rid,
        "group_id": problem.id,
        "split": split,
        "problem": list(problem.numbers),
        "answer": problem.answer,
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "response": response,
        "response_ids": response_ids,
        "response_excludes_eos": True,  # <|im_end|> is stripped from response_ids/response
        "finished": finished,  # an <|im_end|> was generated (false: cut at max_new_tokens)
        "reward": reward,
        "first_error": fe,  # response token index of the first wrong token (reward 0 only)
        "first_error_char": fe_char,
        "steps_ok": first_step_error(problem, response) is None,
        "response_retokenizes": list(retok) == list(response_ids),
    }


@torch.inference_mode()
def sample_rollouts(
    model,
    tokenizer,
    problems: Sequence[Problem],
    prompts: Sequence[str],
    samples_per_problem: int,
    cfg: SamplingConfig,
    split: str,
    desc: str,
) -> tuple[list[dict], dict]:
    """`samples_per_problem` rollouts of each problem. Batch i is sampled after
    torch.manual_seed(cfg.seed * 1_000_003 + i): reproducible on the same machine, torch and
    thread count. Returns (rows, timing)."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    tokenizer.padding_side = "left"
    per_batch = max(1, cfg.batch_size // samples_per_problem)
    rows: list[dict] = []
    new_tokens = 0
    t0 = time.time()
    bar = progress_bar(len(problems) * samples_per_problem, desc, "rollout")
    for b, start in enumerate(range(0, len(problems), per_batch)):
        part = list(problems[start : start + per_batch])
        texts = list(prompts[start : start + per_batch])
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(cfg.seed * 1_000_003 + b)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_new_tokens=cfg.max_new_tokens,
            num_return_sequences=samples_per_problem,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        width = enc["input_ids"].shape[1]
        for row, seq in enumerate(out.tolist()):
            i = row // samples_per_problem
            gen = seq[width:]
            finished = eos in gen
            response_ids = gen[: gen.index(eos)] if finished else gen
            new_tokens += len(response_ids) + int(finished)
            mask = enc["attention_mask"][i].tolist()
            prompt_ids = [t for t, m in zip(enc["input_ids"][i].tolist(), mask) if m]
            rid = f"{split}-{part[i].id}-{row % samples_per_problem}"
            rows.append(
                record(tokenizer, part[i], texts[i], prompt_ids, response_ids, finished, split, rid)
            )
        bar.update(len(part) * samples_per_problem)
    bar.close()
    seconds = time.time() - t0
    timing = {
        "rollouts": len(rows),
        "seconds": round(seconds, 1),
        "seconds_per_rollout": round(seconds / max(1, len(rows)), 3),
        "generated_tokens": new_tokens,
        "tokens_per_second": round(new_tokens / max(seconds, 1e-9), 1),
    }
    return rows, timing
