"""Turning request samples into token ids, and the checks that decide 422 vs. sample error.

Request-level problems (no response at all, too many samples or tokens, duplicate ids) are
422s. Problems the API lets a single sample fail with (an id outside the vocabulary, longer
than the model's context, an empty response) become that sample's error, and the other
samples are still scored (API.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from flowfield.encoder import LatentEncoder
from service.errors import ApiError
from service.settings import Settings


class HasTokens(Protocol):
    id: str
    prompt_ids: list[int] | None
    response_ids: list[int] | None
    prompt: str | None
    response: str | None


def check_request_limits(samples: Sequence[HasTokens], settings: Settings) -> None:
    if len(samples) > settings.max_samples:
        raise ApiError(
            422,
            "too_many_samples",
            f"{len(samples)} samples; the limit is {settings.max_samples} per request",
            "samples",
        )
    seen: set[str] = set()
    for i, s in enumerate(samples):
        if s.id in seen:
            raise ApiError(
                422,
                "duplicate_id",
                f"sample id {s.id!r} appears more than once",
                f"samples[{i}].id",
                s.id,
            )
        seen.add(s.id)
        if s.response_ids is None and s.response is None:
            raise ApiError(
                422,
                "missing_response",
                "a sample needs response_ids (token ids) or response (text)",
                f"samples[{i}].response_ids",
                s.id,
            )


def resolve_ids(
    samples: Sequence[HasTokens], encoder: LatentEncoder, settings: Settings
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids per sample (ids win over text); 422 if a sample exceeds the token limit."""
    prompts, responses = [], []
    for i, s in enumerate(samples):
        if s.prompt_ids is not None:
            p = list(s.prompt_ids)
        else:
            p = encoder.tokenize(s.prompt or "", "")[0]
        if s.response_ids is not None:
            r = list(s.response_ids)
        else:
            r = encoder.tokenize("", s.response or "")[1]
        if len(p) + len(r) > settings.max_tokens_per_sample:
            raise ApiError(
                422,
                "too_many_tokens",
                f"{len(p) + len(r)} tokens (prompt + response); the limit is "
                f"{settings.max_tokens_per_sample} per sample",
                f"samples[{i}].response_ids",
                s.id,
            )
        prompts.append(p)
        responses.append(r)
    return prompts, responses


def sample_problem(prompt: list[int], response: list[int], encoder: LatentEncoder) -> str | None:
    """Why this sample cannot be scored by this encoder, or None."""
    if not response:
        return "empty response: nothing to score"
    vocab = encoder.vocab_size
    for name, ids in (("prompt_ids", prompt), ("response_ids", response)):
        if ids and (min(ids) < 0 or max(ids) >= vocab):
            bad = next(x for x in ids if x < 0 or x >= vocab)
            return f"{name} holds token id {bad}, outside the vocabulary [0, {vocab})"
    limit = encoder.max_positions
    if limit and len(prompt) + len(response) > limit:
        return f"{len(prompt) + len(response)} tokens, longer than the model's context of {limit}"
    return None
