"""One state graph per prompt group: identical states across the group's rollouts merge into
one node, observed transitions become edges (docs/method.md#state-graph)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

from flowfield.graph.data import Trajectory


def canonical_json(value: Any) -> str:
    """Canonical text of a JSON value, so equal dicts merge whatever their key order.

    Exact match only: "1", 1 and 1.0 are three different states.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def node_key(state: Any, outcome: str | None = None) -> str:
    """Hash of a state key. `outcome` ("success"/"failure") marks a terminal state, so a success
    and a failure ending on the same observation (e.g. "") stay two nodes
    (docs/method.md#differences-from-the-authors-code)."""
    kind = "state" if outcome is None else f"final:{outcome}"
    text = kind + "\x00" + canonical_json(state)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class StateGraph:
    """Nodes are indexed 0..n-1 in order of first appearance; `reward[i]` is node i's entry
    reward and the starting value of propagation.

    A node seen with different entry rewards keeps the max, so its value never depends on the
    order in which rollouts are added (first-seen would be order dependent).
    """

    def __init__(self, undirected: bool = False) -> None:
        self.undirected = undirected
        self.keys: list[str] = []  # node index -> hash
        self.index: dict[str, int] = {}  # hash -> node index
        self.labels: list[str] = []  # canonical text of the state, for reporting
        self.outcome: list[str | None] = []  # "success"/"failure" for terminal nodes
        self.reward: list[float] = []
        self.succ: list[set[int]] = []  # used by propagation (includes reverse edges if undirected)
        self.pred: list[set[int]] = []
        self.actions: dict[tuple[int, int], list[str]] = {}  # observed edge -> action labels

    @classmethod
    def from_trajectories(
        cls, trajectories: Iterable[Trajectory], undirected: bool = False
    ) -> StateGraph:
        graph = cls(undirected=undirected)
        for traj in trajectories:
            graph.add_trajectory(traj)
        return graph

    @property
    def num_nodes(self) -> int:
        return len(self.keys)

    @property
    def num_edges(self) -> int:
        """Distinct observed transitions (reverse edges of the undirected option not counted)."""
        return len(self.actions)

    def add_node(self, state: Any, reward: float, outcome: str | None = None) -> int:
        if not math.isfinite(reward):
            raise ValueError(f"entry reward must be finite, got {reward!r}")
        key = node_key(state, outcome)
        i = self.index.get(key)
        if i is None:
            i = len(self.keys)
            self.index[key] = i
            self.keys.append(key)
            self.labels.append(canonical_json(state))
            self.outcome.append(outcome)
            self.reward.append(float(reward))
            self.succ.append(set())
            self.pred.append(set())
        elif reward > self.reward[i]:
            self.reward[i] = float(reward)
        return i

    def add_edge(self, u: int, v: int, action: Any = None) -> None:
        if u == v:
            return  # a self-loop carries no information for a max-propagation
        labels = self.actions.setdefault((u, v), [])
        if action is not None:
            label = action if isinstance(action, str) else canonical_json(action)
            if label not in labels:
                labels.append(label)
        self._link(u, v)
        if self.undirected:
            self._link(v, u)

    def _link(self, u: int, v: int) -> None:
        self.succ[u].add(v)
        self.pred[v].add(u)

    def add_trajectory(self, traj: Trajectory) -> list[int]:
        """Add one rollout; returns its node path s_0, ..., s_{T-1}, final_state.

        The final state always enters the graph with entry reward `final_reward`, also when
        success comes on the last allowed step (unlike the authors' code: docs/method.md).
        """
        if traj.success and traj.truncated:
            raise ValueError(f"trajectory {traj.id!r}: success and truncated are exclusive")
        path = [self.add_node(step.state, step.reward) for step in traj.steps]
        outcome = None if traj.truncated else ("success" if traj.success else "failure")
        path.append(self.add_node(traj.final_state, traj.final_reward, outcome))
        for t, step in enumerate(traj.steps):
            self.add_edge(path[t], path[t + 1], step.action)
        return path
