"""The FastAPI app: routers per resource, a lifespan that builds the shared state, and the
layers every request passes, outermost first:

- RequestContext: the request id (X-Request-ID, taken from the request or generated; on every
  response, in every JSON error body and in every log line written meanwhile), metrics, and
  one JSON access-log line per request. It wraps the whole middleware stack, so it sees the
  413/408 of BodyLimit and the 500 of the framework's error handler too.
- BodyLimit: body size (413) and body read time (408).
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
from service.routers import flow, graph, health, openrlhf, score, ui, update
from service.routers.docs import install_docs
from service.settings import Settings, get_settings
from service.state import ServiceState

log = logging.getLogger("flowfield.service")
access_log = logging.getLogger("flowfield.access")

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128


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

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContext(super().build_middleware_stack())


class BodyLimit:
    """Reads a request body up to `limit` bytes and answers 413 beyond it, and 408 when the
    whole body has not arrived `timeout` seconds after the request headers (then the
    connection is closed: the rest of the body would otherwise be read as the next request).

    Checked on Content-Length up front and on the bytes actually received (chunked uploads),
    before any route code or JSON parsing runs.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float = 10.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_big = error_response(
            413, "body_too_large", f"request body over the {self.limit}-byte limit", "body"
        )
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await too_big(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.timeout
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
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_big(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


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
        BodyLimit, limit=settings.max_body_bytes, timeout=settings.body_read_timeout_s
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
_KNOWN = DOCUMENTED_PATHS | {"/score", "/update", "/docs", "/redoc", "/openapi.json"}


def _record(path: str, status: int, seconds: float) -> None:
    endpoint = path if path in _KNOWN else "other"  # bounded label set
    metrics.REQUESTS.labels(endpoint, str(status)).inc()
    if status >= 400:
        metrics.REQUEST_ERRORS.labels(endpoint, str(status)).inc()
    metrics.REQUEST_LATENCY.labels(endpoint).observe(seconds)


def app_factory() -> FastAPI:
    """uvicorn --factory entry point: settings from the environment."""
    return create_app()
