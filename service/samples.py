"""Turning request samples into token ids, and the checks that decide 422 vs. sample error.

Request-level problems (no response at all, too many samples or tokens, duplicate ids) are
422s. Problems the API lets a single sample fail with (an id outside the vocabulary, longer
than the model's context, an empty response, text for a policy without a tokenizer) are
flowfield.samples.check_sample's rule; on /v1/score they become that sample's error, and the
other samples are still scored (docs/api.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowfield.chat import encoder_chat_format
from flowfield.encoder import LatentEncoder
from flowfield.samples import SampleLimits, check_sample
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
    """Token ids per sample (ids win over text); 422 if a sample exceeds the token limit.

    Text that cannot be tokenised (the policy has no tokenizer) gives empty ids here and
    is reported per sample by sample_problem.
    """
    prompts, responses = [], []
    for i, s in enumerate(samples):
        p = list(s.prompt_ids) if s.prompt_ids is not None else _text_ids(encoder, s.prompt, 0)
        if s.response_ids is not None:
            r = list(s.response_ids)
        else:
            r = _text_ids(encoder, s.response, 1)
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


def _text_ids(encoder: LatentEncoder, text: str | None, part: int) -> list[int]:
    if text and not encoder.has_tokenizer:
        return []
    pair = ("", text or "") if part else (text or "", "")
    return encoder.tokenize(*pair)[part]


def needs_tokenizer(sample: HasTokens) -> bool:
    """Whether a sample sent text where ids are missing."""
    return bool(
        (sample.prompt_ids is None and sample.prompt)
        or (sample.response_ids is None and sample.response)
    )


def sample_problem(
    prompt: list[int],
    response: list[int],
    encoder: LatentEncoder,
    sample: HasTokens | None = None,
) -> str | None:
    """Why this sample cannot be scored by this encoder, or None (flowfield.samples' rule)."""
    return check_sample(
        prompt,
        response,
        SampleLimits.of(encoder),
        needs_tokenizer=sample is not None and needs_tokenizer(sample),
    )


@dataclass
class SampleNotes:
    """What /v1/score did to a sample before scoring it, and tells its result."""

    stripped: int = 0  # trailing end-of-turn tokens not scored (their reward is 0)
    warnings: list[str] = field(default_factory=list)


def resolve_samples(
    samples: Sequence[HasTokens], encoder: LatentEncoder, settings: Settings
) -> tuple[list[list[int]], list[list[int]], list[SampleNotes]]:
    """resolve_ids, then the chat checks of flowfield.chat, per sample: a response's
    trailing end-of-turn/EOS token is cut off (scored without it, as the flow was fitted) and
    a chat model's prompt without the template's assistant header is warned about."""
    prompts, responses = resolve_ids(samples, encoder, settings)
    fmt = encoder_chat_format(encoder)
    notes = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        note = SampleNotes()
        kept, cut = fmt.strip_end(r)
        if cut:
            responses[i], note.stripped = kept, len(cut)
            note.warnings.append(fmt.end_warning([t for t in cut if t in fmt.end_ids]))
        if fmt.lacks_header(p):
            note.warnings.append(fmt.header_warning())
        notes.append(note)
    return prompts, responses, notes


def with_notes(result: Any, note: SampleNotes) -> Any:
    """A ScoreResult with its sample's notes: the warnings, and the stripped tokens back at
    the end of every per-token list (reward 0, deviation 0, advantage = the outcome term), so
    the lists stay aligned to the response_ids that were sent."""
    if note.warnings:
        result.warnings = list(note.warnings)
    if not note.stripped:
        return result
    result.num_tokens += note.stripped
    if result.status != "ok":
        return result
    pad = [0.0] * note.stripped
    result.token_rewards = [*result.token_rewards, *pad]
    if result.deviations is not None:
        result.deviations = [*result.deviations, *pad]
    if result.advantages is not None:
        outcome = result.advantages[-1] - result.token_rewards[-note.stripped - 1]
        result.advantages = [*result.advantages, *([outcome] * note.stripped)]
    return result
