"""The FastAPI app: routers per resource, a lifespan that builds the shared state, and the
guards every request passes (body size, content type, metrics)."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service import metrics
from service.errors import error_response, install_error_handlers
from service.routers import flow, graph, health, openrlhf, score, ui, update
from service.settings import Settings, get_settings
from service.state import ServiceState


class BodyLimit:
    """Reads a request body up to `limit` bytes and answers 413 beyond it.

    Checked on Content-Length up front and on the bytes actually received (chunked uploads),
    before any route code or JSON parsing runs.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

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
        while more:
            message = await receive()
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
        state = ServiceState(settings)
        app.state.flowfield = state
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="flowfield",
        version="0.1.0",
        summary="Dense per-token flow rewards (RLFR) and graph rewards (RewardFlow) for RL.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        route = request.url.path
        start = time.perf_counter()
        if request.method == "POST":
            ctype = request.headers.get("content-type", "")
            if not ctype.split(";")[0].strip().lower().endswith("json"):
                response = error_response(
                    415,
                    "unsupported_media_type",
                    f"send the body as application/json (got {ctype or 'no content type'!r})",
                    "content-type",
                )
                _record(route, response.status_code, start)
                return response
        response = await call_next(request)
        _record(route, response.status_code, start)
        return response

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
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


_KNOWN = {
    "/v1/score",
    "/score",
    "/v1/update",
    "/update",
    "/v1/flow",
    "/v1/policy",
    "/v1/score/graph",
    "/get_reward",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/openapi.json",
}


def _record(path: str, status: int, start: float) -> None:
    endpoint = path if path in _KNOWN else "other"  # bounded label set
    metrics.REQUESTS.labels(endpoint, str(status)).inc()
    if status >= 400:
        metrics.REQUEST_ERRORS.labels(endpoint, str(status)).inc()
    metrics.REQUEST_LATENCY.labels(endpoint).observe(time.perf_counter() - start)


def app_factory() -> FastAPI:
    """uvicorn --factory entry point: settings from the environment."""
    return create_app()
