"""The event loop never stalls: CPU-bound request work (parsing and validating a large body,
tokenising text, building graphs, encoding a large response) runs off the loop, so GET
/healthz answers within a bound while it is in flight (rows 1 and 3 of the issue)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from event_loop_support import HealthProbe
from live_server import Server

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("loop"), env={"FLOWFIELD_LEARNER": "false"})
    yield srv
    srv.stop()


def _post(url: str, path: str, body: bytes) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=120) as c:
        return c.post(path, content=body, headers=JSON)


def test_tokenising_a_huge_sample_does_not_stall_healthz(server):
    # row 1: one sample of 999,999 + 999,999 characters took 5.5 s of tokenisation on the loop
    body = json.dumps(
        {"samples": [{"id": "a", "prompt": "1" * 999_999, "response": "2" * 999_999}]}
    ).encode()
    with HealthProbe(server.url) as probe:
        r = _post(server.url, "/v1/score", body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_tokens", r.text
    probe.check("tokenisation of 2M characters")


def test_a_legal_4mb_text_request_does_not_stall_healthz(server):
    # row 1: 1,024 samples x 4,000 characters (a legal request) froze every endpoint 5.1 s
    samples = [
        {"id": f"s{i}", "prompt": "1+2=" * 250, "response": "3" * 3000} for i in range(1024)
    ]
    body = json.dumps({"samples": samples}).encode()
    assert len(body) > 4_000_000
    with HealthProbe(server.url) as probe:
        r = _post(server.url, "/v1/score", body)
    # every sample is longer than the demo policy's context: answered, nothing scored (or the
    # time budget refuses it first); either way after tokenising 4 M characters
    assert r.status_code in (200, 422), r.text
    probe.check("a 4 MB text request")


def _graph_body(trajectories: int, states: int) -> bytes:
    trajs = [
        {
            "id": f"t{t}",
            "steps": [{"state": f"{t}.{i}"} for i in range(states)],
            "final_state": f"end{t}",
            "final_reward": 1.0,
        }
        for t in range(trajectories)
    ]
    body = {"groups": [{"group_id": "g", "trajectories": trajs}]}
    return json.dumps(body, separators=(",", ":")).encode()


def test_a_7mb_graph_request_is_refused_by_its_budget_without_stalling_healthz(server):
    # row 3: 40 trajectories x 10,000 distinct states took 19 s and 930 MB; only the body
    # limit bounded it. Now its size is a budget (FLOWFIELD_MAX_GRAPH_STEPS) checked after a
    # parse that runs off the loop.
    body = _graph_body(40, 10_000)
    assert 7_000_000 < len(body) < 8 * 1024 * 1024
    with HealthProbe(server.url) as probe:
        t0 = time.perf_counter()
        r = _post(server.url, "/v1/score/graph", body)
        took = time.perf_counter() - t0
    assert r.status_code == 422, r.text[:500]
    err = r.json()["error"]
    assert err["code"] == "request_too_costly" and err["field"] == "groups"
    assert "max_graph_steps" in err["message"]
    assert took < 15, took
    probe.check("a 7.5 MB graph request")


def test_a_graph_within_the_budget_is_scored_off_the_loop(server):
    body = _graph_body(8, 4_000)  # 32,008 states: within the default 131,072
    with HealthProbe(server.url) as probe:
        r = _post(server.url, "/v1/score/graph", body)
    assert r.status_code == 200, r.text[:500]
    out = r.json()
    assert len(out["groups"][0]["trajectories"]) == 8
    assert len(out["groups"][0]["trajectories"][0]["steps"]) == 4_000
    probe.check("a 32k-state graph")


def test_a_large_score_response_is_encoded_off_the_loop(server):
    # 300 samples with deviations: the response is built and encoded in a worker thread
    samples = [
        {"id": f"s{i}", "prompt_ids": [3, 4, 5],
         "response_ids": [(i + k) % 19 + 1 for k in range(60)]}
        for i in range(300)
    ]
    body = json.dumps({"samples": samples, "options": {"return_deviations": True}}).encode()
    with HealthProbe(server.url) as probe:
        r = _post(server.url, "/v1/score", body)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 300 and all(x["status"] == "ok" for x in res)
    assert len(res[0]["deviations"]) == 60
    probe.check("scoring 300 samples")
