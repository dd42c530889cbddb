"""Headless Chromium for the browser tests (Debian's package `chromium`; .ci/run installs it).
Without it those tests skip, and say which package to install."""

from __future__ import annotations

import shutil
import subprocess

import pytest

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: install Debian's package (apt-get install chromium)"
)


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium with `args` (a URL last), without a sandbox, GPU or first-run
    chores; stdout and stderr as text."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
