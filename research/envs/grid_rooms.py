"""Grid rooms for learned policies (the RewardFlow experiment, research/rewardflow).

The same house and rules as `flowfield.envs.RoomsEnv`, batched in numpy with a fixed action
set, so a small policy network can act in many episodes at once. Rooms are the
"r<row>c<col>" rooms of `grid_house`; every object lies in its own room and the window is in
a room without objects, so "take" and "examine" name at most one object. States are the same
strings `RoomsEnv` uses ("room=r2c3; holding=none").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from flowfield.envs.rooms import (
    SUCCESS_REWARD,
    TERMINAL,
    House,
    Task,
    grid_house,
    state_text,
)

GRID_ACTIONS = ("north", "south", "west", "east", "take", "examine", "put", "climb")
_MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # north, south, west, east as (row, col) steps


def trap_house(width: int, height: int, num_objects: int, seed: int = 0) -> House:
    """A `grid_house` whose objects lie in distinct rooms and whose window is in a room with no
    object. With a delivery task, every object but the target is a trap: there is no drop, so
    taking it makes success impossible; the window ends the episode as a failure."""
    rooms = [f"r{i}c{j}" for i in range(height) for j in range(width)]
    if num_objects + 1 > len(rooms):
        raise ValueError("need at least num_objects + 1 rooms")
    rng = random.Random(f"trap:{width}x{height}:{num_objects}:{seed}")
    picked = rng.sample(rooms, num_objects + 1)
    base = grid_house(width, height, 0)
    objects = {f"object{k}": picked[k] for k in range(num_objects)}
    return House(doors=base.doors, objects=objects, window=picked[-1])


@dataclass(frozen=True)
class GridLayout:
    """A `trap_house` with the indices a batched environment needs."""

    width: int
    height: int
    house: House

    @classmethod
    def make(cls, width: int, height: int, num_objects: int, seed: int = 0) -> GridLayout:
        return cls(width, height, trap_house(width, height, num_objects, seed))

    @property
    def num_rooms(self) -> int:
        return self.width * self.height

    @property
    def objects(self) -> list[str]:
        return sorted(self.house.objects)

    def room(self, index: int) -> str:
        return f"r{index // self.width}c{index % self.width}"

    def room_index(self, room: str) -> int:
        row, col = room[1:].split("c")
        return int(row) * self.width + int(col)

    def task(self, start: int, target: int, goal: int, max_steps: int) -> Task:
        """The `RoomsEnv` task of a (start room, target object, goal room) triple."""
        return Task(self.house, self.objects[target], self.room(goal), self.room(start),
                    max_steps)

    def all_starts(self) -> list[tuple[int, int, int]]:
        """Every (start room, target object, goal room) with the goal not the target's room."""
        homes = [self.room_index(self.house.objects[o]) for o in self.objects]
        return [
            (s, k, g)
            for s in range(self.num_rooms)
            for k in range(len(homes))
            for g in range(self.num_rooms)
            if g != homes[k]
        ]

    def action_text(self, room: int, holding: int, target: int, action: int) -> str:
        """The `RoomsEnv` action string of a grid action (holding: 0 = none, k + 1 = object k)."""
        name = GRID_ACTIONS[action]
        if name in ("north", "south", "west", "east"):
            dr, dc = _MOVES[action]
            return f"go to r{room // self.width + dr}c{room % self.width + dc}"
        here = [o for o in self.objects if self.room_index(self.house.objects[o]) == room]
        if name in ("take", "examine"):
            return f"{name} {here[0]}"
        if name == "put":
            return f"put {self.objects[target]} down"
        return "climb out the window"


class GridRooms:
    """A batch of rooms episodes on one `GridLayout`, stepped together.

    Each episode has its own (start, target, goal); `reset(starts)` begins a batch, `step(a)`
    takes one action per live episode (finished episodes ignore theirs). Actions outside
    `mask()` are invalid, as in `RoomsEnv`; `step` raises on them.
    """

    def __init__(self, layout: GridLayout, max_steps: int) -> None:
        import numpy as np

        self.np = np
        self.layout, self.max_steps = layout, max_steps
        w, h, n = layout.width, layout.height, layout.num_rooms
        objs = layout.objects
        self.num_objects = len(objs)
        self.home = np.array([layout.room_index(layout.house.objects[o]) for o in objs])
        self.object_at = np.full(n, -1)  # room -> object index lying there (-1: none)
        self.object_at[self.home] = np.arange(len(objs))
        self.window = layout.room_index(layout.house.window) if layout.house.window else -1
        rows, cols = np.divmod(np.arange(n), w)
        self.row, self.col = rows, cols
        self.neighbour = np.full((n, 4), -1)  # room x move -> room (-1: wall)
        for m, (dr, dc) in enumerate(_MOVES):
            r, c = rows + dr, cols + dc
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            self.neighbour[ok, m] = (r * w + c)[ok]
        self.obs_dim = 2 * (h + w) + 2 * self.num_objects + 1
        self.num_actions = len(GRID_ACTIONS)
        self.reset([(0, 0, 0)])

    def reset(self, starts: list[tuple[int, int, int]]) -> None:
        np = self.np
        s = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
        self.room, self.target, self.goal = s[:, 0].copy(), s[:, 1].copy(), s[:, 2].copy()
        self.holding = np.zeros(len(s), dtype=np.int64)  # 0 = none, k + 1 = object k
        self.t = np.zeros(len(s), dtype=np.int64)
        self.done = np.zeros(len(s), dtype=bool)
        self.success = np.zeros(len(s), dtype=bool)
        self.truncated = np.zeros(len(s), dtype=bool)

    @property
    def batch(self) -> int:
        return len(self.room)

    def mask(self) -> Any:
        """[batch, actions] bool: the valid actions (all False for finished episodes)."""
        np = self.np
        m = np.zeros((self.batch, self.num_actions), dtype=bool)
        m[:, :4] = self.neighbour[self.room] >= 0
        obj = self.object_at[self.room]
        m[:, 4] = (obj >= 0) & (self.holding == 0)
        m[:, 5] = (obj >= 0) & (self.holding != obj + 1)
        m[:, 6] = (self.holding == self.target + 1) & (self.room == self.goal)
        m[:, 7] = self.room == self.window
        m[self.done] = False
        return m

    def observation(self) -> Any:
        """[batch, obs_dim] float32: one-hot row and column of the room and of the goal,
        one-hot holding (none or an object) and one-hot target."""
        np = self.np
        h, w, k = self.layout.height, self.layout.width, self.num_objects
        obs = np.zeros((self.batch, self.obs_dim), dtype=np.float32)
        idx = np.arange(self.batch)
        obs[idx, self.row[self.room]] = 1
        obs[idx, h + self.col[self.room]] = 1
        off = h + w
        obs[idx, off + self.row[self.goal]] = 1
        obs[idx, off + h + self.col[self.goal]] = 1
        off += h + w
        obs[idx, off + self.holding] = 1
        obs[idx, off + k + 1 + self.target] = 1
        return obs

    def state_keys(self) -> list[str]:
        """The `RoomsEnv` state string of every episode: "episode over" once it ended by
        success or the window; a truncated episode keeps its last state, as in `RoomsEnv`."""
        names = ["none", *self.layout.objects]
        ended = (self.done & ~self.truncated).tolist()
        return [
            TERMINAL if e else state_text(self.layout.room(r), names[hd])
            for r, hd, e in zip(self.room.tolist(), self.holding.tolist(), ended)
        ]

    def step(self, actions: Any) -> Any:
        """One action per episode; returns the [batch] rewards (SUCCESS_REWARD on a put)."""
        np = self.np
        a = np.asarray(actions, dtype=np.int64)
        live = ~self.done
        valid = self.mask()[np.arange(self.batch), a]
        if np.any(live & ~valid):
            bad = int(np.flatnonzero(live & ~valid)[0])
            raise ValueError(f"invalid action {GRID_ACTIONS[a[bad]]!r} in episode {bad}")
        move = live & (a < 4)
        self.room[move] = self.neighbour[self.room[move], a[move]]
        take = live & (a == 4)
        self.holding[take] = self.object_at[self.room[take]] + 1
        put = live & (a == 6)
        climb = live & (a == 7)
        reward = np.where(put, SUCCESS_REWARD, 0.0)
        self.t[live] += 1
        self.success |= put
        self.done |= put | climb
        cut = live & ~self.done & (self.t >= self.max_steps)
        self.truncated |= cut
        self.done |= cut
        return reward
