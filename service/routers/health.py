"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
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
    `status` is "degraded" while Redis is configured and unreachable."""
    checks = {"model": bool(state.ready)}
    if state.settings.redis_url and state.store is not None and state.store.redis is not None:
        try:
            checks["redis"] = bool(await state.store.redis.ping())
        except Exception:
            checks["redis"] = False
    ready = checks["model"]
    status = "unavailable" if not ready else ("ok" if all(checks.values()) else "degraded")
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
