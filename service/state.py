"""ServiceState: everything the routes share, built once at start-up (FastAPI lifespan).

The model side (encoder + flow = one FlowScorer) sits in a ModelRuntime whose scorer is
replaced atomically when a new flow version is published or the policy is reloaded; the
scheduler reads it once per batch, so a batch never mixes versions.

Policy sync (Redis backend, service/updates/policy.py): POST /v1/policy loads the policy here,
records it in Redis (a new policy epoch) and only then swaps it in; every other replica follows
the record (pub/sub + poll) and reloads the same checkpoint, and a replica starting later loads
the recorded policy instead of FLOWFIELD_MODEL_PATH. A replica that cannot load the recorded
policy keeps its encoder but reports not ready (/readyz) and retries. In-process backend: the
policy is this process's alone, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from pathlib import Path

import torch
from fastapi import Request
from transformers import AutoTokenizer

from flowfield.checkpoint import check_compatible, read_metadata
from flowfield.encoder import TOKENIZER_FILES, LatentEncoder
from flowfield.objective import NoiseBank
from flowfield.scorer import FlowScorer
from service import metrics
from service.budget import CostModel, calibrate
from service.scheduler import ModelRuntime, ScoreScheduler
from service.settings import Settings
from service.updates.flowstore import FlowStore
from service.updates.learner import Learner, LearnerConfig
from service.updates.policy import PolicyRecord, PolicySync
from service.updates.queue import QueueUnavailable, UpdateQueue, make_queue

log = logging.getLogger("flowfield.service")


class ServiceState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
        # policy sync (Redis only): the recorded epoch this process encodes with (0 = the
        # configured policy), and why the recorded current policy did not load here (if so)
        self.policy_sync: PolicySync | None = None
        self.policy_epoch = 0
        self.policy_error: str | None = None
        # the scoring time budget's unit costs, measured at start-up (service/budget.py)
        self.cost_model: CostModel | None = None

    # ---- start-up / shutdown ---------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        self.store = FlowStore.from_settings(s)
        self.queue = make_queue(s)
        if self.store.redis is not None:
            self.policy_sync = PolicySync(self.store.redis, s.redis_prefix)
        encoder = await self._initial_encoder()
        self._noise = NoiseBank(encoder.hidden_size, seed=s.noise_seed)
        version = await self.store.current()
        net, meta = await asyncio.to_thread(self.store.load, version, encoder.identity)
        self.runtime = ModelRuntime(FlowScorer(encoder, net, meta, noise=self._noise))
        self._set_info_metrics()
        self.scheduler = ScoreScheduler(
            self.runtime,
            s.batch_max_tokens,
            s.batch_wait_ms,
            s.queue_max_samples,
            batch_invariant=(
                s.batch_invariant if s.batch_invariant is not None else encoder.device.type == "cpu"
            ),
            unit_max_cost=s.unit_max_cost,
        )
        if s.max_request_seconds > 0:
            self.cost_model = await asyncio.get_running_loop().run_in_executor(
                self.scheduler.executor, calibrate, self.runtime.scorer,
                self.scheduler.batch_invariant,
            )
        self.scheduler.start()
        self._tasks.append(asyncio.create_task(self._watch_versions(), name="flow-watch"))
        if self.policy_sync is not None:
            self._tasks.append(asyncio.create_task(self._watch_policy(), name="policy-watch"))
        if s.learner:
            # training steps run on the model thread, between scoring batches: one device,
            # one queue of work, no oversubscribed CPU cores
            self.learner = Learner(encoder, self.store, self.queue,
                                   LearnerConfig.from_settings(s),
                                   executor=self.scheduler.executor,
                                   policy_epoch=self.policy_epoch)
            self._tasks.append(asyncio.create_task(self.learner.run(self._stop), name="learner"))
        freeze_heap()
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
                "policy_epoch": self.policy_epoch,
                "flow_standardized": meta.config.standardize,
                "flow_calibrated": meta.calibration is not None,
                "normalization": s.normalization,
                "flow_path": str(self.store.path(version)),
                "context": meta.config.context,
                "queue_backend": self.queue_backend,
                "learner": "in-process" if s.learner else "external",
                "device": s.device,
                "dtype": encoder.precision.name,
                "dtype_reason": encoder.precision.reason,
                "threads": torch.get_num_threads(),
                "bind": f"{s.host}:{s.port}",
                "calibration": self.cost_model.as_dict() if self.cost_model else None,
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
        elif s.host not in ("127.0.0.1", "localhost", "::1") and not s.score_api_key:
            # only the update key: the score scope (score, graph, flow, get_reward, ui) is open
            log.warning(
                "bound to a non-loopback address with only FLOWFIELD_UPDATE_API_KEY set: "
                "anyone who can reach %s:%d can score (set FLOWFIELD_SCORE_API_KEY to "
                "protect the score endpoints)",
                s.host,
                s.port,
            )

    async def stop(self) -> None:
        """Drain: finish queued scoring, let the learner finish its step, close connections."""
        self.ready = False
        self._stop.set()
        if self.scheduler:
            await self.scheduler.stop()
        watchers = [t for t in self._tasks if t.get_name() in ("flow-watch", "policy-watch")]
        for t in watchers:
            t.cancel()
        # the learner finishes its step; a watcher gets a few seconds to end (it holds no
        # work), so a stuck Redis call cannot hold the shutdown
        others = [t for t in self._tasks if t not in watchers]
        await asyncio.gather(*others, return_exceptions=True)
        if watchers:
            _, stuck = await asyncio.wait(watchers, timeout=5.0)
            for t in stuck:
                log.warning("%s did not stop within 5 s; left behind", t.get_name())
        for closable in (self.queue, self.store):
            if closable is not None:
                try:
                    await closable.close()
                except Exception:  # pragma: no cover - best effort on shutdown
                    log.warning("error while closing %s", type(closable).__name__)
        log.info("flowfield stopped")

    # ---- model side --------------------------------------------------------------------------

    async def _initial_encoder(self) -> LatentEncoder:
        """The policy recorded in Redis when there is one, else the configured one.

        A recorded policy that does not load here leaves the process on the configured policy
        and not ready (policy_error); the policy watcher keeps retrying it."""
        s = self.settings
        record = await self.policy_sync.current() if self.policy_sync is not None else None
        if record is not None:
            try:
                encoder = await asyncio.to_thread(self._load_checked, record.path,
                                                  record.revision or None, record.name or None)
                # a recorded policy the current flow does not fit: not ready, not a crash loop
                flow_meta = await asyncio.to_thread(
                    read_metadata, self.store.path(await self.store.current())
                )
                check_compatible(flow_meta, encoder.identity, encoder.layer_fractions)
            except Exception as e:
                self._policy_failed(record, e)
            else:
                self._policy_adopted(record)
                log.info("adopting the recorded policy",
                         extra={"encoder": record.label, "policy_epoch": record.epoch,
                                "path": record.path})
                return encoder
        return await asyncio.to_thread(
            self._load_encoder, s.model_path, s.model_name, s.model_revision
        )

    def _load_encoder(self, path: Path, name: str | None, revision: str | None) -> LatentEncoder:
        s = self.settings
        return LatentEncoder(
            path,
            s.layer_fractions,
            device=s.device,
            dtype=s.dtype,
            name=name,
            revision=revision,
            max_batch_tokens=s.batch_max_tokens,
            # only an in-process learner can read what scoring remembers
            memo_bytes=int(s.latent_memo_mb * 2**20) if s.learner else 0,
        )

    @property
    def scorer(self) -> FlowScorer:
        assert self.runtime is not None
        return self.runtime.scorer

    @property
    def queue_backend(self) -> str:
        return "redis" if self.settings.redis_url else "memory"

    @property
    def policy_in_sync(self) -> bool:
        """False while the recorded current policy could not be loaded here (/readyz)."""
        return self.policy_error is None

    async def refresh_pending(self) -> int | None:
        """Read the real queue depth into flowfield_pending_samples (None if unreachable):
        with Redis, learners in other processes consume the queue, so the value this process
        last saw on /update goes stale."""
        if self.queue is None:
            return None
        try:
            n = await self.queue.pending()
        except (QueueUnavailable, OSError):
            return None
        metrics.PENDING_SAMPLES.set(n)
        return n

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
                "policy_epoch": str(self.policy_epoch),
                # no host name or pid: /metrics is open (scrapers send no key), and Prometheus
                # labels every series with the scraped instance anyway
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

    def _load_checked(self, path: str | Path, revision: str | None,
                      name: str | None) -> LatentEncoder:
        """Blocking: load a policy checkpoint as an encoder, refusing one that loses its
        tokenizer. Raises PolicyLoadError (a ValueError) when it does not load."""
        path = Path(path)
        try:
            encoder = self._load_encoder(path, name, revision)
        except Exception as e:  # safetensors, tokenizers and torch raise their own types
            raise PolicyLoadError(_short(f"{type(e).__name__}: {e}")) from e
        if not encoder.has_tokenizer and any((path / f).is_file() for f in TOKENIZER_FILES):
            # the encoder falls back to ids-only; a reload must not silently lose text input
            raise PolicyLoadError(
                _short(f"its tokenizer files do not load ({_tokenizer_error(path)})")
            )
        return encoder

    def _install_encoder(self, encoder: LatentEncoder) -> None:
        """New batches (and the in-process learner's next step) use this encoder."""
        current = self.scorer
        self.runtime.scorer = FlowScorer(encoder, current.flow, current.meta, noise=self._noise)
        if self.learner is not None:
            self.learner.use_encoder(encoder, self.policy_epoch)
        self._set_info_metrics()
        # the old encoder was frozen with the heap: let the collector free it, then freeze the
        # new one (one full collection, ~0.5 s, once per policy reload)
        gc.unfreeze()
        freeze_heap()

    async def reload_policy(self, path: Path, revision: str | None, name: str | None) -> None:
        """Load a new policy checkpoint as the encoder; the flow must still fit it.

        Raises PolicyLoadError (a ValueError) when the checkpoint does not load, e.g. corrupt
        weights or tokenizer files that do not parse, FlowMismatchError when the flow does not
        fit it, PolicySyncUnavailable when Redis (policy sync) did not record it; in each case
        the current policy stays in service. With Redis the policy is recorded (a new policy
        epoch) before it is swapped in here, and every other replica follows the record.
        """
        async with self._swap_lock:
            current = self.scorer
            encoder = await asyncio.to_thread(self._load_checked, path, revision, name)
            check_compatible(current.meta, encoder.identity, encoder.layer_fractions)
            epoch = self.policy_epoch
            if self.policy_sync is not None:
                ident = encoder.identity
                record = await self.policy_sync.record(
                    str(path.resolve()), ident.name, ident.revision, ident.label()
                )
                epoch = record.epoch
                self._policy_adopted(record)
            self._install_encoder(encoder)
            log.info(
                "policy reloaded",
                extra={"encoder": encoder.identity.label(), "path": str(path),
                       "policy_epoch": epoch},
            )

    def _policy_adopted(self, record: PolicyRecord) -> None:
        self.policy_epoch = record.epoch
        self.policy_error = None
        metrics.POLICY_EPOCH.set(record.epoch)
        metrics.POLICY_IN_SYNC.set(1)

    def _policy_failed(self, record: PolicyRecord, e: BaseException) -> None:
        why = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
        error = _short(
            f"cannot load the recorded policy {record.label} (epoch {record.epoch}) from "
            f"{record.path}: {why}"
        )
        if error != self.policy_error:
            log.error("%s; not ready until it loads (retrying)", error,
                      extra={"policy_epoch": record.epoch})
        self.policy_error = error
        metrics.POLICY_IN_SYNC.set(0)

    async def adopt_policy(self, record: PolicyRecord) -> bool:
        """Load a policy another replica recorded; False (and not ready) if it fails here."""
        async with self._swap_lock:
            if record.epoch <= self.policy_epoch:
                return True  # already at it or past it (e.g. reloaded here meanwhile)
            current = self.scorer
            try:
                encoder = await asyncio.to_thread(
                    self._load_checked, record.path, record.revision or None, record.name or None
                )
                check_compatible(current.meta, encoder.identity, encoder.layer_fractions)
            except Exception as e:
                self._policy_failed(record, e)
                return False
            self._policy_adopted(record)
            self._install_encoder(encoder)
            log.info(
                "policy reloaded from the record",
                extra={"encoder": encoder.identity.label(), "path": record.path,
                       "policy_epoch": record.epoch, "set_by": record.set_by},
            )
            return True

    async def _watch_policy(self) -> None:
        """Follow the policy record; retry a policy that failed to load with backoff."""
        assert self.policy_sync is not None
        retry = 1.0
        while not self._stop.is_set():
            try:
                async for record in self.policy_sync.watch(lambda: self.policy_epoch):
                    if await self.adopt_policy(record):
                        retry = 1.0
                    else:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stop.wait(), retry)
                        retry = min(retry * 2, 30.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("policy watcher failed; retrying in 1s")
                await asyncio.sleep(1.0)


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


def freeze_heap() -> None:
    """Collect, then move every object alive now (imports, the model, the flow) out of the
    cyclic garbage collector's view (gc.freeze). A full collection walks the whole heap
    holding the GIL, ~0.5 s with a model loaded: triggered by a request that allocates much
    (a large graph), it would stall the event loop from any thread. After the freeze it walks
    only what requests allocated since."""
    gc.collect()
    gc.freeze()


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings
