"""A scorer replica loses Redis: it stays ready (the readiness probe keeps it in the Service)
and keeps scoring, /update answers 503 with Retry-After, and when Redis is back updates are
accepted again. A real Redis of the test's own (another port) is stopped and restarted; the
shared one on 6379 is not touched."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from deploy_support import Server, free_port

from flowfield.demo.task import Problem, expert_solution

# slow lane: a Redis server of its own stopped and restarted under a live scorer
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("redis-server") is None,
        reason="no redis-server binary: install Debian's package (apt-get install redis-server)",
    ),
]


class OwnRedis:
    def __init__(self, tmp: Path, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            assert self.proc.poll() is None and time.time() < deadline, "redis did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def test_scorer_without_redis_stays_ready_and_scores(tmp_path):
    port = free_port()
    redis = OwnRedis(tmp_path, port)
    srv = Server(tmp_path, env={"FLOWFIELD_REDIS_URL": redis.url, "FLOWFIELD_LEARNER": "false",
                                "FLOWFIELD_REDIS_PREFIX": "outage"}, name="scorer")
    p = Problem(1234, 5678)
    sample = {"id": "s-0", "prompt": p.prompt, "response": expert_solution(p), "reward": 1.0}
    try:
        with srv.client() as c:
            assert c.get("/readyz").json() == {"status": "ok",
                                               "checks": {"model": True, "redis": True}}
            before = c.post("/v1/score", json={"samples": [sample]}).json()
            assert c.post("/v1/update", json={"samples": [sample]}).status_code == 202

            redis.stop()
            ready = c.get("/readyz")
            assert ready.status_code == 200, ready.text  # still routed to: it can score
            assert ready.json() == {"status": "degraded",
                                    "checks": {"model": True, "redis": False}}
            during = c.post("/v1/score", json={"samples": [sample]})
            assert during.status_code == 200
            assert during.json()["results"] == before["results"]
            assert during.json()["flow_version"] == before["flow_version"]
            assert c.post("/get_reward", json={"query": [p.prompt + expert_solution(p)],
                                               "prompts": [p.prompt]}).status_code == 200
            up = c.post("/v1/update", json={"samples": [sample]})
            assert up.status_code == 503 and "retry-after" in up.headers
            assert up.json()["error"]["code"] == "queue_unavailable"

            redis = OwnRedis(tmp_path, port)  # back (empty: no persistence in this test)
            deadline = time.time() + 30
            while True:
                try:
                    code = c.post("/v1/update", json={"samples": [sample]}).status_code
                except httpx.HTTPError:
                    code = None
                if code == 202:
                    break
                assert time.time() < deadline, f"updates not accepted again: {code}"
                time.sleep(0.5)
            assert c.get("/readyz").json()["status"] == "ok"
    finally:
        srv.stop()
        redis.stop()
