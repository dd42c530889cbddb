"""Service settings: FLOWFIELD_* environment variables, optionally a config file.

One table of these is in the README. A config file (JSON or TOML) named by
FLOWFIELD_CONFIG supplies defaults; environment variables win over it.
"""

from __future__ import annotations

import json
import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEMO_ASSETS = Path(__file__).resolve().parent.parent / "flowfield" / "demo" / "assets"


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the file named by FLOWFIELD_CONFIG (.json or .toml), below env vars."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("FLOWFIELD_CONFIG")
        if not path:
            return {}
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        return {k.lower(): v for k, v in data.items()}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWFIELD_", extra="ignore")

    # model and flow
    model_path: Path = Field(DEMO_ASSETS / "policy", description="HF causal LM directory")
    model_name: str | None = Field(None, description="model id reported in responses")
    model_revision: str | None = Field(None, description="revision reported in responses")
    flow_path: Path = Field(DEMO_ASSETS / "flow", description="initial flow checkpoint")
    layer_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    device: str = "cpu"
    threads: int = Field(0, description="torch CPU threads (0 = torch default)")
    noise_seed: int = 0

    # scoring defaults (RLFR.md numbers)
    normalization: str = "bilateral"
    beta: float = 0.01
    threshold: float = 0.6
    top_k: int = 15
    timesteps: tuple[float, ...] = (0.8,)
    noise_draws: int = 1

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    score_api_key: SecretStr | None = Field(None, description="key for read/score endpoints")
    update_api_key: SecretStr | None = Field(None, description="key for /update and /v1/policy")
    max_body_bytes: int = 8 * 1024 * 1024
    max_samples: int = 1024
    max_tokens_per_sample: int = 4096

    # scheduler
    batch_max_tokens: int = 32768
    batch_wait_ms: float = 5.0
    queue_max_samples: int = 8192

    # updates and learner
    redis_url: str | None = None
    redis_prefix: str = "flowfield"
    checkpoint_dir: Path = Field(Path("runs/checkpoints"), description="versioned flows")
    accept_threshold: float = 1.0
    learner: bool = Field(True, description="run the learner inside the serving process")
    learner_batch: int = 64
    learner_lr: float = 1e-4
    learner_min_lr: float = 1e-5
    learner_horizon: int = 1000
    learner_block_ms: int = 1000
    learner_reclaim_idle_ms: int = 30000
    update_id_ttl_s: int = 7 * 24 * 3600

    log_level: str = "INFO"

    @field_validator("normalization")
    @classmethod
    def _norm(cls, v: str) -> str:
        if v not in ("bilateral", "unilateral"):
            raise ValueError("normalization must be bilateral or unilateral")
        return v

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings, env_settings, _ConfigFileSource(settings_cls), file_secret_settings)


@lru_cache
def get_settings() -> Settings:
    return Settings()
