"""ScoreScheduler: micro-batching of concurrent /score requests into one model pass.

Requests become jobs on a bounded queue. One batcher task takes the oldest job, waits up
to `max_wait_ms` for more jobs with the same flow settings (timesteps, noise draws) until
`max_batch_tokens`, and runs the batch on a single model thread, so the event loop never
blocks and batches never overlap. A job (all samples of one request) always goes into one
batch, and a batch reads the runtime's scorer once, so a request is scored with exactly one
flow version and encoder even while the learner publishes new ones. A full queue raises
Overloaded (answered 429 + Retry-After) instead of growing memory.

Shutdown (see `drain`): on SIGTERM the scheduler stops taking jobs and keeps scoring the
queued ones until a deadline set inside uvicorn's graceful-shutdown timeout; at the
deadline every job still queued or running is answered 503 `shutting_down` (JSON, with
Retry-After) and the running batch is abandoned at its next forward or flow chunk, so no
request is left for uvicorn to cut off with a plain-text 500 and the process exits in time.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from flowfield.rewards import RewardOptions
from flowfield.scorer import FlowScorer, SampleScore, ScoreOptions, ScoringInterrupted
from service import metrics
from service.errors import ApiError

log = logging.getLogger("flowfield.scheduler")


class Overloaded(Exception):
    """The scoring queue is full; retry after a short wait."""


class ShuttingDown(ApiError):
    """The process is stopping: answered 503 `shutting_down`; retry (another replica)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "shutting_down", message, headers={"Retry-After": "1"})


@dataclass
class ScoreJob:
    prompts: list[list[int]]
    responses: list[list[int]]
    reward_options: RewardOptions
    timesteps: tuple[float, ...]
    noise_draws: int
    outcome_rewards: list[float] | None = None
    group_ids: list[str] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    future: asyncio.Future | None = None

    @property
    def key(self) -> tuple:
        return (self.timesteps, self.noise_draws)

    @property
    def tokens(self) -> int:
        return sum(len(p) + len(r) for p, r in zip(self.prompts, self.responses))


@dataclass
class JobResult:
    scores: list[SampleScore]
    flow_version: int
    encoder: str


class ModelRuntime:
    """The scorer in use. Replacing `scorer` is atomic; a running batch keeps its own."""

    def __init__(self, scorer: FlowScorer) -> None:
        self.scorer = scorer


def _observe_many(hist, values: torch.Tensor) -> None:
    """Histogram.observe for many values without a per-value Python loop."""
    if values.numel() == 0:
        return
    v = values.detach().double().flatten()
    try:
        bounds = torch.tensor(hist._upper_bounds, dtype=torch.float64)
        idx = torch.bucketize(v, bounds, right=False)
        counts = torch.bincount(idx, minlength=len(bounds))
        for i, c in enumerate(counts.tolist()):
            if c:
                hist._buckets[i].inc(c)
        hist._sum.inc(float(v.sum()))
    except AttributeError:  # prometheus_client internals changed: fall back to the slow way
        for x in v.tolist():
            hist.observe(x)


def run_batch(
    scorer: FlowScorer,
    jobs: list[ScoreJob],
    check=None,
    batch_invariant: bool | None = None,
) -> list[JobResult | ValueError]:
    """Blocking: one encoder + flow pass for all jobs, then per-job shaping.

    A job whose options this flow cannot serve (ValueError from the scorer, e.g. "expert"
    normalisation on a flow without calibration) fails alone; the others are answered.
    check: called between forwards and flow chunks; raises ScoringInterrupted to abandon.
    batch_invariant: None = the scorer's own setting (on by default: see FlowScorer).
    """
    prompts = [p for j in jobs for p in j.prompts]
    responses = [r for j in jobs for r in j.responses]
    devs = scorer.deviations(
        prompts,
        responses,
        jobs[0].timesteps,
        jobs[0].noise_draws,
        check=check,
        batch_invariant=batch_invariant,
    )
    out, k = [], 0
    for j in jobs:
        mine = devs[k : k + len(j.responses)]
        k += len(j.responses)
        options = ScoreOptions(j.reward_options, j.timesteps, j.noise_draws)
        try:
            scores = scorer.shape(mine, options, j.outcome_rewards, j.group_ids)
        except ValueError as e:
            out.append(e)
            continue
        out.append(JobResult(scores, scorer.version, scorer.encoder.identity.label()))
    scored = [s for res in out if isinstance(res, JobResult) for s in res.scores]
    if devs and scored:
        all_e = torch.cat(devs)
        all_r = torch.cat([s.token_rewards for s in scored])
        _observe_many(metrics.DEVIATION, all_e)
        _observe_many(metrics.TOKEN_REWARD, all_r[all_r != 0])
        _observe_many(metrics.FLOW_RETURN, torch.tensor([s.flow_return for s in scored]))
        metrics.TOKENS_SCORED.inc(int(all_e.numel()))
    return out


class ScoreScheduler:
    def __init__(
        self,
        runtime: ModelRuntime,
        max_batch_tokens: int = 32768,
        max_wait_ms: float = 5.0,
        max_queue_samples: int = 8192,
        batch_invariant: bool | None = None,
    ) -> None:
        """batch_invariant: bit-identical scores whatever the batch (None: the scorer's)."""
        self.runtime = runtime
        self.batch_invariant = batch_invariant
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue_samples = max_queue_samples
        self._jobs: collections.deque[ScoreJob] = collections.deque()
        self._queued_samples = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._expiry: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # loop time at which remaining work gets 503
        self._running: list[ScoreJob] = []  # the batch on the model thread
        self._interrupt = threading.Event()  # abandon the running batch (read by the thread)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The single model thread; other model work (reloads) may run here between batches."""
        return self._executor

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="score-batcher")

    def drain(self, timeout: float) -> None:
        """Stop taking jobs (new ones get 503 `shutting_down`); keep scoring the queued ones
        for up to `timeout` seconds, then answer everything still queued or running 503 and
        abandon the running batch. Called when the graceful shutdown starts (SIGTERM); a
        later call can only bring the deadline forward."""
        loop = asyncio.get_running_loop()
        self._stopping = True
        self._wakeup.set()
        deadline = loop.time() + max(0.0, timeout)
        if self._deadline is not None and self._deadline <= deadline:
            return
        self._deadline = deadline
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = loop.call_at(deadline, self._expire)
        log.info(
            "draining: scoring queued work for up to %.1fs",
            max(0.0, timeout),
            extra={"queued_samples": self._queued_samples},
        )

    def _expire(self) -> None:
        """The drain deadline: 503 for every queued and running job, abandon the batch."""
        self._interrupt.set()
        failed = 0
        for j in [*self._running, *self._jobs]:
            if j.future is not None and not j.future.done():
                j.future.set_exception(ShuttingDown("the service is shutting down; retry"))
                failed += len(j.responses)
        self._jobs.clear()
        self._queued_samples = 0
        metrics.SCORE_QUEUE_DEPTH.set(0)
        self._wakeup.set()
        if failed:
            log.warning("drain deadline passed: %d samples answered 503 shutting_down", failed)

    def _check(self) -> None:
        """Model thread: give up the running batch once the drain deadline has passed."""
        if self._interrupt.is_set():
            raise ScoringInterrupted("drain deadline passed")

    async def stop(self, timeout: float = 5.0) -> None:
        """Drain (see `drain`; an earlier deadline from SIGTERM stays), then stop the batcher
        and the model thread. Used by the app's shutdown, after uvicorn's graceful wait."""
        self.drain(timeout)
        if self._task:
            await self._task
        if self._expiry is not None:
            self._expiry.cancel()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._executor.shutdown(wait=True)
        )

    @property
    def queued_samples(self) -> int:
        return self._queued_samples

    async def submit(self, job: ScoreJob) -> JobResult:
        n = len(job.responses)
        if self._stopping:
            raise ShuttingDown("the service is shutting down; retry")
        if self._queued_samples and self._queued_samples + n > self.max_queue_samples:
            raise Overloaded(f"{self._queued_samples} samples already queued")
        job.future = asyncio.get_running_loop().create_future()
        self._jobs.append(job)
        self._queued_samples += n
        metrics.SCORE_QUEUE_DEPTH.set(self._queued_samples)
        self._wakeup.set()
        return await job.future

    def _take_batch(self) -> list[ScoreJob]:
        first = self._jobs.popleft()
        batch, tokens = [first], first.tokens
        rest = collections.deque()
        while self._jobs:
            j = self._jobs.popleft()
            if j.key == first.key and tokens + j.tokens <= self.max_batch_tokens:
                batch.append(j)
                tokens += j.tokens
            else:
                rest.append(j)
        self._jobs.extendleft(reversed(rest))
        return batch

    def _batch_is_full(self) -> bool:
        return sum(j.tokens for j in self._jobs) >= self.max_batch_tokens

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # give concurrent requests a moment to join this batch
            deadline = self._jobs[0].enqueued + self.max_wait
            while not self._batch_is_full() and not self._stopping:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            n = sum(len(j.responses) for j in batch)
            self._queued_samples -= n
            metrics.SCORE_QUEUE_DEPTH.set(self._queued_samples)
            now = time.perf_counter()
            for j in batch:
                metrics.QUEUE_TIME.observe(now - j.enqueued)
            metrics.BATCH_SAMPLES.observe(n)
            metrics.BATCH_TOKENS.observe(sum(j.tokens for j in batch))
            scorer = self.runtime.scorer  # one flow version for the whole batch
            self._running = batch
            try:
                results = await loop.run_in_executor(
                    self._executor, run_batch, scorer, batch, self._check, self.batch_invariant
                )
            except ScoringInterrupted:  # the drain deadline: its jobs were answered 503
                continue
            except Exception as e:  # a model failure fails these requests, not the service
                log.exception("scoring batch failed")
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            finally:
                self._running = []
            for j, r in zip(batch, results):
                if j.future.done():
                    continue
                if isinstance(r, Exception):
                    j.future.set_exception(r)
                else:
                    j.future.set_result(r)
