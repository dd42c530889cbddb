"""Fixtures shared by the tests/service/updates tests (the builders are in updates_support.py)."""

from __future__ import annotations

import pytest
from redis_support import REDIS_URL, redis_available
from updates_support import TinyAssets, delete_prefix, make_settings, make_tiny_assets, new_prefix


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


@pytest.fixture
def redis_settings(assets, tmp_path, prefix):
    """Builds the test's Redis settings: the tiny assets, this test's key prefix, checkpoints
    in tmp_path/ckpt; keyword arguments override settings."""

    def make(**overrides):
        return make_settings(assets, tmp_path / "ckpt", REDIS_URL, prefix, **overrides)

    return make
