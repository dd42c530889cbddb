"""The client package stands alone: it installs into a fresh virtual environment with httpx as
its only dependency (no torch), and importing it or any adapter never imports torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from client_server import CLIENT_SRC

PACKAGE = CLIENT_SRC.parent
HEAVY = ("torch", "transformers", "trl", "verl", "numpy", "datasets", "accelerate", "triton")
IMPORT_ALL = (
    "import sys, flowfield_client, flowfield_client.adapters.trl, "
    "flowfield_client.adapters.openrlhf, flowfield_client.adapters.verl; "
    f"print([m for m in {HEAVY!r} if m in sys.modules])"
)


def test_importing_the_client_and_adapters_pulls_no_torch():
    env = {**os.environ, "PYTHONPATH": str(CLIENT_SRC)}
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.slow
def test_fresh_venv_install_pulls_no_torch(tmp_path: Path):
    # install from a copy: pip's in-tree build would leave build/ in the source tree
    pkg = tmp_path / "flowfield-client"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                  "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    inst = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(pkg)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert inst.returncode == 0, inst.stdout[-3000:] + inst.stderr[-3000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], env=env,
                            capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"flowfield-client", "httpx"} <= names
    pulled = sorted(n for n in names if n in HEAVY or n.startswith("nvidia-"))
    assert not pulled, f"installing the client pulled {pulled}"
    # the installed package (not the source tree) imports, adapters included, without torch
    out = subprocess.run([str(py), "-c", IMPORT_ALL], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
