"""Stand-alone learner process (`flowfield learn`, `python -m service.updates.run_learner`).

Reads Settings from FLOWFIELD_* variables. Needs Redis (FLOWFIELD_REDIS_URL): without it
there is no queue shared with the serving process, and the serving process runs its own
embedded learner instead. SIGTERM/SIGINT finish the current step, release the learner lock
and exit 0.

Settings used beyond the model and Redis ones: learner_name (consumer name),
learner_lock_ttl_ms, learner_batch, keep_versions. One extra environment variable:
  FLOWFIELD_LEARNER_TEST_PAUSE_S  test hook: sleep between checkpoint write and commit
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from urllib.parse import urlsplit, urlunsplit

import torch
from prometheus_client import start_http_server

from flowfield.encoder import LatentEncoder
from service.settings import Settings
from service.updates.flowstore import FlowStore
from service.updates.learner import Learner, default_consumer_name
from service.updates.queue import make_queue

log = logging.getLogger("flowfield.learner")


def redact_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def run_learner(settings: Settings | None = None) -> None:
    """Load the encoder, then train from the Redis queue until SIGTERM/SIGINT."""
    settings = settings or Settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not settings.redis_url:
        raise SystemExit(
            "flowfield learn needs FLOWFIELD_REDIS_URL: the stand-alone learner reads the "
            "shared update stream; without Redis the serving process trains in-process"
        )
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    encoder = LatentEncoder(settings.model_path, settings.layer_fractions, device=settings.device,
                            name=settings.model_name, revision=settings.model_revision)
    log.info("learner start model=%s revision=%s path=%s layers=%s device=%s",
             encoder.identity.name, encoder.identity.revision, settings.model_path,
             list(encoder.layers), settings.device)
    if settings.learner_metrics_port:
        # the learner's loss, steps and samples trained, for the dashboard
        start_http_server(settings.learner_metrics_port, addr=settings.host)
        log.info("learner metrics on %s:%d/metrics", settings.host, settings.learner_metrics_port)
    asyncio.run(_serve(settings, encoder))


async def _serve(settings: Settings, encoder: LatentEncoder) -> None:
    queue = make_queue(settings)
    store = FlowStore.from_settings(settings)
    learner = Learner(
        encoder, store, queue, settings,
        settings.learner_name or default_consumer_name(),
        lock_ttl_ms=settings.learner_lock_ttl_ms,
        pause_before_commit_s=float(os.environ.get("FLOWFIELD_LEARNER_TEST_PAUSE_S", "0")),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    try:
        log.info("learner start flow_version=%d checkpoint_dir=%s queue=%s redis=%s "
                 "prefix=%s batch=%d consumer=%s", await store.current(), settings.checkpoint_dir,
                 queue.backend, redact_url(settings.redis_url or ""), settings.redis_prefix,
                 learner.batch_size, learner.consumer)
        await learner.run(stop)
    finally:
        await queue.close()
        await store.close()
    log.info("learner stopped flow_version=%d steps=%d", learner.stats["version"],
             learner.stats["steps"])


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("learner got %s; finishing the current step", sig.name)
    stop.set()


if __name__ == "__main__":
    try:
        run_learner()
    except KeyboardInterrupt:  # a second Ctrl-C during start-up
        sys.exit(130)
