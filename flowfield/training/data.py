"""Expert data for fitting a flow: JSONL of text or token ids, and token-budget batching."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flowfield.encoder import LatentEncoder


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
        {"text": "..."}                                whole text scored as a response

    Blank lines are skipped; anything else is an error naming the line.
    """
    out: list[Sample] = []
    vocab = encoder.vocab_size
    limit = max_tokens or encoder.max_positions
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            if "response_ids" in row:
                p, r = list(row.get("prompt_ids") or []), list(row["response_ids"])
            elif "response" in row:
                p, r = encoder.tokenize(str(row.get("prompt") or ""), str(row["response"]))
            elif "text" in row:
                p, r = encoder.tokenize("", str(row["text"]))
            else:
                raise ValueError(f"{path}:{n}: needs response_ids, response or text")
            ids = p + r
            if not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
                raise ValueError(f"{path}:{n}: token ids must be integers in [0, {vocab})")
            if not r:
                raise ValueError(f"{path}:{n}: empty response")
            if limit and len(ids) > limit:
                raise ValueError(f"{path}:{n}: {len(ids)} tokens, more than the limit {limit}")
            out.append(Sample(tuple(p), tuple(r)))
    if not out:
        raise ValueError(f"{path}: no samples")
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
