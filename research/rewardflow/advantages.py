"""Per-step advantages of the three arms, on a batch of `Rollouts` ([T, B] arrays).

Rollouts b*G .. b*G + G - 1 are group b (G rollouts from the same start).

- outcome: A_t = R_i - mean of R over the group, on every step (no std division, as in the
  episode term of RewardFlow / GiGPO, so the two arms differ only by the step term);
- rewardflow: the service's `advantage` (POST /v1/score/graph): the same episode term plus
  step_weight * (V(s_{t+1}) - mean over the group's steps leaving s_t of V(s'));
- rewardflow-gamma: the service's state values V with the step reward of potential-based
  shaping, r_t = gamma * V(s_{t+1}) - V(s_t), and the same anchor-state baseline and episode
  term (computed here). RewardFlow's r_t = V(s_{t+1}) - V(s_t) gives a no-op (a self-loop,
  e.g. "examine") 0 while a detour loses (1 - gamma) V; with the gamma a no-op costs
  (1 - gamma) V too and the shortest move costs nothing;
- mc: G_t = mc_gamma^(T_i - 1 - t) * R_i (the reward comes with the last action), minus the
  mean of G_t over the group's rollouts still running at step t.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from research.rewardflow.agent import Rollouts


def _groups(n: int, group_size: int) -> np.ndarray:
    return np.arange(n) // group_size


def outcome_advantages(ro: Rollouts, group_size: int) -> np.ndarray:
    g = _groups(len(ro.reward), group_size)
    mean = np.bincount(g, ro.reward) / np.bincount(g)
    per_episode = ro.reward - mean[g]
    return np.broadcast_to(per_episode, ro.alive.shape) * ro.alive


def mc_advantages(ro: Rollouts, group_size: int, gamma: float) -> np.ndarray:
    T, B = ro.alive.shape
    t = np.arange(T)[:, None]
    ret = np.where(ro.alive, ro.reward[None, :] * gamma ** (ro.length[None, :] - 1 - t), 0.0)
    g = _groups(B, group_size)
    out = np.zeros((T, B))
    for k in range(g.max() + 1):
        cols = g == k
        alive = ro.alive[:, cols]
        n = alive.sum(axis=1, keepdims=True)
        mean = ret[:, cols].sum(axis=1, keepdims=True) / np.maximum(n, 1)
        out[:, cols] = np.where(alive, ret[:, cols] - mean, 0.0)
    return out


def graph_request(ro: Rollouts, group_size: int, gamma: float, step_weight: float,
                  tag: str) -> dict[str, Any]:
    """The /v1/score/graph body (docs/api.md): one group per start, states keyed by the
    environment's state string, terminal states marked by success / truncated."""
    assert ro.keys is not None, "collect(..., record_keys=True)"
    keys = ro.keys
    groups = []
    for b in range(len(ro.reward) // group_size):
        trajs = []
        for i in range(b * group_size, (b + 1) * group_size):
            n = int(ro.length[i])
            trajs.append({
                "id": f"t{i}",
                # actions are for reporting only; left out, the request is a third smaller
                "steps": [{"state": keys[t][i]} for t in range(n)],
                "final_state": keys[n][i],
                "final_reward": float(ro.reward[i]),
                "success": bool(ro.success[i]),
                "truncated": bool(ro.truncated[i]),
            })
        groups.append({"group_id": f"{tag}/g{b}", "trajectories": trajs})
    return {"gamma": gamma, "step_weight": step_weight, "undirected": False, "groups": groups}


@dataclass
class GraphAnswer:
    advantages: np.ndarray  # [T, B] the service's `advantage` of each step
    step_advantages: np.ndarray  # [T, B]
    values: np.ndarray  # [T, B] V(s_t)
    episode_advantages: np.ndarray  # [B]
    final_values: np.ndarray  # [B] V(final state)
    num_nodes: list[int]
    num_edges: list[int]
    timings: dict[str, float] = field(default_factory=dict)


def parse_graph_answer(body: dict[str, Any], ro: Rollouts, group_size: int) -> GraphAnswer:
    T, B = ro.alive.shape
    adv, step_adv, val = np.zeros((T, B)), np.zeros((T, B)), np.zeros((T, B))
    ep, final = np.zeros(B), np.zeros(B)
    nodes, edges = [], []
    for b, g in enumerate(body["groups"]):
        nodes.append(int(g["num_nodes"]))
        edges.append(int(g["num_edges"]))
        for j, tr in enumerate(g["trajectories"]):
            i = b * group_size + j
            if tr["id"] != f"t{i}" or len(tr["steps"]) != int(ro.length[i]):
                raise ValueError(f"graph answer does not match trajectory t{i}")
            n = len(tr["steps"])
            adv[:n, i] = [s["advantage"] for s in tr["steps"]]
            step_adv[:n, i] = [s["step_advantage"] for s in tr["steps"]]
            val[:n, i] = [s["value"] for s in tr["steps"]]
            ep[i] = tr["episode_advantage"]
            final[i] = tr["final_value"]
    return GraphAnswer(adv, step_adv, val, ep, final, nodes, edges)


def discounted_step_advantages(ans: GraphAnswer, ro: Rollouts, group_size: int, gamma: float,
                               step_weight: float) -> np.ndarray:
    """The rewardflow-gamma arm: A = episode term + w * (r_t - mean r over the group's steps
    leaving the same state), r_t = gamma * V(s_{t+1}) - V(s_t), V from the service."""
    assert ro.keys is not None
    T, B = ro.alive.shape
    nxt = np.zeros((T, B))
    nxt[:-1] = ans.values[1:]
    nxt[ro.length - 1, np.arange(B)] = ans.final_values  # after the last action
    r = np.where(ro.alive, gamma * nxt - ans.values, 0.0)
    step = np.zeros((T, B))
    for b in range(B // group_size):
        anchor: dict[str, list[tuple[int, int]]] = {}
        for i in range(b * group_size, (b + 1) * group_size):
            for t in range(int(ro.length[i])):
                anchor.setdefault(ro.keys[t][i], []).append((t, i))
        for cells in anchor.values():
            if len(cells) > 1:
                ts, js = zip(*cells, strict=True)
                rs = r[ts, js]
                step[ts, js] = rs - rs.mean()
    return np.where(ro.alive, ans.episode_advantages[None, :] + step_weight * step, 0.0)


def graph_advantages(client: Any, ro: Rollouts, group_size: int, gamma: float,
                     step_weight: float, tag: str) -> GraphAnswer:
    """POST the batch to the live service with flowfield-client's `score_graph` (its
    retries, auth header, timeouts and `stats`, which count the calls) and read the answer."""
    t0 = time.perf_counter()
    body = graph_request(ro, group_size, gamma, step_weight, tag)
    t1 = time.perf_counter()
    res = client.score_graph(body["groups"], gamma=body["gamma"],
                             step_weight=body["step_weight"], undirected=body["undirected"])
    t2 = time.perf_counter()
    ans = parse_graph_answer(res.to_json(), ro, group_size)
    t3 = time.perf_counter()
    ans.timings = {"build": t1 - t0, "http": t2 - t1, "parse": t3 - t2}
    return ans
