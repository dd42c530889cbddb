import pytest
from graph_builders import lose, win
from hypothesis import given, settings
from hypothesis import strategies as st

from flowfield.graph import StateGraph, node_key, propagate, propagate_naive


def values_by_state(graph, values):
    rows = zip(graph.labels, values, graph.outcome, strict=True)
    return {label: v for label, v, outcome in rows if outcome is None}


def make_graph(rewards, edges, undirected=False):
    g = StateGraph(undirected=undirected)
    for i, r in enumerate(rewards):
        g.add_node(i, r)
    for u, v in edges:
        g.add_edge(u, v)
    return g


def test_chain():
    g = StateGraph.from_trajectories([win("t0", ["a", "b", "c"])])
    v = values_by_state(g, propagate(g, 0.9))
    assert v == pytest.approx({'"a"': 7.29, '"b"': 8.1, '"c"': 9.0})


def test_branch_with_dead_end():
    g = StateGraph.from_trajectories(
        [win("t0", ["s", "a"]), lose("t1", ["s", "d", "e"]), lose("t2", ["d", "a"])]
    )
    v = values_by_state(g, propagate(g, 0.9))
    assert v == pytest.approx({'"s"': 8.1, '"a"': 9.0, '"d"': 8.1, '"e"': 0.0})
    # d only reaches success through t2's d -> a; drop t2 and d is a dead end.
    g = StateGraph.from_trajectories([win("t0", ["s", "a"]), lose("t1", ["s", "d", "e"])])
    v = values_by_state(g, propagate(g, 0.9))
    assert v == pytest.approx({'"s"': 8.1, '"a"': 9.0, '"d"': 0.0, '"e"': 0.0})


def test_cycle():
    # a <-> b cycle with an exit a -> c -> success, and a cycle that never succeeds.
    g = StateGraph.from_trajectories([win("t0", ["a", "b", "a", "c"]), lose("t1", ["x", "y", "x"])])
    v = values_by_state(g, propagate(g, 0.9))
    assert v == pytest.approx({'"a"': 8.1, '"b"': 7.29, '"c"': 9.0, '"x"': 0.0, '"y"': 0.0})


def test_negative_rewards():
    # DAG of negatives: the best is the farthest (discount shrinks the penalty).
    g = make_graph([-5.0, -1.0, -4.0], [(0, 1), (1, 2)])
    assert propagate(g, 0.5) == pytest.approx([-0.5, -1.0, -4.0])
    # A cycle of negatives: unbounded walks, the fixed point is 0 (sweeps approach it).
    g = make_graph([-1.0, -1.0, -3.0], [(0, 1), (1, 0), (2, 0)])
    assert propagate(g, 0.9) == [0.0, 0.0, 0.0]
    assert propagate_naive(g, 0.9) == pytest.approx([0.0] * 3, abs=1e-40)
    # Any reachable non-negative reward beats every negative one.
    g = make_graph([-1.0, -1.0, 0.0, 10.0], [(0, 1), (1, 2), (0, 3)])
    assert propagate(g, 0.9) == pytest.approx([9.0, 0.0, 0.0, 10.0])


def test_isolated_and_empty():
    assert propagate(StateGraph(), 0.9) == []
    assert propagate(make_graph([3.0, -2.0], []), 0.9) == [3.0, -2.0]


@pytest.mark.parametrize("gamma", [-0.1, 1.0, 1.5, float("nan")])
def test_gamma_must_be_in_unit_interval(gamma):
    with pytest.raises(ValueError):
        propagate(StateGraph(), gamma)
    with pytest.raises(ValueError):
        propagate_naive(StateGraph(), gamma)


def test_undirected_propagates_against_observed_direction():
    trajs = [win("t0", ["p", "q"]), lose("t1", ["q", "z"], final="fail")]
    g = StateGraph.from_trajectories(trajs)
    assert values_by_state(g, propagate(g, 0.9))['"z"'] == 0.0
    g = StateGraph.from_trajectories(trajs, undirected=True)
    v = propagate(g, 0.9)
    assert values_by_state(g, v)['"z"'] == pytest.approx(8.1)
    assert v[g.index[node_key("fail", "failure")]] == pytest.approx(7.29)


@st.composite
def random_graphs(draw):
    n = draw(st.integers(1, 12))
    reward = st.one_of(
        st.just(0.0), st.sampled_from([1.0, 10.0, -1.0]), st.floats(-10, 10, width=32)
    )
    rewards = draw(st.lists(reward, min_size=n, max_size=n))
    pair = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
    edges = draw(st.lists(pair, max_size=3 * n))
    return rewards, edges


@settings(max_examples=150, deadline=None)
@given(
    random_graphs(),
    st.sampled_from([0.0, 0.5, 0.9, 0.95]),
    st.booleans(),
    st.booleans(),
)
def test_fast_equals_naive_sweeps(graph, gamma, undirected, non_negative):
    rewards, edges = graph
    if non_negative:
        rewards = [abs(r) for r in rewards]
    g = make_graph(rewards, edges, undirected)
    fast, naive = propagate(g, gamma), propagate_naive(g, gamma, sweeps=1000)
    if non_negative:
        assert fast == naive  # same products in the same order: bit-identical
    else:
        # Negative cycles: sweeps approach the limit 0 as -gamma^k |r|, 0.95^1000 ~ 5e-23.
        assert fast == pytest.approx(naive, rel=1e-12, abs=1e-12)
    # And it is a fixed point of the update.
    for u in range(g.num_nodes):
        best = max([gamma * fast[v] for v in g.succ[u]], default=fast[u])
        assert fast[u] == pytest.approx(max(fast[u], best), abs=1e-12)
