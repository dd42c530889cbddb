import pytest
from graph_builders import lose, traj, win

from flowfield.graph import StateGraph, canonical_json, node_key


def test_json_state_keys_merge_on_equal_values_only():
    a = {"room": "kitchen", "inventory": ["apple", {"knife": "clean"}]}
    b = {"inventory": ["apple", {"knife": "clean"}], "room": "kitchen"}  # same, other key order
    assert canonical_json(a) == canonical_json(b)
    assert node_key(a) == node_key(b)
    # Exact match only: no string/number or int/float coercion, list order matters.
    keys = {node_key(x) for x in ["1", 1, 1.0, [1, 2], [2, 1], True, None, "null"]}
    assert len(keys) == 8

    g = StateGraph.from_trajectories([lose("t0", [a, "x"]), lose("t1", [b, "y"])])
    # a/b, x, y and one failure terminal "done"
    assert g.num_nodes == 4
    assert g.num_edges == 4


def test_self_loops_dropped_and_duplicate_edges_collapse():
    g = StateGraph()
    path = g.add_trajectory(traj("t0", ["s", "s", "t"], "end"))
    g.add_trajectory(traj("t1", ["s", "t"], "end"))
    s, t = path[0], path[2]
    assert path[1] == s
    assert s not in g.succ[s]
    assert g.num_edges == 2  # s -> t and t -> end
    assert g.actions[(s, t)] == ["a1", "a0"]  # both labels kept, for reporting only


def test_terminal_states_are_keyed_by_outcome():
    g = StateGraph.from_trajectories([win("t0", ["s"], final=""), lose("t1", ["s"], final="")])
    assert g.num_nodes == 3
    assert sorted(o for o in g.outcome if o) == ["failure", "success"]
    # A terminal state never merges with the same observation seen mid-episode...
    g = StateGraph.from_trajectories([lose("t0", ["x", "s"], final="x")])
    assert g.num_nodes == 3


def test_truncated_final_state_is_an_ordinary_state():
    # ...unless the episode was cut by the step limit: then it is just the state reached.
    g = StateGraph.from_trajectories(
        [traj("t0", ["a", "b"], "a", truncated=True), win("t1", ["b", "a"])]
    )
    assert g.num_nodes == 3  # a, b, success "done"
    with pytest.raises(ValueError):
        StateGraph().add_trajectory(traj("t", ["a"], "b", 1.0, success=True, truncated=True))


def test_entry_reward_is_max_over_sightings_whatever_the_order():
    t0 = traj("t0", ["s", "bonus"], "end", rewards=[0.0, 2.0])
    t1 = traj("t1", ["bonus", "s"], "end", rewards=[-1.0, 0.0])
    for order in ([t0, t1], [t1, t0]):
        g = StateGraph.from_trajectories(order)
        assert g.reward[g.index[node_key("bonus")]] == 2.0


def test_final_state_enters_with_final_reward():
    g = StateGraph()
    path = g.add_trajectory(win("t0", ["s0", "s1"], final="goal", reward=7.0))
    assert g.reward[path[-1]] == 7.0
    assert g.outcome[path[-1]] == "success"
    assert path[-1] in g.succ[path[1]]


def test_undirected_adds_reverse_edges_but_counts_observed_ones():
    d = StateGraph.from_trajectories([lose("t0", ["a", "b"])])
    u = StateGraph.from_trajectories([lose("t0", ["a", "b"])], undirected=True)
    a, b = d.index[node_key("a")], d.index[node_key("b")]
    assert a not in d.succ[b]
    assert a in u.succ[b] and b in u.succ[a]
    assert d.num_edges == u.num_edges == 2


def test_non_finite_rewards_and_non_json_states_are_rejected():
    with pytest.raises(ValueError):
        StateGraph().add_node("s", float("nan"))
    with pytest.raises(ValueError):
        node_key(float("inf"))
    with pytest.raises(TypeError):
        node_key({1, 2})
