"""`python -m research rewardflow --smoke` end to end: every arm in both environments for a
few updates, the rewardflow arm against a real `flowfield serve` subprocess over HTTP (no
mocks).

Checks that the loop ran (updates, held-out evaluations on starts never trained on), that
graph rewards were requested from the live service (the trainer's client count and the
service's own /metrics count of POST /v1/score/graph agree and are > 0) and used (the
advantages applied differ from outcome-only; the service's episode term equals the
outcome arm's advantage). Not the experiment's numbers: a few updates show nothing.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import check_experiment_outputs, run_research

from flowfield.graph import groups_from_request, score_groups
from research.rewardflow.advantages import (
    GraphAnswer,
    discounted_step_advantages,
    graph_request,
    mc_advantages,
    outcome_advantages,
)
from research.rewardflow.agent import Rollouts
from research.rewardflow.config import (
    DEFAULT_ARMS,
    ENVIRONMENTS,
    SMOKE,
    is_heldout,
    split_starts,
)
from research.rewardflow.report import markdown_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("rewardflow-smoke")
    output = run_research("rewardflow", "--smoke", "--out", str(out))
    return output, json.loads((out / "results.json").read_text()), out


def _runs(results):
    return {(r["env"], r["arm"]): r for r in results["runs"]}


def test_every_arm_and_environment_ran(smoke):
    _, results, _ = smoke
    runs = _runs(results)
    assert set(runs) == {(e, a) for e in ENVIRONMENTS for a in DEFAULT_ARMS}
    s = results["settings"]
    assert s["smoke"] and s["seeds"] == [0]
    for (env, _arm), run in runs.items():
        assert run["env_steps"] >= SMOKE.steps and run["updates"] >= 1
        assert [e["step"] for e in run["eval"]] == SMOKE.checkpoints(env)
        for t in run["train"]:
            assert math.isfinite(t["loss"]) and 0.0 <= t["success"] <= 1.0
        for e in run["eval"]:
            assert 0.0 <= e["success"] <= 1.0 and 0.0 <= e["greedy_success"] <= 1.0
    # every arm of a seed starts from the same policy and the same first batch of starts
    for env in ENVIRONMENTS:
        firsts = {json.dumps(runs[env, a]["train"][0]["success"]) for a in DEFAULT_ARMS}
        assert len(firsts) == 1
        evals0 = {json.dumps(runs[env, a]["eval"][0]) for a in DEFAULT_ARMS}
        assert len(evals0) == 1


def test_graph_rewards_came_from_the_live_service_and_were_used(smoke):
    _, results, _ = smoke
    runs = _runs(results)
    for env, arm in [(e, a) for e in ENVIRONMENTS for a in ("rewardflow", "rewardflow-gamma")]:
        rf = runs[env, arm]
        svc = rf["service"]
        # one request per update, counted by the trainer's client and by the service itself
        assert rf["graph_calls"] == rf["updates"] > 0
        assert svc["client_requests"] == svc["graph_requests"] == rf["updates"]
        assert svc["graph_trajectories"] == rf["updates"] * SMOKE.rollouts_per_update
        assert svc["graph_steps"] == rf["env_steps"]
        for t in rf["train"]:
            assert t["graph_nodes"] > 0 and t["episode_adv_mismatch"] < 1e-6
    for env in ENVIRONMENTS:
        for arm in ("outcome", "mc"):  # the other arms never call the service
            assert runs[env, arm]["graph_calls"] == 0
            assert runs[env, arm]["service"]["graph_requests"] == 0
        assert all(t["adv_vs_outcome"] == 0.0 for t in runs[env, "outcome"]["train"])
    # the advantages applied differ from outcome-only (step term from the graph values)
    for arm in ("rewardflow", "rewardflow-gamma"):
        train = runs["easy", arm]["train"]
        assert any(t["adv_vs_outcome"] > 0 and t["step_adv_nonzero"] > 0 for t in train), arm
    assert results["service"]["url"].startswith("http://127.0.0.1:")


def test_outputs_written(smoke):
    output, results, out = smoke
    check_experiment_outputs(out, results, markdown_table, DEFAULT_ARMS)
    assert results["versions"]["torch"]
    assert set(results["summary"]) == set(ENVIRONMENTS)


# ---- parts, no service ----------------------------------------------------------------------


def _rollouts(lengths, rewards, truncated=None):
    """Hand-made rollouts: episode i walks states s0, s1, ... (keys shared across episodes)."""
    T, B = max(lengths), len(lengths)
    alive = np.array([[t < n for n in lengths] for t in range(T)])
    keys = [[f"s{min(t, n)}" if t < n else "end" for n in lengths] for t in range(T + 1)]
    for i, n in enumerate(lengths):
        keys[n][i] = "episode over" if not (truncated or [False] * B)[i] else f"s{n}"
    reward = np.asarray(rewards, dtype=float)
    return Rollouts(
        starts=[(0, 0, 1)] * B, obs=np.zeros((T, B, 1), np.float32),
        mask=np.ones((T, B, 8), bool), actions=np.zeros((T, B), np.int64), alive=alive,
        keys=keys, length=np.asarray(lengths), success=reward > 0,
        truncated=np.asarray(truncated or [False] * B), reward=reward,
    )


def test_outcome_and_mc_advantages():
    ro = _rollouts([2, 3, 1, 4], [10.0, 0.0, 10.0, 0.0])
    out = outcome_advantages(ro, group_size=2)
    assert out[:2, 0].tolist() == [5.0, 5.0] and out[:3, 1].tolist() == [-5.0] * 3
    assert out[0, 2] == 5.0 and out[:4, 3].tolist() == [-5.0] * 4
    assert out[2, 0] == 0.0  # no advantage after an episode ended
    mc = mc_advantages(ro, group_size=2, gamma=0.5)
    # episode 0 succeeds on its 2nd action: returns 5, 10; episode 1 fails: 0, 0, 0
    assert mc[:3, 0].tolist() == [2.5, 5.0, 0.0]
    assert mc[:3, 1].tolist() == [-2.5, -5.0, 0.0]  # step 2: only episode 1 still runs


def test_graph_request_matches_the_library():
    ro = _rollouts([2, 3], [10.0, 0.0], truncated=[False, True])
    body = graph_request(ro, group_size=2, gamma=0.9, step_weight=1.0, tag="x")
    (group,) = body["groups"]
    t0, t1 = group["trajectories"]
    assert [s["state"] for s in t0["steps"]] == ["s0", "s1"]
    assert t0["final_state"] == "episode over" and t0["success"] and t0["final_reward"] == 10
    assert t1["final_state"] == "s3" and t1["truncated"] and not t1["success"]
    (res,) = score_groups(groups_from_request(body), 0.9, 1.0)
    # s0 -> s1 -> success: V(s1) = 9, V(s0) = 8.1; the failed rollout's shared steps score alike
    assert res.trajectories[0].steps[0].value == pytest.approx(8.1)
    assert res.trajectories[1].steps[1].value == pytest.approx(9.0)


def test_heldout_starts_are_never_trained_on():
    for name, setting in ENVIRONMENTS.items():
        train, held = split_starts(setting, 0.2, 10_000)
        assert held and not set(train) & set(held)
        assert all(is_heldout(name, s, 0.2) for s in held)
        assert 0.15 < len(held) / (len(train) + len(held)) < 0.25


def test_discounted_step_reward_charges_a_no_op():
    # two rollouts from s0 (V = 9, one step from the goal): one examines (s0 -> s0, a
    # self-loop) and then puts, the other puts at once; success has V = 10
    ro = _rollouts([2, 1], [10.0, 10.0])
    ro.keys = [["s0", "s0"], ["s0", "episode over"], ["episode over", "episode over"]]
    ans = GraphAnswer(
        advantages=np.zeros((2, 2)), step_advantages=np.zeros((2, 2)),
        values=np.array([[9.0, 9.0], [9.0, 0.0]]), episode_advantages=np.zeros(2),
        final_values=np.array([10.0, 10.0]), num_nodes=[2], num_edges=[1])
    adv = discounted_step_advantages(ans, ro, group_size=2, gamma=0.9, step_weight=1.0)
    # anchor s0: examine r = 0.9 * 9 - 9 = -0.9, the puts r = 0.9 * 10 - 9 = 0; mean -0.3
    assert adv[0, 0] == pytest.approx(-0.6)
    assert adv[1, 0] == pytest.approx(0.3) == adv[0, 1]
    # RewardFlow's own step reward V(s') - V(s) gives the no-op 0 and each put +1: the no-op
    # is still below the puts here, but above any detour (a detour loses (1 - gamma) V)
