"""Following a Redis-held value: pub/sub wake-ups plus a poll, shared by `FlowStore.watch` (the
flow pointer) and `PolicySync.watch` (the policy record)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis

T = TypeVar("T")

CLOSE_TIMEOUT_S = 2.0


async def watch_channel(
    client: aioredis.Redis,
    channel: str,
    poll_s: float,
    check: Callable[[], Awaitable[T | None]],
    errors: tuple[type[BaseException], ...],
    on_error: Callable[[BaseException], None],
) -> AsyncIterator[T]:
    """Yield what `check()` returns, unless None: once subscribed to `channel`, then after each
    message on it and at least every `poll_s`. `check` reads the truth; a message only wakes
    the loop, so a missed one only delays the next check. On one of `errors` (from Redis or
    from `check`): `on_error(e)`, wait min(poll_s, 1) s and subscribe again. Never ends on its
    own; cancel the task (or close the generator)."""
    while True:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            while True:
                found = await check()
                if found is not None:
                    yield found
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_s)
        except errors as e:
            on_error(e)
            await asyncio.sleep(min(poll_s, 1.0))
        finally:
            # bounded: on cancellation (shutdown) a close that waits on the cancelled read
            # would keep the task, and ServiceState.stop, waiting forever
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), CLOSE_TIMEOUT_S)
