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


def test_scoring_defaults_are_the_library_table(monkeypatch):
    """One table of defaults (flowfield/defaults.py): the settings, the library's options and
    the request schema's descriptions all come from it."""
    from flowfield import defaults
    from flowfield.rewards import RewardOptions
    from flowfield.scorer import ScoreOptions
    from service.schemas import ScoreOptionsIn

    for k in list(__import__("os").environ):
        if k.startswith("FLOWFIELD_"):
            monkeypatch.delenv(k)
    s = Settings()
    assert s.normalization == defaults.NORMALIZATION == "expert"
    assert (s.beta, s.threshold, s.top_k) == (defaults.BETA, defaults.THRESHOLD, defaults.TOP_K)
    assert (s.timesteps, s.noise_draws) == (defaults.TIMESTEPS, defaults.NOISE_DRAWS)
    assert s.layer_fractions == defaults.LAYER_FRACTIONS
    assert s.accept_threshold == defaults.ACCEPT_THRESHOLD
    assert (s.learner_lr, s.learner_min_lr, s.learner_horizon) == (
        defaults.ONLINE_LR, defaults.ONLINE_MIN_LR, defaults.ONLINE_HORIZON)  # fmt: skip
    lib = ScoreOptions()
    assert lib.reward == RewardOptions() and lib.reward.normalization is None  # the default
    assert (lib.timesteps, lib.noise_draws) == (s.timesteps, s.noise_draws)
    props = ScoreOptionsIn.model_json_schema()["properties"]
    # each normalisation is named by what it does, the default by its setting
    assert "per-sequence min-max to [-1, 1]" in props["normalization"]["description"]
    assert "authors' released scripts" in props["normalization"]["description"]
    assert "FLOWFIELD_NORMALIZATION (expert as shipped)" in props["normalization"]["description"]
    assert "0.01 as shipped" in props["beta"]["description"]


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
