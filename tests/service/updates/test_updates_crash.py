"""The crash test: a real learner process is killed with SIGKILL between writing a checkpoint
and committing it; a second learner process takes over, and every accepted sample is trained
exactly once. Then SIGTERM stops the second learner cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from redis_support import REDIS_URL, needs_redis
from updates_support import learner_env, make_samples

from flowfield.checkpoint import read_metadata
from service.updates.keys import RedisKeys
from service.updates.queue import RedisStreamQueue

# slow lane: learners killed with SIGKILL mid-commit
pytestmark = [pytest.mark.slow, needs_redis]

N_SAMPLES = 60
ROOT = Path(__file__).resolve().parents[3]  # the repository


def start_learner(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service.updates.run_learner"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


def wait_for(condition, timeout: float, what: str, procs=(), logs=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"learner exited ({p.returncode}) while waiting for {what}\n"
                            + "\n".join(x.read_text() for x in logs))
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n" + "\n".join(x.read_text() for x in logs))
        time.sleep(0.05)


async def enqueue_all(prefix: str) -> None:
    q = RedisStreamQueue.from_url(REDIS_URL, prefix, 600)
    try:
        samples = make_samples(N_SAMPLES)
        for u in range(6):
            res = await q.enqueue(f"update-{u}", samples[10 * u: 10 * (u + 1)])
            assert res.accepted == 10
        assert (await q.enqueue("update-0", samples[:10])).duplicate  # a client retry
    finally:
        await q.close()


def test_learner_killed_mid_commit_trains_every_sample_exactly_once(
    tmp_path, redis_settings, prefix
):
    keys = RedisKeys(prefix)
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    procs: list[subprocess.Popen] = []
    logs = [tmp_path / "learner-a.log", tmp_path / "learner-b.log"]
    try:
        settings = redis_settings(learner_batch=8, learner_block_ms=200,
                                  learner_reclaim_idle_ms=1000)
        store_dir = Path(settings.checkpoint_dir)
        asyncio.run(enqueue_all(prefix))
        assert r.xlen(keys.stream) == N_SAMPLES

        def version() -> int:
            return int(r.get(keys.version) or 0)

        def pending() -> int:
            return r.xlen(keys.stream)

        # learner A pauses 3 s between writing each checkpoint and committing it
        a = start_learner(learner_env(settings, FLOWFIELD_LEARNER_NAME="learner-a",
                                      FLOWFIELD_LEARNER_LOCK_TTL_MS="2000",
                                      FLOWFIELD_LEARNER_TEST_PAUSE_S="3"), logs[0])
        procs.append(a)

        def in_commit_window() -> bool:
            v = version()
            return v >= 1 and (store_dir / f"v{v + 1:06d}").is_dir() and version() == v

        wait_for(in_commit_window, 120, "learner A to write an unpublished version", [a], logs)
        os.kill(a.pid, signal.SIGKILL)
        a.wait(10)
        killed_at = version()
        held = r.xpending(keys.stream, "learners")
        assert held["pending"] > 0, "A held no unacknowledged entries when killed"
        assert pending() == N_SAMPLES - 8 * killed_at
        assert (store_dir / f"v{killed_at + 1:06d}").is_dir()  # the orphan

        b = start_learner(learner_env(settings, FLOWFIELD_LEARNER_NAME="learner-b",
                                      FLOWFIELD_LEARNER_LOCK_TTL_MS="2000"), logs[1])
        procs.append(b)
        wait_for(lambda: pending() == 0, 120, "learner B to drain the queue", [b], logs)

        trained = r.hgetall(keys.trained)
        expected = {s.sample_id for s in make_samples(N_SAMPLES)}
        assert set(trained) == expected
        assert {k: v for k, v in trained.items() if v != "1"} == {}
        final = version()
        assert final == N_SAMPLES // 8 + 1  # 7 full batches and one of 4
        assert read_metadata(store_dir / f"v{final:06d}").samples_trained == N_SAMPLES
        assert r.xpending(keys.stream, "learners")["pending"] == 0
        leftovers = [p.name for p in store_dir.iterdir()
                     if p.name.startswith((".tmp-", ".trash-"))
                     or (p.name.startswith("v") and int(p.name[1:]) > final)]
        assert leftovers == []

        b.send_signal(signal.SIGTERM)
        assert b.wait(30) == 0, logs[1].read_text()
        assert not r.exists(keys.lock)
        log_b = logs[1].read_text()
        assert "queue=redis" in log_b and "layers=[1, 2, 3]" in log_b
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        r.close()
