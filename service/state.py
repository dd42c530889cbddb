"""ServiceState: everything the routes share, built once at start-up (FastAPI lifespan).

The model side (encoder + flow = one FlowScorer) sits in a ModelRuntime whose scorer is
replaced atomically when a new flow version is published or the policy is reloaded; the
scheduler reads it once per batch, so a batch never mixes versions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path

import torch
from fastapi import Request
from transformers import AutoTokenizer

from flowfield.checkpoint import check_compatible
from flowfield.encoder import TOKENIZER_FILES, LatentEncoder
from flowfield.objective import NoiseBank
from flowfield.scorer import FlowScorer
from service import metrics
from service.scheduler import ModelRuntime, ScoreScheduler
from service.settings import Settings
from service.updates.flowstore import FlowStore
from service.updates.learner import Learner
from service.updates.queue import UpdateQueue, make_queue

log = logging.getLogger("flowfield.service")


class ServiceState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.runtime: ModelRuntime | None = None
        self.scheduler: ScoreScheduler | None = None
        self.queue: UpdateQueue | None = None
        self.store: FlowStore | None = None
        self.learner: Learner | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._noise: NoiseBank | None = None
        self._swap_lock = asyncio.Lock()
        self.ready = False

    # ---- start-up / shutdown ---------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        encoder = await asyncio.to_thread(
            self._load_encoder, s.model_path, s.model_name, s.model_revision
        )
        self._noise = NoiseBank(encoder.hidden_size, seed=s.noise_seed)
        self.store = FlowStore.from_settings(s)
        self.queue = make_queue(s)
        version = await self.store.current()
        net, meta = await asyncio.to_thread(self.store.load, version, encoder.identity)
        self.runtime = ModelRuntime(FlowScorer(encoder, net, meta, noise=self._noise))
        self._set_info_metrics()
        self.scheduler = ScoreScheduler(
            self.runtime, s.batch_max_tokens, s.batch_wait_ms, s.queue_max_samples
        )
        self.scheduler.start()
        self._tasks.append(asyncio.create_task(self._watch_versions(), name="flow-watch"))
        if s.learner:
            # training steps run on the model thread, between scoring batches: one device,
            # one queue of work, no oversubscribed CPU cores
            self.learner = Learner(encoder, self.store, self.queue, s, s.learner_name,
                                   lock_ttl_ms=s.learner_lock_ttl_ms,
                                   executor=self.scheduler.executor)
            self._tasks.append(asyncio.create_task(self.learner.run(self._stop), name="learner"))
        self.ready = True
        log.info(
            "flowfield ready",
            extra={
                "model": str(s.model_path),
                "encoder": encoder.identity.label(),
                "model_type": encoder.identity.model_type,
                "hidden_size": encoder.hidden_size,
                "layers": encoder.layers,
                "layer_fractions": list(encoder.layer_fractions),
                "layer_mapping": encoder.describe_layers(),
                "flow_version": version,
                "flow_standardized": meta.config.standardize,
                "flow_calibrated": meta.calibration is not None,
                "normalization": s.normalization,
                "flow_path": str(self.store.path(version)),
                "context": meta.config.context,
                "queue_backend": self.queue_backend,
                "learner": "in-process" if s.learner else "external",
                "device": s.device,
                "threads": torch.get_num_threads(),
                "bind": f"{s.host}:{s.port}",
            },
        )
        if s.normalization == "expert" and meta.calibration is None:
            log.warning(
                "the flow has no calibration (fitted by an older flowfield, or saved by hand): "
                "requests without a normalization get bilateral, and normalization=expert is "
                "refused; refit with `flowfield fit` to calibrate it"
            )
        if self.queue_backend == "memory":
            log.info(
                "embedded mode: accepted update samples are held in memory until trained; "
                "set FLOWFIELD_REDIS_URL for a durable queue"
            )
        if s.host not in ("127.0.0.1", "localhost", "::1") and not (
            s.score_api_key or s.update_api_key
        ):
            log.warning(
                "bound to a non-loopback address without API keys: anyone who can "
                "reach %s:%d can score and update",
                s.host,
                s.port,
            )

    async def stop(self) -> None:
        """Drain: finish queued scoring, let the learner finish its step, close connections."""
        self.ready = False
        self._stop.set()
        if self.scheduler:
            await self.scheduler.stop()
        for t in self._tasks:
            if t.get_name() == "flow-watch":
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for closable in (self.queue, self.store):
            if closable is not None:
                try:
                    await closable.close()
                except Exception:  # pragma: no cover - best effort on shutdown
                    log.warning("error while closing %s", type(closable).__name__)
        log.info("flowfield stopped")

    # ---- model side --------------------------------------------------------------------------

    def _load_encoder(self, path: Path, name: str | None, revision: str | None) -> LatentEncoder:
        s = self.settings
        return LatentEncoder(
            path,
            s.layer_fractions,
            device=s.device,
            name=name,
            revision=revision,
            max_batch_tokens=s.batch_max_tokens,
        )

    @property
    def scorer(self) -> FlowScorer:
        assert self.runtime is not None
        return self.runtime.scorer

    @property
    def queue_backend(self) -> str:
        return "redis" if self.settings.redis_url else "memory"

    def _set_info_metrics(self) -> None:
        sc = self.scorer
        ident = sc.encoder.identity
        metrics.FLOW_VERSION.set(sc.version)
        metrics.ENCODER_INFO.info(
            {
                "name": ident.name,
                "revision": ident.revision,
                "model_type": ident.model_type,
                "layers": ",".join(map(str, ident.layers)),
                "flow_version": str(sc.version),
                "process": socket.gethostname() + f":{os.getpid()}",
            }
        )

    async def swap_flow(self, version: int) -> None:
        """Load a published flow version and make it the one new batches use."""
        async with self._swap_lock:
            current = self.scorer
            if version == current.version:
                return
            net, meta = await asyncio.to_thread(self.store.load, version, current.encoder.identity)
            self.runtime.scorer = FlowScorer(current.encoder, net, meta, noise=self._noise)
            self._set_info_metrics()
            log.info(
                "flow swapped",
                extra={"flow_version": version, "samples_trained": meta.samples_trained},
            )

    async def _watch_versions(self) -> None:
        while not self._stop.is_set():
            try:
                async for version in self.store.watch(self.scorer.version):
                    if version > self.scorer.version:
                        await self.swap_flow(version)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("flow watcher failed; retrying in 1s")
                await asyncio.sleep(1.0)

    async def reload_policy(self, path: Path, revision: str | None, name: str | None) -> None:
        """Load a new policy checkpoint as the encoder; the flow must still fit it.

        Raises PolicyLoadError (a ValueError) when the checkpoint does not load, e.g. corrupt
        weights or tokenizer files that do not parse; the current policy stays in service.
        """
        async with self._swap_lock:
            current = self.scorer
            try:
                encoder = await asyncio.to_thread(self._load_encoder, path, name, revision)
            except Exception as e:  # safetensors, tokenizers and torch raise their own types
                raise PolicyLoadError(_short(f"{type(e).__name__}: {e}")) from e
            if not encoder.has_tokenizer and any((path / f).is_file() for f in TOKENIZER_FILES):
                # the encoder falls back to ids-only; a reload must not silently lose text input
                why = await asyncio.to_thread(_tokenizer_error, path)
                raise PolicyLoadError(_short(f"its tokenizer files do not load ({why})"))
            check_compatible(current.meta, encoder.identity, encoder.layer_fractions)
            self.runtime.scorer = FlowScorer(encoder, current.flow, current.meta, noise=self._noise)
            if self.learner is not None:
                self.learner.encoder = encoder
            self._set_info_metrics()
            log.info(
                "policy reloaded", extra={"encoder": encoder.identity.label(), "path": str(path)}
            )


class PolicyLoadError(ValueError):
    """A policy checkpoint that cannot be loaded (POST /v1/policy answers 422)."""


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tokenizer_error(path: Path) -> str:
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return f"the tokenizer is empty ({len(tok)} tokens)"


def get_state(request: Request) -> ServiceState:
    return request.app.state.flowfield


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings
