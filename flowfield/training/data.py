"""Expert data for fitting a flow: JSONL of text or token ids, and token-budget batching."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flowfield.chat import ChatChecks, chat_record
from flowfield.encoder import LatentEncoder
from flowfield.samples import SampleLimits, check_sample, jsonl_objects

log = logging.getLogger("flowfield.data")


@dataclass(frozen=True)
class Sample:
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]


def load_jsonl(
    path: str | Path, encoder: LatentEncoder, max_tokens: int | None = None
) -> list[Sample]:
    """Read expert samples, one JSON object per line, in any of these shapes:

        {"prompt_ids": [...], "response_ids": [...]}   token ids (win when both are given)
        {"prompt": "...", "response": "..."}           text, tokenised with the model's tokenizer
        {"messages": [{"role": ..., "content": ...}, ...]}
                                                       a chat: the last (assistant) message is
                                                       the response, the messages before it go
                                                       through the chat template with
                                                       add_generation_prompt=True
        {"text": "..."}                                whole text scored as a response

    Blank lines are skipped; anything else is an error naming the line, including a sample
    the model cannot score (flowfield.samples.check_sample; max_tokens caps prompt + response
    below the model's context). A response's trailing end-of-turn/EOS token is stripped, and
    prompts of a chat model without the template's assistant header are counted; both are
    logged as warnings (flowfield.chat).
    """
    out: list[Sample] = []
    limits = SampleLimits.of(encoder, max_tokens)
    chat = ChatChecks(encoder)
    for n, row in jsonl_objects(path):
        text: tuple[str, str] | None = None
        document = False  # {"text": ...}: no prompt
        if "response_ids" in row:
            p, r = row.get("prompt_ids") or [], row["response_ids"]
            if not isinstance(p, list) or not isinstance(r, list):
                raise ValueError(f"{path}:{n}: prompt_ids and response_ids must be lists")
        elif "response" in row:
            text = (str(row.get("prompt") or ""), str(row["response"]))
        elif "messages" in row:
            try:
                text = chat_record(row["messages"], getattr(encoder, "tokenizer", None))
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
        elif "text" in row:
            text, document = ("", str(row["text"])), True
        else:
            raise ValueError(f"{path}:{n}: needs response_ids, response, messages or text")
        if text is not None:
            p, r = encoder.tokenize(*text) if limits.has_tokenizer else ([], [])
        problem = check_sample(p, r, limits, needs_tokenizer=text is not None and any(text))
        if problem:
            raise ValueError(f"{path}:{n}: {problem}")
        r = chat.sample(p, r, has_prompt=not document)
        out.append(Sample(tuple(p), tuple(r)))
    if not out:
        raise ValueError(f"{path}: no samples")
    for warning in chat.warnings(str(path)):
        log.warning("%s", warning)
    return out


def token_budget_batches(
    samples: Sequence[Sample], budget: int, seed: int, shuffle: bool = True
) -> list[list[int]]:
    """Indices grouped so each batch holds at most `budget` response tokens (at least one sample).

    Shuffled with `seed`, so an epoch's batches are reproducible (needed to resume a fit).
    """
    order = list(range(len(samples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    cur: list[int] = []
    tokens = 0
    for i in order:
        n = len(samples[i].response_ids)
        if cur and tokens + n > budget:
            batches.append(cur)
            cur, tokens = [], 0
        cur.append(i)
        tokens += n
    if cur:
        batches.append(cur)
    return batches
