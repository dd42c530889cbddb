"""The Docker smoke test as a test: runs scripts/docker-smoke.sh (image built on a locally made
base, containers run non-root on the host network: readiness, /v1/score, /v1/update through a
learner and Redis container, a SIGTERM drain, then the compose stack). Behind the `docker`
marker (tests/deploy/conftest.py): `python -m pytest tests/deploy -m docker`. Its last result
is recorded in docs/deploy.md."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from deploy_support import REPO

pytestmark = pytest.mark.docker


def test_docker_smoke(tmp_path):
    if os.geteuid() != 0 and shutil.which("docker") is None:
        pytest.skip("needs root (to install and start a Docker engine) or a running one")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "docker-smoke.sh")],
        cwd=REPO, capture_output=True, text=True, timeout=3600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "docker smoke: PASS" in out
