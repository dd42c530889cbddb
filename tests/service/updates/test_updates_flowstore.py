"""FlowStore: atomic versioned checkpoints, the pointer (file or Redis), watch, and the
exactly-once publish script."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import torch
from redis_support import REDIS_URL, needs_redis
from updates_support import make_samples

from flowfield.checkpoint import read_metadata
from flowfield.flownet import FlowNet
from service.updates.flowstore import LEARNER_STATE, CommitConflict, FlowStore, FlowStoreConfig
from service.updates.queue import RedisStreamQueue


@pytest.fixture(params=["file", pytest.param("redis", marks=needs_redis)])
def open_store(request, assets, tmp_path, prefix):
    """`async with open_store(**config) as store:` builds the store inside the running event
    loop (Redis clients bind to it) and closes it at the end."""

    @contextlib.asynccontextmanager
    async def build(**kwargs) -> AsyncIterator[FlowStore]:
        client = None
        if request.param == "redis":
            client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        config = FlowStoreConfig(tmp_path / "ckpt", assets.flow_dir, prefix=prefix,
                                 record_ttl_s=60, **kwargs)
        store = FlowStore(config, client)
        try:
            yield store
        finally:
            await store.close()

    return build


def perturbed(store: FlowStore, version: int, seed: int) -> tuple[FlowNet, object]:
    net, meta = store.load(0)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    meta.version = version
    meta.samples_trained = 10 * version
    return net, meta


def test_versions_write_publish_load(open_store):
    async def main() -> None:
        async with open_store() as store:
            assert await store.current() == 0
            assert store.path(0) == store.initial_flow
            v0, meta0 = store.load(0)
            assert meta0.version == 0 and store.load_learner_state(0) is None

            net, meta = perturbed(store, 1, seed=1)
            state = {"steps": 3, "optimizer": {"state": {}, "param_groups": []}}
            path = store.write(net, meta, state)
            assert path == store.path(1) and path.name == "v000001"
            assert await store.current() == 0  # written is not published
            await store.publish(1)
            assert await store.current() == 1
            loaded, lmeta = store.load(1)
            for a, b in zip(loaded.parameters(), net.parameters(), strict=True):
                assert torch.equal(a, b)
            assert lmeta.version == 1 and lmeta.samples_trained == 10
            assert read_metadata(path).samples_trained == 10
            assert store.load_learner_state(1)["steps"] == 3
            # the initial flow is never modified
            assert all(
                torch.equal(a, b)
                for a, b in zip(store.load(0)[0].parameters(), v0.parameters(), strict=True)
            )
            # only current + 1 can be published
            with pytest.raises(CommitConflict):
                await store.publish(3)
            with pytest.raises(CommitConflict):
                await store.publish(1)
            assert await store.current() == 1

    asyncio.run(main())


def test_orphans_and_old_versions_are_cleaned(open_store):
    async def main() -> None:
        async with open_store(keep_versions=2) as store:
            for v in (1, 2, 3):
                store.write(*perturbed(store, v, seed=v), None)
                await store.publish(v)
            # writing never replaces a version directory, published or not
            published = store.load(3)[0]
            with pytest.raises(FileExistsError):
                store.write(*perturbed(store, 3, seed=30), None)
            assert all(torch.equal(a, b) for a, b in
                       zip(store.load(3)[0].parameters(), published.parameters(), strict=True))
            # a learner died after writing v4 (and left a temp dir behind)
            store.write(*perturbed(store, 4, seed=40), None)
            (store.root / ".tmp-v000004-dead").mkdir()
            with pytest.raises(FileExistsError):
                store.write(*perturbed(store, 4, seed=41), None)
            # the next lock holder cleans up, then retrains into v4
            removed = store.cleanup(await store.current())
            names = sorted(p.name for p in store.root.iterdir() if p.is_dir())
            assert names == ["v000002", "v000003"]
            assert {p.name for p in removed} >= {"v000001", "v000004", ".tmp-v000004-dead"}
            assert store.initial_flow.is_dir()
            net, meta = perturbed(store, 4, seed=41)
            store.write(net, meta, None)
            await store.publish(4)
            loaded, _ = store.load(4)
            assert all(torch.equal(a, b)
                       for a, b in zip(loaded.parameters(), net.parameters(), strict=True))
            assert not [p for p in store.root.iterdir() if p.name.startswith(".")]

    asyncio.run(main())


def test_watch_yields_new_versions(open_store):
    async def main() -> None:
        async with open_store(poll_s=0.2) as store:
            seen: list[int] = []

            async def follow() -> None:
                async for v in store.watch(since=0):
                    seen.append(v)
                    if v >= 2:
                        return

            task = asyncio.create_task(follow())
            await asyncio.sleep(0.05)
            for v in (1, 2):
                store.write(*perturbed(store, v, seed=v), None)
                await store.publish(v)
                await asyncio.sleep(0.05)
            await asyncio.wait_for(task, 5)
            assert seen == [1, 2]

    asyncio.run(main())


@needs_redis
def test_redis_watch_across_clients_and_polls_without_message(assets, tmp_path, prefix):
    """A scorer replica (its own client) sees a publish from the learner's client, and the
    poll catches a pointer change whose message it never got."""

    async def main() -> None:
        def client():
            return aioredis.Redis.from_url(REDIS_URL, decode_responses=True)

        config = FlowStoreConfig(tmp_path, assets.flow_dir, prefix=prefix, record_ttl_s=60)
        learner = FlowStore(config, client())
        scorer = FlowStore(replace(config, poll_s=0.2), client())
        seen: list[int] = []

        async def follow() -> None:
            async for v in scorer.watch():
                seen.append(v)
                if v >= 2:
                    return

        try:
            task = asyncio.create_task(follow())
            await asyncio.sleep(0.1)
            learner.write(*perturbed(learner, 1, seed=1), None)
            await learner.publish(1)
            await asyncio.sleep(0.1)
            assert seen == [1]
            await learner.redis.set(learner.keys.version, 2)  # no announcement
            await asyncio.wait_for(task, 5)
            assert seen == [1, 2]
        finally:
            await learner.close()
            await scorer.close()

    asyncio.run(main())


@needs_redis
def test_redis_publish_is_atomic_and_exactly_once(assets, tmp_path, prefix):
    """The publish script refuses (changing nothing) without the lock token, from a stale
    version, or for entries already committed; otherwise bumps, records, counts and acks."""

    async def main() -> None:
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        store = FlowStore(FlowStoreConfig(tmp_path, assets.flow_dir, prefix=prefix,
                                          record_ttl_s=60), client)
        queue = RedisStreamQueue(client, prefix, 60)
        keys = store.keys
        try:
            await queue.enqueue("u", make_samples(4))
            entries = await queue.read("learner", 4, 100)
            ids = [e.sample.sample_id for e in entries]
            await client.set(keys.lock, "token-a")
            store.write(*perturbed(store, 1, seed=1), None)

            async def unchanged() -> None:
                assert await store.current() == 0
                assert await queue.pending() == 4
                assert await client.hgetall(keys.trained) == {}
                pend = await client.xpending(keys.stream, "learners")
                assert pend["pending"] == 4

            with pytest.raises(CommitConflict, match="lock"):
                await store.publish(1, entries, ids, fence="token-b")
            await unchanged()
            with pytest.raises(CommitConflict, match="version"):
                await store.publish(2, entries, ids, fence="token-a")
            await unchanged()

            pubsub = client.pubsub()
            await pubsub.subscribe(keys.announce)
            await pubsub.get_message(timeout=1)  # the subscribe confirmation
            await store.publish(1, entries, ids, fence="token-a")
            assert await store.current() == 1
            assert await client.get(keys.path) == str(Path(tmp_path) / "v000001")
            assert await queue.pending() == 0
            assert await client.hgetall(keys.trained) == {i: "1" for i in ids}
            record = await client.hgetall(keys.version_record(1))
            assert record["entries"].split(",") == [e.entry_id for e in entries]
            assert 0 < await client.ttl(keys.version_record(1)) <= 60
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
            assert msg and msg["data"] == "1"
            await pubsub.aclose()

            # a retry of the same batch (e.g. its reply was lost) trains nothing twice
            store.write(*perturbed(store, 2, seed=2), None)
            with pytest.raises(CommitConflict) as info:
                await store.publish(2, entries, ids, fence="token-a")
            assert sorted(info.value.done) == sorted(e.entry_id for e in entries)
            assert await store.current() == 1
            assert set((await client.hgetall(keys.trained)).values()) == {"1"}
        finally:
            await client.aclose()

    asyncio.run(main())


def test_learner_state_round_trips_with_torch_tensors(open_store):
    async def main() -> None:
        async with open_store() as store:
            net, meta = perturbed(store, 1, seed=1)
            opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.95))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            net(torch.zeros(2, 32), torch.zeros(2), torch.zeros(2, 32), torch.zeros(2)).sum(
            ).backward()
            opt.step()
            sched.step()
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "steps": 1}
            store.write(net, meta, state)
            back = store.load_learner_state(1)
            assert back["steps"] == 1
            assert (store.path(1) / LEARNER_STATE).is_file()
            exp = back["optimizer"]["state"][0]["exp_avg"]
            assert torch.equal(exp, opt.state_dict()["state"][0]["exp_avg"])

    asyncio.run(main())
