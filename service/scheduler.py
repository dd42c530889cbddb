"""ScoreScheduler: micro-batching of concurrent /score requests, in work units of bounded cost.

Requests become jobs on a bounded queue. Each job is split into work units of at most
`unit_max_cost` (tokens x hooked layers x timesteps x noise draws, the measure of
max_request_cost; see `plan_units`): consecutive samples while they fit, and a sample that
alone costs more is split along its (timestep, noise draw) evaluations. The split depends on
the request alone, never on load. One batcher task serves the jobs round-robin: a batch
takes the next unit of the oldest job in turn and the next unit of every other job with
the same flow settings (timesteps, noise draws, evaluations) and the same flow, until
`max_batch_tokens`, waiting up to `max_wait_ms` for more requests to join; served jobs go
to the back. So a large request cannot hold a small one for its whole duration: the small
one waits about one unit of it. Batches run on a single model thread, so the event loop
never blocks and batches never overlap.

A job is scored with exactly one flow version and encoder: the runtime's scorer is pinned
to it when its first unit starts, and a batch only holds units of jobs pinned to its scorer
(or not yet started), even while the learner publishes new versions. Deviations are a mean
over timesteps x draws x layers; a split sample's units carry the running sum from one to
the next and add in a fixed order (see `flowfield.objective.deviation_sum`), so in
batch-invariant mode the result is bit-identical to scoring the sample unsplit and alone.
Rewards, normalisation and advantages are shaped once per job, after its last unit. A full
queue raises Overloaded (answered 429 + Retry-After) instead of growing memory.

Cancellation (see `cancel`): a request cancelled while its job waits (its client
disconnected, service/app.py's BodyLimit) drops the job's queued units at once, and a running
batch whose jobs are all cancelled is abandoned at its next forward or flow chunk; a batch that
also serves live requests finishes, and the cancelled job's later units never run.

Shutdown (see `drain`): on SIGTERM the scheduler stops taking jobs and keeps scoring the
queued ones until a deadline set inside uvicorn's graceful-shutdown timeout; at the
deadline every job still queued or running (any of its units not done) is answered 503
`shutting_down` (JSON, with Retry-After) and the running batch is abandoned at its next
forward or flow chunk, so no request is left for uvicorn to cut off with a plain-text 500
and the process exits in time.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from flowfield.scorer import FlowScorer, SampleScore, ScoreOptions, ScoringInterrupted
from service import metrics
from service.errors import ApiError, Overloaded  # Overloaded: raised here
from service.settings import setting_default

log = logging.getLogger("flowfield.scheduler")

# The default cost of a work unit (tokens x hooked layers x timesteps x noise draws, see
# `plan_units`): FLOWFIELD_UNIT_MAX_COST's default, about 0.1-0.2 s of scoring on the demo
# policy with one CPU thread: a request waits about that long for each unit of a large one
# ahead of it, and splitting costs little throughput.
DEFAULT_UNIT_MAX_COST: int = setting_default("unit_max_cost")


class ShuttingDown(ApiError):
    """The process is stopping: answered 503 `shutting_down`; retry (another replica)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "shutting_down", message, headers={"Retry-After": "1"})


@dataclass
class ScoreJob:
    """One request's samples and its options: the one `ScoreOptions` the route resolved
    (service/options.py), used unchanged for the deviations and for shaping."""

    prompts: list[list[int]]
    responses: list[list[int]]
    options: ScoreOptions
    outcome_rewards: list[float] | None = None
    group_ids: list[str] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    future: asyncio.Future | None = None
    # scheduler state: units not yet taken, units not yet done, the pinned scorer, per
    # sample its running deviation sum and (while split) its cached latents
    units: collections.deque[WorkUnit] = field(
        default_factory=collections.deque, init=False, repr=False
    )
    pending: int = field(default=0, init=False, repr=False)
    queued_samples: int = field(default=0, init=False, repr=False)
    scorer: FlowScorer | None = field(default=None, init=False, repr=False)
    sums: list[torch.Tensor | None] = field(default_factory=list, init=False, repr=False)
    latents: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def timesteps(self) -> tuple[float, ...]:
        return self.options.timesteps

    @property
    def noise_draws(self) -> int:
        return self.options.noise_draws

    @property
    def key(self) -> tuple:
        return (self.timesteps, self.noise_draws)

    @property
    def tokens(self) -> int:
        return sum(len(p) + len(r) for p, r in zip(self.prompts, self.responses))

    @property
    def pairs(self) -> int:
        """(timestep, noise draw) evaluations per token and layer."""
        return len(self.timesteps) * self.noise_draws


@dataclass(eq=False)
class WorkUnit:
    """Part of a job: samples `samples` (job indices), evaluations `pairs` = [lo, hi) of the
    job's timesteps x noise draws (pair p = timestep p // draws, draw p % draws)."""

    job: ScoreJob
    samples: list[int]
    pairs: tuple[int, int]
    tokens: int

    @property
    def key(self) -> tuple:
        return (*self.job.key, self.pairs)

    @property
    def completes(self) -> bool:
        """The last unit of its samples: their deviation sums are complete after it."""
        return self.pairs[1] == self.job.pairs


def plan_units(
    tokens: Sequence[int], layers: int, pairs: int, max_cost: int
) -> list[tuple[list[int], tuple[int, int]]]:
    """How a job is split: (sample indices, (lo, hi) evaluation pairs) per unit, in order.

    tokens: prompt + response tokens per sample; cost = tokens x layers x pairs (pairs =
    timesteps x noise draws), as for max_request_cost. Consecutive samples share a unit while
    their cost fits max_cost; a sample that alone costs more gets units of its own, each of
    as many consecutive pairs as fit (at least one). max_cost <= 0: one unit, no split. A
    function of the request alone, so a request is computed the same way whatever the load.
    """
    n = len(tokens)
    if max_cost <= 0:
        return [(list(range(n)), (0, pairs))] if n else []
    units: list[tuple[list[int], tuple[int, int]]] = []
    cur: list[int] = []
    cur_cost = 0
    for i, t in enumerate(tokens):
        cost = t * layers * pairs
        if cost > max_cost:
            if cur:
                units.append((cur, (0, pairs)))
                cur, cur_cost = [], 0
            step = max(1, max_cost // max(1, t * layers))
            units += [([i], (lo, min(lo + step, pairs))) for lo in range(0, pairs, step)]
            continue
        if cur and cur_cost + cost > max_cost:
            units.append((cur, (0, pairs)))
            cur, cur_cost = [], 0
        cur.append(i)
        cur_cost += cost
    if cur:
        units.append((cur, (0, pairs)))
    return units


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


def _shape(scorer: FlowScorer, job: ScoreJob, devs: list[torch.Tensor]) -> JobResult | ValueError:
    """A job's deviations -> its result (or the ValueError of options its flow cannot serve)."""
    try:
        scores = scorer.shape(devs, job.options, job.outcome_rewards, job.group_ids)
    except ValueError as e:
        return e
    return JobResult(scores, scorer.version, scorer.encoder.identity.label())


def _observe(results: Sequence[JobResult | ValueError | None]) -> None:
    scored = [s for res in results if isinstance(res, JobResult) for s in res.scores]
    if scored:
        all_e = torch.cat([s.deviations for s in scored])
        all_r = torch.cat([s.token_rewards for s in scored])
        _observe_many(metrics.DEVIATION, all_e)
        _observe_many(metrics.TOKEN_REWARD, all_r[all_r != 0])
        _observe_many(metrics.FLOW_RETURN, torch.tensor([s.flow_return for s in scored]))
        metrics.TOKENS_SCORED.inc(int(all_e.numel()))


def run_batch(
    scorer: FlowScorer,
    jobs: list[ScoreJob],
    check=None,
    batch_invariant: bool | None = None,
) -> list[JobResult | ValueError]:
    """Blocking: whole jobs, unsplit: one encoder + flow pass for all, then per-job shaping.

    In batch-invariant mode a job's results are bit-identical to the scheduler's (its work
    units, any batch-mates). A job whose options this flow cannot serve (ValueError from the
    scorer, e.g. "expert" normalisation on a flow without calibration) fails alone; the
    others are answered. check: called between forwards and flow chunks; raises
    ScoringInterrupted to abandon. batch_invariant: None = the scorer's own setting (on by
    default: see FlowScorer).
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
        out.append(_shape(scorer, j, devs[k : k + len(j.responses)]))
        k += len(j.responses)
    _observe(out)
    return out


def split_job(job: ScoreJob, layers: int, max_cost: int) -> None:
    """Plan the job's work units (see `plan_units`) and reset its scoring state."""
    tokens = [len(p) + len(r) for p, r in zip(job.prompts, job.responses)]
    job.units = collections.deque(
        WorkUnit(job, samples, pairs, sum(tokens[i] for i in samples))
        for samples, pairs in plan_units(tokens, layers, job.pairs, max_cost)
    )
    job.pending = len(job.units)
    job.queued_samples = len(job.responses)
    job.sums = [None] * len(job.responses)
    job.latents = {}


def run_units(
    scorer: FlowScorer,
    units: list[WorkUnit],
    check=None,
    batch_invariant: bool | None = None,
) -> list[JobResult | ValueError | None]:
    """Blocking: one encoder + flow pass for work units with the same key (timesteps, draws,
    pairs), at most one per job, each job's earlier units already done. Per unit: its job's
    result when this was the job's last unit, else None. Latents of a sample split over
    several units are computed once and kept on the job until its last unit."""
    first = units[0]
    timesteps, draws, pairs = first.job.timesteps, first.job.noise_draws, first.pairs
    need = [(u, i) for u in units for i in u.samples if i not in u.job.latents]
    fresh = (
        scorer.latents(
            [u.job.prompts[i] for u, i in need],
            [u.job.responses[i] for u, i in need],
            check=check,
            batch_invariant=batch_invariant,
        )
        if need
        else []
    )
    lat = {(id(u), i): x for (u, i), x in zip(need, fresh)}
    inputs = [
        (u, i, u.job.latents[i] if i in u.job.latents else lat[(id(u), i)])
        for u in units
        for i in u.samples
    ]
    carries = None
    if pairs[0] > 0:
        carries = [u.job.sums[i] for u, i, _ in inputs]
    sums = scorer.deviation_sums(
        [x for _, _, x in inputs],
        timesteps,
        draws,
        pairs=pairs,
        carries=carries,
        check=check,
        batch_invariant=batch_invariant,
    )
    for (u, i, x), total in zip(inputs, sums):
        u.job.sums[i] = total
        if u.completes:
            u.job.latents.pop(i, None)
        elif i not in u.job.latents:  # the sample's next units reuse its latents
            u.job.latents[i] = (x[0].clone(), x[1].clone())
    out: list[JobResult | ValueError | None] = []
    for u in units:
        u.job.pending -= 1
        if u.job.pending:
            out.append(None)
            continue
        devs = scorer.finish_deviations(u.job.sums, u.job.timesteps, u.job.noise_draws)
        out.append(_shape(scorer, u.job, devs))
    _observe(out)
    return out


class ScoreScheduler:
    def __init__(
        self,
        runtime: ModelRuntime,
        max_batch_tokens: int = 32768,
        max_wait_ms: float = 5.0,
        max_queue_samples: int = 8192,
        batch_invariant: bool | None = None,
        unit_max_cost: int = DEFAULT_UNIT_MAX_COST,
    ) -> None:
        """batch_invariant: bit-identical scores whatever the batch (None: the scorer's).
        unit_max_cost: the cost of a work unit (see `plan_units`; <= 0: jobs are not split)."""
        self.runtime = runtime
        self.batch_invariant = batch_invariant
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue_samples = max_queue_samples
        self.unit_max_cost = unit_max_cost
        self._jobs: collections.deque[ScoreJob] = collections.deque()  # round-robin order
        self._queued_samples = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._expiry: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # loop time at which remaining work gets 503
        self._running: list[ScoreJob] = []  # the jobs of the batch on the model thread
        self._interrupt = threading.Event()  # abandon the running batch (read by the thread)
        # every job of the running batch was cancelled (their clients left): abandon it
        self._abandon = threading.Event()

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
            j.units.clear()
            j.queued_samples = 0  # counted out below; a later _drop must not subtract again
        self._jobs.clear()
        self._queued_samples = 0
        metrics.SCORE_QUEUE_DEPTH.set(0)
        self._wakeup.set()
        if failed:
            log.warning("drain deadline passed: %d samples answered 503 shutting_down", failed)

    def _check(self) -> None:
        """Model thread: give up the running batch once the drain deadline has passed, or
        when every request in it was cancelled."""
        if self._interrupt.is_set():
            raise ScoringInterrupted("drain deadline passed")
        if self._abandon.is_set():
            raise ScoringInterrupted("every request of the batch was cancelled")

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
        split_job(job, len(self.runtime.scorer.encoder.layers), self.unit_max_cost)
        job.future = asyncio.get_running_loop().create_future()
        if not job.units:  # no samples: nothing to score
            job.future.set_result(self._finish_empty(job))
            return await job.future
        self._jobs.append(job)
        self._queued_samples += n
        metrics.SCORE_QUEUE_DEPTH.set(self._queued_samples)
        self._wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # the request was cancelled: its client left
            self.cancel(job)
            raise

    def cancel(self, job: ScoreJob) -> None:
        """Drop a job whose request is gone: its queued work units now, and the batch it is
        running in at the next forward or flow chunk when every job in that batch is gone
        (a batch shared with live requests finishes; this job's later units never run)."""
        if job.future is not None and not job.future.done():
            job.future.cancel()
        dropped = len(job.units)
        running = any(j is job for j in self._running)
        self._jobs = collections.deque(j for j in self._jobs if j is not job)
        self._drop(job, running)
        if running and all(j.future.done() for j in self._running):
            self._abandon.set()
            dropped += 1
        if dropped:
            metrics.CANCELLED_UNITS.inc(dropped)
            log.info("request cancelled: %d work units dropped", dropped)

    def _finish_empty(self, job: ScoreJob) -> JobResult:
        scorer = self.runtime.scorer
        res = _shape(scorer, job, [])
        if isinstance(res, ValueError):
            raise res
        return res

    def _drop(self, job: ScoreJob, running: bool = False) -> None:
        """The job is answered (or failed): forget its units not yet taken. `running`: a unit
        of it is on the model thread, which reads its latents: they go after the batch."""
        job.units.clear()
        if not running:
            job.latents.clear()
        self._queued_samples -= job.queued_samples
        job.queued_samples = 0
        metrics.SCORE_QUEUE_DEPTH.set(self._queued_samples)

    def _take_batch(self) -> tuple[list[WorkUnit], FlowScorer]:
        """The next unit of the first job in turn, plus the next unit of every other job with
        the same key and scorer, up to max_batch_tokens; the served jobs go to the back."""
        first = self._jobs[0]
        head = first.units[0]
        scorer = first.scorer or self.runtime.scorer
        batch, tokens = [first.units.popleft()], head.tokens
        served = {id(first)}
        for j in list(self._jobs)[1:]:
            u = j.units[0]
            if (
                u.key == head.key
                and (j.scorer is None or j.scorer is scorer)
                and tokens + u.tokens <= self.max_batch_tokens
            ):
                batch.append(j.units.popleft())
                tokens += u.tokens
                served.add(id(j))
        waiting = [j for j in self._jobs if id(j) not in served]
        again = [u.job for u in batch if u.job.units]
        self._jobs = collections.deque(waiting + again)
        return batch, scorer

    def _batch_is_full(self) -> bool:
        return sum(j.units[0].tokens for j in self._jobs) >= self.max_batch_tokens

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
            for j in [j for j in self._jobs if j.future.done()]:  # e.g. the client left
                self._drop(j)
            self._jobs = collections.deque(j for j in self._jobs if j.units)
            if not self._jobs:
                continue
            units, scorer = self._take_batch()
            now = time.perf_counter()
            batch: list[WorkUnit] = []
            for u in units:
                j = u.job
                if j.scorer is None:  # its first unit: pin the scorer for all its units
                    j.scorer = scorer
                    metrics.QUEUE_TIME.observe(now - j.enqueued)
                    try:  # the flow changed since the request was checked
                        scorer.check_options(j.options)
                    except ValueError as e:
                        j.future.set_exception(e)
                        self._drop(j)
                        continue
                if u.completes:
                    j.queued_samples -= len(u.samples)
                    self._queued_samples -= len(u.samples)
                batch.append(u)
            self._jobs = collections.deque(j for j in self._jobs if j.units)
            metrics.SCORE_QUEUE_DEPTH.set(self._queued_samples)
            if not batch:
                continue
            metrics.BATCH_SAMPLES.observe(sum(len(u.samples) for u in batch))
            metrics.BATCH_TOKENS.observe(sum(u.tokens for u in batch))
            self._running = [u.job for u in batch]
            self._abandon.clear()
            try:
                results = await loop.run_in_executor(
                    self._executor, run_units, scorer, batch, self._check, self.batch_invariant
                )
            except ScoringInterrupted:
                # the drain deadline (its jobs were answered 503), or every job of the batch
                # was cancelled (dropped by `cancel`)
                for u in batch:
                    if u.job.future.done():
                        self._drop(u.job)
                self._jobs = collections.deque(j for j in self._jobs if j.units)
                continue
            except Exception as e:  # a model failure fails these requests, not the service
                log.exception("scoring batch failed")
                for u in batch:
                    if not u.job.future.done():
                        u.job.future.set_exception(e)
                    self._drop(u.job)
                self._jobs = collections.deque(j for j in self._jobs if j.units)
                continue
            finally:
                self._running = []
            for u, r in zip(batch, results):
                j = u.job
                if j.future.done():  # answered meanwhile (drain deadline)
                    self._drop(j)
                    continue
                if r is None:
                    continue
                j.latents.clear()
                if isinstance(r, Exception):
                    j.future.set_exception(r)
                else:
                    j.future.set_result(r)
            self._jobs = collections.deque(j for j in self._jobs if j.units)
