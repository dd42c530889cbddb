"""Fixtures shared by the tests/updates tests (the builders are in updates_support.py)."""

from __future__ import annotations

import pytest
from updates_support import TinyAssets, delete_prefix, make_tiny_assets, new_prefix, redis_available


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> TinyAssets:
    """The tiny model and its untrained flow, built once per test module."""
    return make_tiny_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture
def prefix():
    """A fresh Redis key prefix; its keys are deleted after the test."""
    p = new_prefix()
    yield p
    if redis_available():
        delete_prefix(p)
