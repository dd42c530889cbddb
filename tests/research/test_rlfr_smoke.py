"""`python -m research rlfr --smoke` end to end: every arm for 2 steps against a real
`flowfield serve` subprocess over HTTP (no mocks).

Checks that the loop ran (rollouts scored, policy-gradient steps taken, held-out metrics
taken), that the update path refined the flow (the version the service reports on /v1/flow
advanced, by exactly the accepted samples, and step 2 was scored with the refined flow) and
that the policy sync reached the service (the `encoder` of the /v1/score responses changed
to the revision the trainer pushed). Not the experiment's numbers: 2 steps show nothing.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import check_experiment_outputs, run_research

from research.rlfr.arms import DEFAULT_ARMS as ARMS
from research.rlfr.report import markdown_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("rlfr-smoke")
    output = run_research("rlfr", "--smoke", "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    return output, results, out


def _runs(results):
    return {r["arm"]: r for r in results["runs"]}


def test_every_arm_ran_the_loop(smoke):
    _, results, _ = smoke
    runs = _runs(results)
    assert list(runs) == list(ARMS)
    s = results["settings"]
    assert s["smoke"] and s["steps"] == 2 and s["seeds"] == [0]
    for arm, run in runs.items():
        assert [t["step"] for t in run["train"]] == [1, 2], arm
        assert [e["step"] for e in run["eval"]] == [0, 1, 2], arm
        for t in run["train"]:
            assert t["score_errors"] == 0
            assert math.isfinite(t["loss"]) and t["grad_norm"] >= 0
            # GRPO learns from groups with both outcomes, the shaping arms from token rewards
            # too; rlvr on a batch whose every group is all-right or all-wrong has nothing to
            # learn (the demo policy is right ~80% of the time, so that happens)
            if t["mixed_groups"] > 0 or arm != "rlvr":
                assert t["grad_norm"] > 0, (arm, t)
            assert t["flow_return"] is not None  # every arm scores through the service
            assert 0.0 <= t["reward"] <= 1.0
        for e in run["eval"]:
            assert 0.0 <= e["greedy"] <= 1.0 and 0.0 <= e["pass1"] <= 1.0
    # the same seed gives every arm the same first batch (same prompts, same sampling)
    first = {runs[a]["train"][0]["reward"] for a in runs}
    assert len(first) == 1


def test_update_path_refined_the_flow(smoke):
    _, results, _ = smoke
    run = _runs(results)["rlfr"]
    svc = run["service"]
    accepted = sum(t["accepted"] for t in run["train"])
    assert accepted > 0
    assert all(t["accepted"] == t["pushed"] for t in run["train"])
    # /v1/flow at the end of the run: new versions, trained on exactly what was accepted
    assert svc["flow_version_end"] > svc["flow_version_start"] == 0
    assert svc["samples_trained_end"] - svc["samples_trained_start"] == accepted
    # the trainer waited for the learner, so step 2 was scored with the refined flow
    step1, step2 = run["train"]
    assert step1["scored_flow_version"] == 0
    assert step2["scored_flow_version"] == step1["flow_version"] >= 1
    # without refinement the flow never moves
    frozen = _runs(results)["rlfr-frozen"]
    assert frozen["service"]["flow_version_end"] == 0
    assert all(t["pushed"] == 0 for t in frozen["train"])


def test_policy_sync_changed_the_encoder(smoke):
    _, results, _ = smoke
    for arm, run in _runs(results).items():
        step1, step2 = run["train"]
        start = run["service"]["encoder_start"]
        # /v1/score's `encoder`: the start policy, then the revision pushed after step 1
        assert step1["encoder"] == start
        assert step1["synced_encoder"].endswith(f"@{arm}-s0-step1")
        assert step2["encoder"] == step1["synced_encoder"] != start
        assert run["service"]["encoder_end"].endswith(f"@{arm}-s0-step2")  # /v1/flow


def test_shaping_signal_per_arm(smoke):
    _, results, _ = smoke
    runs = _runs(results)
    assert all(t["dense_return"] == 0.0 for t in runs["rlvr"]["train"])
    for arm in ("entropy", "nll"):
        assert any(t["dense_return"] != 0.0 for t in runs[arm]["train"]), arm
    for arm in ("rlfr", "rlfr-frozen"):
        for t in runs[arm]["train"]:
            assert t["dense_return"] == pytest.approx(t["flow_return"])


def test_outputs_written(smoke):
    output, results, out = smoke
    check_experiment_outputs(out, results, markdown_table, ARMS)
    assert "| rlfr |" in output
    v = results["versions"]
    assert v["policy_sha256"] and v["flow_sha256"] and v["torch"]
    assert not (out / "work").exists()  # per-run checkpoints and policies are cleaned up
    assert set(results["summary"]) == set(ARMS)
    # every run records its arm, seed, beta and pass@1 curve; the gradient probe ran first
    for run in results["runs"]:
        assert run["beta"] == results["settings"]["beta"]
        assert run["pass1_curve"] == [[e["step"], e["pass1"]] for e in run["eval"]]
    probe = results["probe"]
    assert [e["arm"] for e in probe["table"]] == list(ARMS) and probe["batches"] == 1
    rlvr = next(e for e in probe["table"] if e["arm"] == "rlvr")
    assert rlvr["cosine"] == pytest.approx(1.0)
    assert "Gradient probe" in output and "Paired differences against rlvr" in output
