import json
from pathlib import Path

import pytest
from graph_builders import lose, traj, win
from hypothesis import given, settings
from hypothesis import strategies as st

from flowfield.envs import make_groups
from flowfield.graph import Group, group_by_id, groups_from_request, score_group, score_groups

ROOT = Path(__file__).resolve().parents[2]


def table(result, field):
    return {t.id: [getattr(s, field) for s in t.steps] for t in result.trajectories}


def close(got, want):
    """pytest.approx for a dict of lists (approx itself does not nest)."""
    return got.keys() == want.keys() and all(got[k] == pytest.approx(want[k]) for k in want)


def test_chain_rewards_are_value_differences():
    res = score_group([win("t0", ["a", "b", "c"])], gamma=0.9)
    assert table(res, "value")["t0"] == pytest.approx([7.29, 8.1, 9.0])
    assert table(res, "step_reward")["t0"] == pytest.approx([0.81, 0.9, 1.0])
    assert res.trajectories[0].final_value == 10.0
    assert (res.num_nodes, res.num_edges) == (4, 3)
    # A lone trajectory: no episode advantage, every anchor group has one step.
    assert table(res, "advantage")["t0"] == [0.0, 0.0, 0.0]


def test_branch_with_dead_end_advantages_by_hand():
    res = score_group([win("t0", ["s", "a"]), lose("t1", ["s", "d"])], gamma=0.9)
    assert close(table(res, "value"), {"t0": [8.1, 9.0], "t1": [8.1, 0.0]})
    assert close(table(res, "step_reward"), {"t0": [0.9, 1.0], "t1": [-8.1, 0.0]})
    # R = (10, 0): A_episode = +-5. Anchor s: r = (0.9, -8.1), mean -3.6 -> A_step = +-4.5.
    # Anchors a and d hold one step each -> 0.
    assert [t.episode_advantage for t in res.trajectories] == [5.0, -5.0]
    assert close(table(res, "step_advantage"), {"t0": [4.5, 0.0], "t1": [-4.5, 0.0]})
    assert close(table(res, "advantage"), {"t0": [9.5, 5.0], "t1": [-9.5, -5.0]})
    half = score_group([win("t0", ["s", "a"]), lose("t1", ["s", "d"])], step_weight=0.5)
    assert close(table(half, "advantage"), {"t0": [7.25, 5.0], "t1": [-7.25, -5.0]})


def test_all_fail_group_is_all_zero():
    res = score_group([lose("t0", ["s", "a", "b"]), lose("t1", ["s", "b", "a"]), lose("t2", [])])
    for field in ("value", "step_reward", "advantage"):
        assert all(x == 0.0 for xs in table(res, field).values() for x in xs)
    assert table(res, "value")["t2"] == []  # no steps, nothing to score


def test_all_success_shorter_path_is_preferred():
    res = score_group([win("t0", ["s", "a"]), win("t1", ["s", "b", "c"])], gamma=0.9)
    assert close(table(res, "value"), {"t0": [8.1, 9.0], "t1": [8.1, 8.1, 9.0]})
    assert close(table(res, "step_reward"), {"t0": [0.9, 1.0], "t1": [0.0, 0.9, 1.0]})
    # Same return -> A_episode 0; anchor s: r = (0.9, 0.0), mean 0.45 -> +-0.45.
    assert close(table(res, "advantage"), {"t0": [0.45, 0], "t1": [-0.45, 0, 0]})


def test_success_on_last_allowed_step_gets_a_value_difference():
    # Step limit 3; t0 succeeds with its 3rd (last allowed) action, t1 is cut by the limit.
    t0 = win("t0", ["s", "a", "b"], final="done", reward=10.0)
    t1 = traj("t1", ["s", "a", "e"], "c", truncated=True)
    res = score_group([t0, t1], gamma=0.9)
    assert res.trajectories[0].final_value == 10.0
    # The last step is rewarded on the value scale (10 - 9), not with the raw reward 10.
    assert table(res, "step_reward")["t0"] == pytest.approx([0.81, 0.9, 1.0])
    assert table(res, "value")["t1"] == pytest.approx([7.29, 8.1, 0.0])


def test_same_terminal_observation_with_different_outcomes():
    trajs = [win("t0", ["s", "a"], final="", reward=1.0), lose("t1", ["s", "b"], final="")]
    for order in (trajs, trajs[::-1]):
        res = score_group(order, gamma=0.9)
        assert res.num_nodes == 5
        v = table(res, "value")
        assert close(v, {"t0": [0.81, 0.9], "t1": [0.81, 0.0]})


def test_undirected_option():
    trajs = [win("t0", ["p", "q"]), lose("t1", ["q", "z"], final="fail")]
    assert table(score_group(trajs), "value")["t1"] == pytest.approx([9.0, 0.0])
    res = score_group(trajs, undirected=True)
    assert table(res, "value")["t1"] == pytest.approx([9.0, 8.1])
    assert res.trajectories[1].final_value == pytest.approx(7.29)


def test_episode_return_sums_step_and_final_rewards():
    t0 = traj("t0", ["s", "a"], "end", 10.0, success=True, rewards=[0.0, 1.0])
    res = score_group([t0, lose("t1", ["s"])])
    assert [t.episode_return for t in res.trajectories] == [11.0, 0.0]
    assert [t.episode_advantage for t in res.trajectories] == [5.5, -5.5]


def test_groups_are_scored_by_id_on_their_own_graphs():
    groups = [Group("g-a", [win("t0", ["x", "y"])]), Group("g-b", [lose("t0", ["x", "y"])])]
    a, b = score_groups(groups)
    assert (a.group_id, b.group_id) == ("g-a", "g-b")
    assert table(a, "value")["t0"] == pytest.approx([8.1, 9.0])
    assert table(b, "value")["t0"] == [0.0, 0.0]  # never merged with g-a's states
    with pytest.raises(ValueError):
        score_groups([Group("g", []), Group("g", [])])
    with pytest.raises(ValueError):
        score_group([lose("t", ["x"]), lose("t", ["y"])])


def test_group_by_id_ignores_position():
    t = [lose(f"t{i}", ["s"]) for i in range(4)]
    groups = group_by_id([("b", t[0]), ("a", t[1]), ("b", t[2]), ("b", t[3])])
    assert [(g.group_id, [x.id for x in g.trajectories]) for g in groups] == [
        ("b", ["t0", "t2", "t3"]),
        ("a", ["t1"]),
    ]


def test_example_request_scores():
    body = json.loads((ROOT / "examples" / "graph_request.json").read_text())
    results = score_groups(groups_from_request(body), gamma=body["gamma"])
    assert [r.group_id for r in results] == [g["group_id"] for g in body["groups"]]
    for r, g in zip(results, body["groups"], strict=True):
        lengths = [len(t["steps"]) for t in g["trajectories"]]
        assert [len(t.steps) for t in r.trajectories] == lengths


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.5, 1.0]))
def test_invariants_on_rollouts(seed, epsilon):
    groups = groups_from_request({"groups": make_groups(2, 6, seed, epsilon, max_steps=12)})
    for g, res in zip(groups, score_groups(groups, gamma=0.9), strict=True):
        anchor: dict[str, float] = {}
        for t, tr in zip(g.trajectories, res.trajectories, strict=True):
            # Potential differences telescope to V(final) - V(s_0).
            total = sum(s.step_reward for s in tr.steps)
            assert total == pytest.approx(tr.final_value - tr.steps[0].value, abs=1e-9)
            if t.success:
                assert tr.final_value == 10.0
            for s in tr.steps:
                anchor[s.node] = anchor.get(s.node, 0.0) + s.step_advantage
                assert s.advantage == pytest.approx(tr.episode_advantage + s.step_advantage)
        # Step advantages are centred within each anchor state; episode ones within the group.
        assert all(abs(x) < 1e-9 for x in anchor.values())
        assert sum(t.episode_advantage for t in res.trajectories) == pytest.approx(0, abs=1e-9)
