"""POST /v1/update (and /update): verifier-accepted rollouts for online refinement."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends

from flowfield.encoder import LatentEncoder
from service import metrics
from service.auth import require
from service.errors import ApiError
from service.offload import OffloadRoute, run_cpu
from service.samples import check_request_limits, resolve_ids, sample_problem
from service.schemas import UpdateRequest, UpdateResponse, error_responses
from service.settings import Settings
from service.state import ServiceState, get_settings_dep, get_state
from service.updates.types import UpdateSample

router = APIRouter(
    tags=["update"], dependencies=[Depends(require("update"))], route_class=OffloadRoute
)


def _accepted(
    req: UpdateRequest, update_id: str, encoder: LatentEncoder, settings: Settings
) -> list[UpdateSample]:
    """Blocking: the samples to queue (ApiError on a request problem)."""
    check_request_limits(req.samples, settings)
    prompts, responses = resolve_ids(req.samples, encoder, settings)
    accepted: list[UpdateSample] = []
    for i, s in enumerate(req.samples):
        if float(s.reward) < settings.accept_threshold:
            continue
        problem = sample_problem(prompts[i], responses[i], encoder, s)
        if problem:
            raise ApiError(422, "invalid_sample", problem, f"samples[{i}]", s.id)
        accepted.append(
            UpdateSample(f"{update_id}:{s.id}", prompts[i], responses[i], float(s.reward))
        )
    return accepted


@router.post(
    "/v1/update",
    status_code=202,
    response_model=UpdateResponse,
    responses=error_responses(401, 403, 408, 413, 415, 422, 503),
)
async def update(
    req: UpdateRequest,
    state: ServiceState = Depends(get_state),
    settings: Settings = Depends(get_settings_dep),
) -> UpdateResponse:
    """Queue the samples whose reward reaches the accept threshold; 202 = durably queued.

    The whole request is validated before anything is queued, so a 4xx queues nothing.
    A repeated update_id queues nothing and answers duplicate=true.
    """
    update_id = req.update_id or uuid.uuid4().hex
    # limits, tokenisation and sample checks off the event loop
    accepted = await run_cpu(_accepted, req, update_id, state.scorer.encoder, settings)
    skipped = len(req.samples) - len(accepted)
    # Redis unreachable: QueueUnavailable, answered 503 (service/errors.py); nothing queued
    res = await state.queue.enqueue(update_id, accepted)
    if res.duplicate:
        metrics.UPDATE_DUPLICATES.inc()
    else:
        metrics.UPDATE_SAMPLES.labels("accepted").inc(res.accepted)
        metrics.UPDATE_SAMPLES.labels("skipped").inc(skipped)
    metrics.PENDING_SAMPLES.set(res.pending)
    return UpdateResponse(
        update_id=update_id,
        accepted=0 if res.duplicate else res.accepted,
        skipped=skipped,
        duplicate=res.duplicate,
        pending=res.pending,
    )
