"""Backward value propagation on a state graph (docs/method.md#propagation).

Both functions compute the fixed point of V(u) = max(V(u), gamma * max_{v in succ(u)} V(v))
reached by iterating from V = entry reward. The update only ever raises values, so the limit is
V(u) = sup over walks u -> ... -> m of gamma^len * r(m) (the walk may be empty, giving r(u)).

Negative entry rewards are allowed and handled exactly:
- if u can reach a node with r >= 0, only such nodes matter (gamma^k * r >= 0 beats any
  negative candidate) and the best one is the shortest-distance one: a max-product Dijkstra;
- otherwise every reachable reward is negative and longer walks are *better* (gamma^k * r
  rises towards 0). If u can reach a cycle, walks are unbounded and V(u) = 0, the limit that
  synchronous sweeps approach from below (-gamma^k |r|); if not, a longest-walk pass in
  topological order gives the value.
"""

from __future__ import annotations

import heapq
import math

from flowfield.graph.state_graph import StateGraph


def check_gamma(gamma: float) -> None:
    # gamma < 1 makes value decay with distance to the reward (0.9 / 0.95 in the paper) and is
    # what lets walks around cycles of negative rewards converge (to 0).
    if not (math.isfinite(gamma) and 0.0 <= gamma < 1.0):
        raise ValueError(f"gamma must be in [0, 1), got {gamma!r}")


def propagate(graph: StateGraph, gamma: float) -> list[float]:
    """Fixed-point values, indexed like the graph's nodes, in O((V + E) log V)."""
    check_gamma(gamma)
    value = list(graph.reward)
    done = [False] * graph.num_nodes

    # 1) Max-product Dijkstra on reversed edges, every node with r >= 0 a source at its own
    # reward. For x >= 0, gamma * x <= x, so nodes pop in non-increasing value order and the
    # first pop of a node is final, exactly like shortest paths with non-negative weights.
    heap = [(-r, u) for u, r in enumerate(value) if r >= 0.0]
    heapq.heapify(heap)
    while heap:
        _, v = heapq.heappop(heap)
        if done[v]:
            continue  # stale entry, a better value was popped already
        done[v] = True  # its first pop carries its best value, value[v]
        cand = gamma * value[v]
        for u in graph.pred[v]:
            if not done[u] and cand > value[u]:
                value[u] = cand
                heapq.heappush(heap, (-cand, u))

    # 2) Nodes left reach only negative rewards, and so do all their successors. Peel them
    # from the sinks backwards (Kahn's order on out-degrees): a node is final once all its
    # successors are. Nodes never peeled reach a cycle: their sup is 0.
    left = {u: len(graph.succ[u]) for u in range(graph.num_nodes) if not done[u]}
    ready = [u for u, out in left.items() if out == 0]
    while ready:
        v = ready.pop()
        done[v] = True
        cand = gamma * value[v]
        for u in graph.pred[v]:
            if u not in left:
                continue  # phase-1 node: it reaches r >= 0 through another successor
            if cand > value[u]:
                value[u] = cand
            left[u] -= 1
            if left[u] == 0:
                ready.append(u)
    for u in left:
        if not done[u]:
            value[u] = 0.0
    return value


def propagate_naive(graph: StateGraph, gamma: float, sweeps: int = 1000) -> list[float]:
    """The authors' way: a fixed number of synchronous sweeps in pure Python,
    O(sweeps * (V + E)). Kept as the reference for tests and the benchmark."""
    check_gamma(gamma)
    value = list(graph.reward)
    succ = [list(s) for s in graph.succ]
    for _ in range(sweeps):
        new = value[:]
        for u, vs in enumerate(succ):
            for v in vs:
                cand = gamma * value[v]
                if cand > new[u]:
                    new[u] = cand
        value = new
    return value
