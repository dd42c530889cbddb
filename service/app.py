"""The FastAPI app: routers per resource, a lifespan that builds the shared state, and the
layers every request passes, outermost first:

- RequestContext: the request id (X-Request-ID, taken from the request or generated; on every
  response, in every JSON error body and in every log line written meanwhile), metrics, and
  one JSON access-log line per request. It wraps the whole middleware stack, so it sees the
  413/408 of BodyLimit and the 500 of the framework's error handler too. It also refuses
  headers over FLOWFIELD_MAX_HEADER_BYTES / FLOWFIELD_MAX_HEADER_COUNT (431); the HTTP
  server's own limits are in service/http.py.
- BodyLimit: body size (413), body read time (408), bytes of bodies in flight over all
  requests (503 busy), and the request's cancellation when its client disconnects (499 in
  the access log).
- the content-type guard (415) of the routes that take a POST body.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowfield import __version__
from service import metrics
from service.auth import UPDATE_ENDPOINTS, open_update_warning
from service.errors import error_response, install_error_handlers
from service.logs import REQUEST_ID
from service.offload import OffloadRoute
from service.routers import flow, graph, health, openrlhf, score, ui, update
from service.routers.docs import install_docs
from service.settings import Settings, get_settings
from service.state import ServiceState

log = logging.getLogger("flowfield.service")
access_log = logging.getLogger("flowfield.access")

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128
# scope key BodyLimit sets when the client disconnected before its answer (logged as 499)
CLIENT_GONE = "flowfield.client_gone"


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID when it is 1-128 printable ASCII characters, else a new one
    (uuid4 hex)."""
    for name, value in scope.get("headers") or []:
        if name.lower() == REQUEST_ID_HEADER:
            if 0 < len(value) <= MAX_REQUEST_ID and all(0x20 <= b < 0x7F for b in value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


class RequestContext:
    """Request id, metrics and the access log around everything else (see the module doc).

    The access-log line names the path without its query string (which can hold `api_key`)."""

    def __init__(self, app: ASGIApp, max_header_count: int = 0, max_header_bytes: int = 0) -> None:
        self.app = app
        self.max_header_count = max_header_count
        self.max_header_bytes = max_header_bytes

    def _header_problem(self, scope: Scope) -> str | None:
        """Why the request's headers are refused (431), or None. The HTTP server already
        refuses a header block that arrives in pieces over max_header_bytes (service/http.py);
        this catches one that came in a single read, and the header count."""
        headers = scope.get("headers") or []
        if self.max_header_count and len(headers) > self.max_header_count:
            return f"{len(headers)} header fields; the limit is {self.max_header_count}"
        if self.max_header_bytes:
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(k) + len(v) + 4 for k, v in headers)
            if size > self.max_header_bytes:
                return f"request headers of {size} bytes; the limit is {self.max_header_bytes}"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        token = REQUEST_ID.set(rid)
        start = time.perf_counter()
        status: int | None = None
        done = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, done
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER
                ]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, rid.encode())]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done = True
            await send(message)

        try:
            problem = self._header_problem(scope)
            if problem:
                await error_response(
                    431, "headers_too_large", problem, "headers", headers={"Connection": "close"}
                )(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            # The framework's error handler (service/errors.py) has logged a failure before the
            # response started and answered 500; anything else is logged here, and nothing is
            # re-raised to the server, whose own log lines would lack the request id.
            if status is None:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                await error_response(
                    500, "internal_error", "internal error; see the service log"
                )(scope, receive, send_with_id)
            elif not (done and status == 500):
                log.exception("error after the response started")
        finally:
            elapsed = time.perf_counter() - start
            if status is None and scope.get(CLIENT_GONE):
                status = 499  # nginx's "client closed request": nothing was answered
            if status is not None:
                _record(scope["path"], status, elapsed)
            client = scope.get("client")
            access_log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "request_id": rid,
                    "client": f"{client[0]}:{client[1]}" if client else None,
                },
            )
            REQUEST_ID.reset(token)


class FlowfieldAPI(FastAPI):
    """FastAPI with RequestContext outside its whole middleware stack, the framework's error
    middleware included (app.add_middleware stays inside that one)."""

    max_header_count = 0
    max_header_bytes = 0

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContext(
            super().build_middleware_stack(), self.max_header_count, self.max_header_bytes
        )


class BodyLimit:
    """Reads a request body up to `limit` bytes and answers 413 beyond it, and 408 when the
    whole body has not arrived `timeout` seconds after the request headers (then the
    connection is closed: the rest of the body would otherwise be read as the next request).

    Checked on Content-Length up front and on the bytes actually received (chunked uploads),
    before any route code or JSON parsing runs.

    `inflight`: the bytes of bodies still arriving, over all requests, may not pass this
    budget (0 = none): a body whose Content-Length (or, chunked, whose bytes so far) would
    pass it gets 503 `busy` with Retry-After, and the connection is closed. So slow or
    stalled uploads cannot hold more memory than the budget until their 408s.

    Once the body is in, the request runs as a task that is cancelled when the client
    disconnects (uvicorn's `http.disconnect`): its queued scoring is dropped (the scheduler
    sees the cancellation, service/scheduler.py) and nothing is answered. The access log
    records such a request with status 499.
    """

    def __init__(
        self, app: ASGIApp, limit: int, timeout: float = 10.0, inflight: int = 0
    ) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout
        self.inflight_limit = inflight
        self.inflight = 0  # bytes reserved by bodies still arriving

    def _busy(self) -> ASGIApp:
        log.warning(
            "request body refused: the in-flight upload budget is spent",
            extra={"inflight_bytes": self.inflight, "budget_bytes": self.inflight_limit},
        )
        return error_response(
            503,
            "busy",
            f"the service is receiving {self.inflight_limit} bytes of request bodies already "
            "(FLOWFIELD_MAX_INFLIGHT_BODY_BYTES); retry shortly",
            "body",
            headers={"Retry-After": "1", "Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > self.limit:
            await error_response(
                413, "body_too_large", f"request body over the {self.limit}-byte limit", "body"
            )(scope, receive, send)
            return
        budget = self.inflight_limit
        reserved = 0  # this request's share of self.inflight
        if budget and declared:
            if self.inflight + declared > budget:
                await self._busy()(scope, receive, send)
                return
            reserved = declared
            self.inflight += reserved
        try:
            body = await self._read(scope, receive, send, budget, declared)
        finally:
            self.inflight -= reserved
        if body is None:  # answered (413, 408, 503) or the client left
            return
        await self._run(scope, receive, send, body)

    async def _read(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        budget: int,
        declared: int | None,
    ) -> bytes | None:
        chunks, size, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.timeout
        counted = 0  # chunked uploads: bytes of this request added to self.inflight
        try:
            while more:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    log.warning(
                        "request body not received in time",
                        extra={"received_bytes": size, "timeout_s": self.timeout},
                    )
                    await error_response(
                        408,
                        "body_timeout",
                        f"request body not received within {self.timeout:g} s",
                        "body",
                        headers={"Connection": "close"},
                    )(scope, receive, send)
                    return None
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    await error_response(
                        413, "body_too_large", f"request body over the {self.limit}-byte limit",
                        "body",
                    )(scope, receive, send)
                    return None
                if budget and declared is None and chunk:  # no Content-Length: count as it comes
                    if self.inflight + len(chunk) > budget:
                        await self._busy()(scope, receive, send)
                        return None
                    self.inflight += len(chunk)
                    counted += len(chunk)
                chunks.append(chunk)
                more = message.get("more_body", False)
        finally:
            self.inflight -= counted
        return b"".join(chunks)

    async def _run(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        """The app with the body, as a task cancelled when the client disconnects."""
        sent = False
        gone = asyncio.Event()

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()  # only the watcher below reads the server's receive
            return {"type": "http.disconnect"}

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        answered = False

        async def send_tracked(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True  # uvicorn's receive says "disconnect" from now on
            await send(message)

        task = asyncio.ensure_future(self.app(scope, replay, send_tracked))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done() and not (answered and watcher.done()):
                # the client left before its answer (or this request is being torn down)
                task.cancel()
                if watcher.done():
                    scope[CLIENT_GONE] = True
                    log.info("client disconnected: request cancelled")
            watcher.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not scope.get(CLIENT_GONE):
                raise


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        warning = open_update_warning(settings)
        if warning:
            log.warning(warning, extra={"open_endpoints": list(UPDATE_ENDPOINTS)})
        state = ServiceState(settings)
        app.state.flowfield = state
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FlowfieldAPI(
        title="flowfield",
        version=__version__,
        summary="Dense per-token flow rewards (RLFR) and graph rewards (RewardFlow) for RL.",
        lifespan=lifespan,
        # served from the package by install_docs, not from a CDN
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.max_header_count = settings.max_header_count
    app.max_header_bytes = settings.max_header_bytes
    app.router.route_class = OffloadRoute  # the /score and /update aliases below
    install_error_handlers(app)

    @app.middleware("http")
    async def json_bodies_only(request: Request, call_next):
        # only where a route takes this POST: elsewhere the router answers 404 or 405
        if request.method == "POST" and _takes(app, request.scope):
            ctype = request.headers.get("content-type", "")
            if not ctype.split(";")[0].strip().lower().endswith("json"):
                return error_response(
                    415,
                    "unsupported_media_type",
                    f"send the body as application/json (got {ctype or 'no content type'!r})",
                    "content-type",
                )
        return await call_next(request)

    for r in (
        score.router,
        update.router,
        flow.router,
        graph.router,
        health.router,
        openrlhf.router,
        ui.router,
    ):
        app.include_router(r)
    install_docs(app)
    # docs/api.md: /score and /update are served too, with the same behaviour
    app.add_api_route(
        "/score",
        score.score,
        methods=["POST"],
        include_in_schema=False,
        response_model=score.ScoreResponse,
        response_model_exclude_none=True,
        dependencies=score.router.dependencies,
    )
    app.add_api_route(
        "/update",
        update.update,
        methods=["POST"],
        include_in_schema=False,
        status_code=202,
        response_model=update.UpdateResponse,
        dependencies=update.router.dependencies,
    )
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        timeout=settings.body_read_timeout_s,
        inflight=settings.max_inflight_body_bytes,
    )
    return app


def _takes(app: FastAPI, scope: Scope) -> bool:
    """Whether a route matches both the path and the method of the request."""
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


# the paths of the OpenAPI spec, exactly (tests/service/test_service_api.py checks the served
# spec against this set)
DOCUMENTED_PATHS = frozenset(
    {
        "/v1/score",
        "/v1/update",
        "/v1/flow",
        "/v1/policy",
        "/v1/score/graph",
        "/get_reward",
        "/healthz",
        "/readyz",
        "/metrics",
        "/ui",
        "/ui/render",
    }
)
# the endpoint labels of the request metrics: the documented paths, the undocumented aliases
# /score and /update, and the docs pages
_KNOWN = DOCUMENTED_PATHS | {"/score", "/update", "/docs", "/openapi.json"}


def _record(path: str, status: int, seconds: float) -> None:
    endpoint = path if path in _KNOWN else "other"  # bounded label set
    metrics.REQUESTS.labels(endpoint, str(status)).inc()
    if status >= 400:
        metrics.REQUEST_ERRORS.labels(endpoint, str(status)).inc()
    metrics.REQUEST_LATENCY.labels(endpoint).observe(seconds)


def app_factory() -> FastAPI:
    """uvicorn --factory entry point: settings from the environment."""
    return create_app()
