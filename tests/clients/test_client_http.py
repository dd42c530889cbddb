"""The client against the real service: retries, Retry-After, no retry on 422, chunking,
round-robin, update idempotence across a retry, typed errors carrying the server's message."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from client_server import free_port
from flowfield_client import (
    AsyncFlowfieldClient,
    FlowfieldClient,
    FlowfieldConnectionError,
    GraphGroup,
    GraphResponse,
    GraphStep,
    GraphTrajectory,
    InvalidRequestError,
    RateLimitError,
    RetryPolicy,
    Sample,
)
from flowfield_client.client import _group_units, _pack
from flowfield_client.models import graph_group_json
from flowfield_client.retry import parse_retry_after

from flowfield.demo.task import Problem, expert_solution
from flowfield.graph import groups_from_request, score_groups

FAST = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05)


def demo(i: int, wrong: bool = False, group: str | None = None, reward: float | None = None):
    p = Problem(1000 + 37 * i, 2345 + 11 * i)
    text = expert_solution(p)
    if wrong:  # the answer's first digit off by one
        head, _, ans = text.rpartition("A:")
        text = f"{head}A:{(int(ans[0]) + 1) % 10}{ans[1:]}"
    return Sample(id=f"s-{i}", prompt=p.prompt, response=text, group_id=group, reward=reward)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# ---- retries ---------------------------------------------------------------------------------


def test_503_then_200_is_retried(proxy_factory):
    proxy = proxy_factory([("status", 503, {}), ("status", 503, {})], paths={"/v1/score"})
    events = []
    with FlowfieldClient(proxy.url, retry=FAST, on_retry=events.append) as ff:
        res = ff.score([demo(0), demo(1)])
    assert [r.status for r in res] == ["ok", "ok"]
    assert [s.action for s in proxy.requests("/v1/score")] == ["status 503", "status 503",
                                                              "forward"]
    assert [e.status for e in events] == [503, 503]
    assert ff.stats.retries == 2 and ff.stats.by_path["/v1/score"] == 3


def test_retry_after_is_honoured(proxy_factory):
    proxy = proxy_factory([("status", 429, {"Retry-After": "1"})], paths={"/v1/score"})
    with FlowfieldClient(proxy.url, retry=FAST) as ff:
        t0 = time.monotonic()
        res = ff.score([demo(0)])
        elapsed = time.monotonic() - t0
    assert res[0].ok
    seen = proxy.requests("/v1/score")
    assert len(seen) == 2
    # the backoff alone would wait at most 0.01 s: the second try waited for Retry-After
    assert seen[1].at - seen[0].at >= 0.95 and elapsed >= 0.95


def test_retry_after_is_honoured_async(proxy_factory):
    proxy = proxy_factory([("status", 503, {"Retry-After": "1"})], paths={"/v1/flow"})

    async def go():
        async with AsyncFlowfieldClient(proxy.url, retry=FAST) as ff:
            return await ff.flow_info()

    info = asyncio.run(go())
    seen = proxy.requests("/v1/flow")
    assert info.flow_version >= 0 and len(seen) == 2 and seen[1].at - seen[0].at >= 0.95


def test_retries_run_out_with_the_servers_error(proxy_factory):
    proxy = proxy_factory([("status", 429, {})] * 3, paths={"/v1/score"})
    retry = RetryPolicy(max_attempts=3, backoff_base=0.01)
    with FlowfieldClient(proxy.url, retry=retry) as ff, pytest.raises(RateLimitError) as ei:
        ff.score([demo(0)])
    assert ei.value.status == 429 and ei.value.message == "injected 429"
    assert ei.value.code == "flaky" and len(proxy.requests("/v1/score")) == 3


def test_no_retry_on_422_and_the_error_carries_message_and_field(proxy_factory, ff_server):
    proxy = proxy_factory()
    bad = {"id": "bad", "prompt": "Q:", "response_ids": [3, "x"]}
    with FlowfieldClient(proxy.url, retry=FAST) as ff, pytest.raises(InvalidRequestError) as ei:
        ff.score([bad])
    e = ei.value
    assert len(proxy.requests("/v1/score")) == 1 and ff.stats.retries == 0
    assert e.status == 422 and e.code == "invalid_request"
    assert e.field == "samples[0].response_ids[1]" and e.sample_id == "bad"
    assert "valid integer" in e.message and e.message in str(e) and e.field in str(e)


def test_api_error_message_and_field_are_the_servers(ff_server):
    with FlowfieldClient(ff_server.url, retry=FAST) as ff:
        with pytest.raises(InvalidRequestError) as ei:  # advantages need verifier rewards
            ff.score([demo(0, reward=1.0), demo(1)], return_advantages=True)
        e = ei.value
        assert (e.code, e.field, e.sample_id) == ("missing_reward", "samples[1].reward", "s-1")
        assert "return_advantages needs the verifier reward" in e.message
        with pytest.raises(InvalidRequestError) as ei:  # unknown option: 422, not retried
            ff.score([demo(0)], bogus=1)
        assert ei.value.field == "options.bogus" and "unknown field" in ei.value.message
        assert ff.stats.retries == 0
        with pytest.raises(InvalidRequestError) as ei:
            ff.reload_policy("/nonexistent/policy")
        assert ei.value.field == "path" and ei.value.code == "invalid_path"


def test_connection_errors_are_retried_then_raised():
    events = []
    ff = FlowfieldClient(dead_url(), retry=FAST, on_retry=events.append)
    with ff, pytest.raises(FlowfieldConnectionError) as ei:
        ff.flow_info()
    assert len(events) == 3 and all(e.status is None for e in events)
    assert "4 attempt(s)" in str(ei.value)


def test_dropped_connection_is_retried(proxy_factory):
    proxy = proxy_factory(["drop"], paths={"/v1/score"})
    with FlowfieldClient(proxy.url, retry=FAST) as ff:
        assert ff.score([demo(0)])[0].ok
    assert [s.action for s in proxy.requests("/v1/score")] == ["drop", "forward"]


# ---- chunking and round-robin ----------------------------------------------------------------


def test_chunking_preserves_order(ff_server):
    ff_server.wait_quiet()
    samples = [demo(i, wrong=i % 3 == 0) for i in range(100)]
    with FlowfieldClient(ff_server.url) as ff:
        whole = ff.score(samples, chunk_size=1000, return_deviations=True)
        parts = ff.score(samples, chunk_size=7, max_concurrency=4, return_deviations=True)
        assert ff.stats.by_path["/v1/score"] == 1 + math.ceil(100 / 7)
    assert len(parts.flow_versions) == math.ceil(100 / 7)
    assert set(parts.flow_versions) == {whole.flow_version}
    assert [r.id for r in parts] == [f"s-{i}" for i in range(100)] == [r.id for r in whole]
    for a, b in zip(whole, parts):
        assert a.ok and b.ok and a.num_tokens == b.num_tokens == len(a.token_rewards)
        assert a.token_rewards == pytest.approx(b.token_rewards, abs=1e-7)
        assert a.flow_return == pytest.approx(b.flow_return, abs=1e-7)
        assert a.deviations == pytest.approx(b.deviations, rel=1e-5)


def test_chunking_keeps_advantage_groups_whole(ff_server):
    ff_server.wait_quiet()
    # groups of 4, interleaved; chunks of 6 would split them if the client did not group
    samples = [
        demo(i, wrong=i % 2 == 1, group=f"g{i % 5}", reward=float(i % 2 == 0)) for i in range(20)
    ]

    async def go():
        async with AsyncFlowfieldClient(ff_server.url) as ff:
            whole = await ff.score(samples, chunk_size=100, return_advantages=True)
            parts = await ff.score(samples, chunk_size=6, max_concurrency=3,
                                   return_advantages=True)
            return whole, parts

    whole, parts = asyncio.run(go())
    assert len(parts.flow_versions) == 5  # one group (4 samples) per chunk
    for a, b in zip(whole, parts):
        assert a.id == b.id and a.advantages == pytest.approx(b.advantages, abs=1e-6)


def test_round_robin_over_two_urls(proxy_factory):
    p1, p2 = proxy_factory(), proxy_factory()
    with FlowfieldClient([p1.url, p2.url]) as ff:
        for _ in range(3):
            ff.flow_info()
            ff.score([demo(0)])
    assert len(p1.requests()) == len(p2.requests()) == 3


def test_a_dead_replica_is_skipped_by_the_retry(proxy_factory):
    p1 = proxy_factory()
    with FlowfieldClient(f"{dead_url()},{p1.url}", retry=FAST) as ff:
        for _ in range(4):
            assert ff.score([demo(1)])[0].ok
    assert len(p1.requests("/v1/score")) == 4 and ff.stats.retries >= 2


# ---- update idempotence ----------------------------------------------------------------------


def test_update_retry_reuses_its_update_id_and_trains_once(proxy_factory, ff_server):
    before = ff_server.wait_quiet()
    accepted0 = ff_server.metric("flowfield_update_samples_total", outcome="accepted")
    dups0 = ff_server.metric("flowfield_update_duplicates_total")
    # the first POST reaches the service, which queues it; its answer is lost on the way back
    proxy = proxy_factory(["forward_then_drop"], paths={"/v1/update"})
    samples = [demo(40 + i, reward=1.0) for i in range(4)]
    with FlowfieldClient(proxy.url, retry=FAST) as ff:
        res = ff.update(samples)
    seen = proxy.requests("/v1/update")
    assert [s.action for s in seen] == ["forward_then_drop", "forward"]
    assert seen[0].body["update_id"] == seen[1].body["update_id"] == res.update_id
    assert res.duplicate and res.attempts == 2 and res.accepted == 0
    after = ff_server.wait_quiet()
    assert after["samples_trained"] == before["samples_trained"] + 4  # trained once
    assert after["flow_version"] > before["flow_version"]
    assert ff_server.metric("flowfield_update_samples_total", outcome="accepted") == accepted0 + 4
    assert ff_server.metric("flowfield_update_duplicates_total") == dups0 + 1


def test_update_results_are_typed_and_chunked(ff_server):
    samples = [demo(60 + i, reward=float(i % 2)) for i in range(5)]
    with FlowfieldClient(ff_server.url) as ff:
        res = ff.update(samples, update_id="chunked-1", chunk_size=2)
        again = ff.update(samples, update_id="chunked-1", chunk_size=2)
    assert (res.accepted, res.skipped, res.duplicate) == (2, 3, False)
    assert [p.update_id for p in res.parts] == ["chunked-1.0", "chunked-1.1", "chunked-1.2"]
    assert again.duplicate and again.accepted == 0
    ff_server.wait_quiet()


# ---- the rest of the API ---------------------------------------------------------------------


def test_flow_info_health_policy_and_empty_batches(ff_server):
    with FlowfieldClient(ff_server.url) as ff:
        info = ff.flow_info()
        assert info.encoder.startswith("demo-arith@") and info.queue_backend == "memory"
        assert info.dtype == "float32"
        assert ff.health().ok
        empty = ff.score([])
        assert empty.results == [] and empty.flow_version == info.flow_version
        pol = ff.reload_policy(
            "flowfield/demo/assets/policy", revision="client-test"
        )
        assert pol.encoder == "demo-arith@client-test" and pol.layers == [1, 2, 3]
    down = FlowfieldClient([ff_server.url, dead_url()]).health()
    assert not down.ok and [e.ok for e in down.endpoints] == [True, False]
    assert down.endpoints[1].status == "unreachable"


def test_async_client_has_the_same_methods(ff_server):
    async def go():
        async with AsyncFlowfieldClient(ff_server.url) as ff:
            h = await ff.health()
            info = await ff.flow_info()
            res = await ff.score([demo(0), {"prompt": "Q:", "response": ""}])
            return h, info, res

    h, info, res = asyncio.run(go())
    assert h.ok and info.flow_version >= 0
    assert res[0].ok and res[1].status == "error" and "empty" in res[1].error
    assert res[1].id == "1"  # numbered by position when no id was given


# ---- RewardFlow graph scoring ----------------------------------------------------------------


def graph_groups():
    """The docs/api.md example as typed models, and a second group given as plain dicts."""
    typed = GraphGroup("task-3", [
        GraphTrajectory("t-0", [GraphStep("kitchen", "go to fridge"),
                                GraphStep("fridge open", "take apple")],
                        final_state="done", final_reward=10.0, success=True),
        GraphTrajectory("t-1", [GraphStep("kitchen", "wait"), GraphStep("kitchen", "wait")],
                        final_state="kitchen", truncated=True),
    ])
    plain = {"group_id": "task-4", "trajectories": [
        {"id": "a", "steps": [{"state": {"room": 1}}], "final_state": {"room": 2},
         "final_reward": 1.0, "success": True},
        {"id": "b", "steps": [{"state": {"room": 1}}], "final_state": {"room": 3}},
    ]}
    return [typed, plain]


def check_graph(res: GraphResponse, gamma: float) -> None:
    assert isinstance(res, GraphResponse) and res.gamma == pytest.approx(gamma)
    assert [g.group_id for g in res] == ["task-3", "task-4"]
    g3, g4 = res
    assert (g3.num_nodes, g3.num_edges) == (3, 2)  # kitchen, fridge open, done; no self-loop
    t0, t1 = g3
    assert [t.id for t in g3] == ["t-0", "t-1"] and len(t0.steps) == len(t1.steps) == 2
    assert t0.success and not t1.success
    assert (t0.episode_return, t1.episode_return) == (10.0, 0.0)
    assert (t0.episode_advantage, t1.episode_advantage) == (5.0, -5.0)
    # values propagate back from the reward: V(done) = 10, one step before gamma * 10, ...
    assert t0.final_value == pytest.approx(10.0)
    assert t0.values == pytest.approx([gamma ** 2 * 10.0, gamma * 10.0])
    for t in (t0, t1):
        for s in t.steps:
            assert s.advantage == pytest.approx(t.episode_advantage + s.step_advantage)
    assert t0.advantages == [s.advantage for s in t0.steps]
    # the wire shape round-trips
    assert GraphResponse.from_json(res.to_json()) == res
    assert [t.id for t in g4] == ["a", "b"] and g4.num_nodes == 3
    # every number is the graph library's own for the same request
    body = {"groups": [graph_group_json(g) for g in graph_groups()]}
    for got, want in zip(res, score_groups(groups_from_request(body), gamma), strict=True):
        assert (got.group_id, got.num_nodes, got.num_edges) == (
            want.group_id, want.num_nodes, want.num_edges)
        for t, w in zip(got, want.trajectories, strict=True):
            assert (t.id, t.episode_return, t.episode_advantage, t.final_value, t.success) == (
                w.id, w.episode_return, w.episode_advantage, w.final_value, w.success)
            assert [(s.value, s.step_reward, s.advantage, s.step_advantage) for s in t.steps] == [
                (s.value, s.step_reward, s.advantage, s.step_advantage) for s in w.steps]


def test_score_graph_round_trip(ff_server):
    with FlowfieldClient(ff_server.url, retry=FAST) as ff:
        res = ff.score_graph(graph_groups(), gamma=0.5, step_weight=1.0)
        default = ff.score_graph(graph_groups())  # options omitted: the service's defaults
        assert ff.stats.by_path["/v1/score/graph"] == 2 and ff.stats.retries == 0
    check_graph(res, 0.5)
    check_graph(default, 0.9)


def test_score_graph_round_trip_async(ff_server):
    async def go():
        async with AsyncFlowfieldClient(ff_server.url, retry=FAST) as ff:
            res = await ff.score_graph(graph_groups(), gamma=0.5, undirected=False)
            return res, ff.stats.by_path["/v1/score/graph"]

    res, calls = asyncio.run(go())
    check_graph(res, 0.5)
    assert calls == 1


def test_score_graph_422_is_the_clients_error_with_the_servers_message(proxy_factory):
    proxy = proxy_factory()
    bad = [GraphGroup("g", [GraphTrajectory("t", [GraphStep("s")], "end",
                                            success=True, truncated=True)])]
    with FlowfieldClient(proxy.url, retry=FAST) as ff:
        with pytest.raises(InvalidRequestError) as ei:
            ff.score_graph(bad)
        e = ei.value
        assert e.status == 422 and e.code == "invalid_trajectory"
        assert e.message == "a trajectory cannot be both success and truncated"
        assert e.field == "groups[0].trajectories[0]" and e.sample_id == "t"
        assert e.message in str(e)
        with pytest.raises(InvalidRequestError) as ei:  # a schema error, also not retried
            ff.score_graph(bad, gamma=1.5)
        assert ei.value.code == "invalid_request" and ei.value.field == "gamma"
        assert ff.stats.retries == 0
    assert len(proxy.requests("/v1/score/graph")) == 2

    async def go():
        async with AsyncFlowfieldClient(proxy.url, retry=FAST) as aff:
            with pytest.raises(InvalidRequestError) as ei:
                await aff.score_graph(bad, step_weight=1e7)
            return ei.value

    e = asyncio.run(go())
    assert (e.status, e.code, e.field) == (422, "invalid_option", "step_weight")
    assert "|step_weight| must be at most" in e.message
    assert len(proxy.requests("/v1/score/graph")) == 3


# ---- pieces ----------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_respects_retry_after():
    p = RetryPolicy(backoff_base=0.5, backoff_max=4.0, jitter=0.5)
    for n, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        for _ in range(20):
            assert full * 0.5 <= p.backoff(n) <= full
    assert p.delay(1, retry_after=3.0) == 3.0
    assert RetryPolicy(max_retry_after=2.0).delay(1, retry_after=30.0) == 2.0
    with pytest.raises(ValueError):
        RetryPolicy(retry_statuses=frozenset({422}))


def test_parse_retry_after():
    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


def test_packing_and_groups():
    assert _pack([[0], [1], [2], [3], [4]], 2) == [[0, 1], [2, 3], [4]]
    assert _pack([[0, 1, 2], [3]], 2) == [[0, 1, 2], [3]]
    items = [{"group_id": "a"}, {"prompt": "x"}, {"group_id": "a"}, {"prompt": "x"}, {}]
    assert _group_units(items) == [[0, 2], [1, 3], [4]]


def test_duplicate_ids_are_refused_before_sending():
    with FlowfieldClient(dead_url()) as ff, pytest.raises(ValueError, match="more than once"):
        ff.score([demo(0), demo(0)])
