"""Versioned flow checkpoints and the current-version pointer.

Layout under `FlowStoreConfig.checkpoint_dir` (the `checkpoint_dir` setting):

    v000001/  flow.safetensors, flow.json (flowfield.checkpoint.save_flow) + learner.pt
    v000002/  ...
    CURRENT.json   embedded mode only: {"version": n, "path": ...}

Version 0 is the initial flow at `FlowStoreConfig.flow_path`, which is never written to. A version
directory is written under a temporary name (`.tmp-v000003-<random>`) in the same parent,
fsynced, and renamed into place, so a reader never sees a half-written version.

Pointer. Embedded: CURRENT.json, replaced atomically; `watch` wakes on an in-process
condition and also polls the file. With Redis: `{prefix}:flow:version` and `{prefix}:flow:path`,
plus a message on `{prefix}:flow:announce`; `watch` listens to the channel and polls the
pointer every few seconds, so a missed message (reconnect, slow subscriber) only delays a swap.

Exactly-once training with Redis. `publish(version, entries, trained, fence)` runs one Lua
script that, atomically:
  1. checks the learner still holds `{prefix}:learner:lock` (fence token), that the pointer is
     at `version - 1` (the version this learner trained from), and that every entry is still
     in the consumer group's pending list - if any check fails nothing is written and
     `CommitConflict` is raised (the learner reloads and drops what was already done);
  2. sets the version and path, records the version's entries and sample ids in
     `{prefix}:flow:v{n}` (expires after update_id_ttl_s), HINCRBYs `{prefix}:trained` per
     trained sample id, XACKs and XDELs the entries, and PUBLISHes the version.
So a learner killed after writing `v00000n/` but before the script leaves the pointer at n-1
and the entries pending: the next lock holder removes the orphan directory (`cleanup`, run
after it has acquired the lock), reclaims the entries and trains them into a fresh `v00000n/`.
`write` never replaces an existing directory, so a stale learner (one that lost the lock
without noticing yet) can neither overwrite a published version nor the holder's next one;
if the holder finds a stale learner's directory in its way, its write fails, it reloads,
cleans up and trains again. A learner killed after the script has
nothing pending to reclaim: the entries were acknowledged in the same step that made their
version current. A learner whose reply was lost (connection drop after the script ran) finds
its entries no longer pending on retry and skips them rather than training them twice.

Embedded mode has the same order (checkpoint, pointer, then the learner commits the
in-process queue); its queue lives in memory, so a process crash loses the backlog anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import torch
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flowfield.checkpoint import load_flow, save_flow
from flowfield.encoder import EncoderIdentity
from flowfield.flownet import FlowMetadata, FlowNet
from service.settings import Settings, setting_default
from service.updates.keys import GROUP, RedisKeys, text
from service.updates.types import Entry
from service.updates.watch import watch_channel

log = logging.getLogger("flowfield.flowstore")

LEARNER_STATE = "learner.pt"
POINTER = "CURRENT.json"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")


@dataclass(frozen=True)
class FlowStoreConfig:
    """Where versions live and how the pointer is kept. Defaults are the Settings defaults.

    `redis_url` set: the pointer is in Redis (unless the store is given a client); unset: in
    CURRENT.json. `record_ttl_s` is how long a version's record (entries, sample ids) and the
    trained-id audit live: the update_id_ttl_s setting."""

    checkpoint_dir: Path = setting_default("checkpoint_dir")
    flow_path: Path = setting_default("flow_path")
    redis_url: str | None = setting_default("redis_url")
    prefix: str = setting_default("redis_prefix")
    record_ttl_s: int = setting_default("update_id_ttl_s")
    keep_versions: int = setting_default("keep_versions")
    poll_s: float = 5.0  # watch: pointer poll interval with Redis (not a setting)

    @classmethod
    def from_settings(cls, settings: Settings) -> FlowStoreConfig:
        return cls(checkpoint_dir=Path(settings.checkpoint_dir), flow_path=Path(settings.flow_path),
                   redis_url=settings.redis_url, prefix=settings.redis_prefix,
                   record_ttl_s=settings.update_id_ttl_s, keep_versions=settings.keep_versions)


class CommitConflict(RuntimeError):
    """publish refused: lock lost, the pointer moved, or some entries were already committed.

    `done` lists the entries that are no longer pending (already committed by someone);
    the learner must not train them again.
    """

    def __init__(self, reason: str, current: int, done: Sequence[str] = ()) -> None:
        super().__init__(f"commit refused: {reason} (current version {current})")
        self.reason = reason
        self.current = current
        self.done = list(done)


# KEYS: 1 version, 2 path, 3 lock, 4 stream, 5 trained, 6 version record
# ARGV: 1 new version, 2 path, 3 fence token ('' = none), 4 group, 5 channel, 6 record ttl,
#       7 now, 8 n entries, 9..8+n entry ids, then trained sample ids
_PUBLISH = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[3] then
  return {-1, tonumber(redis.call('GET', KEYS[1]) or '0'), {}}
end
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new ~= current + 1 then
  return {-2, current, {}}
end
local n = tonumber(ARGV[8])
local done = {}
for i = 9, 8 + n do
  local p = redis.call('XPENDING', KEYS[4], ARGV[4], ARGV[i], ARGV[i], 1)
  if #p == 0 then done[#done + 1] = ARGV[i] end
end
if #done > 0 then
  return {-3, current, done}
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
local ids = {}
for i = 9, 8 + n do
  redis.call('XACK', KEYS[4], ARGV[4], ARGV[i])
  redis.call('XDEL', KEYS[4], ARGV[i])
  ids[#ids + 1] = ARGV[i]
end
local samples = {}
for i = 9 + n, #ARGV do
  redis.call('HINCRBY', KEYS[5], ARGV[i], 1)
  samples[#samples + 1] = ARGV[i]
end
if #samples > 0 then
  -- the audit of trained sample ids lives as long as update ids are remembered
  redis.call('EXPIRE', KEYS[5], tonumber(ARGV[6]))
end
redis.call('HSET', KEYS[6], 'path', ARGV[2], 'entries', table.concat(ids, ','),
           'samples', cjson.encode(samples), 'published_at', ARGV[7])
redis.call('EXPIRE', KEYS[6], tonumber(ARGV[6]))
redis.call('PUBLISH', ARGV[5], ARGV[1])
return {0, new, {}}
"""

LOCK_LOST = "learner lock lost"
VERSION_MOVED = "flow version moved"
ALREADY_COMMITTED = "entries already committed"
_REASONS = {-1: LOCK_LOST, -2: VERSION_MOVED, -3: ALREADY_COMMITTED}


def _fsync_tree(directory: Path) -> None:
    for f in directory.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FlowStore:
    """Versioned flows on a (shared) directory plus a pointer in a file or in Redis."""

    def __init__(self, config: FlowStoreConfig,
                 redis_client: aioredis.Redis | None = None) -> None:
        """`redis_client` (e.g. one shared with the queue) wins over `config.redis_url`; with
        neither, the pointer is the file CURRENT.json."""
        if redis_client is None and config.redis_url:
            redis_client = aioredis.Redis.from_url(config.redis_url, decode_responses=True)
        self.config = config
        self.root = Path(config.checkpoint_dir)
        self.initial_flow = Path(config.flow_path)
        self.redis = redis_client
        self.keys = RedisKeys(config.prefix)
        self.record_ttl_s = int(config.record_ttl_s)
        self.keep_versions = max(1, int(config.keep_versions))
        self.poll_s = float(config.poll_s)
        self._changed: asyncio.Condition | None = None  # made lazily, inside the event loop
        self._generation = 0  # bumped on every local publish, read under _changed
        self._publish = redis_client.register_script(_PUBLISH) if redis_client else None

    @classmethod
    def from_settings(cls, settings: Settings, redis_client: aioredis.Redis | None = None,
                      **overrides: Any) -> FlowStore:
        """The store the service and the learner use: Redis pointer iff settings.redis_url.
        `overrides` replace FlowStoreConfig fields (e.g. poll_s)."""
        return cls(replace(FlowStoreConfig.from_settings(settings), **overrides), redis_client)

    @property
    def backend(self) -> str:
        return "redis" if self.redis is not None else "file"

    # ---- reading -------------------------------------------------------------------------

    def path(self, version: int) -> Path:
        """Directory of a version; version 0 is the initial flow."""
        if version == 0:
            return self.initial_flow
        return self.root / f"v{version:06d}"

    async def current(self) -> int:
        """The published version (0 until the learner publishes one)."""
        if self.redis is not None:
            return int(text(await self.redis.get(self.keys.version)) or 0)
        return self._read_pointer()

    def _read_pointer(self) -> int:
        try:
            return int(json.loads((self.root / POINTER).read_text())["version"])
        except FileNotFoundError:
            return 0

    def load(self, version: int, identity: EncoderIdentity | None = None,
             layer_fractions: tuple[float, ...] | None = None,
             device: str | torch.device = "cpu") -> tuple[FlowNet, FlowMetadata]:
        """Load a version's flow (checked against the encoder when an identity is given)."""
        net, meta = load_flow(self.path(version), identity, layer_fractions, device=device)
        meta.version = version  # the pointer's numbering wins over whatever was recorded
        return net, meta

    def load_learner_state(self, version: int) -> dict | None:
        """Optimiser/scheduler state saved with a version (None for version 0 or if absent)."""
        if version == 0:
            return None
        f = self.path(version) / LEARNER_STATE
        if not f.is_file():
            return None
        return torch.load(f, map_location="cpu", weights_only=True)

    # ---- writing (learner only) -----------------------------------------------------------

    def write(self, net: FlowNet, meta: FlowMetadata, learner_state: dict | None) -> Path:
        """Write version meta.version atomically. Blocking (file I/O): use a worker thread.

        Never replaces an existing version directory (FileExistsError): it may be a published
        version or another learner's. Orphans are removed by `cleanup`, which only the lock
        holder runs.
        """
        version = int(meta.version)
        if version <= 0:
            raise ValueError("a written flow needs a version >= 1 (0 is the initial flow)")
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(version)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-v{version:06d}-", dir=self.root))
        try:
            save_flow(tmp, net, meta)
            if learner_state is not None:
                torch.save(learner_state, tmp / LEARNER_STATE)
            _fsync_tree(tmp)
            if final.exists():
                raise FileExistsError(f"{final} exists: unpublished version of a dead or "
                                      "stale learner (cleanup removes it) or a published one")
            os.rename(tmp, final)  # fails too if the directory appeared meanwhile
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    @staticmethod
    def _remove(directory: Path) -> None:
        """Rename aside first so the version name is free at once, then delete."""
        trash = directory.with_name(f".trash-{directory.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(directory, trash)
        except FileNotFoundError:  # someone else removed it first
            return
        shutil.rmtree(trash, ignore_errors=True)

    async def publish(self, version: int, entries: Sequence[Entry] = (),
                      trained: Sequence[str] = (), fence: str | None = None) -> None:
        """Make `version` (already written) current.

        With Redis this also acknowledges `entries` and counts `trained` sample ids, all in
        one script (see the module docstring). Raises CommitConflict when refused.
        """
        path = str(self.path(version))
        if self.redis is not None:
            entry_ids = [e.entry_id for e in entries]
            args = [version, path, fence or "", GROUP, self.keys.announce, self.record_ttl_s,
                    f"{time.time():.3f}", len(entry_ids), *entry_ids, *trained]
            keys = [self.keys.version, self.keys.path, self.keys.lock, self.keys.stream,
                    self.keys.trained, self.keys.version_record(version)]
            code, current, done = await self._publish(keys=keys, args=args)
            if int(code) != 0:
                raise CommitConflict(_REASONS.get(int(code), str(code)), int(current),
                                     [text(d) for d in done])
        else:
            current = self._read_pointer()
            if version != current + 1:
                raise CommitConflict(VERSION_MOVED, current)
            self._write_pointer(version, path)
        await self._notify()

    def _write_pointer(self, version: int, path: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"version": version, "path": path, "published_at": time.time()})
        fd, tmp = tempfile.mkstemp(prefix=f".{POINTER}.", dir=self.root)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(data + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / POINTER)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)

    def cleanup(self, current: int) -> list[Path]:
        """Remove temp dirs, unpublished versions (> current) and all but the newest
        `keep_versions` published ones. Only the learner holding the lock may call this: a
        version above `current` can then only be an orphan, since only it can publish."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        published: list[int] = []
        for d in self.root.iterdir():
            if not d.is_dir():
                continue
            if d.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
                continue
            m = _VERSION_DIR.match(d.name)
            if not m:
                continue
            v = int(m.group(1))
            if v > current:
                self._remove(d)
                removed.append(d)
            else:
                published.append(v)
        for v in sorted(published)[: -self.keep_versions]:
            self._remove(self.path(v))
            removed.append(self.path(v))
        if removed:
            log.info("flow store cleanup removed=%s", [p.name for p in removed])
        return removed

    # ---- following new versions -----------------------------------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        async with self._condition():
            self._generation += 1
            self._condition().notify_all()

    async def watch(self, since: int | None = None) -> AsyncIterator[int]:
        """Yield the pointer's version each time it changes from `since` (default: now).

        Pass the version you loaded as `since`, so a publish between loading and watching is
        not missed. Redis: pub/sub plus a poll every poll_s; embedded: in-process
        notification plus a poll of CURRENT.json. Never ends on its own; cancel the task.
        """
        last = await self.current() if since is None else since
        if self.redis is None:
            async for v in self._watch_local(last):
                yield v
            return

        async def changed() -> int | None:
            nonlocal last
            v = await self.current()  # the pointer is the truth, messages just wake us
            if v == last:
                return None
            last = v
            return v

        def retrying(e: BaseException) -> None:
            log.warning("flow watch: redis error %s; retrying", e)

        versions = watch_channel(self.redis, self.keys.announce, self.poll_s, changed,
                                 (RedisConnectionError, RedisTimeoutError, OSError), retrying)
        async with contextlib.aclosing(versions):
            async for v in versions:
                yield v

    async def _watch_local(self, last: int) -> AsyncIterator[int]:
        cond = self._condition()
        while True:
            seen = self._generation
            v = self._read_pointer()
            if v != last:
                last = v
                yield v
            async with cond:
                if self._generation == seen:  # nothing published since the read above
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(cond.wait(), self.poll_s)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
