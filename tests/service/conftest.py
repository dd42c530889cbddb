from __future__ import annotations

import pytest
from live_server import Server


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
