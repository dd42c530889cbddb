"""Stand-alone learner process (`flowfield learn`, `python -m service.updates.run_learner`).

Reads Settings from FLOWFIELD_* variables. Needs Redis (FLOWFIELD_REDIS_URL): without it
there is no queue shared with the serving process, and the serving process runs its own
embedded learner instead. SIGTERM/SIGINT finish the current step, release the learner lock
and exit 0.

Settings used beyond the model and Redis ones: the learner_* ones (LearnerConfig: consumer
name, lock TTL, batch, ...; learner_test_pause_s is a test hook that sleeps between checkpoint
write and commit) and keep_versions.

Policy: the learner encodes with the policy recorded in Redis by POST /v1/policy (see
service/updates/policy.py) when there is one, else FLOWFIELD_MODEL_PATH; it checks the recorded
policy epoch when a batch starts and reloads, so it trains on the same policy's latents as the
scorers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from urllib.parse import urlsplit, urlunsplit

import torch
from prometheus_client import start_http_server

from flowfield.encoder import LatentEncoder
from service.metrics import POLICY_EPOCH, POLICY_IN_SYNC
from service.settings import Settings
from service.updates.flowstore import FlowStore
from service.updates.learner import Learner, LearnerConfig
from service.updates.policy import PolicyRecord, PolicySync
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
    if settings.learner_metrics_port:
        # the learner's loss, steps and samples trained, for the dashboard
        start_http_server(settings.learner_metrics_port, addr=settings.host)
        log.info("learner metrics on %s:%d/metrics", settings.host, settings.learner_metrics_port)
    asyncio.run(_serve(settings))


def load_recorded_policy(settings: Settings, record: PolicyRecord) -> LatentEncoder:
    """The encoder of a policy recorded by POST /v1/policy, reporting the recorded label."""
    return LatentEncoder(record.path, settings.layer_fractions, device=settings.device,
                         dtype=settings.dtype, name=record.name or None,
                         revision=record.revision or None)


async def _initial_encoder(settings: Settings,
                           policy: PolicySync) -> tuple[LatentEncoder, int]:
    """The recorded policy if there is one (and it loads), else the configured one."""
    record = await policy.current()
    if record is not None:
        try:
            encoder = await asyncio.to_thread(load_recorded_policy, settings, record)
        except Exception as e:
            # the first step retries it and pauses training until it loads
            log.error("learner: cannot load the recorded policy %s (epoch %d) from %s: %s: %s",
                      record.label, record.epoch, record.path, type(e).__name__, e)
        else:
            POLICY_EPOCH.set(record.epoch)
            return encoder, record.epoch
    encoder = await asyncio.to_thread(
        LatentEncoder, settings.model_path, settings.layer_fractions, device=settings.device,
        dtype=settings.dtype, name=settings.model_name, revision=settings.model_revision)
    return encoder, 0


async def _serve(settings: Settings) -> None:
    queue = make_queue(settings)
    store = FlowStore.from_settings(settings)
    assert store.redis is not None
    policy = PolicySync(store.redis, settings.redis_prefix)
    try:
        encoder, epoch = await _initial_encoder(settings, policy)
    except BaseException:
        await queue.close()
        await store.close()
        raise
    POLICY_IN_SYNC.set(1)
    log.info("learner start model=%s revision=%s path=%s layers=%s device=%s policy_epoch=%d",
             encoder.identity.name, encoder.identity.revision, encoder.path,
             list(encoder.layers), settings.device, epoch)
    learner = Learner(
        encoder, store, queue, LearnerConfig.from_settings(settings),
        policy=policy,
        load_policy=lambda record: load_recorded_policy(settings, record),
        policy_epoch=epoch,
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
    log.info("learner stopped flow_version=%d steps=%d", learner.stats.version,
             learner.stats.steps)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("learner got %s; finishing the current step", sig.name)
    stop.set()


if __name__ == "__main__":
    try:
        run_learner()
    except KeyboardInterrupt:  # a second Ctrl-C during start-up
        sys.exit(130)
