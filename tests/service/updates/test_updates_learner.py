"""The learner in-process, on both backends: trains the queue dry into published versions
that differ from version 0, carries its optimiser state across a restart, rejects untrainable
samples, and with Redis lets only one of two learners train."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis.asyncio as aioredis
import torch
from redis_support import REDIS_URL, needs_redis
from updates_support import FRACTIONS, learner_config, make_samples, make_settings, queue_and_store

from flowfield.checkpoint import read_metadata
from flowfield.encoder import LatentEncoder
from service.metrics import LEARNER_STEPS, SAMPLES_TRAINED
from service.settings import Settings
from service.updates.flowstore import FlowStoreConfig
from service.updates.learner import Learner, LearnerConfig
from service.updates.types import UpdateSample


@pytest.fixture(scope="module")
def encoder(assets):
    return LatentEncoder(assets.model_dir, FRACTIONS)


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def settings(request, assets, tmp_path, prefix):
    url = REDIS_URL if request.param == "redis" else None
    return make_settings(assets, tmp_path / "ckpt", url, prefix, learner_batch=8)


async def drain(learners: list[Learner], queue, timeout: float = 60) -> None:
    """Run learners until the queue is empty, then stop them."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(lr.run(stop)) for lr in learners]
    deadline = time.monotonic() + timeout
    try:
        while await queue.pending() > 0:
            for t in tasks:
                if t.done():
                    t.result()  # surface a crash
            assert time.monotonic() < deadline, "learner did not drain the queue"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


def test_learner_trains_publishes_and_resumes(settings, encoder):
    async def main() -> None:
        async with queue_and_store(settings) as (queue, store):
            steps_before = LEARNER_STEPS._value.get()
            trained_before = SAMPLES_TRAINED._value.get()
            await queue.enqueue("u1", make_samples(12))
            await queue.enqueue("u2", make_samples(8, start=12))
            learner = Learner(encoder, store, queue, learner_config(settings, "learner-1"))
            await drain([learner], queue)

            version = await store.current()
            assert version >= 3  # 20 samples in batches of at most 8
            assert learner.stats.version == version
            assert learner.stats.samples_trained == 20
            assert learner.stats.steps == version
            assert learner.stats.pending == 0
            assert isinstance(learner.stats.last_loss, float)
            assert LEARNER_STEPS._value.get() - steps_before == version
            assert SAMPLES_TRAINED._value.get() - trained_before == 20

            meta = read_metadata(store.path(version))
            assert meta.version == version and meta.samples_trained == 20
            v0, _ = store.load(0)
            vn, _ = store.load(version, encoder.identity, FRACTIONS)
            moved = [not torch.equal(a, b)
                     for a, b in zip(v0.parameters(), vn.parameters(), strict=True)]
            assert any(moved)
            if settings.redis_url:
                trained = await store.redis.hgetall(store.keys.trained)
                assert trained == {f"s-{i}": "1" for i in range(20)}

            # a restarted learner continues from the published version and optimiser state
            # (in the serving process the step runs on the scorer's single model thread)
            await queue.enqueue("u3", make_samples(5, start=20))
            model_thread = ThreadPoolExecutor(max_workers=1)
            again = Learner(encoder, store, queue, learner_config(settings, "learner-2"),
                            executor=model_thread)
            await drain([again], queue)
            assert await store.current() == version + 1
            assert again.stats.steps == version + 1
            assert read_metadata(store.path(version + 1)).samples_trained == 25

            # a reloaded policy: the next step rebuilds the refiner on the new encoder
            again.use_encoder(LatentEncoder(encoder.path, FRACTIONS, revision="step-2"))
            assert again._refiner is None
            await queue.enqueue("u4", make_samples(2, start=25))
            await drain([again], queue)
            model_thread.shutdown()
            assert await store.current() == version + 2
            meta = read_metadata(store.path(version + 2))
            assert meta.samples_trained == 27 and meta.encoder["revision"] == "step-2"

    asyncio.run(main())


def test_untrainable_samples_are_dropped_not_retried(settings, encoder):
    async def main() -> None:
        async with queue_and_store(settings) as (queue, store):
            good = make_samples(3)
            bad = [
                UpdateSample("bad-vocab", [1, 2], [3, 9999], 1.0),
                UpdateSample("bad-empty", [1, 2], [], 1.0),
                UpdateSample("bad-weight", [1], [3], 1.0, weight=float("nan")),
            ]
            await queue.enqueue("u1", bad[:1] + good + bad[1:])
            learner = Learner(encoder, store, queue, learner_config(settings, "learner-1"))
            await drain([learner], queue)
            assert await store.current() == 1
            assert read_metadata(store.path(1)).samples_trained == 3
            assert learner.stats.rejected == 3
            if settings.redis_url:
                trained = await store.redis.hgetall(store.keys.trained)
                assert set(trained) == {"s-0", "s-1", "s-2"}

            # a batch of only bad samples is acknowledged without a new version
            await queue.enqueue("u2", bad)
            await drain([learner], queue)
            assert await store.current() == 1

    asyncio.run(main())


@needs_redis
def test_only_one_redis_learner_trains(redis_settings, encoder):
    settings = redis_settings(learner_batch=4)

    async def main() -> None:
        async with queue_and_store(settings) as (queue, store):
            a = Learner(encoder, store, queue, learner_config(settings, "a", lock_ttl_ms=1000))
            b = Learner(encoder, store, queue, learner_config(settings, "b", lock_ttl_ms=1000))
            await queue.enqueue("u1", make_samples(16))
            await drain([a, b], queue)
            steps = sorted([a.stats.steps, b.stats.steps])
            assert steps[0] == 0 and steps[1] == await store.current() == 4
            trained = await store.redis.hgetall(store.keys.trained)
            assert trained == {f"s-{i}": "1" for i in range(16)}
            assert not await store.redis.exists(store.keys.lock)  # released on stop

            # the lock is free again: the other learner takes over from the current version
            await queue.enqueue("u2", make_samples(4, start=16))
            await drain([a if steps[0] == a.stats.steps else b], queue)
            assert await store.current() == 5
            assert read_metadata(store.path(5)).samples_trained == 20

    asyncio.run(main())


@needs_redis
def test_lost_lock_cannot_publish(redis_settings, encoder):
    """A learner whose lock was taken over trains, but its publish is refused; the entries
    stay pending for the lock holder."""
    settings = redis_settings(learner_batch=4)

    async def main() -> None:
        async with queue_and_store(settings) as (queue, store):
            config = learner_config(settings, "a", lock_ttl_ms=60_000)
            learner = Learner(encoder, store, queue, config)
            await queue.enqueue("u1", make_samples(4))
            assert await learner.lock.try_acquire()
            await store.redis.set(store.keys.lock, "someone-else")
            assert await learner.step_once() == 0
            assert await store.current() == 0
            assert await queue.pending() == 4
            assert not learner.lock.held
            assert await store.redis.hgetall(store.keys.trained) == {}
            client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
            assert (await client.xpending(store.keys.stream, "learners"))["pending"] == 4
            await client.aclose()

    asyncio.run(main())


def test_directory_in_the_way_is_cleaned_and_batch_retrained(settings, encoder):
    """A stale learner's unpublished v1 blocks the write (never overwritten); the learner
    keeps the batch, reloads, removes the orphan as lock holder and trains it once."""

    async def main() -> None:
        async with queue_and_store(settings) as (queue, store):
            learner = Learner(encoder, store, queue, learner_config(settings, "learner-1"))
            assert await learner.step_once() == 0  # loads version 0, queue empty
            net, meta = store.load(0)
            meta.version = 1
            store.write(net, meta, None)
            await queue.enqueue("u1", make_samples(4))
            with pytest.raises(FileExistsError):
                await learner.step_once()
            assert await store.current() == 0 and await queue.pending() == 4
            await drain([learner], queue)
            assert await store.current() == 1
            assert read_metadata(store.path(1)).samples_trained == 4
            if settings.redis_url:
                trained = await store.redis.hgetall(store.keys.trained)
                assert trained == {f"s-{i}": "1" for i in range(4)}

    asyncio.run(main())


def test_learner_config_comes_from_settings(monkeypatch):
    """Defaults are the Settings defaults (written once); the test pause hook is a setting."""
    for var in [v for v in os.environ if v.startswith("FLOWFIELD_")]:
        monkeypatch.delenv(var)
    assert LearnerConfig() == LearnerConfig.from_settings(Settings())
    assert FlowStoreConfig() == FlowStoreConfig.from_settings(Settings())
    assert LearnerConfig().test_pause_s == 0
    monkeypatch.setenv("FLOWFIELD_LEARNER_TEST_PAUSE_S", "3")
    monkeypatch.setenv("FLOWFIELD_LEARNER_BATCH", "7")
    config = LearnerConfig.from_settings(Settings(), name="x")
    assert (config.test_pause_s, config.batch, config.name) == (3.0, 7, "x")
