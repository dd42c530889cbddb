"""Whether a sample can be scored (or trained on) by a policy: the one rule.

Every place that takes samples applies it: the service's /v1/score (per-sample error),
/v1/update (422), /get_reward (422), the learner (drops the sample), and the JSONL loaders
of fitting (`flowfield.training.load_jsonl`) and evaluation (`load_rollouts`), which name the
file and line. A sample can be scored when

- it does not need text tokenised by a policy without a tokenizer;
- its response has at least one token;
- every prompt and response id is an integer in [0, vocab_size);
- prompt + response fit the model's context (max_position_embeddings) and any smaller
  caller limit.

Request-level limits (samples per request, tokens per sample, cost) are the service's own.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowfield.encoder import NO_TOKENIZER

EMPTY_RESPONSE = "empty response: nothing to score"


@dataclass(frozen=True)
class SampleLimits:
    """What an encoder accepts: its vocabulary, its context, whether it can tokenise text.

    max_tokens is an optional caller limit on prompt + response tokens, on top of the
    model's context (max_positions; None when the model does not say).
    """

    vocab_size: int
    max_positions: int | None = None
    has_tokenizer: bool = True
    max_tokens: int | None = None

    @classmethod
    def of(cls, encoder: Any, max_tokens: int | None = None) -> SampleLimits:
        """The limits of a LatentEncoder (or anything with vocab_size and max_positions)."""
        positions = getattr(encoder, "max_positions", None)
        return cls(
            vocab_size=int(encoder.vocab_size),
            max_positions=int(positions) if positions else None,
            has_tokenizer=bool(getattr(encoder, "has_tokenizer", True)),
            max_tokens=max_tokens or None,
        )


def check_sample(
    prompt_ids: Sequence[Any],
    response_ids: Sequence[Any],
    limits: SampleLimits,
    *,
    needs_tokenizer: bool = False,
) -> str | None:
    """Why this sample cannot be scored under `limits`, or None when it can.

    needs_tokenizer: the sample gave text where ids are missing (its ids, if any, are then
    not looked at when the policy has no tokenizer).
    """
    if needs_tokenizer and not limits.has_tokenizer:
        return NO_TOKENIZER
    if len(response_ids) == 0:  # (len: numpy arrays have no truth value)
        return EMPTY_RESPONSE
    vocab = limits.vocab_size
    for name, ids in (("prompt_ids", prompt_ids), ("response_ids", response_ids)):
        bad = _bad_id(name, ids, vocab)
        if bad is not None:
            return bad
    n = len(prompt_ids) + len(response_ids)
    if limits.max_positions and n > limits.max_positions:
        return f"{n} tokens, longer than the model's context of {limits.max_positions}"
    if limits.max_tokens and n > limits.max_tokens:
        return f"{n} tokens, more than the limit {limits.max_tokens}"
    return None


def _bad_id(name: str, ids: Sequence[Any], vocab: int) -> str | None:
    """What is wrong with the first id that is not an integer in [0, vocab), or None."""
    if len(ids) == 0:
        return None
    if set(map(type, ids)) <= {int} and min(ids) >= 0 and max(ids) < vocab:
        return None  # the common case, checked at C speed
    for x in ids:
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            return f"{name} holds {repr(x)[:40]}, not a token id (an integer in [0, {vocab}))"
        if not 0 <= x < vocab:
            return f"{name} holds token id {int(x)}, outside the vocabulary [0, {vocab})"
    return None


def jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSONL file, blank lines skipped; a line that is not a JSON
    object is a ValueError naming the file and line."""
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
            yield n, row
