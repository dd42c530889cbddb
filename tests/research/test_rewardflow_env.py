"""`GridRooms` (the batched grid rooms of the RewardFlow experiment) follows `RoomsEnv`'s rules:
the same valid actions, states, rewards and endings, step by step, on random walks."""

from __future__ import annotations

import random

import numpy as np
import pytest

from flowfield.envs.rooms import SUCCESS_REWARD, TERMINAL, RoomsEnv
from research.envs.grid_rooms import GRID_ACTIONS, GridLayout, GridRooms, trap_house


def test_trap_house_objects_and_window_in_distinct_rooms():
    house = trap_house(5, 4, 6, seed=3)
    rooms = [*house.objects.values(), house.window]
    assert len(set(rooms)) == len(rooms) == 7
    assert trap_house(5, 4, 6, seed=3) == house
    with pytest.raises(ValueError):
        trap_house(2, 2, 4)


@pytest.mark.parametrize("shape", [(4, 4, 3, 20), (5, 3, 5, 30)])
def test_grid_rooms_agrees_with_rooms_env(shape):
    w, h, k, max_steps = shape
    layout = GridLayout.make(w, h, k, seed=1)
    starts = random.Random(0).sample(layout.all_starts(), 64)
    batch = GridRooms(layout, max_steps)
    batch.reset(starts)
    envs = [RoomsEnv(layout.task(*s, max_steps)) for s in starts]
    assert batch.state_keys() == [e.state() for e in envs]
    rng = np.random.default_rng(0)
    done = [False] * len(envs)
    successes = 0
    while not batch.done.all():
        mask = batch.mask()
        actions = []
        for i, env in enumerate(envs):
            if done[i]:
                assert not mask[i].any()
                actions.append(0)
                continue
            valid = {layout.action_text(batch.room[i], batch.holding[i], batch.target[i], a)
                     for a in np.flatnonzero(mask[i])}
            assert valid == set(env.actions())
            a = int(rng.choice(np.flatnonzero(mask[i])))
            # lean towards the goal's rules now and then: take and put whenever they are valid
            for pref in ("put", "take"):
                if mask[i, GRID_ACTIONS.index(pref)] and rng.random() < 0.5:
                    a = GRID_ACTIONS.index(pref)
            actions.append(a)
        texts = [None if d else layout.action_text(batch.room[i], batch.holding[i],
                                                   batch.target[i], a)
                 for i, (a, d) in enumerate(zip(actions, done))]
        before = batch.state_keys()
        rewards = batch.step(actions)
        keys = batch.state_keys()
        for i, env in enumerate(envs):
            if done[i]:  # a finished episode stays as it ended
                assert rewards[i] == 0.0 and keys[i] == before[i] == env.state()
                continue
            state, reward, terminated, truncated = env.step(texts[i])
            assert (keys[i], rewards[i]) == (state, reward)
            assert batch.truncated[i] == truncated and batch.success[i] == (reward > 0)
            assert batch.t[i] == env.t
            done[i] = terminated or truncated
            assert (keys[i] == TERMINAL) == terminated
            successes += reward == SUCCESS_REWARD
    assert successes > 0


def test_invalid_actions_raise_and_observations_are_one_hot():
    layout = GridLayout.make(4, 4, 3)
    env = GridRooms(layout, 10)
    env.reset([(0, 0, 5)])
    with pytest.raises(ValueError, match="invalid action"):
        env.step([GRID_ACTIONS.index("north")])  # room r0c0 has no door north
    obs = env.observation()
    assert obs.shape == (1, env.obs_dim) and obs.sum() == 6  # row, col, goal x2, holding, target
