from __future__ import annotations

import uuid

import pytest
from live_server import Server
from redis_support import REDIS_URL


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The service on its embedded defaults: demo policy and flow, in-process queue."""
    srv = Server(tmp_path_factory.mktemp("srv"), env={"FLOWFIELD_LEARNER_BATCH": "4"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture
def prefix():
    """A fresh Redis key prefix for one test; its keys are deleted afterwards."""
    import redis

    p = f"flowfield-test-{uuid.uuid4().hex[:10]}"
    yield p
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(f"{p}:*"))
    if keys:
        r.delete(*keys)
    r.close()
