"""FLOWFIELD_CONFIG, the settings file a deployment mounts (a ConfigMap, a compose volume):
read by pydantic-settings' own JSON and TOML sources, below the FLOWFIELD_* variables, and
loud about what it would otherwise ignore."""

from __future__ import annotations

import json
import os

import pytest

from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("FLOWFIELD_"):
            monkeypatch.delenv(k)


def test_json_and_toml_files_below_the_environment(tmp_path, monkeypatch):
    js = tmp_path / "flowfield.json"
    js.write_text(json.dumps({"port": 9001, "timesteps": [0.5, 0.9], "redis_url": "redis://r:1/0",
                              "score_api_key": "k"}))
    monkeypatch.setenv("FLOWFIELD_CONFIG", str(js))
    monkeypatch.setenv("FLOWFIELD_PORT", "9002")
    s = Settings()
    assert s.port == 9002 and s.timesteps == (0.5, 0.9) and s.redis_url == "redis://r:1/0"
    assert s.score_api_key.get_secret_value() == "k"
    toml = tmp_path / "flowfield.toml"
    toml.write_text('learner = false\nbatch_wait_ms = 2.5\nlayer_fractions = [0.5]\n')
    monkeypatch.setenv("FLOWFIELD_CONFIG", str(toml))
    s = Settings()
    assert s.learner is False and s.batch_wait_ms == 2.5 and s.layer_fractions == (0.5,)
    assert Settings(port=1).port == 1  # init arguments (the CLI's flags) win over both


def test_unknown_keys_and_missing_files_fail(tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"PORT": 9001, "top_k": 3}))
    monkeypatch.setenv("FLOWFIELD_CONFIG", str(bad))
    with pytest.raises(ValueError, match=r"unknown settings \['PORT'\].*lower case"):
        Settings()
    monkeypatch.setenv("FLOWFIELD_CONFIG", str(tmp_path / "typo.toml"))
    with pytest.raises(FileNotFoundError, match="typo.toml"):
        Settings()
