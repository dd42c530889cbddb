"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.state import ServiceState, get_state

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: ServiceState = Depends(get_state)) -> JSONResponse:
    """Ready to score: the model is loaded. Redis is reported but does not decide: scoring
    does not need it (a scorer that loses Redis keeps scoring with the flow version it has;
    /update answers 503 until Redis is back), so a Redis outage does not empty the Service.
    `status` is "degraded" while Redis is configured and unreachable.
    With Redis, `checks.policy` appears, false, and the process is not ready while the policy
    recorded by POST /v1/policy on another replica could not be loaded here: this replica
    would score with another encoder than the rest."""
    checks = {"model": bool(state.ready)}
    if state.settings.redis_url and state.store is not None and state.store.redis is not None:
        try:
            checks["redis"] = bool(await state.store.redis.ping())
        except Exception:
            checks["redis"] = False
        if not state.policy_in_sync:
            checks["policy"] = False
    ready = checks["model"] and checks.get("policy", True)
    status = "unavailable" if not ready else ("ok" if all(checks.values()) else "degraded")
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
)
async def prometheus_metrics(request: Request) -> Response:
    # the pending gauge from the queue itself: another process's learner consumes it
    state: ServiceState | None = getattr(request.app.state, "flowfield", None)
    if state is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(state.refresh_pending(), 1.0)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
