"""From state values to per-step rewards and advantages.

docs/method.md#step-rewards-and-advantages states the method."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from flowfield import defaults
from flowfield.graph.data import Group, GroupResult, StepResult, Trajectory, TrajectoryResult
from flowfield.graph.propagation import propagate
from flowfield.graph.state_graph import StateGraph


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def score_group(
    trajectories: Sequence[Trajectory],
    gamma: float = defaults.GAMMA,
    step_weight: float = defaults.STEP_WEIGHT,
    undirected: bool = False,
    group_id: str = "",
) -> GroupResult:
    """Score the rollouts of one prompt group (one task) on their shared state graph.

    value       V(s_t), the propagated value of the step's start state
    step_reward r_t = V(s_{t+1}) - V(s_t), s_T being the final state
    advantage   A = (R_i - mean_group R) + step_weight * (r_t - mean r over the group's steps
                that leave the same state s_t); an anchor group of one step contributes 0.
    R_i is the trajectory's return: its step rewards plus final_reward.
    """
    if not math.isfinite(step_weight):
        raise ValueError(f"step_weight must be finite, got {step_weight!r}")
    ids = [t.id for t in trajectories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"group {group_id!r}: duplicate trajectory ids")

    graph = StateGraph(undirected=undirected)
    paths = [graph.add_trajectory(t) for t in trajectories]
    values = propagate(graph, gamma)

    # Potential differences along each path: they telescope to V(final) - V(s_0).
    rewards = [[values[p[t + 1]] - values[p[t]] for t in range(len(p) - 1)] for p in paths]

    # Anchor states: every step in the group that leaves the same node, across rollouts and
    # revisits. V(s_t) is common to the anchor group, so this compares where the actions led.
    anchor: dict[int, list[float]] = {}
    for p, rs in zip(paths, rewards, strict=True):
        for t, r in enumerate(rs):
            anchor.setdefault(p[t], []).append(r)
    anchor_mean = {u: _mean(rs) for u, rs in anchor.items()}

    returns = [math.fsum([s.reward for s in t.steps] + [t.final_reward]) for t in trajectories]
    mean_return = _mean(returns) if returns else 0.0  # no std division (GiGPO / RewardFlow)

    results = []
    for traj, p, rs, ret in zip(trajectories, paths, rewards, returns, strict=True):
        a_episode = ret - mean_return
        steps = []
        for t, r in enumerate(rs):
            u = p[t]
            a_step = 0.0 if len(anchor[u]) == 1 else r - anchor_mean[u]
            steps.append(
                StepResult(
                    value=values[u],
                    step_reward=r,
                    advantage=a_episode + step_weight * a_step,
                    step_advantage=a_step,
                    node=graph.keys[u],
                )
            )
        results.append(
            TrajectoryResult(
                id=traj.id,
                steps=steps,
                episode_return=ret,
                episode_advantage=a_episode,
                final_value=values[p[-1]],
                success=traj.success,
            )
        )
    return GroupResult(group_id, results, graph.num_nodes, graph.num_edges)


def score_groups(
    groups: Sequence[Group],
    gamma: float = defaults.GAMMA,
    step_weight: float = defaults.STEP_WEIGHT,
    undirected: bool = False,
) -> list[GroupResult]:
    """Score each group on its own graph (never one global graph); results in input order."""
    seen: set[str] = set()
    for g in groups:
        if g.group_id in seen:
            raise ValueError(f"duplicate group_id {g.group_id!r}")
        seen.add(g.group_id)
    return [
        score_group(g.trajectories, gamma, step_weight, undirected, group_id=g.group_id)
        for g in groups
    ]


def group_by_id(items: Iterable[tuple[str, Trajectory]]) -> list[Group]:
    """Gather a flat batch of (group_id, trajectory) into groups by id, in first-seen order.

    Groups may be of any size and interleaved: membership comes from the id, never from the
    position in the batch (the authors' code assumes equal contiguous groups: docs/method.md).
    """
    groups: dict[str, Group] = {}
    for group_id, traj in items:
        groups.setdefault(group_id, Group(group_id, [])).trajectories.append(traj)
    return list(groups.values())
