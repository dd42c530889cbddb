"""Policy sync on the real Redis with real processes: two scorers (`flowfield serve`) and one
stand-alone learner (`flowfield learn`). POST /v1/policy to scorer A switches scorer B and the
learner too: B's scores name the new revision within seconds, A and B give identical numbers,
and the flow versions the learner trains afterwards record the new revision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
from helpers import save_tiny_model
from live_server import REPO, Server
from redis_support import REDIS_URL, needs_redis

from flowfield.checkpoint import save_flow
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder

FRACTIONS = (0.25, 0.5, 0.75)


# slow lane: policy reloads across scorers and a learner over Redis (about 40 s)
pytestmark = [pytest.mark.slow, needs_redis]


def sample(i: int, reward: float | None = None) -> dict:
    s = {"id": f"s-{i}", "prompt_ids": [2 + (i * 7 + k) % 60 for k in range(3 + i % 3)],
         "response_ids": [2 + (i * 13 + 5 * k) % 60 for k in range(4 + i % 4)]}
    if reward is not None:
        s["reward"] = reward
    return s


def wait_for(what: str, cond, timeout: float, check=None):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if check is not None:
            check()
        last = cond()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last})")


def test_policy_reload_on_one_scorer_reaches_the_other_and_the_learner(tmp_path, prefix):
    # tiny policies of one architecture (the flow fits both), different weights
    old_policy = save_tiny_model(tmp_path / "policy-1", "llama", layers=4, hidden=32, seed=0)
    new_policy = save_tiny_model(tmp_path / "policy-2", "llama", layers=4, hidden=32, seed=1)
    encoder = LatentEncoder(old_policy, FRACTIONS)
    config = flow_for_encoder(32, FRACTIONS, depth=2)
    flow = save_flow(tmp_path / "flow0", FlowNet(config),
                     FlowMetadata(config=config, encoder=asdict(encoder.identity)))
    old_label = encoder.identity.label()
    del encoder

    env = {
        "FLOWFIELD_MODEL_PATH": str(old_policy),
        "FLOWFIELD_FLOW_PATH": str(flow),
        "FLOWFIELD_LAYER_FRACTIONS": json.dumps(list(FRACTIONS)),
        "FLOWFIELD_NORMALIZATION": "bilateral",
        "FLOWFIELD_REDIS_URL": REDIS_URL,
        "FLOWFIELD_REDIS_PREFIX": prefix,
        "FLOWFIELD_CHECKPOINT_DIR": str(tmp_path / "shared-checkpoints"),
        "FLOWFIELD_LEARNER": "false",
        "FLOWFIELD_LEARNER_BATCH": "4",
        "FLOWFIELD_LEARNER_BLOCK_MS": "200",
        "FLOWFIELD_THREADS": "1",
    }
    learner_log_path = tmp_path / "learner.log"
    learner_log = open(learner_log_path, "w")  # noqa: SIM115 - open for the process's lifetime
    learner = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "learn"],
        cwd=REPO,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=learner_log,
        stderr=subprocess.STDOUT,
    )
    servers: list[Server] = []

    def learner_alive() -> None:
        assert learner.poll() is None, learner_log_path.read_text()

    try:
        a = Server(tmp_path, env, name="a")
        servers.append(a)
        b = Server(tmp_path, env, name="b")
        servers.append(b)
        with a.client() as ca, b.client() as cb:
            probe = {"samples": [sample(100), sample(101)]}
            before = ca.post("/v1/score", json=probe).json()
            assert before["encoder"] == old_label and before["flow_version"] == 0
            assert cb.post("/v1/score", json=probe).json() == before
            assert cb.get("/v1/flow").json()["policy_epoch"] == 0

            r = ca.post("/v1/policy", json={"path": str(new_policy), "revision": "step-2"})
            assert r.status_code == 200, r.text
            assert r.json()["encoder"] == "policy-2@step-2" and r.json()["policy_epoch"] == 1
            t0 = time.time()

            # B follows within a few seconds (pub/sub), and scores with the same encoder
            rb = wait_for(
                "scorer B on the new policy",
                lambda: (lambda x: x if x["encoder"] == "policy-2@step-2" else None)(
                    cb.post("/v1/score", json=probe).json()
                ),
                10,
            )
            assert time.time() - t0 < 5
            ra = ca.post("/v1/score", json=probe).json()
            assert ra == rb and ra["flow_version"] == 0
            assert ra["results"] != before["results"]  # other weights, other latents
            flow_b = cb.get("/v1/flow").json()
            assert flow_b["encoder"] == "policy-2@step-2" and flow_b["policy_epoch"] == 1
            assert flow_b["policy_error"] is None
            assert cb.get("/readyz").json()["status"] == "ok"

            # the learner trains what is posted now on the new policy's latents
            upd = {"update_id": "after-reload", "samples": [sample(i, 1.0) for i in range(4)]}
            r = cb.post("/v1/update", json=upd)
            assert r.status_code == 202 and r.json()["accepted"] == 4

            def both_at_new_version():
                fa, fb = ca.get("/v1/flow").json(), cb.get("/v1/flow").json()
                ok = (fa["flow_version"] >= 1 and fa["flow_version"] == fb["flow_version"]
                      and fb["pending"] == 0)
                return (fa, fb) if ok else None

            fa, fb = wait_for("a trained version on both scorers", both_at_new_version, 120,
                              learner_alive)
            assert fa["metadata"]["policy_revision"] == "policy-2@step-2"
            assert fb["metadata"]["policy_revision"] == "policy-2@step-2"
            written = json.loads(
                (tmp_path / "shared-checkpoints" / f"v{fa['flow_version']:06d}" / "flow.json")
                .read_text()
            )
            assert written["extra"]["policy_revision"] == "policy-2@step-2"
            assert written["encoder"]["revision"] == "step-2"
            assert "learner policy reloaded policy=policy-2@step-2 epoch=1" in (
                learner_log_path.read_text()
            )

            ra = ca.post("/v1/score", json=probe).json()
            rb = cb.post("/v1/score", json=probe).json()
            assert ra == rb
            assert ra["flow_version"] == fa["flow_version"] and ra["encoder"] == "policy-2@step-2"

            # B's pending gauge follows the queue the learner emptied (B saw 4 on /update)
            text = cb.get("/metrics").text
            assert "flowfield_pending_samples 0.0" in text
            assert "flowfield_policy_epoch 1.0" in text
            assert "flowfield_policy_in_sync 1.0" in text

        # a scorer started now adopts the recorded policy instead of FLOWFIELD_MODEL_PATH
        c = Server(tmp_path, env, name="c")
        servers.append(c)
        with c.client() as cc:
            rc = cc.post("/v1/score", json=probe).json()
            assert rc["encoder"] == "policy-2@step-2"
            assert rc == ra
    finally:
        learner.terminate()
        try:
            learner.wait(30)
        except subprocess.TimeoutExpired:
            learner.kill()
            learner.wait()
        learner_log.close()
        for srv in servers:
            srv.stop()
    assert learner.returncode == 0, learner_log_path.read_text()
