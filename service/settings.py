"""Service settings: FLOWFIELD_* environment variables, optionally a config file.

One table of these is in the README. A config file (JSON or TOML) named by
FLOWFIELD_CONFIG supplies defaults; environment variables win over it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from flowfield import defaults
from flowfield.demo import ASSETS as DEMO_ASSETS
from flowfield.precision import check_dtype_name
from flowfield.rewards import NORMALIZATIONS


def config_file_source(settings_cls: type[BaseSettings]) -> PydanticBaseSettingsSource | None:
    """pydantic-settings' own JSON or TOML source for the file named by FLOWFIELD_CONFIG
    (by its suffix: .toml is TOML, anything else JSON); None when the variable is unset."""
    path = os.environ.get("FLOWFIELD_CONFIG")
    if not path:
        return None
    p = Path(path)
    if not p.is_file():  # the library's sources skip a missing file silently; a typo should fail
        raise FileNotFoundError(f"FLOWFIELD_CONFIG names {p}, which is not a file")
    if p.suffix == ".toml":
        source: PydanticBaseSettingsSource = TomlConfigSettingsSource(settings_cls, toml_file=p)
        data = source.toml_data
    else:
        source = JsonConfigSettingsSource(settings_cls, json_file=p)
        data = source.json_data
    unknown = sorted(set(data) - set(settings_cls.model_fields))
    if unknown:  # the sources ignore them; a misspelt or upper-case key should not go unnoticed
        raise ValueError(
            f"{p}: unknown settings {unknown}; keys are the setting names in lower case, "
            "without the FLOWFIELD_ prefix (e.g. port, top_k)"
        )
    return source


DTYPE_HELP = (
    "encoder and flow dtype: float32, bfloat16 or auto; unset: bfloat16 on cuda, float32 on "
    "cpu (every replica alike); auto: bf16 on cuda, and on a cpu only if it has native bf16 "
    "instructions and a GEMM of the model's shape measures >= 1.3x faster at start (logged; "
    "timing-based, so replicas on a busy machine may differ)"
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWFIELD_", extra="ignore")

    # model and flow
    model_path: Path = Field(DEMO_ASSETS / "policy", description="HF causal LM directory")
    model_name: str | None = Field(None, description="model id reported in responses")
    model_revision: str | None = Field(None, description="revision reported in responses")
    flow_path: Path = Field(DEMO_ASSETS / "flow", description="initial flow checkpoint")
    layer_fractions: tuple[float, ...] = Field(
        defaults.LAYER_FRACTIONS, description="hooked depth fractions (JSON list)"
    )
    device: str = Field("cpu", description="cpu or cuda")
    dtype: str | None = Field(None, description=DTYPE_HELP)
    threads: int = Field(0, description="torch CPU threads (0 = torch default)")
    noise_seed: int = Field(0, description="seed of the fixed noise bank (deterministic rewards)")

    # scoring defaults: flowfield/defaults.py (why each value: docs/method.md#settings)
    normalization: str = Field(
        defaults.NORMALIZATION,
        description="default normalisation of deviations: expert (z-score of log deviation "
        "against the expert calibration stored with the flow; bilateral where the flow has "
        "no calibration at these timesteps), bilateral (per-sequence min-max to [-1, 1]) or "
        "unilateral (per-sequence min-max to [0, 1], penalty only: the authors' released "
        "scripts' setting)",
    )
    beta: float = Field(defaults.BETA, ge=0, description="default reward scale: r = -beta * s")
    threshold: float = Field(
        defaults.THRESHOLD, ge=0, description="default eta: zero tokens with |s| <= eta"
    )
    top_k: int = Field(defaults.TOP_K, description="default K: keep at most K tokens (0 = all)")
    timesteps: tuple[float, ...] = Field(
        defaults.TIMESTEPS, description="default rewarding timesteps (JSON list)"
    )
    noise_draws: int = Field(
        defaults.NOISE_DRAWS, description="default noise draws per token and timestep"
    )

    # HTTP
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, description="bind port")
    score_api_key: SecretStr | None = Field(None, description="key for read/score endpoints")
    update_api_key: SecretStr | None = Field(
        None,
        description="key for /update and /v1/policy (unset: they take the score key, if any)",
    )
    open_update_endpoints: bool = Field(
        False,
        description="with only a score key set, leave /update and /v1/policy open (logs a "
        "warning) instead of requiring the score key",
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, description="larger bodies get 413")
    body_read_timeout_s: float = Field(
        10.0, gt=0, description="a request body not fully received in this time gets 408"
    )
    max_samples: int = Field(1024, description="samples per request (422 above)")
    max_tokens_per_sample: int = Field(4096, description="prompt + response tokens (422 above)")
    max_request_cost: int = Field(
        1 << 25,
        description="tokens x hooked layers x timesteps x noise draws per /score request "
        "(422 above)",
    )
    max_request_seconds: float = Field(
        60.0,
        ge=0,
        description="model time a /score request may take, estimated from encoder and flow "
        "unit costs measured once at start-up on this hardware (logged as `calibration`); "
        "over it: 422 request_too_costly (0 = no time budget, max_request_cost only)",
    )
    max_graph_steps: int = Field(
        131072,
        ge=1,
        description="states (steps + final states) over all trajectories of a "
        "/v1/score/graph request, the graph's size and cost (422 request_too_costly above); "
        "a request at the limit takes ~3-4 s and ~260 MB on one core",
    )
    header_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a connection must send a request's line and headers within this many "
        "seconds of opening (or of its previous response); otherwise it is closed",
    )
    max_header_bytes: int = Field(
        16384,
        ge=1024,
        description="request line + headers larger than this get 431 and the connection "
        "closed (h11's max incomplete event size)",
    )
    max_header_count: int = Field(
        100, ge=1, description="requests with more header fields get 431"
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="open connections (and requests in flight) the server takes; a request "
        "beyond it gets 503 (uvicorn's limit_concurrency)",
    )
    keep_alive_s: int = Field(
        5, ge=1, description="an idle keep-alive connection is closed after this many seconds"
    )
    max_inflight_body_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="request-body bytes being received at once, over all connections; a body "
        "that would go over it gets 503 busy with Retry-After and the connection closed "
        "(0 = no limit)",
    )

    # scheduler
    batch_max_tokens: int = Field(32768, description="tokens per scoring batch")
    unit_max_cost: int = Field(
        8192,
        description="a request is scored in work units of at most this cost (tokens x hooked "
        "layers x timesteps x noise draws; one sample alone is split along its timesteps x "
        "draws), served round-robin so a large request cannot hold small ones; ~0.1 s on "
        "the demo policy, 1 CPU thread; <= 0: no split",
    )
    batch_wait_ms: float = Field(5.0, description="how long a batch waits for more requests")
    queue_max_samples: int = Field(8192, description="queued samples before 429")
    batch_invariant: bool | None = Field(
        None,
        description="a sample's scores are bit-identical whatever it is batched with; unset: "
        "on for cpu (short samples share fixed-shape bucketed forwards, long ones run alone: "
        "~0.9x the batched throughput on the demo's short sequences, 1.07x on 256-token "
        "responses, BENCHMARKS.md 'Batch invariance over HTTP'), off for cuda (unmeasured; the "
        "encoder batches, and scores then agree within ~1e-6 relative)",
    )
    shutdown_timeout_s: float = Field(
        30.0,
        gt=0,
        description="after SIGTERM, how long requests in flight may finish (uvicorn's "
        "graceful-shutdown timeout); preStop + this + ~5 s must fit the grace period",
    )
    drain_margin_s: float = Field(
        2.0,
        ge=0,
        description="scoring still queued or running this long before shutdown_timeout_s "
        "ends is answered 503 shutting_down",
    )

    # updates and learner
    redis_url: str | None = Field(
        None, description="durable queue + shared version (e.g. redis://host:6379/0)"
    )
    redis_prefix: str = Field("flowfield", description="prefix of every Redis key")
    checkpoint_dir: Path = Field(Path("runs/checkpoints"), description="versioned flows")
    accept_threshold: float = Field(
        defaults.ACCEPT_THRESHOLD, description="/update trains on samples with reward >= this"
    )
    learner: bool = Field(True, description="run the learner inside the serving process")
    latent_memo_mb: float = Field(
        256.0,
        ge=0,
        description="memory for the latents of recently scored samples, which the in-process "
        "learner takes instead of encoding an /update's samples again (0 = off; a "
        "stand-alone learner cannot use it)",
    )
    learner_batch: int = Field(64, description="samples per online refinement step")
    learner_lr: float = Field(
        defaults.ONLINE_LR,
        description="online Adam learning rate (betas "
        f"{', '.join(str(b) for b in defaults.ONLINE_BETAS)})",
    )
    learner_min_lr: float = Field(
        defaults.ONLINE_MIN_LR, description="cosine floor of the online learning rate"
    )
    learner_horizon: int = Field(
        defaults.ONLINE_HORIZON, description="steps of the online cosine schedule"
    )
    learner_block_ms: int = Field(1000, description="learner wait for new samples per read")
    learner_reclaim_idle_ms: int = Field(
        30000, description="reclaim entries a dead learner left after this idle time"
    )
    learner_lock_ttl_ms: int = Field(
        10000, description="a learner that stops renewing its lock loses it after this"
    )
    learner_name: str | None = Field(None, description="learner consumer name (default host-pid)")
    learner_metrics_port: int = Field(
        0, description="`flowfield learn`: serve /metrics on this port (0 = off)"
    )
    learner_test_pause_s: float = Field(
        0.0,
        ge=0,
        description="test hook: the learner sleeps this long between writing a version's "
        "checkpoint and publishing it (the crash window); leave 0",
    )
    keep_versions: int = Field(5, description="published flow versions kept on disk")
    update_id_ttl_s: int = Field(7 * 24 * 3600, description="how long update_ids are remembered")

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str | None) -> str | None:
        return None if v is None else check_dtype_name(v)

    @field_validator("normalization")
    @classmethod
    def _norm(cls, v: str) -> str:
        if v not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init arguments, then FLOWFIELD_* variables, then the FLOWFIELD_CONFIG file."""
        file = config_file_source(settings_cls)
        return (init_settings, env_settings, *([file] if file else []), file_secret_settings)


def setting_default(name: str) -> Any:
    """The default of a Settings field: typed configs built from Settings (LearnerConfig,
    FlowStoreConfig, QueueConfig) take their defaults from here, never a second literal."""
    return Settings.model_fields[name].default


@lru_cache
def get_settings() -> Settings:
    return Settings()
