"""Scale-out on Redis: two scorer processes and one stand-alone learner share a queue, the
flow version and a checkpoint directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from live_server import REPO, Server, free_port
from redis_support import REDIS_URL
from service_helpers import demo_sample


@pytest.mark.slow
def test_two_scorers_and_one_learner_agree_after_an_update(tmp_path, prefix):
    env = {
        "FLOWFIELD_REDIS_URL": REDIS_URL,
        "FLOWFIELD_REDIS_PREFIX": prefix,
        "FLOWFIELD_CHECKPOINT_DIR": str(tmp_path / "shared-checkpoints"),
        "FLOWFIELD_LEARNER": "false",
        "FLOWFIELD_LEARNER_BATCH": "8",
    }
    a = Server(tmp_path, env, name="a")
    b = Server(tmp_path, env, name="b")
    learner_log = open(tmp_path / "learner.log", "w")  # noqa: SIM115
    metrics_port = free_port()
    learner = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "learn"],
        cwd=REPO,
        env={
            **os.environ,
            **env,
            "FLOWFIELD_THREADS": "1",
            "FLOWFIELD_LEARNER_METRICS_PORT": str(metrics_port),
        },
        stdout=learner_log,
        stderr=subprocess.STDOUT,
    )
    try:
        with a.client() as ca, b.client() as cb:
            assert ca.get("/readyz").json()["checks"] == {"model": True, "redis": True}
            assert ca.get("/v1/flow").json()["queue_backend"] == "redis"
            probe = {"samples": [demo_sample(50), demo_sample(51, wrong=True)]}
            v0 = ca.post("/v1/score", json=probe).json()
            assert v0 == cb.post("/v1/score", json=probe).json()
            upd = {"update_id": "r-1", "samples": [demo_sample(i, reward=1.0) for i in range(8)]}
            r = ca.post("/v1/update", json=upd)
            assert r.status_code == 202 and r.json()["accepted"] == 8
            # the retry goes to the other replica: still a duplicate
            assert cb.post("/v1/update", json=upd).json()["duplicate"] is True
            deadline = time.time() + 120
            while time.time() < deadline:
                va = ca.get("/v1/flow").json()
                vb = cb.get("/v1/flow").json()
                if va["flow_version"] >= 1 and vb["flow_version"] >= 1:
                    break
                assert learner.poll() is None, (tmp_path / "learner.log").read_text()
                time.sleep(0.3)
            else:
                raise AssertionError(f"no new version: {va} {vb}")
            assert va["flow_version"] == vb["flow_version"] and va["pending"] == 0
            ra = ca.post("/v1/score", json=probe).json()
            rb = cb.post("/v1/score", json=probe).json()
            assert ra == rb
            assert ra["flow_version"] == va["flow_version"]
            assert ra["results"] != v0["results"]
            # the stand-alone learner exports its own metrics
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            assert "flowfield_learner_steps_total 1.0" in text
            assert f"flowfield_flow_version {float(va['flow_version'])}" in text
            assert "flowfield_samples_trained_total 8.0" in text
    finally:
        learner.terminate()
        learner.wait(30)
        learner_log.close()
        a.stop()
        b.stop()
    assert learner.returncode == 0, (tmp_path / "learner.log").read_text()
