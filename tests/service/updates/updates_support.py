"""Helpers shared by the tests/service/updates tests: tiny model + flow, settings, Redis prefixes
(the fixtures built from them are in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from helpers import save_tiny_model  # tests/helpers.py; tests/ is on sys.path
from redis_support import REDIS_URL

from flowfield.checkpoint import save_flow
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder
from service.settings import Settings
from service.updates.flowstore import FlowStore
from service.updates.learner import LearnerConfig
from service.updates.queue import UpdateQueue, make_queue
from service.updates.types import UpdateSample

FRACTIONS = (0.25, 0.5, 0.75)
HIDDEN = 32
VOCAB = 64


def new_prefix() -> str:
    return f"flowfield-test-{uuid.uuid4().hex[:12]}"


def delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass
class TinyAssets:
    model_dir: Path
    flow_dir: Path


def make_tiny_assets(root: Path) -> TinyAssets:
    """A 4-layer llama (hidden 32) and an untrained 2-block flow that fits it."""
    model_dir = save_tiny_model(root / "model", "llama", layers=4, hidden=HIDDEN)
    encoder = LatentEncoder(model_dir, FRACTIONS)
    config = flow_for_encoder(HIDDEN, FRACTIONS, depth=2)
    meta = FlowMetadata(config=config, encoder=asdict(encoder.identity))
    flow_dir = save_flow(root / "flow0", FlowNet(config), meta)
    return TinyAssets(model_dir, flow_dir)


def make_settings(assets: TinyAssets, checkpoint_dir: Path, redis_url: str | None = None,
                  prefix: str = "flowfield", **overrides) -> Settings:
    values = dict(
        model_path=assets.model_dir, flow_path=assets.flow_dir, checkpoint_dir=checkpoint_dir,
        layer_fractions=FRACTIONS, redis_url=redis_url, redis_prefix=prefix,
        learner_batch=8, learner_block_ms=200, learner_reclaim_idle_ms=500,
    )
    values.update(overrides)
    return Settings(**values)


def learner_config(settings: Settings, name: str, **overrides) -> LearnerConfig:
    """The learner's config from `settings`, with this consumer name (and overrides)."""
    return LearnerConfig.from_settings(settings, name=name, **overrides)


@contextlib.asynccontextmanager
async def queue_and_store(settings: Settings) -> AsyncIterator[tuple[UpdateQueue, FlowStore]]:
    """The update queue and flow store of `settings` (built inside the running event loop,
    which their Redis clients bind to), both closed on exit."""
    queue = make_queue(settings)
    store = FlowStore.from_settings(settings)
    try:
        yield queue, store
    finally:
        await queue.close()
        await store.close()


def make_samples(n: int, start: int = 0, tag: str = "s") -> list[UpdateSample]:
    """Distinct, deterministic samples with in-vocabulary token ids."""
    out = []
    for i in range(start, start + n):
        prompt = [2 + (i * 7 + k) % (VOCAB - 2) for k in range(3 + i % 4)]
        response = [2 + (i * 13 + 5 * k) % (VOCAB - 2) for k in range(2 + i % 5)]
        out.append(UpdateSample(f"{tag}-{i}", prompt, response, reward=1.0,
                                weight=1.0 if i % 3 else 0.5))
    return out


def learner_env(settings: Settings, **extra: str) -> dict[str, str]:
    """FLOWFIELD_* environment for `python -m service.updates.run_learner`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWFIELD_")}
    env.update({
        "FLOWFIELD_MODEL_PATH": str(settings.model_path),
        "FLOWFIELD_FLOW_PATH": str(settings.flow_path),
        "FLOWFIELD_CHECKPOINT_DIR": str(settings.checkpoint_dir),
        "FLOWFIELD_REDIS_URL": str(settings.redis_url),
        "FLOWFIELD_REDIS_PREFIX": settings.redis_prefix,
        "FLOWFIELD_LEARNER_BATCH": str(settings.learner_batch),
        "FLOWFIELD_LEARNER_BLOCK_MS": str(settings.learner_block_ms),
        "FLOWFIELD_LEARNER_RECLAIM_IDLE_MS": str(settings.learner_reclaim_idle_ms),
        "FLOWFIELD_THREADS": "1",
        "FLOWFIELD_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env
