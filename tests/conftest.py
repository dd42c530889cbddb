"""Shared fixtures (builders live in helpers.py, which tests import by name)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import save_tiny_model


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {a: save_tiny_model(root / a, a) for a in ("gpt2", "llama", "qwen2")}


@pytest.fixture(scope="session")
def llama_dir(model_dirs) -> Path:
    return model_dirs["llama"]
