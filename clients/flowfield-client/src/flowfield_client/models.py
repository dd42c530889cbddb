"""Typed requests and results (the JSON of docs/api.md as dataclasses).

Parsing ignores fields it does not know, so a newer service that adds optional fields keeps
working with this client.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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
    dtype: str = ""  # float32 or bfloat16 ("" from a server that does not report it)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FlowInfo:
        return cls(
            flow_version=int(d["flow_version"]),
            encoder=str(d.get("encoder", "")),
            dtype=str(d.get("dtype", "")),
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


# ---- RewardFlow graph scoring (POST /v1/score/graph) ----------------------------------------


@dataclass
class GraphStep:
    """One step of an agent trajectory: the `state` it starts from (any JSON value; equal
    values are the same state), the `action` taken (reporting only) and the environment
    `reward` for entering `state`."""

    state: Any
    action: Any = None
    reward: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "reward": self.reward}
        if self.action is not None:
            out["action"] = self.action
        return out


GraphStepLike = GraphStep | Mapping[str, Any]


@dataclass
class GraphTrajectory:
    """One rollout of a group: its `steps` in order, the state after the last action
    (`final_state`) and the reward for entering it. `truncated` (cut by a step limit, so
    `final_state` is not terminal) cannot be combined with `success`."""

    id: str
    steps: Sequence[GraphStepLike]
    final_state: Any
    final_reward: float = 0.0
    success: bool = False
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "steps": [graph_step_json(s) for s in self.steps],
            "final_state": self.final_state,
            "final_reward": self.final_reward,
            "success": self.success,
            "truncated": self.truncated,
        }


GraphTrajectoryLike = GraphTrajectory | Mapping[str, Any]


@dataclass
class GraphGroup:
    """The trajectories of one task or prompt (1-1024); `group_id` is unique per request."""

    group_id: str
    trajectories: Sequence[GraphTrajectoryLike]

    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "trajectories": [graph_trajectory_json(t) for t in self.trajectories],
        }


GraphGroupLike = GraphGroup | Mapping[str, Any]


def _graph_json(obj: Any, cls: type, what: str) -> dict[str, Any]:
    # a mapping is sent as given (copied): a None there may be a state, so it is kept
    if isinstance(obj, cls):
        return obj.to_json()  # type: ignore[no-any-return]
    if isinstance(obj, Mapping):
        return {str(k): v for k, v in obj.items()}
    raise TypeError(f"a {what} must be a {cls.__name__} or a mapping, not {type(obj).__name__}")


def graph_step_json(step: GraphStepLike) -> dict[str, Any]:
    """The JSON object of a step given as a `GraphStep` or a mapping."""
    return _graph_json(step, GraphStep, "graph step")


def graph_trajectory_json(traj: GraphTrajectoryLike) -> dict[str, Any]:
    """The JSON object of a trajectory given as a `GraphTrajectory` or a mapping."""
    return _graph_json(traj, GraphTrajectory, "graph trajectory")


def graph_group_json(group: GraphGroupLike) -> dict[str, Any]:
    """The JSON object of a group given as a `GraphGroup` or a mapping."""
    return _graph_json(group, GraphGroup, "graph group")


@dataclass
class GraphStepResult:
    """One step's numbers: `value` V(s_t), `step_reward` V(s_{t+1}) - V(s_t), its
    `step_advantage` (minus the mean over the group's steps leaving the same state) and
    `advantage` = episode_advantage + step_weight * step_advantage."""

    value: float
    step_reward: float
    advantage: float
    step_advantage: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GraphStepResult:
        return cls(
            value=float(d["value"]),
            step_reward=float(d["step_reward"]),
            advantage=float(d["advantage"]),
            step_advantage=float(d["step_advantage"]),
        )


@dataclass
class GraphTrajectoryResult:
    """One trajectory's results, its `steps` aligned to the steps sent."""

    id: str
    steps: list[GraphStepResult]
    episode_return: float
    episode_advantage: float
    final_value: float
    success: bool

    @property
    def advantages(self) -> list[float]:
        return [s.advantage for s in self.steps]

    @property
    def values(self) -> list[float]:
        return [s.value for s in self.steps]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GraphTrajectoryResult:
        return cls(
            id=str(d["id"]),
            steps=[GraphStepResult.from_json(s) for s in d.get("steps", [])],
            episode_return=float(d["episode_return"]),
            episode_advantage=float(d["episode_advantage"]),
            final_value=float(d["final_value"]),
            success=bool(d.get("success", False)),
        )


@dataclass
class GraphGroupResult:
    """One group's graph (`num_nodes` distinct states, `num_edges` observed transitions) and
    its trajectories, in the order sent."""

    group_id: str
    num_nodes: int
    num_edges: int
    trajectories: list[GraphTrajectoryResult]

    def __len__(self) -> int:
        return len(self.trajectories)

    def __iter__(self) -> Iterator[GraphTrajectoryResult]:
        return iter(self.trajectories)

    def __getitem__(self, i: int) -> GraphTrajectoryResult:
        return self.trajectories[i]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GraphGroupResult:
        return cls(
            group_id=str(d["group_id"]),
            num_nodes=int(d["num_nodes"]),
            num_edges=int(d["num_edges"]),
            trajectories=[GraphTrajectoryResult.from_json(t) for t in d.get("trajectories", [])],
        )


@dataclass
class GraphResponse:
    """The answer of POST /v1/score/graph: the `gamma` used and the groups in the order sent."""

    gamma: float
    groups: list[GraphGroupResult]

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[GraphGroupResult]:
        return iter(self.groups)

    def __getitem__(self, i: int) -> GraphGroupResult:
        return self.groups[i]

    def to_json(self) -> dict[str, Any]:
        """The response as the service's JSON shape (docs/api.md)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GraphResponse:
        return cls(
            gamma=float(d["gamma"]),
            groups=[GraphGroupResult.from_json(g) for g in d.get("groups", [])],
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
