"""/update, the embedded learner, flow swaps and policy sync over real HTTP."""

from __future__ import annotations

import shutil
import time

import pytest
from live_server import Server
from service_helpers import demo_sample

from service.settings import DEMO_ASSETS


@pytest.fixture(scope="module")
def learning_server(tmp_path_factory):
    srv = Server(
        tmp_path_factory.mktemp("learn"), env={"FLOWFIELD_LEARNER_BATCH": "8"}, name="learn"
    )
    yield srv
    srv.stop()


def wait_for_version(client, at_least: int, timeout: float = 90.0, trained: int = 0) -> dict:
    """GET /v1/flow until the served flow is at least version `at_least`, nothing is pending
    and, given `trained`, the served flow has trained on that many samples. (pending reaches 0
    when the learner commits its last batch, which can be a version before the scorer swaps
    in the one with every sample: the learner may split the samples over two steps.)"""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = client.get("/v1/flow").json()
        done = info["flow_version"] >= at_least and info["pending"] == 0
        if done and info["samples_trained"] >= trained:
            return info
        time.sleep(0.3)
    raise TimeoutError(f"flow version did not reach {at_least}: {info}")


def test_update_accepts_skips_dedupes_and_the_flow_moves(learning_server):
    with learning_server.client() as c:
        probe = {"samples": [demo_sample(90), demo_sample(91, wrong=True)]}
        before = c.post("/v1/score", json=probe).json()
        assert before["flow_version"] == 0
        samples = [demo_sample(i, reward=1.0) for i in range(10)]
        samples += [demo_sample(100 + i, wrong=True, reward=0.0) for i in range(3)]
        r = c.post("/v1/update", json={"update_id": "u-1", "samples": samples})
        assert r.status_code == 202, r.text
        body = r.json()
        assert (body["update_id"], body["accepted"], body["skipped"], body["duplicate"]) == (
            "u-1",
            10,
            3,
            False,
        )
        again = c.post("/update", json={"update_id": "u-1", "samples": samples}).json()
        assert again["duplicate"] is True and again["accepted"] == 0
        # the demo flow's expert data (4,000 solutions, 400 held out for its report) + these
        info = wait_for_version(c, 1, trained=3600 + 10)
        assert info["samples_trained"] == 3600 + 10
        after = c.post("/v1/score", json=probe).json()
        assert after["flow_version"] == info["flow_version"] >= 1
        assert after["results"] != before["results"]
        # same request, same version: same numbers
        assert c.post("/v1/score", json=probe).json() == after
        text = c.get("/metrics").text
        assert 'flowfield_update_samples_total{outcome="accepted"} 10.0' in text
        assert "flowfield_update_duplicates_total 1.0" in text
        assert "flowfield_learner_steps_total" in text


def test_update_without_id_gets_one(learning_server):
    with learning_server.client() as c:
        r = c.post("/v1/update", json={"samples": [demo_sample(5, reward=0.0)]})
        assert r.status_code == 202
        assert len(r.json()["update_id"]) >= 16 and r.json()["skipped"] == 1


def test_policy_reload_names_the_new_revision(learning_server, tmp_path):
    new_policy = tmp_path / "policy-step-2"
    shutil.copytree(DEMO_ASSETS / "policy", new_policy)
    with learning_server.client() as c:
        r = c.post("/v1/policy", json={"path": str(new_policy), "revision": "step-2"})
        assert r.status_code == 200, r.text
        assert r.json()["encoder"] == "demo-arith@step-2"
        s = c.post("/v1/score", json={"samples": [demo_sample(1)]}).json()
        assert s["encoder"] == "demo-arith@step-2"
        # a policy the flow does not fit is refused, and the old one stays in place
        from helpers import save_tiny_model

        other = save_tiny_model(tmp_path / "other", "gpt2")
        bad = c.post("/v1/policy", json={"path": str(other)})
        assert bad.status_code == 422 and "hidden size" in bad.json()["error"]["message"]
        assert c.get("/v1/flow").json()["encoder"] == "demo-arith@step-2"


def test_api_keys_and_scopes(tmp_path):
    srv = Server(
        tmp_path,
        env={
            "FLOWFIELD_SCORE_API_KEY": "read-key",
            "FLOWFIELD_UPDATE_API_KEY": "write-key",
            "FLOWFIELD_LEARNER": "false",
        },
        name="keys",
    )
    try:
        with srv.client() as c:
            body = {"samples": [demo_sample(0)]}
            upd = {"samples": [demo_sample(0, reward=1.0)]}
            assert c.post("/v1/score", json=body).status_code == 401
            r = c.post("/v1/score", json=body, headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401 and r.json()["error"]["message"] == "wrong API key"
            assert (
                c.post(
                    "/v1/score", json=body, headers={"Authorization": "Bearer read-key"}
                ).status_code
                == 200
            )
            assert (
                c.post("/v1/score", json=body, headers={"X-API-Key": "write-key"}).status_code
                == 200
            )
            r = c.post("/v1/update", json=upd, headers={"X-API-Key": "read-key"})
            assert r.status_code == 403 and "update key" in r.json()["error"]["message"]
            assert (
                c.post("/v1/update", json=upd, headers={"X-API-Key": "write-key"}).status_code
                == 202
            )
            assert c.post("/v1/policy", json={"path": "/x"}).status_code == 401
            assert c.get("/healthz").status_code == 200  # probes need no key
    finally:
        srv.stop()


def test_non_loopback_bind_without_keys_warns(tmp_path):
    srv = Server(
        tmp_path, env={"FLOWFIELD_LEARNER": "false"}, args=["--host", "0.0.0.0"], name="open"
    )
    try:
        assert "non-loopback address without API keys" in srv.log()
    finally:
        srv.stop()
