"""GET /v1/flow and POST /v1/policy: what the service scores with, and policy sync."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends

from flowfield.checkpoint import FlowMismatchError, policy_revision
from service import metrics
from service.auth import require
from service.errors import ApiError
from service.offload import OffloadRoute
from service.schemas import FlowInfo, PolicyRequest, PolicyResponse, error_responses
from service.state import ServiceState, get_state
from service.updates.policy import PolicySyncUnavailable
from service.updates.queue import QueueUnavailable

router = APIRouter(tags=["flow"], route_class=OffloadRoute)


@router.get("/v1/flow", response_model=FlowInfo, dependencies=[Depends(require("score"))])
async def flow_info(state: ServiceState = Depends(get_state)) -> FlowInfo:
    sc = state.scorer
    meta = sc.meta
    # the in-process learner's last publish (a stand-alone learner's is not known here)
    last_update = state.learner.stats.last_update if state.learner is not None else None
    pending, pending_error = None, None
    try:
        pending = await _pending(state)
    except QueueUnavailable as e:  # only `pending` needs Redis: the rest is this process's
        pending_error = f"update queue unavailable: {e}"
    return FlowInfo(
        flow_version=sc.version,
        encoder=sc.encoder.identity.label(),
        dtype=sc.encoder.precision.name,
        metadata={
            **meta.config.to_dict(),
            "encoder": meta.encoder,
            "hooked_layers": list(sc.encoder.layers),
            "created_at": meta.created_at,
            "tokens_trained": meta.tokens_trained,
            # the policy encoder this flow version was trained against
            "policy_revision": policy_revision(meta),
        },
        samples_trained=meta.samples_trained,
        last_update=last_update or (meta.created_at or None),
        pending=pending,
        pending_error=pending_error,
        queue_backend=state.queue_backend,
        policy_epoch=state.policy_epoch if state.policy_sync is not None else None,
        policy_error=state.policy_error,
    )


async def _pending(state: ServiceState) -> int:
    n = await state.queue.pending()  # QueueUnavailable: pending null, pending_error says why
    metrics.PENDING_SAMPLES.set(n)
    return n


@router.post(
    "/v1/policy",
    response_model=PolicyResponse,
    dependencies=[Depends(require("update"))],
    responses=error_responses(401, 403, 408, 413, 415, 422, 503),
)
async def reload_policy(
    req: PolicyRequest, state: ServiceState = Depends(get_state)
) -> PolicyResponse:
    """Reload the encoder from a local checkpoint directory (RLFR's latents are the policy's).

    With Redis the policy is recorded under a new policy epoch once it loaded here, and every
    other scorer replica and the stand-alone learner reload it (docs/api.md)."""
    path = Path(req.path)
    try:
        is_model_dir = (path / "config.json").is_file()
    except OSError as e:  # e.g. ENAMETOOLONG: a path component over the filesystem's limit
        raise ApiError(
            422, "invalid_path", f"{req.path[:200]} cannot be read: {e.strerror}", "path"
        ) from None
    if not is_model_dir:
        raise ApiError(
            422,
            "invalid_path",
            f"{req.path} is not a Hugging Face model directory (no config.json)",
            "path",
        )
    try:
        await state.reload_policy(path, req.revision, req.name)
    except FlowMismatchError as e:
        raise ApiError(422, "flow_mismatch", str(e), "path") from None
    except PolicySyncUnavailable as e:
        raise ApiError(
            503,
            "queue_unavailable",
            f"redis unavailable, the policy was not recorded for the other replicas ({e}); "
            "the current policy stays in service",
            headers={"Retry-After": "2"},
        ) from None
    except (OSError, ValueError) as e:
        raise ApiError(422, "invalid_model", f"cannot load {req.path}: {e}", "path") from None
    sc = state.scorer
    return PolicyResponse(
        encoder=sc.encoder.identity.label(),
        flow_version=sc.version,
        layers=list(sc.encoder.layers),
        policy_epoch=state.policy_epoch if state.policy_sync is not None else None,
    )
