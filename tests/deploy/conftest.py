"""The `docker` marker: tests that build and run the project's image (scripts/docker-smoke.sh).
They need root, a Docker engine (or Debian's docker.io to install) and 10-20 minutes, so they
are deselected unless asked for: `python -m pytest tests/deploy -m docker`."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: builds and runs the Docker image (deselected unless -m docker)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "docker" in (config.getoption("-m") or ""):
        return
    kept = [i for i in items if i.get_closest_marker("docker") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
