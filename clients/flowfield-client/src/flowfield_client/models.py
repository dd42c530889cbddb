"""Typed requests and results (the JSON of docs/api.md as dataclasses).

Parsing ignores fields it does not know, so a newer service that adds optional fields keeps
working with this client.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

_SAMPLE_KEYS = ("id", "group_id", "prompt_ids", "response_ids", "prompt", "response", "reward")


@dataclass
class Sample:
    """One rollout. Send token ids (`prompt_ids`, `response_ids`) or text (`prompt`,
    `response`), which the service tokenises with the policy's tokenizer; ids win when both
    are given. `reward` (the verifier's) and `group_id` are needed for advantages and
    `reward` for /update. Without an `id` the client numbers samples by their position."""

    response_ids: list[int] | None = None
    prompt_ids: list[int] | None = None
    response: str | None = None
    prompt: str | None = None
    reward: float | None = None
    group_id: str | None = None
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k in _SAMPLE_KEYS if (v := getattr(self, k)) is not None}


SampleLike = Sample | Mapping[str, Any]


def sample_json(sample: SampleLike) -> dict[str, Any]:
    """The JSON object of a sample given as a `Sample` or a mapping (copied, Nones dropped)."""
    if isinstance(sample, Sample):
        return sample.to_json()
    if isinstance(sample, Mapping):
        return {str(k): v for k, v in sample.items() if v is not None}
    raise TypeError(f"a sample must be a Sample or a mapping, not {type(sample).__name__}")


@dataclass
class ScoreResult:
    """The rewards of one sample. `token_rewards` is aligned to the response tokens and
    `flow_return` is their sum; both are None when `status` is "error" (see `error`)."""

    id: str
    status: str
    num_tokens: int = 0
    token_rewards: list[float] | None = None
    flow_return: float | None = None
    deviations: list[float] | None = None
    advantages: list[float] | None = None
    error: str | None = None
    flow_version: int | None = None  # version that scored this sample (set by the client)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, d: Mapping[str, Any], flow_version: int | None = None) -> ScoreResult:
        return cls(
            id=str(d["id"]),
            status=str(d.get("status", "ok")),
            num_tokens=int(d.get("num_tokens") or 0),
            token_rewards=_floats(d.get("token_rewards")),
            flow_return=None if d.get("flow_return") is None else float(d["flow_return"]),
            deviations=_floats(d.get("deviations")),
            advantages=_floats(d.get("advantages")),
            error=d.get("error"),
            flow_version=flow_version,
        )


@dataclass
class ScoreResponse:
    """Results in the order the samples were given, however many requests they took.

    A large batch is sent in chunks; the learner may publish a new flow version between
    them. `flow_version` is then the lowest version used and `flow_versions` lists each
    chunk's; each result also names its own `flow_version`.
    """

    flow_version: int
    encoder: str
    results: list[ScoreResult]
    flow_versions: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[ScoreResult]:
        return iter(self.results)

    def __getitem__(self, i: int) -> ScoreResult:
        return self.results[i]

    @property
    def flow_returns(self) -> list[float | None]:
        return [r.flow_return for r in self.results]

    @property
    def errors(self) -> list[ScoreResult]:
        return [r for r in self.results if not r.ok]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ScoreResponse:
        v = int(d["flow_version"])
        return cls(
            flow_version=v,
            encoder=str(d.get("encoder", "")),
            results=[ScoreResult.from_json(r, v) for r in d.get("results", [])],
            flow_versions=(v,),
        )


@dataclass
class UpdateResult:
    """What /update did. `duplicate` means the update_id had been seen: nothing new was
    queued. With `attempts > 1` and `duplicate` true, an earlier attempt whose answer was
    lost did queue the samples (the service deduplicates by update_id)."""

    update_id: str
    accepted: int
    skipped: int
    duplicate: bool
    pending: int
    attempts: int = 1
    parts: tuple[UpdateResult, ...] = ()  # one per request when the update was chunked

    @classmethod
    def from_json(cls, d: Mapping[str, Any], attempts: int = 1) -> UpdateResult:
        return cls(
            update_id=str(d["update_id"]),
            accepted=int(d.get("accepted", 0)),
            skipped=int(d.get("skipped", 0)),
            duplicate=bool(d.get("duplicate", False)),
            pending=int(d.get("pending", 0)),
            attempts=attempts,
        )


@dataclass
class FlowInfo:
    flow_version: int
    encoder: str
    metadata: dict[str, Any] = field(default_factory=dict)
    samples_trained: int = 0
    last_update: float | None = None
    pending: int = 0
    queue_backend: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FlowInfo:
        return cls(
            flow_version=int(d["flow_version"]),
            encoder=str(d.get("encoder", "")),
            metadata=dict(d.get("metadata") or {}),
            samples_trained=int(d.get("samples_trained") or 0),
            last_update=None if d.get("last_update") is None else float(d["last_update"]),
            pending=int(d.get("pending") or 0),
            queue_backend=str(d.get("queue_backend", "")),
        )


@dataclass
class PolicyResult:
    encoder: str
    flow_version: int
    layers: list[int]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PolicyResult:
        return cls(
            encoder=str(d["encoder"]),
            flow_version=int(d["flow_version"]),
            layers=[int(x) for x in d.get("layers", [])],
        )


@dataclass
class EndpointHealth:
    url: str
    ok: bool  # /readyz answered 200
    status: str  # "ok", "unavailable", or "unreachable"
    checks: dict[str, bool] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Health:
    """Readiness of every configured service URL (`ok` when all are ready)."""

    endpoints: list[EndpointHealth]

    @property
    def ok(self) -> bool:
        return bool(self.endpoints) and all(e.ok for e in self.endpoints)

    def __bool__(self) -> bool:
        return self.ok


def _floats(x: Any) -> list[float] | None:
    return None if x is None else [float(v) for v in x]
