"""Settings: defaults, a config file below environment variables, validation."""

import json

import pytest
from pydantic import ValidationError

from service.settings import DEMO_ASSETS, Settings


def test_defaults_are_the_embedded_demo(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("FLOWFIELD_"):
            monkeypatch.delenv(k)
    s = Settings()
    assert s.model_path == DEMO_ASSETS / "policy" and s.flow_path == DEMO_ASSETS / "flow"
    assert s.redis_url is None and s.host == "127.0.0.1"
    assert (s.beta, s.threshold, s.top_k, s.timesteps) == (0.01, 0.6, 15, (0.8,))


def test_config_file_then_environment(tmp_path, monkeypatch):
    cfg = tmp_path / "flowfield.json"
    cfg.write_text(json.dumps({"port": 9001, "top_k": 7, "timesteps": [0.5, 0.9]}))
    monkeypatch.setenv("FLOWFIELD_CONFIG", str(cfg))
    monkeypatch.setenv("FLOWFIELD_TOP_K", "3")
    s = Settings()
    assert s.port == 9001 and s.timesteps == (0.5, 0.9)
    assert s.top_k == 3  # the environment wins over the file
    toml = tmp_path / "flowfield.toml"
    toml.write_text('normalization = "unilateral"\nbatch_wait_ms = 2.5\n')
    monkeypatch.setenv("FLOWFIELD_CONFIG", str(toml))
    s = Settings()
    assert s.normalization == "unilateral" and s.batch_wait_ms == 2.5


def test_invalid_settings_are_refused(monkeypatch):
    monkeypatch.setenv("FLOWFIELD_NORMALIZATION", "sideways")
    with pytest.raises(ValidationError, match="bilateral, unilateral, expert"):
        Settings()
