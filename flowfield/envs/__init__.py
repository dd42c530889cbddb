"""Toy agent environments for examples, tests and benchmarks."""

from flowfield.envs.rooms import (
    DEFAULT_HOUSE,
    House,
    RoomsEnv,
    Task,
    grid_house,
    make_groups,
    rollout,
    sample_task,
    scripted_action,
)

__all__ = [
    "DEFAULT_HOUSE",
    "House",
    "RoomsEnv",
    "Task",
    "grid_house",
    "make_groups",
    "rollout",
    "sample_task",
    "scripted_action",
]
