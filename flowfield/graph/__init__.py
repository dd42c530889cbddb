"""RewardFlow scoring: state graphs per prompt group, backward value propagation, and
step-level rewards and advantages. Pure Python; no torch."""

from flowfield.graph.data import (
    Group,
    GroupResult,
    Step,
    StepResult,
    Trajectory,
    TrajectoryResult,
    group_from_dict,
    groups_from_request,
    trajectory_from_dict,
)
from flowfield.graph.propagation import propagate, propagate_naive
from flowfield.graph.rewards import group_by_id, score_group, score_groups
from flowfield.graph.state_graph import StateGraph, canonical_json, node_key

__all__ = [
    "Group",
    "GroupResult",
    "StateGraph",
    "Step",
    "StepResult",
    "Trajectory",
    "TrajectoryResult",
    "canonical_json",
    "group_by_id",
    "group_from_dict",
    "groups_from_request",
    "node_key",
    "propagate",
    "propagate_naive",
    "score_group",
    "score_groups",
    "trajectory_from_dict",
]
