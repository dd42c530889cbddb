import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from flowfield.envs import DEFAULT_HOUSE, RoomsEnv, grid_house, make_groups
from flowfield.envs.rooms import TERMINAL, Task

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ARGS = (
    "--groups 2 --per-group 4 --seed 16 --max-steps 8"  # made examples/graph_request.json
)


def test_same_seed_same_trajectories():
    assert make_groups(3, 4, seed=7) == make_groups(3, 4, seed=7)
    assert make_groups(3, 4, seed=7) != make_groups(3, 4, seed=8)
    # Each group has its own stream: group g does not depend on how many groups were asked for.
    assert make_groups(2, 4, seed=7) == make_groups(3, 4, seed=7)[:2]
    house = grid_house(4, 3, num_objects=3, seed=1)
    assert make_groups(2, 3, 1, house=house) == make_groups(2, 3, 1, house=house)


def test_trajectories_replay_in_the_env():
    for group in make_groups(5, 6, seed=3, epsilon=0.5, max_steps=8):
        for t in group["trajectories"]:
            assert set(t) >= {"id", "steps", "final_state", "final_reward", "success"}
            assert 1 <= len(t["steps"]) <= 8
            assert t["steps"][0]["reward"] == 0.0
            assert t["truncated"] == (t["final_state"] != TERMINAL)
            assert t["success"] == (t["final_reward"] == 10.0)
            assert not (t["success"] and t["truncated"])


def test_env_rules():
    env = RoomsEnv(Task(DEFAULT_HOUSE, "apple", "hall", "kitchen", max_steps=4))
    assert env.reset() == "room=kitchen; holding=none"
    assert env.step("go to pantry") == ("room=pantry; holding=none", 0.0, False, False)
    assert env.step("examine apple") == ("room=pantry; holding=none", 0.0, False, False)
    with pytest.raises(ValueError):
        env.step("put apple down")  # not holding it, not in the goal room
    assert env.step("take apple") == ("room=pantry; holding=apple", 0.0, False, False)
    assert env.step("go to kitchen") == ("room=kitchen; holding=apple", 0.0, False, True)


def test_success_and_failure_end_on_the_same_observation():
    env = RoomsEnv(Task(DEFAULT_HOUSE, "book", "hall", "study", max_steps=5))
    env.step("take book")
    env.step("go to hall")
    assert env.step("put book down") == (TERMINAL, 10.0, True, False)
    env.reset()
    assert env.step("climb out the window") == (TERMINAL, 0.0, True, False)


def test_example_file_is_reproducible():
    # The committed example was made by this command; regenerate and compare.
    script = str(ROOT / "scripts" / "make_agent_trajectories.py")
    cmd = [sys.executable, script, *shlex.split(EXAMPLE_ARGS)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == json.loads((ROOT / "examples" / "graph_request.json").read_text())
