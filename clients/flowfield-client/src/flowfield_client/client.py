"""`FlowfieldClient` (sync) and `AsyncFlowfieldClient` (asyncio): the same methods, both on
httpx.

    with FlowfieldClient("http://127.0.0.1:8000") as ff:
        res = ff.score([Sample(prompt="Q:1234+5678\\n", response="4+8+0=12,...", reward=1.0)])
        ff.update([...])                 # verifier-accepted rollouts; update_id generated
        ff.flow_info().flow_version
        ff.score_graph([GraphGroup("task-3", [...])])   # RewardFlow state-graph advantages

What the client does for you:
- timeouts (`timeout`, default 60 s per request, 5 s to connect);
- retries with exponential backoff and jitter on connection errors, 429 and 503 (and 502/504
  from a proxy), honouring Retry-After; never on other 4xx (`RetryPolicy`);
- /update: one `update_id` (generated unless given) reused by every retry, so a retried
  update is queued once (the service answers the repeat with `duplicate: true`);
- large batches split into chunks of `chunk_size` samples, sent `max_concurrency` at a time
  and reassembled in order; with `return_advantages` a group never straddles two chunks
  (advantages are normalised within a group, and a group within one request);
- several service URLs (a list or "http://a:8000,http://b:8000"): each attempt goes to the
  next one in turn, so a retry after a refused connection lands on another replica;
- typed results (`models`) and typed exceptions carrying the service's message and field
  (`errors`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from flowfield_client.errors import (
    FlowfieldConnectionError,
    FlowfieldError,
    FlowfieldTimeoutError,
    error_from_response,
)
from flowfield_client.models import (
    EndpointHealth,
    FlowInfo,
    GraphGroupLike,
    GraphResponse,
    Health,
    PolicyResult,
    SampleLike,
    ScoreResponse,
    ScoreResult,
    UpdateResult,
    graph_group_json,
    sample_json,
)
from flowfield_client.retry import RETRYABLE_EXCEPTIONS, RetryEvent, RetryPolicy, parse_retry_after

__all__ = ["AsyncFlowfieldClient", "ClientStats", "FlowfieldClient", "DEFAULT_TIMEOUT"]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
DEFAULT_CHUNK_SIZE = 256  # samples per request (the service's default limit is 1024)
DEFAULT_MAX_CONCURRENCY = 4  # chunks in flight at once, per call
GRAPH_PATH = "/v1/score/graph"

TimeoutLike = float | httpx.Timeout | None


@dataclass
class ClientStats:
    """Counters of one client, for logs and tests."""

    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0
    by_url: Counter[str] = field(default_factory=Counter)  # attempts per base URL
    by_path: Counter[str] = field(default_factory=Counter)  # attempts per endpoint path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, base_url: str, path: str) -> None:
        with self._lock:
            self.requests += 1
            self.by_url[base_url] += 1
            self.by_path[path] += 1

    def count_retry(self) -> None:
        with self._lock:
            self.retries += 1


def _parse_urls(base_url: str | Sequence[str] | None) -> list[str]:
    if base_url is None:
        base_url = os.environ.get("FLOWFIELD_URL") or DEFAULT_URL
    parts = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [u.strip().rstrip("/") for u in parts if u and u.strip()]
    if not urls:
        raise ValueError("no service URL given")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise ValueError(f"service URL must start with http:// or https://, got {u!r}")
    return urls


@dataclass
class _Plan:
    """How one call is split into requests: per request, the sample positions it carries."""

    chunks: list[list[int]]
    payloads: list[dict[str, Any]]
    ids: list[str]


class _ClientBase:
    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        timeout: TimeoutLike = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        headers: Mapping[str, str] | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        if chunk_size < 1 or max_concurrency < 1:
            raise ValueError("chunk_size and max_concurrency must be at least 1")
        self.base_urls = _parse_urls(base_url)
        key = api_key if api_key is not None else os.environ.get("FLOWFIELD_API_KEY")
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.retry = retry or RetryPolicy()
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.on_retry = on_retry
        self.stats = ClientStats()
        self._headers = {"accept": "application/json", **(headers or {})}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._rr = itertools.count()
        self._rr_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_urls!r})"

    # ---- routing and retry decisions (shared by the sync and async request loops) ----------

    def _next_base(self) -> str:
        with self._rr_lock:
            i = next(self._rr)
        return self.base_urls[i % len(self.base_urls)]

    def _retry_delay(
        self,
        method: str,
        url: str,
        attempt: int,
        policy: RetryPolicy,
        status: int | None,
        error: str,
        retry_after: float | None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if attempt >= policy.max_attempts:
            return None
        if status is not None and not policy.should_retry_status(status):
            return None
        delay = policy.delay(attempt, retry_after)
        self.stats.count_retry()
        if self.on_retry is not None:
            self.on_retry(RetryEvent(method, url, attempt, delay, status, error))
        return delay

    @staticmethod
    def _connection_error(exc: Exception, method: str, url: str, attempts: int) -> FlowfieldError:
        cls = FlowfieldTimeoutError if isinstance(exc, httpx.TimeoutException) else (
            FlowfieldConnectionError
        )
        what = type(exc).__name__
        return cls(f"{method} {url} failed after {attempts} attempt(s): {what}: {exc}", url=url)

    # ---- request planning --------------------------------------------------------------------

    def _plan_score(
        self,
        samples: Iterable[SampleLike],
        options: Mapping[str, Any],
        chunk_size: int | None,
    ) -> _Plan:
        items = _with_ids(samples)
        size = chunk_size or self.chunk_size
        if options.get("return_advantages"):
            units = _group_units(items)
        else:
            units = [[i] for i in range(len(items))]
        chunks = _pack(units, size) or [[]]  # no samples: one empty request, for the version
        extra = {"options": dict(options)} if options else {}
        payloads = [{"samples": [items[i] for i in chunk], **extra} for chunk in chunks]
        return _Plan(chunks, payloads, [s["id"] for s in items])

    def _plan_update(
        self, samples: Iterable[SampleLike], update_id: str, chunk_size: int | None
    ) -> _Plan:
        items = _with_ids(samples)
        size = chunk_size or self.chunk_size
        chunks = _pack([[i] for i in range(len(items))], size) or [[]]
        payloads = []
        for k, chunk in enumerate(chunks):
            uid = update_id if len(chunks) == 1 else f"{update_id}.{k}"
            payloads.append({"update_id": uid, "samples": [items[i] for i in chunk]})
        return _Plan(chunks, payloads, [s["id"] for s in items])

    @staticmethod
    def _merge_score(plan: _Plan, answers: list[dict[str, Any]]) -> ScoreResponse:
        results: list[ScoreResult | None] = [None] * len(plan.ids)
        versions: list[int] = []
        encoder = ""
        for chunk, answer in zip(plan.chunks, answers):
            part = ScoreResponse.from_json(answer)
            versions.append(part.flow_version)
            encoder = encoder or part.encoder
            if len(part.results) != len(chunk):
                raise FlowfieldError(
                    f"the service returned {len(part.results)} results for {len(chunk)} samples"
                )
            for i, r in zip(chunk, part.results):
                if r.id != plan.ids[i]:
                    raise FlowfieldError(f"result id {r.id!r} where {plan.ids[i]!r} was expected")
                results[i] = r
        return ScoreResponse(
            flow_version=min(versions),
            encoder=encoder,
            results=[r for r in results if r is not None],
            flow_versions=tuple(versions),
        )

    @staticmethod
    def _graph_body(
        groups: Iterable[GraphGroupLike],
        gamma: float | None,
        step_weight: float | None,
        undirected: bool | None,
    ) -> dict[str, Any]:
        """The /v1/score/graph body; options left as None take the service's defaults."""
        body: dict[str, Any] = {}
        if gamma is not None:
            body["gamma"] = gamma
        if step_weight is not None:
            body["step_weight"] = step_weight
        if undirected is not None:
            body["undirected"] = undirected
        body["groups"] = [graph_group_json(g) for g in groups]
        return body

    @staticmethod
    def _graph_response(body: dict[str, Any], answer: Any) -> GraphResponse:
        res = GraphResponse.from_json(answer)
        sent = [g.get("group_id") for g in body["groups"]]
        got = [g.group_id for g in res.groups]
        if got != sent:
            raise FlowfieldError(
                f"the service returned groups {got[:5]!r} for {sent[:5]!r} "
                f"({len(got)} for {len(sent)})"
            )
        return res

    @staticmethod
    def _merge_update(update_id: str, parts: list[UpdateResult]) -> UpdateResult:
        if len(parts) == 1:
            return parts[0]
        return UpdateResult(
            update_id=update_id,
            accepted=sum(p.accepted for p in parts),
            skipped=sum(p.skipped for p in parts),
            duplicate=all(p.duplicate for p in parts),
            pending=max(p.pending for p in parts),
            attempts=max(p.attempts for p in parts),
            parts=tuple(parts),
        )


class FlowfieldClient(_ClientBase):
    """Synchronous client. Thread-safe; chunks of a large batch go out on a thread pool.

    Args:
        base_url: one URL, a list, or a comma-separated string (default: $FLOWFIELD_URL or
            http://127.0.0.1:8000); several URLs are used round-robin.
        api_key: sent as `Authorization: Bearer` (default: $FLOWFIELD_API_KEY).
        timeout: seconds per request, or an `httpx.Timeout` (default 60 s, connect 5 s).
        retry: a `RetryPolicy` (default: 5 attempts, 0.25 s doubling, jitter 0.5).
        chunk_size: samples per request for score and update.
        max_concurrency: chunks in flight at once within one call.
        on_retry: called with a `RetryEvent` before each wait.
        http_client: an `httpx.Client` to use (its own timeout then applies to connections).
    """

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        timeout: TimeoutLike = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        headers: Mapping[str, str] | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            retry=retry,
            chunk_size=chunk_size,
            max_concurrency=max_concurrency,
            headers=headers,
            on_retry=on_retry,
        )
        self._own_http = http_client is None
        self._http = http_client or httpx.Client(
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=max(10, 2 * max_concurrency)),
        )

    def __enter__(self) -> FlowfieldClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    # ---- the API -----------------------------------------------------------------------------

    def score(
        self,
        samples: Iterable[SampleLike],
        *,
        chunk_size: int | None = None,
        max_concurrency: int | None = None,
        **options: Any,
    ) -> ScoreResponse:
        """Per-token flow rewards for each sample, in the order given.

        `options` are the service's scoring options (docs/api.md): normalization, beta, threshold,
        top_k, timesteps, noise_draws, return_deviations, return_advantages. Unknown ones are
        a 422 (`InvalidRequestError`). A sample the service cannot score comes back with
        `status == "error"`; it does not raise.
        """
        plan = self._plan_score(samples, options, chunk_size)
        answers = self._run_chunks(
            [("POST", "/v1/score", p) for p in plan.payloads], max_concurrency
        )
        return self._merge_score(plan, [a.json() for a, _ in answers])

    def update(
        self,
        samples: Iterable[SampleLike],
        update_id: str | None = None,
        *,
        chunk_size: int | None = None,
        max_concurrency: int | None = None,
    ) -> UpdateResult:
        """Push verifier-accepted rollouts (each with its `reward`) for online refinement.

        The service trains on those with reward >= its accept threshold and counts the rest as
        skipped. `update_id` (generated when omitted) is reused by every retry; pass your own
        (e.g. f"{run}-step{step}") to make a repeated call idempotent too. A batch over
        `chunk_size` goes as several updates with ids f"{update_id}.{k}".
        """
        update_id = update_id or uuid.uuid4().hex
        plan = self._plan_update(samples, update_id, chunk_size)
        try:
            answers = self._run_chunks(
                [("POST", "/v1/update", p) for p in plan.payloads], max_concurrency
            )
        except FlowfieldError as e:
            e.update_id = update_id
            raise
        parts = [UpdateResult.from_json(a.json(), attempts=n) for a, n in answers]
        return self._merge_update(update_id, parts)

    def score_graph(
        self,
        groups: Iterable[GraphGroupLike],
        *,
        gamma: float | None = None,
        step_weight: float | None = None,
        undirected: bool | None = None,
    ) -> GraphResponse:
        """RewardFlow: state values, step rewards and advantages of agent trajectories, from
        the state graph of each group (POST /v1/score/graph; no model, no flow version).

        `groups` are `GraphGroup`s or mappings with the API's fields (docs/api.md). `gamma`
        (value decay per step, [0, 1)), `step_weight` (weight of the step advantage) and
        `undirected` left as None take the service's defaults (0.9, 1.0, false). Sent as one
        request (groups are not chunked: the service's limit is 4096 groups per request);
        an invalid request raises `InvalidRequestError` with the service's message and field.
        """
        body = self._graph_body(groups, gamma, step_weight, undirected)
        resp, _ = self._request("POST", GRAPH_PATH, body)
        return self._graph_response(body, resp.json())

    def flow_info(self) -> FlowInfo:
        """The flow version the service scores with, its metadata, samples trained, pending."""
        resp, _ = self._request("GET", "/v1/flow")
        return FlowInfo.from_json(resp.json())

    def reload_policy(
        self, path: str, revision: str | None = None, name: str | None = None
    ) -> PolicyResult:
        """Reload the service's encoder from a policy checkpoint directory on its machine."""
        body = {"path": str(path), **({"revision": revision} if revision else {})}
        if name:
            body["name"] = name
        resp, _ = self._request("POST", "/v1/policy", body)
        return PolicyResult.from_json(resp.json())

    def health(self) -> Health:
        """Readiness of every configured URL (one try each, no retries, never raises)."""
        out = []
        for base in self.base_urls:
            try:
                r = self._http.get(base + "/readyz", headers=self._headers, timeout=self.timeout)
                out.append(_endpoint_health(base, r))
            except httpx.HTTPError as e:
                out.append(EndpointHealth(base, False, "unreachable", error=f"{e!r}"))
        return Health(out)

    # ---- plumbing ----------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: Any = None
    ) -> tuple[httpx.Response, int]:
        """One logical request with retries; returns the 2xx response and the attempts made."""
        policy = self.retry
        attempt = 0
        while True:
            attempt += 1
            base = self._next_base()
            url = base + path
            self.stats.count(base, path)
            try:
                resp = self._http.request(method, url, json=body, headers=self._headers)
            except RETRYABLE_EXCEPTIONS as e:
                delay = self._retry_delay(method, url, attempt, policy, None, repr(e), None)
                if delay is None:
                    raise self._connection_error(e, method, url, attempt) from e
                time.sleep(delay)
                continue
            if resp.status_code < 400:
                return resp, attempt
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            err = error_from_response(resp, retry_after)
            delay = self._retry_delay(method, url, attempt, policy, resp.status_code, str(err),
                                      retry_after)
            if delay is None:
                raise err
            time.sleep(delay)

    def _run_chunks(
        self, calls: list[tuple[str, str, Any]], max_concurrency: int | None
    ) -> list[tuple[httpx.Response, int]]:
        workers = min(len(calls), max_concurrency or self.max_concurrency)
        if workers <= 1:
            return [self._request(*c) for c in calls]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flowfield") as pool:
            futures = [pool.submit(self._request, *c) for c in calls]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


class AsyncFlowfieldClient(_ClientBase):
    """asyncio client with the same methods as `FlowfieldClient` (each a coroutine).

    Bound to the event loop it is first used on (httpx's connection pool is); chunks of a
    large batch are sent concurrently, at most `max_concurrency` at a time.
    """

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        timeout: TimeoutLike = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        headers: Mapping[str, str] | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            retry=retry,
            chunk_size=chunk_size,
            max_concurrency=max_concurrency,
            headers=headers,
            on_retry=on_retry,
        )
        self._own_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=max(10, 2 * max_concurrency)),
        )

    async def __aenter__(self) -> AsyncFlowfieldClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def score(
        self,
        samples: Iterable[SampleLike],
        *,
        chunk_size: int | None = None,
        max_concurrency: int | None = None,
        **options: Any,
    ) -> ScoreResponse:
        """See `FlowfieldClient.score`."""
        plan = self._plan_score(samples, options, chunk_size)
        answers = await self._run_chunks(
            [("POST", "/v1/score", p) for p in plan.payloads], max_concurrency
        )
        return self._merge_score(plan, [a.json() for a, _ in answers])

    async def update(
        self,
        samples: Iterable[SampleLike],
        update_id: str | None = None,
        *,
        chunk_size: int | None = None,
        max_concurrency: int | None = None,
    ) -> UpdateResult:
        """See `FlowfieldClient.update`."""
        update_id = update_id or uuid.uuid4().hex
        plan = self._plan_update(samples, update_id, chunk_size)
        try:
            answers = await self._run_chunks(
                [("POST", "/v1/update", p) for p in plan.payloads], max_concurrency
            )
        except FlowfieldError as e:
            e.update_id = update_id
            raise
        parts = [UpdateResult.from_json(a.json(), attempts=n) for a, n in answers]
        return self._merge_update(update_id, parts)

    async def score_graph(
        self,
        groups: Iterable[GraphGroupLike],
        *,
        gamma: float | None = None,
        step_weight: float | None = None,
        undirected: bool | None = None,
    ) -> GraphResponse:
        """See `FlowfieldClient.score_graph`."""
        body = self._graph_body(groups, gamma, step_weight, undirected)
        resp, _ = await self._request("POST", GRAPH_PATH, body)
        return self._graph_response(body, resp.json())

    async def flow_info(self) -> FlowInfo:
        """See `FlowfieldClient.flow_info`."""
        resp, _ = await self._request("GET", "/v1/flow")
        return FlowInfo.from_json(resp.json())

    async def reload_policy(
        self, path: str, revision: str | None = None, name: str | None = None
    ) -> PolicyResult:
        """See `FlowfieldClient.reload_policy`."""
        body = {"path": str(path), **({"revision": revision} if revision else {})}
        if name:
            body["name"] = name
        resp, _ = await self._request("POST", "/v1/policy", body)
        return PolicyResult.from_json(resp.json())

    async def health(self) -> Health:
        """See `FlowfieldClient.health`."""

        async def one(base: str) -> EndpointHealth:
            try:
                r = await self._http.get(
                    base + "/readyz", headers=self._headers, timeout=self.timeout
                )
                return _endpoint_health(base, r)
            except httpx.HTTPError as e:
                return EndpointHealth(base, False, "unreachable", error=f"{e!r}")

        return Health(list(await asyncio.gather(*(one(b) for b in self.base_urls))))

    async def _request(
        self, method: str, path: str, body: Any = None
    ) -> tuple[httpx.Response, int]:
        policy = self.retry
        attempt = 0
        while True:
            attempt += 1
            base = self._next_base()
            url = base + path
            self.stats.count(base, path)
            try:
                resp = await self._http.request(method, url, json=body, headers=self._headers)
            except RETRYABLE_EXCEPTIONS as e:
                delay = self._retry_delay(method, url, attempt, policy, None, repr(e), None)
                if delay is None:
                    raise self._connection_error(e, method, url, attempt) from e
                await asyncio.sleep(delay)
                continue
            if resp.status_code < 400:
                return resp, attempt
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            err = error_from_response(resp, retry_after)
            delay = self._retry_delay(method, url, attempt, policy, resp.status_code, str(err),
                                      retry_after)
            if delay is None:
                raise err
            await asyncio.sleep(delay)

    async def _run_chunks(
        self, calls: list[tuple[str, str, Any]], max_concurrency: int | None
    ) -> list[tuple[httpx.Response, int]]:
        if len(calls) == 1:
            return [await self._request(*calls[0])]
        sem = asyncio.Semaphore(max_concurrency or self.max_concurrency)

        async def one(call: tuple[str, str, Any]) -> tuple[httpx.Response, int]:
            async with sem:
                return await self._request(*call)

        tasks = [asyncio.ensure_future(one(c)) for c in calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            raise


# ---- helpers -------------------------------------------------------------------------------


def _with_ids(samples: Iterable[SampleLike]) -> list[dict[str, Any]]:
    """JSON samples, numbered by position where they have no id; ids must be unique."""
    items = [sample_json(s) for s in samples]
    seen: set[str] = set()
    for i, s in enumerate(items):
        if "id" not in s:
            s["id"] = str(i)
        sid = s["id"]
        if sid in seen:
            # the service rejects duplicates within one request; chunks would hide them
            raise ValueError(f"sample id {sid!r} appears more than once (samples[{i}])")
        seen.add(sid)
    return items


def _group_units(items: list[dict[str, Any]]) -> list[list[int]]:
    """Sample positions per advantage group, groups in order of first appearance.

    The service groups by group_id and, without one, by prompt (as tokens); the prompt's
    ids or text stand in for its tokens here."""
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(items):
        if s.get("group_id") is not None:
            key: Any = ("group", s["group_id"])
        elif s.get("prompt_ids") is not None:
            key = ("ids", tuple(s["prompt_ids"]))
        else:
            key = ("text", s.get("prompt", ""))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _pack(units: list[list[int]], size: int) -> list[list[int]]:
    """Consecutive units packed into chunks of at most `size` (a larger unit stays whole)."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    for unit in units:
        if cur and len(cur) + len(unit) > size:
            chunks.append(cur)
            cur = []
        cur = cur + unit
    if cur:
        chunks.append(cur)
    return chunks


def _endpoint_health(base: str, r: httpx.Response) -> EndpointHealth:
    try:
        body = r.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    checks = body.get("checks") if isinstance(body.get("checks"), dict) else {}
    status = str(body.get("status") or ("ok" if r.status_code == 200 else "unavailable"))
    return EndpointHealth(base, r.status_code == 200, status, dict(checks))
