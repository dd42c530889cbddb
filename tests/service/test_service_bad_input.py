"""Bad input: the right 4xx, a message naming the problem, never a 500; the service lives on."""

from __future__ import annotations

import pytest
from service_helpers import demo_sample

OK = demo_sample(0)
BIG = 9 * 1024 * 1024  # over the 8 MiB default body limit

CASES = [
    # (name, method, path, kwargs, status, text that must appear in the error message/field)
    (
        "non-json",
        "POST",
        "/v1/score",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        422,
        "not valid JSON",
    ),
    (
        "wrong content type",
        "POST",
        "/v1/score",
        {"content": b"samples=1", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        415,
        "application/json",
    ),
    ("no content type", "POST", "/v1/score", {"content": b"{}"}, 415, "application/json"),
    ("samples not a list", "POST", "/v1/score", {"json": {"samples": {"id": "x"}}}, 422, "samples"),
    ("missing samples", "POST", "/v1/score", {"json": {}}, 422, "samples"),
    ("sample not an object", "POST", "/v1/score", {"json": {"samples": [3]}}, 422, "samples[0]"),
    (
        "missing id",
        "POST",
        "/v1/score",
        {"json": {"samples": [{"response_ids": [3]}]}},
        422,
        "samples[0].id",
    ),
    (
        "empty id",
        "POST",
        "/v1/score",
        {"json": {"samples": [{"id": "", "response_ids": [3]}]}},
        422,
        "samples[0].id",
    ),
    (
        "missing response",
        "POST",
        "/v1/score",
        {"json": {"samples": [{"id": "a"}]}},
        422,
        "response_ids",
    ),
    (
        "ids not integers",
        "POST",
        "/v1/score",
        {"json": {"samples": [{"id": "a", "response_ids": [1, "two"]}]}},
        422,
        "samples[0].response_ids[1]",
    ),
    (
        "float ids",
        "POST",
        "/v1/score",
        {"json": {"samples": [{"id": "a", "response_ids": [1.5]}]}},
        422,
        "samples[0].response_ids[0]",
    ),
    ("duplicate ids", "POST", "/v1/score", {"json": {"samples": [OK, OK]}}, 422, "more than once"),
    (
        "unknown option",
        "POST",
        "/v1/score",
        {"json": {"samples": [OK], "options": {"temperature": 2}}},
        422,
        "unknown field 'temperature'",
    ),
    (
        "bad normalization",
        "POST",
        "/v1/score",
        {"json": {"samples": [OK], "options": {"normalization": "sideways"}}},
        422,
        "options.normalization",
    ),
    (
        "timestep out of range",
        "POST",
        "/v1/score",
        {"json": {"samples": [OK], "options": {"timesteps": [1.0]}}},
        422,
        "options.timesteps[0]",
    ),
    (
        "negative top_k",
        "POST",
        "/v1/score",
        {"json": {"samples": [OK], "options": {"top_k": -1}}},
        422,
        "options.top_k",
    ),
    (
        "zero noise draws",
        "POST",
        "/v1/score",
        {"json": {"samples": [OK], "options": {"noise_draws": 0}}},
        422,
        "options.noise_draws",
    ),
    (
        "NaN reward",
        "POST",
        "/v1/score",
        {
            "content": b'{"samples": [{"id": "a", "response_ids": [3], "reward": NaN}]}',
            "headers": {"content-type": "application/json"},
        },
        422,
        "samples[0].reward",
    ),
    (
        "advantages without rewards",
        "POST",
        "/v1/score",
        {"json": {"samples": [OK], "options": {"return_advantages": True}}},
        422,
        "verifier reward",
    ),
    (
        "too many tokens",
        "POST",
        "/v1/score",
        {"json": {"samples": [{"id": "a", "response_ids": [3] * 5000}]}},
        422,
        "limit is 4096",
    ),
    (
        "too many samples",
        "POST",
        "/v1/score",
        {"json": {"samples": [{"id": f"a{i}", "response_ids": [3]} for i in range(1025)]}},
        422,
        "limit is 1024",
    ),
    (
        "huge body",
        "POST",
        "/v1/score",
        {"content": b"{" + b" " * BIG + b"}", "headers": {"content-type": "application/json"}},
        413,
        "limit",
    ),
    (
        "update without reward",
        "POST",
        "/v1/update",
        {"json": {"samples": [{"id": "a", "response_ids": [3]}]}},
        422,
        "samples[0].reward",
    ),
    (
        "update with infinite reward",
        "POST",
        "/v1/update",
        {
            "content": b'{"samples": [{"id": "a", "response_ids": [3], "reward": Infinity}]}',
            "headers": {"content-type": "application/json"},
        },
        422,
        "samples[0].reward",
    ),
    (
        "update id outside vocabulary",
        "POST",
        "/v1/update",
        {"json": {"samples": [{"id": "a", "response_ids": [3, 500], "reward": 1.0}]}},
        422,
        "outside the vocabulary",
    ),
    (
        "update empty response",
        "POST",
        "/v1/update",
        {"json": {"samples": [{"id": "a", "response_ids": [], "reward": 1.0}]}},
        422,
        "empty response",
    ),
    (
        "policy path missing",
        "POST",
        "/v1/policy",
        {"json": {"path": "/nonexistent/model"}},
        422,
        "not a Hugging Face model directory",
    ),
    (
        "openrlhf mismatched lengths",
        "POST",
        "/get_reward",
        {"json": {"query": ["a", "b"], "prompts": ["a"], "labels": []}},
        422,
        "1 prompts for 2 queries",
    ),
    (
        "openrlhf labels mismatched",
        "POST",
        "/get_reward",
        {"json": {"query": ["a"], "prompts": [], "labels": ["x", "y"]}},
        422,
        "2 labels for 1 queries",
    ),
    (
        "graph duplicate trajectory",
        "POST",
        "/v1/score/graph",
        {
            "json": {
                "groups": [
                    {
                        "group_id": "g",
                        "trajectories": [
                            {"id": "t", "steps": [], "final_state": "x"},
                            {"id": "t", "steps": [], "final_state": "y"},
                        ],
                    }
                ]
            }
        },
        422,
        "appears twice",
    ),
    ("unknown path", "GET", "/v1/nothing", {}, 404, "Not Found"),
    ("wrong method", "GET", "/v1/score", {}, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("name,method,path,kwargs,status,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_4xx(client, name, method, path, kwargs, status, needle):
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, (name, r.status_code, r.text[:500])
    err = r.json()["error"]
    assert needle in err["message"] or needle in (err.get("field") or ""), (name, err)


def test_error_names_the_sample(client):
    r = client.post("/v1/score", json={"samples": [OK, {"id": "culprit", "response_ids": ["x"]}]})
    assert r.json()["error"]["sample_id"] == "culprit"
    assert r.json()["error"]["field"] == "samples[1].response_ids[0]"


def test_service_keeps_serving_after_bad_input(client):
    assert len(CASES) >= 20
    r = client.post("/v1/score", json={"samples": [OK]})
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "ok"
    # no request above produced a 500
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics
