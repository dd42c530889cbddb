"""Plain data shapes for graph scoring (/v1/score/graph); the HTTP layer converts to/from these.

Reward convention: a step's `reward` is the environment reward received on *entering* that
step's `state` (0.0 for the start state, and for every non-terminal state in sparse tasks);
`final_reward` is the reward for entering `final_state`, the state reached after the last action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Step:
    state: Any  # a string or any JSON value (dict/list/number); equal JSON values merge
    action: Any = None  # kept on edges for reporting only
    reward: float = 0.0


@dataclass
class Trajectory:
    id: str
    steps: list[Step]
    final_state: Any
    final_reward: float = 0.0
    success: bool = False
    # Optional extra: True when the episode was cut by a step limit rather than ended by the
    # environment. A truncated final state is an ordinary state (it merges with the same
    # observation seen mid-episode); otherwise the final state is keyed by outcome.
    truncated: bool = False


@dataclass
class Group:
    group_id: str
    trajectories: list[Trajectory]


@dataclass
class StepResult:
    value: float  # V(s_t)
    step_reward: float  # V(s_{t+1}) - V(s_t)
    advantage: float  # episode_advantage + step_weight * step_advantage
    step_advantage: float  # r_t - mean r over steps of the group leaving the same state
    node: str  # hash of s_t's node, to see which steps share an anchor state


@dataclass
class TrajectoryResult:
    id: str
    steps: list[StepResult]
    episode_return: float  # sum of step rewards + final_reward
    episode_advantage: float  # R_i - mean over the group of R
    final_value: float  # V(final_state)
    success: bool


@dataclass
class GroupResult:
    group_id: str
    trajectories: list[TrajectoryResult]
    num_nodes: int
    num_edges: int  # distinct observed transitions s -> s' (self-loops dropped)


def trajectory_from_dict(d: dict[str, Any]) -> Trajectory:
    """Build a Trajectory from the docs/api.md JSON shape (missing optional fields get defaults)."""
    steps = [Step(s["state"], s.get("action"), float(s.get("reward", 0.0))) for s in d["steps"]]
    return Trajectory(
        id=str(d["id"]),
        steps=steps,
        final_state=d["final_state"],
        final_reward=float(d.get("final_reward", 0.0)),
        success=bool(d.get("success", False)),
        truncated=bool(d.get("truncated", False)),
    )


def group_from_dict(d: dict[str, Any]) -> Group:
    trajs = [trajectory_from_dict(t) for t in d["trajectories"]]
    return Group(group_id=str(d["group_id"]), trajectories=trajs)


def groups_from_request(body: dict[str, Any]) -> list[Group]:
    """Groups of a /v1/score/graph request body ({"gamma": ..., "groups": [...]})."""
    return [group_from_dict(g) for g in body.get("groups", [])]
