"""The HTTP contract (docs/api.md) against a real uvicorn server on the demo policy and flow."""

from __future__ import annotations

import json
from pathlib import Path

from service_helpers import demo_sample

from service.app import DOCUMENTED_PATHS

EXAMPLE_GRAPH = Path(__file__).resolve().parents[2] / "examples" / "graph_request.json"


def test_score_returns_aligned_rewards_with_version_and_encoder(client):
    samples = [demo_sample(0), demo_sample(1, wrong=True)]
    r = client.post("/v1/score", json={"samples": samples})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["flow_version"] == 0
    assert body["encoder"].startswith("demo-arith@")
    assert body["normalization"] == "expert"  # the default: the bundled flow is calibrated
    assert [x["id"] for x in body["results"]] == ["s-0", "s-1"]
    for x in body["results"]:
        assert x["status"] == "ok"
        assert len(x["token_rewards"]) == x["num_tokens"] == 43
        assert abs(sum(x["token_rewards"]) - x["flow_return"]) < 1e-9
        assert all(abs(v) <= 0.01 + 1e-12 for v in x["token_rewards"])
        assert "deviations" not in x and "advantages" not in x
        # default filtering keeps at most 15 non-zero tokens
        assert sum(v != 0 for v in x["token_rewards"]) <= 15


def test_same_request_same_numbers_and_ids_equal_text(client):
    samples = [demo_sample(i) for i in range(4)]
    a = client.post("/score", json={"samples": samples}).json()
    b = client.post("/v1/score", json={"samples": samples}).json()
    assert a == b
    # the same samples as token ids, via the tokenizer the service uses
    from transformers import AutoTokenizer

    from service.settings import DEMO_ASSETS

    tok = AutoTokenizer.from_pretrained(DEMO_ASSETS / "policy")
    as_ids = [
        {
            "id": s["id"],
            "prompt_ids": tok(s["prompt"], add_special_tokens=False)["input_ids"],
            "response_ids": tok(s["response"], add_special_tokens=False)["input_ids"],
        }
        for s in samples
    ]
    c = client.post("/v1/score", json={"samples": as_ids}).json()
    assert c["results"] == a["results"]


def test_options_deviations_and_advantages(client):
    samples = [
        demo_sample(0, reward=1.0, group_id="g"),
        demo_sample(1, wrong=True, reward=0.0, group_id="g"),
    ]
    r = client.post(
        "/v1/score",
        json={
            "samples": samples,
            "options": {
                "normalization": "unilateral",
                "beta": 0.5,
                "threshold": 0.0,
                "top_k": 0,
                "timesteps": [0.5, 0.8],
                "noise_draws": 2,
                "return_deviations": True,
                "return_advantages": True,
            },
        },
    )
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    for x in res:
        assert len(x["deviations"]) == len(x["advantages"]) == x["num_tokens"]
        assert all(-0.5 - 1e-12 <= v <= 0 for v in x["token_rewards"])  # unilateral: penalties
        # reward-to-go: the advantage difference between neighbours is the token reward
        adv, rew = x["advantages"], x["token_rewards"]
        assert abs((adv[0] - adv[1]) - rew[0]) < 1e-9
    # group-normalised outcome: +0.7071 and -0.7071 at the last token (plus its reward)
    assert abs(res[0]["advantages"][-1] - res[0]["token_rewards"][-1] - 0.70710678) < 1e-6
    assert abs(res[1]["advantages"][-1] - res[1]["token_rewards"][-1] + 0.70710678) < 1e-6


def test_expert_normalisation_keeps_the_sign_and_needs_its_timesteps(client):
    """With `expert` (the default) a rollout the flow finds further from the expert data gets
    a lower return; bilateral min-max gives every rollout the same range."""
    right = [demo_sample(i) for i in range(8)]
    wrong = [demo_sample(i, wrong=True, id=f"w-{i}") for i in range(8)]
    body = client.post("/v1/score", json={"samples": right + wrong}).json()
    returns = [x["flow_return"] for x in body["results"]]
    assert sum(returns[:8]) / 8 > sum(returns[8:]) / 8
    # other timesteps than the calibrated ones: the default falls back, an explicit ask is a 422
    r = client.post("/v1/score", json={"samples": right[:1], "options": {"timesteps": [0.5]}})
    assert r.status_code == 200 and r.json()["normalization"] == "bilateral"
    r = client.post(
        "/v1/score",
        json={"samples": right[:1], "options": {"timesteps": [0.5], "normalization": "expert"}},
    )
    assert r.status_code == 422 and "calibrated at timesteps [0.8]" in r.text
    assert r.json()["error"]["field"] == "options.normalization"


def test_empty_samples_is_valid(client):
    r = client.post("/v1/score", json={"samples": []})
    assert r.status_code == 200 and r.json()["results"] == []


def test_sample_level_errors_do_not_fail_the_others(client):
    r = client.post(
        "/v1/score",
        json={
            "samples": [
                {"id": "bad-vocab", "prompt_ids": [1], "response_ids": [3, 999]},
                demo_sample(0),
                {"id": "empty", "prompt_ids": [1], "response_ids": []},
                {"id": "too-long", "prompt_ids": [4] * 100, "response_ids": [5] * 100},
            ]
        },
    )
    assert r.status_code == 200
    res = {x["id"]: x for x in r.json()["results"]}
    assert res["s-0"]["status"] == "ok"
    assert res["bad-vocab"]["status"] == "error" and "999" in res["bad-vocab"]["error"]
    assert "empty response" in res["empty"]["error"]
    assert "context of 128" in res["too-long"]["error"]


def test_flow_info_health_ready_metrics_docs(client):
    info = client.get("/v1/flow").json()
    assert info["flow_version"] >= 0 and info["queue_backend"] == "memory"
    assert info["dtype"] == "float32"  # FLOWFIELD_DTYPE unset: float32 on cpu
    assert info["metadata"]["context"] == "prev" and info["metadata"]["hooked_layers"] == [1, 2, 3]
    assert info["metadata"]["width"] == 128 and info["metadata"]["depth"] == 4
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["checks"] == {"model": True}
    client.post("/v1/score", json={"samples": [demo_sample(3)]})
    text = client.get("/metrics").text
    for name in (
        "flowfield_requests_total",
        "flowfield_tokens_scored_total",
        "flowfield_token_reward_bucket",
        "flowfield_deviation_bucket",
        "flowfield_flow_return_bucket",
        "flowfield_batch_samples_bucket",
        "flowfield_score_queue_seconds_bucket",
        "flowfield_flow_version",
        "flowfield_encoder_info",
        "flowfield_request_latency_seconds_bucket",
    ):
        assert name in text, name
    spec = client.get("/openapi.json").json()
    # the spec documents exactly these paths (service.app labels each one's request metrics)
    assert set(spec["paths"]) == DOCUMENTED_PATHS
    assert client.get("/docs").status_code == 200


def test_openrlhf_get_reward(client):
    s = demo_sample(0)
    r = client.post(
        "/get_reward",
        json={"query": [s["prompt"] + s["response"]], "prompts": [s["prompt"]], "labels": ["6912"]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["rewards"]) == len(body["scores"]) == 1
    direct = client.post("/v1/score", json={"samples": [s]}).json()["results"][0]
    assert abs(body["rewards"][0] - direct["flow_return"]) < 1e-9
    assert set(body["extra_logs"]) == {"flow_return", "mean_deviation"}
    empty = client.post("/get_reward", json={"query": [], "prompts": [], "labels": []})
    assert empty.json() == {"rewards": [], "scores": [], "extra_logs": {}}


def test_graph_endpoint_scores_the_example(client):
    body = json.loads(EXAMPLE_GRAPH.read_text())
    r = client.post("/v1/score/graph", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["groups"]) == len(body["groups"])
    for g_in, g_out in zip(body["groups"], out["groups"]):
        assert g_out["group_id"] == g_in["group_id"] and g_out["num_nodes"] > 0
        for t_in, t_out in zip(g_in["trajectories"], g_out["trajectories"]):
            assert len(t_out["steps"]) == len(t_in["steps"])
    text = client.get("/metrics").text
    n_traj = sum(len(g["trajectories"]) for g in body["groups"])
    assert f"flowfield_graph_trajectories_total {float(n_traj)}" in text
    assert 'flowfield_requests_total{endpoint="/v1/score/graph",status="200"} 1.0' in text
    bad = client.post("/v1/score/graph", json={"gamma": 1.5, "groups": []})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "gamma"
