"""Both update-queue backends: enqueue/read/commit, dedupe, pending counts, reclaim, atomicity."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_support import REDIS_URL, needs_redis
from updates_support import make_samples, new_prefix

from service.settings import Settings
from service.updates.keys import GROUP, RedisKeys
from service.updates.queue import (
    InProcessQueue,
    QueueConfig,
    QueueUnavailable,
    RedisStreamQueue,
    UpdateQueue,
    make_queue,
)
from service.updates.types import UpdateSample

QueueFactory = Callable[[], UpdateQueue]


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def make(request, prefix) -> QueueFactory:
    """A factory (queues must be built inside the test's event loop)."""
    if request.param == "memory":
        return lambda: InProcessQueue(update_id_ttl_s=60)
    return lambda: RedisStreamQueue.from_url(REDIS_URL, prefix, update_id_ttl_s=60)


def run(make: QueueFactory, body: Callable[[UpdateQueue], Awaitable[None]]) -> None:
    async def main() -> None:
        q = make()
        try:
            await body(q)
        finally:
            await q.close()

    asyncio.run(main())


def test_enqueue_read_commit(make):
    samples = make_samples(5)

    async def body(q: UpdateQueue) -> None:
        res = await q.enqueue("u1", samples)
        assert (res.accepted, res.duplicate, res.pending) == (5, False, 5)
        first = await q.read("a", 3, 100)
        assert [e.sample for e in first] == samples[:3]
        assert await q.pending() == 5  # read is not commit
        await q.commit([e.entry_id for e in first])
        assert await q.pending() == 2
        rest = await q.read("a", 10, 100)
        assert [e.sample for e in rest] == samples[3:]
        await q.commit([e.entry_id for e in rest])
        assert await q.pending() == 0
        assert await q.read("a", 10, 50) == []  # empty: waits block_ms, then nothing
        assert await q.read("a", 10, 0) == []  # block_ms 0 does not wait forever
        await q.commit([e.entry_id for e in rest])  # committing twice is harmless
        assert await q.pending() == 0

    run(make, body)


def test_read_wakes_when_samples_arrive(make):
    async def body(q: UpdateQueue) -> None:
        reader = asyncio.create_task(q.read("a", 4, 5000))
        await asyncio.sleep(0.1)
        await q.enqueue("u1", make_samples(2))
        got = await asyncio.wait_for(reader, 3)
        assert len(got) >= 1

    run(make, body)


def test_duplicate_update_id_queues_nothing(make):
    async def body(q: UpdateQueue) -> None:
        assert (await q.enqueue("u1", make_samples(3))).accepted == 3
        again = await q.enqueue("u1", make_samples(2, start=10))
        assert again.duplicate and again.accepted == 0 and again.pending == 3
        # an update whose samples were all skipped still records its id
        empty = await q.enqueue("u2", [])
        assert (empty.accepted, empty.duplicate, empty.pending) == (0, False, 3)
        assert (await q.enqueue("u2", make_samples(1, start=20))).duplicate
        got = await q.read("a", 10, 100)
        assert [e.sample.sample_id for e in got] == ["s-0", "s-1", "s-2"]

    run(make, body)


def test_reclaim_entries_of_a_consumer_that_never_committed(make):
    async def body(q: UpdateQueue) -> None:
        await q.enqueue("u1", make_samples(4))
        dead = await q.read("dead", 3, 100)
        assert len(dead) == 3
        assert await q.reclaim("b", 60_000, 10) == []  # not idle long enough
        await asyncio.sleep(0.15)
        taken = await q.reclaim("b", 100, 2)
        assert [e.entry_id for e in taken] == [e.entry_id for e in dead[:2]]
        assert [e.sample for e in taken] == [e.sample for e in dead[:2]]
        # the new owner's claim resets the idle time
        assert await q.reclaim("c", 100, 10) == [dead[2]]
        fresh = await q.read("b", 10, 100)
        assert [e.sample.sample_id for e in fresh] == ["s-3"]
        assert await q.pending() == 4
        await q.commit([e.entry_id for e in taken + fresh] + [dead[2].entry_id])
        assert await q.pending() == 0
        await asyncio.sleep(0.15)
        assert await q.reclaim("b", 100, 10) == []

    run(make, body)


def test_concurrent_enqueues_of_one_update_id_exactly_one_wins(make):
    async def body(q: UpdateQueue) -> None:
        results = await asyncio.gather(
            *(q.enqueue("same", make_samples(3, start=10 * i)) for i in range(16))
        )
        winners = [r for r in results if not r.duplicate]
        assert len(winners) == 1 and winners[0].accepted == 3
        assert all(r.accepted == 0 for r in results if r.duplicate)
        assert await q.pending() == 3
        got = await q.read("a", 100, 100)
        assert len(got) == 3 and len({e.sample.sample_id.split("-")[1][:-1] for e in got}) == 1

    run(make, body)


@needs_redis
def test_redis_concurrent_clients_and_durability(prefix):
    """Separate clients (as separate replicas would be) race on one update_id; a fresh client
    then sees exactly one copy of the samples in the stream, with the marker's TTL set."""

    async def main() -> None:
        queues = [RedisStreamQueue.from_url(REDIS_URL, prefix, 60) for _ in range(6)]
        try:
            results = await asyncio.gather(
                *(q.enqueue("u-race", make_samples(5)) for q in queues for _ in range(3))
            )
            assert sum(not r.duplicate for r in results) == 1
            reader = RedisStreamQueue.from_url(REDIS_URL, prefix, 60)
            keys = RedisKeys(prefix)
            assert await reader.pending() == 5
            assert 0 < await reader.client.ttl(keys.update("u-race")) <= 60
            got = await reader.read("a", 100, 100)
            assert [e.sample.sample_id for e in got] == [f"s-{i}" for i in range(5)]
            await reader.commit([e.entry_id for e in got])
            # acknowledged entries are deleted: the stream holds only the backlog
            assert await reader.client.xlen(keys.stream) == 0
            (group,) = await reader.client.xinfo_groups(keys.stream)
            assert group["name"] == GROUP and group["pending"] == 0
            await reader.close()
        finally:
            for q in queues:
                await q.close()

    asyncio.run(main())


@needs_redis
def test_redis_group_recreated_if_stream_vanishes(prefix):
    async def main() -> None:
        q = RedisStreamQueue.from_url(REDIS_URL, prefix, 60)
        try:
            assert await q.read("a", 5, 0) == []  # no stream yet: creates the group
            await q.client.delete(q.keys.stream)
            assert await q.read("a", 5, 0) == []
            assert await q.reclaim("a", 0, 5) == []
            await q.enqueue("u", make_samples(2))
            assert len(await q.read("a", 5, 0)) == 2
        finally:
            await q.close()

    asyncio.run(main())


def test_make_queue_picks_backend():
    memory = make_queue(QueueConfig(redis_url=None, prefix="x", update_id_ttl_s=5))
    assert isinstance(memory, InProcessQueue)
    # the service Settings work too (their update_id_ttl_s, redis_url, redis_prefix)
    assert isinstance(make_queue(Settings(redis_url=None, update_id_ttl_s=5)), InProcessQueue)
    assert QueueConfig.from_settings(Settings(redis_url=REDIS_URL, redis_prefix="y",
                                              update_id_ttl_s=7)) == QueueConfig(REDIS_URL, "y", 7)

    async def main() -> None:
        q = make_queue(QueueConfig(redis_url=REDIS_URL, prefix="x", update_id_ttl_s=5))
        assert isinstance(q, RedisStreamQueue) and q.backend == "redis"
        await q.close()

    asyncio.run(main())


@settings(max_examples=50, deadline=None)
@given(
    sample_id=st.text(min_size=1, max_size=20),
    prompt=st.lists(st.integers(0, 2**31 - 1), max_size=20),
    response=st.lists(st.integers(0, 2**31 - 1), max_size=20),
    reward=st.floats(allow_nan=False, allow_infinity=False),
    weight=st.floats(0, 10),
)
def test_sample_json_round_trip(sample_id, prompt, response, reward, weight):
    s = UpdateSample(sample_id, prompt, response, reward, weight)
    assert UpdateSample.from_json(s.to_json()) == s
    assert UpdateSample.from_json(s.to_json().encode()) == s


def test_unreachable_redis_is_a_builtin_connection_error():
    """The HTTP layer maps ConnectionError to 503 + Retry-After without importing redis."""

    async def main() -> None:
        q = RedisStreamQueue.from_url("redis://127.0.0.1:1/0", new_prefix(), 5)
        try:
            with pytest.raises(ConnectionError):
                await q.enqueue("u", make_samples(1))
            with pytest.raises(QueueUnavailable):
                await q.pending()
        finally:
            await q.close()

    asyncio.run(main())
