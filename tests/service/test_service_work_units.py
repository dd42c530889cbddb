"""Work units: a large request cannot hold a small one for its whole duration.

A job is split into units of bounded cost (samples; one expensive sample along its
timesteps x noise draws), the batcher serves the jobs round-robin, a job keeps the flow it
started with, and a split job's numbers are bit-identical to the unsplit computation and
to the same request alone.
"""

from __future__ import annotations

import asyncio
import copy
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from live_server import Server
from service_helpers import demo_sample

from flowfield.checkpoint import load_flow
from flowfield.encoder import LatentEncoder
from flowfield.rewards import RewardOptions
from flowfield.scorer import FlowScorer, ScoreOptions
from service.scheduler import (
    ModelRuntime,
    ScoreJob,
    ScoreScheduler,
    ShuttingDown,
    plan_units,
    run_batch,
)
from service.settings import Settings

TIMESTEPS = (0.2, 0.4, 0.6, 0.8)


# ---- the split rule -----------------------------------------------------------------------


def test_plan_packs_cheap_samples_and_splits_an_expensive_one_along_its_pairs():
    # cost = tokens x 3 layers x 4 pairs: 120, 120, 1200, 120 against 300
    units = plan_units([10, 10, 100, 10], layers=3, pairs=4, max_cost=300)
    assert units == [
        ([0, 1], (0, 4)),
        ([2], (0, 1)),  # 100 tokens x 3 layers = 300 a pair: one pair a unit
        ([2], (1, 2)),
        ([2], (2, 3)),
        ([2], (3, 4)),
        ([3], (0, 4)),
    ]
    # several pairs a unit where they fit; the last unit takes what is left
    assert plan_units([10], layers=3, pairs=10, max_cost=100) == [
        ([0], (0, 3)),
        ([0], (3, 6)),
        ([0], (6, 9)),
        ([0], (9, 10)),
    ]
    # a single pair over the budget still makes progress: one pair a unit
    assert plan_units([1000], layers=3, pairs=2, max_cost=10) == [([0], (0, 1)), ([0], (1, 2))]
    # no split
    assert plan_units([10, 100], layers=3, pairs=4, max_cost=0) == [([0, 1], (0, 4))]
    assert plan_units([], layers=3, pairs=4, max_cost=300) == []


def test_plan_depends_on_the_request_alone():
    tokens = [55, 61, 7, 300, 42]
    assert plan_units(tokens, 3, 64, 8192) == plan_units(list(tokens), 3, 64, 8192)
    # every (sample, pair) exactly once, in order
    seen = [
        (i, p)
        for samples, (lo, hi) in plan_units(tokens, 3, 64, 8192)
        for i in samples
        for p in range(lo, hi)
    ]
    assert seen == [(i, p) for i in range(len(tokens)) for p in range(64)]


# ---- in process: the demo policy and flow --------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    s = Settings()
    enc = LatentEncoder(s.model_path, s.layer_fractions)
    net, meta = load_flow(s.flow_path, enc.identity)
    tok = enc.tokenizer

    def ids(i: int) -> tuple[list[int], list[int]]:
        d = demo_sample(i)
        return tok(d["prompt"])["input_ids"], tok(d["response"])["input_ids"]

    yield FlowScorer(enc, net, meta), ids
    torch.set_num_threads(before)


def _job(ids, samples, timesteps=TIMESTEPS, draws=16) -> ScoreJob:
    prompts, responses = zip(*[ids(i) for i in samples])
    return ScoreJob(
        [list(p) for p in prompts],
        [list(r) for r in responses],
        ScoreOptions(RewardOptions("bilateral", threshold=0.0, top_k=0), tuple(timesteps), draws),
        outcome_rewards=[1.0, 0.0, 1.0, 0.0][: len(samples)],
        group_ids=["g"] * len(samples),
    )


def _assert_same(a, b) -> None:
    assert a.flow_version == b.flow_version and a.encoder == b.encoder
    for x, y in zip(a.scores, b.scores, strict=True):
        assert torch.equal(x.deviations, y.deviations), (x.deviations - y.deviations).abs().max()
        assert torch.equal(x.token_rewards, y.token_rewards)
        assert torch.equal(x.advantages, y.advantages)
        assert x.flow_return == y.flow_return


async def _started(job: ScoreJob, timeout: float = 30.0) -> None:
    """Wait until the job's first unit has been taken (its scorer is pinned then)."""
    end = time.monotonic() + timeout
    while job.scorer is None:
        if time.monotonic() > end:
            raise AssertionError("the job never started")
        await asyncio.sleep(0.005)


def test_a_small_request_overtakes_a_large_one_with_the_same_numbers(demo):
    scorer, ids = demo

    async def main():
        sched = ScoreScheduler(ModelRuntime(scorer), max_wait_ms=0, unit_max_cost=2048)
        sched.start()
        try:
            large = _job(ids, range(4))
            t0 = time.perf_counter()
            big = asyncio.create_task(sched.submit(large))
            await _started(large)
            small = _job(ids, [7], timesteps=(0.8,), draws=1)
            r_small = await sched.submit(small)
            t_small = time.perf_counter() - t0
            left = large.pending  # units of the large job still to do
            r_large = await big
            t_large = time.perf_counter() - t0
            # the same request alone, through the scheduler
            r_alone = await sched.submit(_job(ids, range(4)))
            return r_small, r_large, r_alone, t_small, t_large, left
        finally:
            await sched.stop(timeout=0)

    r_small, r_large, r_alone, t_small, t_large, left = asyncio.run(main())
    assert left > 10, left  # the small one was answered with most of the large one to do
    assert t_small < 0.5 * t_large, (t_small, t_large)
    _assert_same(r_large, r_alone)
    # and the unsplit computation (run_batch: one pass over the whole job)
    _assert_same(r_large, run_batch(scorer, [_job(ids, range(4))])[0])
    _assert_same(r_small, run_batch(scorer, [_job(ids, [7], timesteps=(0.8,), draws=1)])[0])


def test_a_job_keeps_its_flow_when_a_new_version_is_published(demo):
    scorer, ids = demo
    net = copy.deepcopy(scorer.flow)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.01)
    meta = copy.deepcopy(scorer.meta)
    meta.version = scorer.version + 1
    newer = FlowScorer(scorer.encoder, net, meta, noise=scorer.noise)

    async def main():
        runtime = ModelRuntime(scorer)
        sched = ScoreScheduler(runtime, max_wait_ms=0, unit_max_cost=2048)
        sched.start()
        try:
            large = _job(ids, range(2))
            big = asyncio.create_task(sched.submit(large))
            await _started(large)
            runtime.scorer = newer  # the learner publishes while the job runs
            # same options as the large job: still never batched with it (other flow)
            r_small = await sched.submit(_job(ids, [5]))
            return await big, r_small
        finally:
            await sched.stop(timeout=0)

    r_large, r_small = asyncio.run(main())
    assert r_large.flow_version == scorer.version
    _assert_same(r_large, run_batch(scorer, [_job(ids, range(2))])[0])
    assert r_small.flow_version == newer.version
    _assert_same(r_small, run_batch(newer, [_job(ids, [5])])[0])


def test_drain_answers_503_to_a_job_whose_units_cannot_finish(demo):
    scorer, ids = demo

    async def main():
        sched = ScoreScheduler(ModelRuntime(scorer), max_wait_ms=0, unit_max_cost=2048)
        sched.start()
        large = _job(ids, range(4), draws=64)  # several seconds of units
        big = asyncio.create_task(sched.submit(large))
        await _started(large)
        small = asyncio.create_task(sched.submit(_job(ids, [3], timesteps=(0.8,), draws=1)))
        await asyncio.sleep(0)
        sched.drain(0.5)
        with pytest.raises(ShuttingDown):
            await sched.submit(_job(ids, [4], timesteps=(0.8,), draws=1))
        t0 = time.perf_counter()
        results = await asyncio.gather(big, small, return_exceptions=True)
        waited = time.perf_counter() - t0
        await sched.stop(timeout=0)
        return results, waited, sched.queued_samples

    (r_large, r_small), waited, queued = asyncio.run(main())
    assert isinstance(r_large, ShuttingDown), r_large
    assert not isinstance(r_small, BaseException), r_small  # queued, one unit: it finished
    assert waited < 3.0, waited
    assert queued == 0


# ---- live: the real service ----------------------------------------------------------------


@pytest.mark.slow
def test_live_small_request_is_not_held_by_a_large_one(tmp_path):
    srv = Server(
        tmp_path,
        env={"FLOWFIELD_LEARNER": "false", "FLOWFIELD_MAX_REQUEST_COST": str(1 << 30)},
        name="units",
    )
    large = {
        "samples": [demo_sample(i) for i in range(4)],
        "options": {
            "timesteps": [0.05 + 0.06 * i for i in range(16)],
            "noise_draws": 32,
            "return_deviations": True,
        },
    }
    small = {"samples": [demo_sample(9)], "options": {"return_deviations": True}}
    try:
        with srv.client() as c:
            c.post("/v1/score", json=small).raise_for_status()  # warm up
            small_alone = c.post("/v1/score", json=small).json()

        def call(body):
            with httpx.Client(base_url=srv.url, timeout=300) as c:
                r = c.post("/v1/score", json=body)
                return r, time.perf_counter()

        with ThreadPoolExecutor(2) as pool:
            t0 = time.perf_counter()
            f_large = pool.submit(call, large)
            time.sleep(1.0)  # the large request is being scored
            f_small = pool.submit(call, small)
            (r_small, end_small), (r_large, end_large) = f_small.result(), f_large.result()
        t_small, t_large = end_small - t0, end_large - t0
        with srv.client() as c:
            c.timeout = httpx.Timeout(300)
            large_alone = c.post("/v1/score", json=large).json()
    finally:
        srv.stop()
    assert r_small.status_code == 200 and r_large.status_code == 200
    assert t_large > 3.0, t_large  # a large request indeed
    # sent 1 s after the large one, answered long before it
    assert t_small - 1.0 < 0.25 * t_large, (t_small, t_large)
    print(f"small {t_small - 1.0:.2f}s after it was sent; large {t_large:.2f}s")
    assert r_small.json() == small_alone
    assert r_large.json() == large_alone
    assert all(x["status"] == "ok" for x in r_large.json()["results"])
