"""Policy sync on the real Redis, in-process: the policy record (epochs, watch), a learner that
follows it and records the policy in the versions it trains, a serving state that follows it,
adopts it at start-up and reports not ready when it cannot load it, and the pending gauge read
from the queue that another process consumes."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import save_tiny_model
from redis_support import needs_redis
from updates_support import FRACTIONS, HIDDEN, learner_config, make_samples, queue_and_store

from flowfield.checkpoint import policy_revision, read_metadata
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, flow_for_encoder
from service.metrics import PENDING_SAMPLES, POLICY_IN_SYNC
from service.routers.health import readyz
from service.state import ServiceState
from service.updates.flowstore import FlowStore
from service.updates.learner import Learner, PolicyUnavailable
from service.updates.policy import PolicyRecord, PolicySync
from service.updates.queue import make_queue

pytestmark = needs_redis

# the settings of these tests (with the redis_settings fixture's): a process that serves without
# training, on one thread, without waiting for batches to fill
SERVING = dict(learner=False, threads=1, batch_wait_ms=1.0)


@pytest.fixture(scope="module")
def new_policy(tmp_path_factory):
    """Same architecture as the assets' model (the flow fits it), other weights."""
    return save_tiny_model(tmp_path_factory.mktemp("policy-2") / "model", "llama", layers=4,
                           hidden=HIDDEN, seed=1)


def load(settings, record: PolicyRecord) -> LatentEncoder:
    return LatentEncoder(record.path, settings.layer_fractions, name=record.name,
                         revision=record.revision)


def test_old_metadata_without_the_record_falls_back_to_the_encoder():
    meta = FlowMetadata(config=flow_for_encoder(HIDDEN, FRACTIONS),
                        encoder={"name": "demo", "revision": "abc"})
    assert policy_revision(meta) == "demo@abc"
    meta.extra["policy_revision"] = "demo@step-2"
    assert policy_revision(FlowMetadata.from_dict(meta.to_dict())) == "demo@step-2"
    assert policy_revision(FlowMetadata(config=meta.config, encoder={})) is None


def test_record_orders_reloads_by_epoch_and_watch_wakes(prefix, redis_settings):
    settings = redis_settings(**SERVING)

    async def main() -> None:
        store = FlowStore.from_settings(settings)
        sync = PolicySync(store.redis, prefix, poll_s=5.0)
        try:
            assert await sync.epoch() == 0 and await sync.current() is None
            r1 = await sync.record("/p/1", "m", "r1", "m@r1")
            r2 = await sync.record("/p/2", "m", "r2", "m@r2")
            assert (r1.epoch, r2.epoch) == (1, 2)
            cur = await sync.current()
            assert (cur.epoch, cur.path, cur.label, cur.set_by) == (2, "/p/2", "m@r2", r2.set_by)

            applied = 2
            got: list[PolicyRecord] = []

            async def follow() -> None:
                async for rec in sync.watch(lambda: applied):
                    got.append(rec)
                    return

            task = asyncio.create_task(follow())
            await asyncio.sleep(0.3)
            assert not got  # nothing newer than what the follower has
            t0 = time.monotonic()
            await sync.record("/p/3", "m", "r3", "m@r3")
            await asyncio.wait_for(task, 10)
            # the announcement wakes the follower long before its 5 s poll
            assert got[0].epoch == 3 and time.monotonic() - t0 < 2.5
        finally:
            await store.close()

    asyncio.run(main())


def test_learner_follows_the_recorded_policy(redis_settings, prefix, new_policy, tmp_path):
    settings = redis_settings(**SERVING, learner_batch=4)

    async def main() -> None:
        async with queue_and_store(settings) as (queue, store):
            sync = PolicySync(store.redis, prefix)
            encoder = LatentEncoder(settings.model_path, FRACTIONS)
            old_label = encoder.identity.label()
            learner = Learner(encoder, store, queue, learner_config(settings, "learner-p"),
                              policy=sync, load_policy=lambda rec: load(settings, rec))
            try:
                assert await learner.lock.try_acquire()  # what run() does first
                await queue.enqueue("u1", make_samples(4))
                assert await learner.step_once() == 4
                meta = read_metadata(store.path(1))
                assert meta.extra["policy_revision"] == old_label

                # samples queued under the old policy, then a new policy is recorded
                await queue.enqueue("u2", make_samples(4, start=4))
                rec = await sync.record(str(new_policy), "tiny", "step-2", "tiny@step-2")
                assert await learner.step_once() == 4
                assert learner.encoder.identity.label() == "tiny@step-2"
                assert learner.policy_epoch == rec.epoch == 1
                meta = read_metadata(store.path(2))
                assert meta.extra["policy_revision"] == "tiny@step-2"
                assert meta.encoder["revision"] == "step-2" and meta.samples_trained == 8

                # a recorded policy the learner cannot load: nothing is trained, nothing is lost
                await sync.record(str(tmp_path / "missing"), "tiny", "step-3", "tiny@step-3")
                await queue.enqueue("u3", make_samples(4, start=8))
                with pytest.raises(PolicyUnavailable, match="step-3"):
                    await learner.step_once()
                assert learner.stats.policy_error and POLICY_IN_SYNC._value.get() == 0
                assert await queue.pending() == 4 and await store.current() == 2
                # recorded again, loadable this time: training resumes on it
                await sync.record(str(new_policy), "tiny", "step-4", "tiny@step-4")
                assert await learner.step_once() == 4
                assert read_metadata(store.path(3)).extra["policy_revision"] == "tiny@step-4"
                assert learner.stats.policy_error is None and POLICY_IN_SYNC._value.get() == 1
            finally:
                await learner.lock.release()

    asyncio.run(main())


async def _until(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_service_follows_adopts_at_start_and_is_not_ready_when_it_cannot_load(
    redis_settings, prefix, new_policy, tmp_path
):
    settings = redis_settings(**SERVING)

    async def main() -> None:
        a = ServiceState(settings)
        await a.start()
        b: ServiceState | None = None
        sync = PolicySync(a.store.redis, prefix)
        try:
            old = a.scorer.encoder.identity.label()
            assert a.policy_epoch == 0 and a.policy_in_sync
            assert (await readyz(a)).status_code == 200

            # POST /v1/policy on another replica: this one follows
            await sync.record(str(new_policy), "tiny", "step-2", "tiny@step-2")
            await _until(lambda: a.policy_epoch == 1)
            assert a.scorer.encoder.identity.label() == "tiny@step-2" != old
            assert a.scorer.encoder.path == new_policy

            # a replica starting now adopts the recorded policy
            b = ServiceState(settings)
            await b.start()
            assert b.policy_epoch == 1 and b.scorer.encoder.identity.label() == "tiny@step-2"

            # a reload here is recorded for the others
            await b.reload_policy(settings.model_path, "step-3", "tiny")
            assert b.policy_epoch == 2
            await _until(lambda: a.policy_epoch == 2)
            assert a.scorer.encoder.identity.label() == "tiny@step-3"

            # a recorded policy that does not load here: not ready, the old encoder stays
            await sync.record(str(tmp_path / "gone"), "tiny", "step-4", "tiny@step-4")
            await _until(lambda: not a.policy_in_sync and not b.policy_in_sync)
            r = await readyz(a)
            assert r.status_code == 503 and b'"policy":false' in r.body
            assert "step-4" in a.policy_error
            assert a.scorer.encoder.identity.label() == "tiny@step-3"
            # a replica starting now cannot load it either: it starts, on the configured
            # policy, not ready
            c = ServiceState(settings)
            await c.start()
            try:
                assert not c.policy_in_sync and c.policy_epoch == 0
                assert c.scorer.encoder.path == settings.model_path
                assert (await readyz(c)).status_code == 503
            finally:
                await c.stop()
            # the path appears (e.g. a volume catches up): the retry picks it up
            (tmp_path / "gone").symlink_to(new_policy, target_is_directory=True)
            await _until(lambda: a.policy_in_sync and b.policy_in_sync, timeout=30)
            assert a.policy_epoch == b.policy_epoch == 3
            assert a.scorer.encoder.identity.label() == "tiny@step-4"
            assert (await readyz(a)).status_code == 200
        finally:
            for st in (b, a):
                if st is not None:
                    await st.stop()

    asyncio.run(main())


def test_pending_gauge_reads_the_queue_another_process_consumes(redis_settings, prefix):
    settings = redis_settings(**SERVING)

    async def main() -> None:
        state = ServiceState(settings)
        await state.start()
        other = make_queue(settings)  # the stand-alone learner's connection
        try:
            await state.queue.enqueue("u1", make_samples(5))
            PENDING_SAMPLES.set(5)  # what /v1/update reports
            got = await other.read("elsewhere", 5, 100)
            await other.commit([e.entry_id for e in got[:3]])
            assert await state.refresh_pending() == 2
            assert PENDING_SAMPLES._value.get() == 2
        finally:
            await other.close()
            await state.stop()

    asyncio.run(main())
