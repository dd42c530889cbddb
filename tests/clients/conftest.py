"""Fixtures of the client tests: one real flowfield service for the session (demo policy,
in-process learner refining after every 4 accepted samples), and flaky proxies."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from client_server import CLIENT_SRC, DEMO_POLICY, FlakyProxy, FlowfieldServer

if importlib.util.find_spec("flowfield_client") is None:  # not pip-installed: use the source
    sys.path.insert(0, str(CLIENT_SRC))


@pytest.fixture(scope="session")
def ff_server(tmp_path_factory):
    srv = FlowfieldServer(
        tmp_path_factory.mktemp("ff"),
        env={"FLOWFIELD_LEARNER_BATCH": "4", "FLOWFIELD_ACCEPT_THRESHOLD": "1.0"},
    )
    yield srv
    srv.stop()


@pytest.fixture
def proxy_factory(ff_server):
    made: list[FlakyProxy] = []

    def make(script=(), paths=None, upstream: str | None = None) -> FlakyProxy:
        p = FlakyProxy(upstream or ff_server.url, script, paths)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture(scope="session")
def tok():
    """The demo policy's tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_POLICY)
