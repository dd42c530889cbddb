"""The learner: turns queued accepted samples into new flow versions, exactly once.

Loop (one batch per iteration):
  1. take over entries a dead consumer left pending (reclaim), then read new ones, up to
     `learner_batch`, waiting at most `learner_block_ms` for the batch to fill;
  2. in a worker thread (the event loop keeps serving): `OnlineRefiner.step` on the batch,
     `export()` the next version, write its checkpoint (flow + optimiser state) atomically;
  3. `FlowStore.publish`: with Redis one script bumps the version, records and acknowledges
     the entries and counts each trained sample id in `{prefix}:trained` (see flowstore.py);
  4. acknowledge the in-process queue (a no-op for Redis, already done in 3), update metrics.

With Redis exactly one learner trains at a time: `{prefix}:learner:lock` (redis-py's `Lock`:
SET NX PX with a random token, renewed every ttl/3). A second learner waits for it. The token
is also the fence checked by publish, so a learner that lost the lock (a long pause, a
partition) cannot publish. On start, and whenever a step fails, the learner reloads the
current version and its optimiser state, so training always continues from what was
published.

Policy changes. The learner encodes each batch with its current encoder when it trains it:
the queue holds token ids, not latents, so samples queued while an older policy was in service
are encoded with the policy that is current when their batch is trained. `use_encoder`
(the serving process calls it on POST /v1/policy) or a newer policy epoch in Redis (the
stand-alone learner checks `policy.epoch()` when a batch starts: before it is read, and again
after, before training) makes the next step rebuild the refiner from the published version and
its optimiser state on the new encoder's latents; a step already running finishes on the old
encoder and its version records the old policy. Every published version records the label of
the encoder it was trained against (`extra["policy_revision"]`). A recorded policy the learner
cannot load pauses training (entries stay queued, the error is logged, retried with backoff)
instead of training on the old policy's latents.

Samples that can never be trained (empty response, token id outside the vocabulary, longer
than the model's context) are acknowledged without training and logged, so one bad sample
cannot wedge the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
import torch
from redis.exceptions import LockError, RedisError

from flowfield.chat import encoder_chat_format
from flowfield.checkpoint import FlowMismatchError, record_policy
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet
from flowfield.training.online import OnlineRefiner
from service.metrics import (
    FLOW_VERSION,
    LATENTS_REUSED,
    LEARNER_LOSS,
    LEARNER_STEPS,
    PENDING_SAMPLES,
    POLICY_EPOCH,
    POLICY_IN_SYNC,
    SAMPLES_TRAINED,
)
from service.settings import Settings, setting_default
from service.updates.flowstore import LOCK_LOST, CommitConflict, FlowStore
from service.updates.policy import PolicyRecord, PolicySync
from service.updates.queue import UpdateQueue
from service.updates.types import Entry, UpdateSample

log = logging.getLogger("flowfield.learner")
T = TypeVar("T")


@dataclass(frozen=True)
class LearnerConfig:
    """Everything the learner reads from the configuration; `from_settings` maps the
    FLOWFIELD_LEARNER_* settings (and `timesteps`) onto it. Defaults are the Settings ones."""

    name: str | None = setting_default("learner_name")  # consumer name; None: host-pid
    batch: int = setting_default("learner_batch")  # samples per step
    block_ms: int = setting_default("learner_block_ms")  # wait for the batch to fill
    reclaim_idle_ms: int = setting_default("learner_reclaim_idle_ms")
    lock_ttl_ms: int = setting_default("learner_lock_ttl_ms")
    lr: float = setting_default("learner_lr")
    min_lr: float = setting_default("learner_min_lr")
    horizon: int = setting_default("learner_horizon")
    timesteps: tuple[float, ...] = setting_default("timesteps")
    # test hook: sleep between writing a version and publishing it (the crash window)
    test_pause_s: float = setting_default("learner_test_pause_s")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LearnerConfig:
        """The learner's part of `settings`; `overrides` replace fields (e.g. name).

        Every field is the `learner_<field>` setting, except `timesteps` (the shared
        `timesteps` setting, as a tuple)."""
        values: dict[str, Any] = {
            f.name: getattr(settings, f"learner_{f.name}")
            for f in fields(cls)
            if f.name != "timesteps"
        }
        values["timesteps"] = tuple(settings.timesteps)
        values.update(overrides)
        return cls(**values)


@dataclass
class LearnerStats:
    """What the learner reports (GET /v1/flow's last_update, logs, tests): the version it
    last loaded or published and its counters."""

    consumer: str
    policy: str  # label of the encoder the next step trains on
    policy_epoch: int = 0  # recorded policy epoch of that encoder (0 = the configured one)
    policy_error: str | None = None  # why the recorded policy does not load (training paused)
    version: int = 0
    steps: int = 0
    samples_trained: int = 0
    tokens_trained: int = 0
    last_loss: float | None = None
    rejected: int = 0  # untrainable samples acknowledged without training
    pending: int = 0  # last queue depth seen
    last_update: float | None = None  # unix time of the last publish by this learner


class LearnerConfigError(RuntimeError):
    """The current flow cannot be loaded for this encoder; retrying will not help."""


class PolicyUnavailable(RuntimeError):
    """The recorded policy cannot be loaded here: training pauses until it can."""

    def __init__(self, record: PolicyRecord, why: str) -> None:
        super().__init__(f"cannot load the recorded policy {record.label} (epoch "
                         f"{record.epoch}) from {record.path}: {why}")
        self.record = record


def default_consumer_name() -> str:
    """Unique per process, readable in XINFO: host-pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class LearnerLock(Protocol):
    token: str | None
    held: bool
    retry_s: float

    async def try_acquire(self) -> bool: ...
    async def still_held(self) -> bool: ...
    async def keep_alive(self) -> None: ...
    async def release(self) -> None: ...


class NullLock:
    """Embedded mode: one process, one learner; nothing to coordinate."""

    token: str | None = None
    retry_s = 1.0

    def __init__(self) -> None:
        self.held = False

    async def try_acquire(self) -> bool:
        self.held = True
        return True

    async def still_held(self) -> bool:
        return self.held

    async def keep_alive(self) -> None:
        return None

    async def release(self) -> None:
        self.held = False


class RedisLock:
    """The single-learner lock: redis-py's `Lock` (SET NX PX with a token; Lua-checked extend
    and release) with our own random token, which publish also checks as a fence. Renewed by
    keep_alive every ttl/3 while held."""

    def __init__(self, client: aioredis.Redis, key: str,
                 ttl_ms: int = setting_default("learner_lock_ttl_ms")) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_ms)
        self.token: str | None = uuid.uuid4().hex
        self.held = False
        self.retry_s = max(0.05, min(1.0, self.ttl_ms / 4000))
        self._lock = client.lock(key, timeout=self.ttl_ms / 1000, blocking=False,
                                 thread_local=False)
        self._renewed_at = 0.0

    async def try_acquire(self) -> bool:
        self.held = bool(await self._lock.acquire(blocking=False, token=self.token))
        if self.held:
            self._renewed_at = time.monotonic()
        return self.held

    async def still_held(self) -> bool:
        """Ask Redis (not the local flag) whether the lock is still this learner's."""
        if self.held and not await self._lock.owned():
            log.warning("learner lock lost (taken over or expired)")
            self.held = False
        return self.held

    async def keep_alive(self) -> None:
        """Renew (reset the TTL) every ttl/3 until the lock is lost or released."""
        while self.held:
            await asyncio.sleep(self.ttl_ms / 3000)
            if not self.held:
                return
            try:
                await self._lock.reacquire()
                self._renewed_at = time.monotonic()
            except LockError:  # LockNotOwnedError: taken over or expired
                log.warning("learner lock lost (taken over or expired)")
                self.held = False
            except RedisError as e:
                if (time.monotonic() - self._renewed_at) * 1000 > self.ttl_ms:
                    log.warning("learner lock expired while redis was unreachable: %s", e)
                    self.held = False

    async def release(self) -> None:
        was_held, self.held = self.held, False
        if was_held:
            with contextlib.suppress(LockError, RedisError):
                await self._lock.release()


class Learner:
    """Consumes the update queue and publishes refined flow versions; see module docstring."""

    def __init__(self, encoder: LatentEncoder, store: FlowStore, queue: UpdateQueue,
                 config: LearnerConfig, *,
                 lock: LearnerLock | None = None,
                 executor: Executor | None = None,
                 encoder_lock: threading.Lock | None = None,
                 policy: PolicySync | None = None,
                 load_policy: Callable[[PolicyRecord], LatentEncoder] | None = None,
                 policy_epoch: int = 0) -> None:
        """In the serving process the encoder is shared with the scorer, and LatentEncoder is
        not safe to run from two threads at once: pass the scheduler's single model-thread
        `executor` (the training step then runs between scoring batches) or an `encoder_lock`
        the scorer also holds. Without either, steps run in asyncio.to_thread.

        `policy` + `load_policy` (the stand-alone learner): follow the policy recorded in
        Redis, starting from `policy_epoch` (the epoch `encoder` was loaded for; 0 = the
        configured policy). The serving process calls `use_encoder` itself instead."""
        self._encoder = encoder
        self.store = store
        self.queue = queue
        self.config = config
        self.consumer = config.name or default_consumer_name()
        if lock is None:
            lock = (RedisLock(store.redis, store.keys.lock, config.lock_ttl_ms)
                    if store.redis is not None else NullLock())
        self.lock = lock
        self.executor = executor
        self.encoder_lock = encoder_lock
        if policy is not None and load_policy is None:
            raise ValueError("policy needs load_policy (how to load a recorded policy)")
        self.policy = policy
        self.load_policy = load_policy
        self._policy_failed: tuple[int, str] | None = None  # (epoch, error) last failed load
        self.batch_size = max(1, int(config.batch))
        self.stats = LearnerStats(consumer=self.consumer, policy=encoder.identity.label(),
                                  policy_epoch=int(policy_epoch))
        self._refiner: OnlineRefiner | None = None
        self._held: list[Entry] = []  # read but not yet committed (kept across a failed step)
        self._keepalive: asyncio.Task | None = None

    @property
    def encoder(self) -> LatentEncoder:
        """The encoder the next step trains on (change it with `use_encoder`)."""
        return self._encoder

    @property
    def policy_epoch(self) -> int:
        """The recorded policy epoch `encoder` was loaded for (0 = the configured policy)."""
        return self.stats.policy_epoch

    def use_encoder(self, encoder: LatentEncoder, policy_epoch: int | None = None) -> None:
        """A reloaded policy: the next step rebuilds the refiner (from the published version)
        on the new encoder's latents; a step already running finishes on the old one.
        `policy_epoch`: the recorded epoch of that policy (None: unchanged)."""
        self._encoder = encoder
        self._refiner = None
        self.stats.policy = encoder.identity.label()
        if policy_epoch is not None:
            self.stats.policy_epoch = int(policy_epoch)

    # ---- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Train until `stop` is set; the current step is finished before returning.

        Errors in a step are logged and retried with backoff (the batch is kept); a flow that
        is missing or does not fit the encoder is raised as LearnerConfigError.
        """
        backoff = 1.0
        try:
            while not stop.is_set():
                if not self.lock.held:
                    await self._stop_keepalive()
                    if not await self._acquire(stop):
                        break
                try:
                    await self.step_once()
                    backoff = 1.0
                except LearnerConfigError as e:
                    log.error("learner stopped: %s", e)
                    raise
                except PolicyUnavailable:
                    # logged by _sync_policy (once per epoch and error); the batch stays held
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, 30.0)
                except Exception:
                    log.exception("learner step failed; retrying in %.1fs", backoff)
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            await self._stop_keepalive()
            await self.lock.release()

    async def _acquire(self, stop: asyncio.Event) -> bool:
        said_waiting = False
        while not stop.is_set():
            try:
                acquired = await self.lock.try_acquire()
            except RedisError as e:
                log.warning("learner lock: redis error %s", e)
                acquired = False
            if acquired:
                log.info("learner lock acquired consumer=%s", self.consumer)
                self._keepalive = asyncio.create_task(self.lock.keep_alive())
                self._held = []
                self._refiner = None
                return True
            if not said_waiting:
                log.info("learner waiting: another learner holds the lock consumer=%s",
                         self.consumer)
                said_waiting = True
            await _wait(stop, self.lock.retry_s)
        return False

    async def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None

    async def _load(self) -> None:
        """(Re)build the refiner from the published version and its optimiser state, after
        removing unpublished leftovers (only while the lock is verifiably ours)."""
        encoder = self.encoder  # a policy change while loading makes the next step load again
        version = await self.store.current()
        if await self.lock.still_held():
            await asyncio.to_thread(self.store.cleanup, version)
        try:
            net, meta = await asyncio.to_thread(
                self.store.load, version, encoder.identity,
                tuple(encoder.layer_fractions),
            )
        except (FlowMismatchError, FileNotFoundError) as e:
            raise LearnerConfigError(f"cannot load flow version {version}: {e}") from e
        state = await asyncio.to_thread(self.store.load_learner_state, version)
        meta.version = version
        # versions trained from here on are trained on this encoder's latents
        meta.encoder = {**meta.encoder, **asdict(encoder.identity)}
        record_policy(meta, encoder.identity)
        c = self.config
        refiner = OnlineRefiner(encoder, net, meta, lr=c.lr, min_lr=c.min_lr,
                                horizon=c.horizon, timesteps=c.timesteps)
        if state is not None:
            refiner.load_state_dict(state)
        if self.encoder is not encoder:
            return  # the policy changed meanwhile: the caller loads again for the new one
        self._refiner = refiner
        self._update_stats(meta)
        log.info("learner loaded flow_version=%d steps=%d samples_trained=%d policy=%s", version,
                 refiner.steps, meta.samples_trained, encoder.identity.label())

    async def _sync_policy(self) -> None:
        """Follow the policy recorded in Redis: when its epoch is above ours, load it and make
        it the encoder (the next step rebuilds the refiner on it). Raises PolicyUnavailable
        when it does not load; then nothing is trained until it does."""
        if self.policy is None:
            return
        if await self.policy.epoch() <= self.policy_epoch:
            return
        record = await self.policy.current()
        if record is None or record.epoch <= self.policy_epoch:
            return
        assert self.load_policy is not None
        try:
            encoder = await asyncio.to_thread(self.load_policy, record)
        except Exception as e:  # safetensors, tokenizers and torch raise their own types
            err = PolicyUnavailable(record, f"{type(e).__name__}: {e}")
            if self._policy_failed != (record.epoch, str(err)):
                log.error("learner paused: %s", err)
            self._policy_failed = (record.epoch, str(err))
            self.stats.policy_error = str(err)
            POLICY_IN_SYNC.set(0)
            raise err from e
        self.use_encoder(encoder, record.epoch)
        self._policy_failed = None
        self.stats.policy_error = None
        POLICY_EPOCH.set(record.epoch)
        POLICY_IN_SYNC.set(1)
        log.info("learner policy reloaded policy=%s epoch=%d path=%s",
                 encoder.identity.label(), record.epoch, record.path)

    # ---- one step -------------------------------------------------------------------------

    async def step_once(self) -> int:
        """Gather a batch, train, publish, commit. Returns the number of entries committed."""
        await self._sync_policy()
        if self._refiner is None:
            await self._load()
        batch = await self._gather()
        await self._set_pending()
        if not batch:
            return 0
        # the batch may have waited for samples while a new policy was recorded
        await self._sync_policy()
        if self._refiner is None:
            await self._load()
            if self._refiner is None:
                return 0  # the policy changed again while loading; the batch stays held
        valid, rejected = self._split(batch)
        if not valid:
            await self.queue.commit([e.entry_id for e in batch])
            self._held = []
            await self._set_pending()
            return len(batch)

        refiner = self._refiner
        assert refiner is not None
        try:
            # Two jobs on the model thread, so a scoring batch can run between them (each
            # is about one batch long on the demo); the checkpoint write is I/O and leaves
            # the model thread free (nothing changes the refiner before this step publishes).
            latents = await self._in_model_thread(self._encode, refiner, valid)
            loss, net, meta, state = await self._in_model_thread(
                self._train, refiner, valid, latents
            )
            await asyncio.to_thread(self.store.write, net, meta, state)
            if self.config.test_pause_s > 0:
                log.info("test hook: pausing %.1fs before commit version=%d",
                         self.config.test_pause_s, meta.version)
                await asyncio.sleep(self.config.test_pause_s)
            await self.store.publish(meta.version, batch, [e.sample.sample_id for e in valid],
                                     fence=self.lock.token)
        except CommitConflict as e:
            log.warning("learner: %s; reloading", e)
            self._refiner = None
            if e.reason == LOCK_LOST:
                self._held = []  # the next lock holder reclaims them
                self.lock.held = False
            else:
                done = set(e.done)
                self._held = [x for x in batch if x.entry_id not in done]
            return 0
        except BaseException:
            # the refiner's state is ahead of what was published: reload (and clean up) first
            self._refiner = None
            raise
        self._held = []  # published: never train these again, even if the ack below fails
        # logged before anything else is awaited: a process killed right after the commit
        # still has its line (the pending count follows in a DEBUG line)
        log.info("learner published flow_version=%d samples=%d loss=%.5f",
                 meta.version, len(valid), loss)
        await self.queue.commit([e.entry_id for e in batch])  # Redis: already acked by publish

        LEARNER_LOSS.set(loss)
        LEARNER_STEPS.inc()
        SAMPLES_TRAINED.inc(len(valid))
        self.stats.last_loss = loss
        self.stats.rejected += len(rejected)
        self._update_stats(meta)
        self.stats.last_update = time.time()
        await self._set_pending()
        log.debug("learner pending=%d after flow_version=%d", self.stats.pending, meta.version)
        if self.lock.held:  # just fenced by publish: old versions and orphans can go
            await asyncio.to_thread(self.store.cleanup, meta.version)
        return len(batch)

    async def _gather(self) -> list[Entry]:
        """Held entries, then reclaimed ones, then new ones until full or block_ms passed."""
        batch = list(self._held)
        seen = {e.entry_id for e in batch}

        def add(entries: list[Entry]) -> None:
            for e in entries:
                if e.entry_id not in seen:
                    seen.add(e.entry_id)
                    batch.append(e)

        if len(batch) < self.batch_size:
            add(await self.queue.reclaim(self.consumer, self.config.reclaim_idle_ms,
                                         self.batch_size - len(batch)))
        deadline = time.monotonic() + self.config.block_ms / 1000
        while len(batch) < self.batch_size:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            got = await self.queue.read(self.consumer, self.batch_size - len(batch), left_ms)
            if not got:
                break
            add(got)
        self._held = batch
        return batch

    async def _in_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self.executor is None:
            return await asyncio.to_thread(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _split(self, batch: list[Entry]) -> tuple[list[Entry], list[Entry]]:
        valid, rejected = [], []
        for e in batch:
            reason = self._problem(e.sample)
            if reason is None:
                valid.append(e)
            else:
                log.warning("learner: dropping sample %s (entry %s): %s", e.sample.sample_id,
                            e.entry_id, reason)
                rejected.append(e)
        return valid, rejected

    def _problem(self, s: UpdateSample) -> str | None:
        from flowfield.samples import SampleLimits, check_sample  # the one sample rule

        problem = check_sample(s.prompt_ids, s.response_ids, SampleLimits.of(self.encoder))
        if problem is not None:
            return problem
        if not math.isfinite(s.weight) or s.weight < 0:
            return f"weight {s.weight} is not a finite non-negative number"
        return None

    def _encode(self, refiner: OnlineRefiner,
                entries: list[Entry]) -> tuple[torch.Tensor, torch.Tensor]:
        """First blocking part of a step (model thread): the policy encodes the samples that
        scoring's memo does not hold (flowfield/latent_memo.py)."""
        guard = self.encoder_lock if self.encoder_lock is not None else contextlib.nullcontext()
        memo = refiner.encoder.memo  # what /score encoded lately (in-process learner only)
        hits = memo.hits if memo is not None else 0
        with guard:
            latents = refiner.latents(*_ids(refiner, entries))
        if memo is not None:
            LATENTS_REUSED.inc(memo.hits - hits)
        return latents

    def _train(self, refiner: OnlineRefiner, entries: list[Entry],
               latents: tuple[torch.Tensor, torch.Tensor]
               ) -> tuple[float, FlowNet, FlowMetadata, dict]:
        """Second blocking part (model thread): optimiser step and export of the new version
        (written to the store by the caller, off the model thread)."""
        loss = refiner.step(*_ids(refiner, entries), [e.sample.weight for e in entries],
                            latents=latents)
        net, meta = refiner.export()
        record_policy(meta, refiner.encoder.identity)  # the encoder this step trained on
        return loss, net, meta, refiner.state_dict()

    def _update_stats(self, meta: FlowMetadata) -> None:
        FLOW_VERSION.set(meta.version)  # a stand-alone learner reports the version it published
        self.stats.version = meta.version
        self.stats.samples_trained = meta.samples_trained
        self.stats.tokens_trained = meta.tokens_trained
        if self._refiner is not None:
            self.stats.steps = self._refiner.steps

    async def _set_pending(self) -> None:
        try:
            n = await self.queue.pending()
        except (RedisError, ConnectionError):  # QueueUnavailable: keep the last value
            return
        self.stats.pending = n
        PENDING_SAMPLES.set(n)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when stop is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _ids(refiner: OnlineRefiner, entries: list[Entry]) -> tuple[list[list[int]], list[list[int]]]:
    """The entries' prompts and responses as the flow trains on them: a response's trailing
    end-of-turn/EOS token cut off (flowfield.chat), as /v1/score scores it."""
    fmt = encoder_chat_format(refiner.encoder)
    prompts = [list(e.sample.prompt_ids) for e in entries]
    return prompts, [fmt.strip_end(e.sample.response_ids)[0] for e in entries]
