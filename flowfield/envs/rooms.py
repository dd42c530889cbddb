"""A tiny text-room fetch task for examples, tests and benchmarks of graph scoring.

The agent walks between rooms, picks up one object and must put the target object down in the
goal room (reward 10, like ALFWorld). Picking up a wrong object is a dead end (there is no
drop), "examine" leaves the state unchanged (a self-loop), and climbing out of the window ends
the episode as a failure. Success and failure both end on the same observation, "episode over",
as search QA ends on "" - so scoring must key terminal states by outcome.

States are strings like "room=kitchen; holding=none". Everything is seeded and uses only
`random.Random`, so the same seed gives the same trajectories on every machine.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

TERMINAL = "episode over"
SUCCESS_REWARD = 10.0


@dataclass(frozen=True)
class House:
    doors: dict[str, tuple[str, ...]]  # room -> neighbouring rooms (doors go both ways)
    objects: dict[str, str]  # object -> room where it lies
    window: str | None = None  # room whose window ends the episode as a failure


DEFAULT_HOUSE = House(
    doors={
        "hall": ("kitchen", "living room", "study", "bedroom"),
        "kitchen": ("hall", "pantry", "garden"),
        "pantry": ("kitchen",),
        "living room": ("hall", "garden"),
        "garden": ("kitchen", "living room"),
        "study": ("hall",),
        "bedroom": ("hall", "bathroom"),
        "bathroom": ("bedroom",),
    },
    objects={"apple": "pantry", "book": "study", "key": "garden", "towel": "bathroom"},
    window="study",
)


def grid_house(width: int, height: int, num_objects: int, seed: int = 0) -> House:
    """A width x height grid of rooms "r<row>c<col>", for benchmarks with larger graphs."""
    rooms = [f"r{i}c{j}" for i in range(height) for j in range(width)]
    doors = {}
    for i in range(height):
        for j in range(width):
            near = [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
            doors[f"r{i}c{j}"] = tuple(
                f"r{a}c{b}" for a, b in near if 0 <= a < height and 0 <= b < width
            )
    rng = random.Random(f"grid:{seed}")
    objects = {f"object{k}": rng.choice(rooms) for k in range(num_objects)}
    return House(doors=doors, objects=objects, window=rng.choice(rooms))


@dataclass(frozen=True)
class Task:
    house: House
    target: str  # object to deliver
    goal: str  # room to put it in
    start: str
    max_steps: int  # actions allowed before the episode is truncated

    @property
    def instruction(self) -> str:
        return f"put the {self.target} in the {self.goal}"


def sample_task(rng: random.Random, house: House = DEFAULT_HOUSE, max_steps: int = 10) -> Task:
    rooms = sorted(house.doors)
    target = rng.choice(sorted(house.objects))
    goal = rng.choice([r for r in rooms if r != house.objects[target]])
    return Task(house, target, goal, rng.choice(rooms), max_steps)


def state_text(room: str, holding: str) -> str:
    return f"room={room}; holding={holding}"


class RoomsEnv:
    """step() returns (state, reward, terminated, truncated), gymnasium style."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.reset()

    def reset(self) -> str:
        self.room, self.holding, self.t, self.over = self.task.start, "none", 0, False
        return self.state()

    def state(self) -> str:
        return TERMINAL if self.over else state_text(self.room, self.holding)

    def actions(self) -> list[str]:
        house, task = self.task.house, self.task
        acts = [f"go to {r}" for r in house.doors[self.room]]
        here = [o for o, r in sorted(house.objects.items()) if r == self.room and o != self.holding]
        if self.holding == "none":
            acts += [f"take {o}" for o in here]
        acts += [f"examine {o}" for o in here]
        if self.holding == task.target and self.room == task.goal:
            acts.append(f"put {task.target} down")
        if self.room == house.window:
            acts.append("climb out the window")
        return acts

    def step(self, action: str) -> tuple[str, float, bool, bool]:
        if self.over or action not in self.actions():
            raise ValueError(f"invalid action {action!r} in state {self.state()!r}")
        self.t += 1
        reward = 0.0
        if action.startswith("go to "):
            self.room = action.removeprefix("go to ")
        elif action.startswith("take "):
            self.holding = action.removeprefix("take ")
        elif action.startswith("put "):
            self.over, reward = True, SUCCESS_REWARD
        elif action == "climb out the window":
            self.over = True
        # "examine" changes nothing.
        truncated = not self.over and self.t >= self.task.max_steps
        return self.state(), reward, self.over, truncated


def _next_hop(house: House, start: str, goal: str) -> str:
    """First room on a shortest path (BFS, doors in listed order) from start to goal."""
    parent = {start: start}
    queue = deque([start])
    while queue:
        room = queue.popleft()
        if room == goal:
            break
        for nxt in house.doors[room]:
            if nxt not in parent:
                parent[nxt] = room
                queue.append(nxt)
    while parent[goal] != start:
        goal = parent[goal]
    return goal


def scripted_action(env: RoomsEnv) -> str | None:
    """The shortest solution from here, or None when stuck with a wrong object."""
    task, room = env.task, env.room
    if env.holding == "none":
        home = task.house.objects[task.target]
        if room == home:
            return f"take {task.target}"
        return f"go to {_next_hop(task.house, room, home)}"
    if env.holding == task.target:
        if room == task.goal:
            return f"put {task.target} down"
        return f"go to {_next_hop(task.house, room, task.goal)}"
    return None


def rollout(task: Task, rng: random.Random, epsilon: float, traj_id: str) -> dict[str, Any]:
    """One episode in the /v1/score/graph trajectory shape. The policy follows the script,
    except with probability epsilon (or when stuck) it takes a uniformly random valid action."""
    env = RoomsEnv(task)
    state, entry_reward = env.reset(), 0.0
    steps = []
    while True:
        action = scripted_action(env)
        if action is None or rng.random() < epsilon:
            action = rng.choice(env.actions())
        # A step's reward is the reward for entering its state (section "Reward convention").
        steps.append({"state": state, "action": action, "reward": entry_reward})
        state, entry_reward, terminated, truncated = env.step(action)
        if terminated or truncated:
            break
    return {
        "id": traj_id,
        "steps": steps,
        "final_state": state,
        "final_reward": entry_reward,
        "success": entry_reward > 0,
        "truncated": truncated,
    }


def make_groups(
    num_groups: int,
    per_group: int,
    seed: int = 0,
    epsilon: float = 0.3,
    max_steps: int = 10,
    house: House = DEFAULT_HOUSE,
) -> list[dict[str, Any]]:
    """Groups of rollouts in the docs/api.md shape: each group is one task, rolled out per_group
    times. Each group draws from its own seeded stream, so group g is the same whatever
    num_groups is."""
    groups = []
    for g in range(num_groups):
        rng = random.Random(f"rooms:{seed}:{g}")
        task = sample_task(rng, house, max_steps)
        group_id = f"task-{g}"
        trajs = [rollout(task, rng, epsilon, f"{group_id}/t-{i}") for i in range(per_group)]
        groups.append({"group_id": group_id, "trajectories": trajs})
    return groups
