"""The Redis of the tests that need one, shared by tests/service and tests/service/updates
(tests/ is on sys.path: import it by name): its URL and the mark that skips those tests
without it."""

from __future__ import annotations

import os

import pytest
import redis

REDIS_URL = os.environ.get("FLOWFIELD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


needs_redis = pytest.mark.skipif(
    not redis_available(),
    reason=f"no Redis at {REDIS_URL}: install Debian's redis-server and start it "
    "(redis-server --daemonize yes --port 6379 --save '' --appendonly no)",
)
