"""Update queues: where accepted samples wait for the learner.

Two backends with one async API (`UpdateQueue`):

- `InProcessQueue` (embedded mode, no Redis): samples and update ids live in this process's
  memory. Delivered entries stay "in flight" until committed, so a learner exception does not
  lose them; a process restart does (the service says so in its log).
- `RedisStreamQueue`: a Redis Stream `{prefix}:updates` read through the consumer group
  `learners`. Deduplication and appending happen in one Lua script (SET `{prefix}:update:{id}`
  NX EX ttl, then XADD every sample), so when `enqueue` returns the samples are in the stream
  and a retried update_id can never queue them a second time. Entries a learner read but never
  acknowledged stay in the group's pending list and are taken over with XAUTOCLAIM. An entry
  is XACKed and XDELed together, so the stream holds exactly the accepted, uncommitted samples:
  `pending()` is XLEN, and the stream never grows past the backlog.

`block_ms <= 0` in `read` means "do not wait" for both backends (Redis's BLOCK 0 would mean
"wait forever", which no caller here wants).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.settings import Settings, setting_default
from service.updates.keys import GROUP, RedisKeys, text
from service.updates.types import EnqueueResult, Entry, UpdateSample

UPDATE_ID_TTL_S: int = setting_default("update_id_ttl_s")


@dataclass(frozen=True)
class QueueConfig:
    """What `make_queue` needs: Redis (url, key prefix) or in-process, and how long update_ids
    are remembered. Defaults are the Settings defaults."""

    redis_url: str | None = setting_default("redis_url")
    prefix: str = setting_default("redis_prefix")
    update_id_ttl_s: int = UPDATE_ID_TTL_S

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueConfig:
        return cls(redis_url=settings.redis_url, prefix=settings.redis_prefix,
                   update_id_ttl_s=settings.update_id_ttl_s)


class QueueUnavailable(ConnectionError):
    """The queue's backend could not be reached; answer 503 and let the client retry.

    A builtin ConnectionError, so callers need not know about redis. If the connection broke
    after Redis ran the enqueue script, the samples are queued and the retry (same update_id)
    answers duplicate=True: never queued twice, never lost.
    """


@runtime_checkable
class UpdateQueue(Protocol):
    """The queue between `/update` and the learner."""

    backend: str

    async def enqueue(self, update_id: str, samples: list[UpdateSample]) -> EnqueueResult:
        """Queue already-accepted samples once per update_id; duplicate=True queues nothing."""
        ...

    async def pending(self) -> int:
        """Accepted samples not yet committed (queued or being trained)."""
        ...

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` new entries for this consumer, waiting up to block_ms for the first."""
        ...

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries delivered at least min_idle_ms ago and never committed."""
        ...

    async def commit(self, entry_ids: list[str]) -> None:
        """Acknowledge entries for good (after their checkpoint is published)."""
        ...

    async def close(self) -> None: ...


class InProcessQueue:
    """Embedded queue: asyncio-only (one event loop), nothing survives the process."""

    backend = "memory"

    def __init__(self, update_id_ttl_s: float = UPDATE_ID_TTL_S) -> None:
        self._ttl = float(update_id_ttl_s)
        self._ready: deque[Entry] = deque()
        # entry_id -> (entry, consumer, delivered_at monotonic); insertion order = id order
        self._in_flight: OrderedDict[str, tuple[Entry, str, float]] = OrderedDict()
        self._seen: OrderedDict[str, float] = OrderedDict()  # update_id -> expiry (monotonic)
        self._next_id = 0
        self._arrived = asyncio.Event()

    def _forget_expired(self, now: float) -> None:
        while self._seen:
            update_id, expiry = next(iter(self._seen.items()))
            if expiry > now:
                break
            del self._seen[update_id]

    async def enqueue(self, update_id: str, samples: list[UpdateSample]) -> EnqueueResult:
        now = time.monotonic()
        self._forget_expired(now)
        if update_id in self._seen:
            return EnqueueResult(accepted=0, duplicate=True, pending=await self.pending())
        self._seen[update_id] = now + self._ttl
        for sample in samples:
            self._next_id += 1
            self._ready.append(Entry(f"{self._next_id}-0", sample))
        if samples:
            self._arrived.set()
        return EnqueueResult(accepted=len(samples), duplicate=False, pending=await self.pending())

    async def pending(self) -> int:
        return len(self._ready) + len(self._in_flight)

    def _deliver(self, consumer: str, count: int) -> list[Entry]:
        out: list[Entry] = []
        now = time.monotonic()
        while self._ready and len(out) < count:
            entry = self._ready.popleft()
            self._in_flight[entry.entry_id] = (entry, consumer, now)
            out.append(entry)
        if not self._ready:
            self._arrived.clear()
        return out

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        if count <= 0:
            return []
        if not self._ready and block_ms > 0:
            try:
                await asyncio.wait_for(self._arrived.wait(), block_ms / 1000)
            except TimeoutError:
                return []
        return self._deliver(consumer, count)

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        now = time.monotonic()
        out: list[Entry] = []
        for entry_id, (entry, _owner, delivered) in list(self._in_flight.items()):
            if len(out) >= count:
                break
            if (now - delivered) * 1000 >= min_idle_ms:
                self._in_flight[entry_id] = (entry, consumer, now)
                out.append(entry)
        return out

    async def commit(self, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:
            self._in_flight.pop(entry_id, None)

    async def close(self) -> None:
        return None


# Dedupe + append as one atomic step. KEYS: update marker, stream.
# ARGV: ttl seconds, group, then one JSON payload per sample. Returns {duplicate, xlen}.
_ENQUEUE = """
local ok = redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1]))
if not ok then
  return {1, redis.call('XLEN', KEYS[2])}
end
-- make sure the group exists before the first XADD, so it sees every entry (id 0)
redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
for i = 3, #ARGV do
  redis.call('XADD', KEYS[2], '*', 's', ARGV[i])
end
return {0, redis.call('XLEN', KEYS[2])}
"""

# Acknowledge and delete together. KEYS: stream. ARGV: group, entry ids.
_COMMIT = """
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
return n
"""


def _entries(raw: Any) -> list[Entry]:
    """[(id, {'s': json}), ...] -> Entries, skipping entries deleted while pending."""
    out = []
    for entry_id, fields in raw or []:
        if not fields:
            continue
        payload = fields.get("s", fields.get(b"s"))
        out.append(Entry(text(entry_id), UpdateSample.from_json(payload)))
    return out


class RedisStreamQueue:
    """Redis Stream backend; safe to share between processes and replicas."""

    backend = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str,
                 update_id_ttl_s: int = UPDATE_ID_TTL_S) -> None:
        self.client = client
        self.keys = RedisKeys(prefix)
        self._ttl = int(update_id_ttl_s)
        self._enqueue = client.register_script(_ENQUEUE)
        self._commit = client.register_script(_COMMIT)

    @classmethod
    def from_url(cls, url: str, prefix: str,
                 update_id_ttl_s: int = UPDATE_ID_TTL_S) -> RedisStreamQueue:
        return cls(aioredis.Redis.from_url(url, decode_responses=True), prefix, update_id_ttl_s)

    async def ensure_group(self) -> None:
        """Create the consumer group (reading from the stream's start) if it is missing."""
        try:
            await self.client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def enqueue(self, update_id: str, samples: list[UpdateSample]) -> EnqueueResult:
        args = [self._ttl, GROUP, *(s.to_json() for s in samples)]
        try:
            duplicate, length = await self._enqueue(
                keys=[self.keys.update(update_id), self.keys.stream], args=args
            )
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise QueueUnavailable(f"redis: {e}") from e
        if duplicate:
            return EnqueueResult(accepted=0, duplicate=True, pending=int(length))
        return EnqueueResult(accepted=len(samples), duplicate=False, pending=int(length))

    async def pending(self) -> int:
        try:
            return int(await self.client.xlen(self.keys.stream))
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise QueueUnavailable(f"redis: {e}") from e

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        if count <= 0:
            return []
        block = block_ms if block_ms > 0 else None
        try:
            reply = await self._xreadgroup(consumer, count, block)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.ensure_group()  # nothing was ever queued (or the stream was deleted)
            reply = await self._xreadgroup(consumer, count, block)
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return [e for raw in reply.values() for e in _entries(raw[0] if raw else [])]
        return [e for _stream, raw in reply for e in _entries(raw)]

    async def _xreadgroup(self, consumer: str, count: int, block: int | None) -> Any:
        return await self.client.xreadgroup(
            GROUP, consumer, {self.keys.stream: ">"}, count=count, block=block
        )

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        out: list[Entry] = []
        cursor = "0-0"
        while len(out) < count:
            try:
                reply = await self.client.xautoclaim(
                    self.keys.stream, GROUP, consumer, min_idle_ms,
                    start_id=cursor, count=count - len(out),
                )
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self.ensure_group()
                return out
            cursor = text(reply[0])
            out.extend(_entries(reply[1]))
            if cursor in ("0-0", "0"):
                break
        return out

    async def commit(self, entry_ids: list[str]) -> None:
        if entry_ids:
            await self._commit(keys=[self.keys.stream], args=[GROUP, *entry_ids])

    async def close(self) -> None:
        await self.client.aclose()


def make_queue(config: QueueConfig | Settings,
               client: aioredis.Redis | None = None) -> UpdateQueue:
    """RedisStreamQueue when a Redis URL is configured (or a client is given), else
    in-process. Takes the service Settings or a QueueConfig."""
    if isinstance(config, Settings):
        config = QueueConfig.from_settings(config)
    if client is not None:
        return RedisStreamQueue(client, config.prefix, config.update_id_ttl_s)
    if config.redis_url:
        return RedisStreamQueue.from_url(config.redis_url, config.prefix, config.update_id_ttl_s)
    return InProcessQueue(config.update_id_ttl_s)
