"""Value types of the update path: an accepted sample, a queued entry, an enqueue result.

Samples travel through Redis as compact JSON, so the format is explicit here and versioned
by its field names only (unknown fields are ignored on read, missing `weight` means 1.0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class UpdateSample:
    """One verifier-accepted rollout to train the flow on.

    `sample_id` is what the learner's per-sample training record is keyed by, so the HTTP
    layer should make it unique across updates (e.g. "{update_id}:{id}").
    """

    sample_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    reward: float
    weight: float = 1.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.sample_id,
                "prompt_ids": self.prompt_ids,
                "response_ids": self.response_ids,
                "reward": self.reward,
                "weight": self.weight,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> UpdateSample:
        d = json.loads(data)
        return cls(
            sample_id=str(d["id"]),
            prompt_ids=[int(t) for t in d["prompt_ids"]],
            response_ids=[int(t) for t in d["response_ids"]],
            reward=float(d["reward"]),
            weight=float(d.get("weight", 1.0)),
        )


@dataclass(frozen=True)
class EnqueueResult:
    """What `/update` reports: samples queued now, whether the update_id was seen before,
    and the queue depth (accepted, not yet committed) after this call."""

    accepted: int
    duplicate: bool
    pending: int


@dataclass(frozen=True)
class Entry:
    """A queued sample as the learner sees it; `entry_id` is what `commit` acknowledges."""

    entry_id: str
    sample: UpdateSample
