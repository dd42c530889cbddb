"""Policy sync across processes (Redis backend): which policy checkpoint every scorer replica and
the stand-alone learner encode with.

RLFR's latents are the policy's hidden states, so every process that encodes (the scorers, and
the learner when it trains) must use the same policy checkpoint, or two replicas give different
rewards for the same request and the learner trains the flow on latents the scorers do not see.

Record (only with FLOWFIELD_REDIS_URL). `POST /v1/policy` loads the new policy on the replica
that receives it; only when that worked does it call `record`, one Lua script that atomically
  - increments the policy epoch (`{prefix}:policy`, field `epoch`; 1, 2, ...; never reused),
  - stores the checkpoint's absolute path and the encoder's resolved name, revision and label
    (so every process reports the same `name@revision`, also when the revision is the weights'
    fingerprint) in the same hash,
  - publishes the epoch on `{prefix}:policy:announce`.
The epoch orders concurrent reloads: the highest epoch is the current policy everywhere.

Followers. A scorer runs `watch` (pub/sub wake-up plus a poll of the epoch every poll_s, so a
missed message only delays the reload) and reloads when the recorded epoch is above the one it
encodes with; a scorer starting later reads the record at start-up and loads that policy
instead of FLOWFIELD_MODEL_PATH. The stand-alone learner reads the epoch (one HGET) when a
batch starts. A process that cannot load the recorded policy (the path is not on its disk, the
files do not load, the flow does not fit) logs an error, reports not ready, and retries.

Without Redis there is one process and nothing to record: the policy stays per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.updates.keys import RedisKeys, text
from service.updates.watch import watch_channel

log = logging.getLogger("flowfield.policy")

# KEYS: 1 policy hash; ARGV: 1 path, 2 name, 3 revision, 4 label, 5 now, 6 set_by, 7 channel
_RECORD = """
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'path', ARGV[1], 'name', ARGV[2], 'revision', ARGV[3],
           'label', ARGV[4], 'set_at', ARGV[5], 'set_by', ARGV[6])
redis.call('PUBLISH', ARGV[7], epoch)
return epoch
"""


class PolicySyncUnavailable(RuntimeError):
    """Redis did not answer: the policy could not be recorded (or read)."""


@contextlib.contextmanager
def _unavailable_without_redis() -> Iterator[None]:
    """Turns Redis not answering (connection refused or lost, timeout) into
    PolicySyncUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as e:
        raise PolicySyncUnavailable(f"redis: {e}") from e


@dataclass(frozen=True)
class PolicyRecord:
    """The current policy as recorded in Redis."""

    epoch: int
    path: str
    name: str
    revision: str
    label: str
    set_at: float = 0.0
    set_by: str = ""

    @classmethod
    def from_hash(cls, h: dict[Any, Any]) -> PolicyRecord | None:
        d = {text(k): text(v) for k, v in h.items()}
        if not d.get("path") or not d.get("epoch"):
            return None
        name, revision = d.get("name") or "", d.get("revision") or ""
        return cls(
            epoch=int(d["epoch"]),
            path=d["path"],
            name=name,
            revision=revision,
            label=d.get("label") or f"{name}@{revision}",
            set_at=float(d.get("set_at") or 0.0),
            set_by=d.get("set_by") or "",
        )


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class PolicySync:
    """The policy record in Redis: write it (`record`), read it (`current`, `epoch`), follow
    it (`watch`). Shares the caller's Redis client; closes nothing."""

    def __init__(self, client: aioredis.Redis, prefix: str = "flowfield",
                 poll_s: float = 2.0) -> None:
        self.redis = client
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self.poll_s = poll_s
        self._record = client.register_script(_RECORD)

    async def record(self, path: str, name: str, revision: str, label: str) -> PolicyRecord:
        """Record a policy that loaded on this process; returns it with its new epoch."""
        now = time.time()
        args = [path, name, revision, label, f"{now:.3f}", process_name(),
                self.keys.policy_announce]
        with _unavailable_without_redis():
            epoch = await self._record(keys=[self.keys.policy], args=args)
        return PolicyRecord(int(epoch), path, name, revision, label, now, process_name())

    async def epoch(self) -> int:
        """The recorded epoch (0: no policy was ever recorded). One HGET."""
        with _unavailable_without_redis():
            return int(text(await self.redis.hget(self.keys.policy, "epoch")) or 0)

    async def current(self) -> PolicyRecord | None:
        """The recorded policy, or None when POST /v1/policy never recorded one."""
        with _unavailable_without_redis():
            return PolicyRecord.from_hash(await self.redis.hgetall(self.keys.policy))

    async def watch(self, applied: Callable[[], int]) -> AsyncIterator[PolicyRecord]:
        """Yield the recorded policy whenever its epoch is above `applied()` (the epoch the
        caller encodes with): at once, on each announcement and at least every poll_s, so a
        caller that failed to load a record gets it again at the next poll. Never ends on its
        own; cancel the task."""
        failing = False

        async def newer() -> PolicyRecord | None:
            nonlocal failing
            rec = await self.current()  # the record is the truth, messages just wake us
            if failing:
                log.info("policy watch: redis reachable again")
                failing = False
            return rec if rec is not None and rec.epoch > applied() else None

        def retrying(e: BaseException) -> None:
            nonlocal failing
            if not failing:  # once per outage, not once a second
                log.warning("policy watch: redis error %s; retrying every second", e)
            failing = True

        records = watch_channel(self.redis, self.keys.policy_announce, self.poll_s, newer,
                                (RedisError, PolicySyncUnavailable, OSError), retrying)
        async with contextlib.aclosing(records):
            async for rec in records:
                yield rec
