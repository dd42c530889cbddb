"""POST /v1/score/graph: RewardFlow state-level rewards for agent trajectories (CPU only)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from flowfield.graph import Group, Step, Trajectory, score_groups
from service import metrics
from service.auth import require
from service.errors import ApiError
from service.schemas import GraphGroupOut, GraphRequest, GraphResponse, error_responses

router = APIRouter(tags=["graph"], dependencies=[Depends(require("score"))])

# Magnitudes that keep every sum, difference and advantage finite: a return adds up to 10,001
# rewards (|R| <= 1e16), a step reward is a difference of two values (<= 2e12) and an
# advantage adds step_weight times one (<= 4e18). 1e308 would overflow math.fsum.
MAX_ABS_REWARD = 1e12
MAX_ABS_STEP_WEIGHT = 1e6


def _invalid(code: str, message: str, field: str, sample_id: str | None = None) -> ApiError:
    """Every mistake this endpoint finds in a request is a 422 naming the field."""
    return ApiError(422, code, message, field, sample_id)


def _check_reward(value: float, field: str, sample_id: str | None = None) -> None:
    if abs(value) > MAX_ABS_REWARD:
        message = f"{field}: |reward| must be at most {MAX_ABS_REWARD:g}, got {value!r}"
        raise _invalid("invalid_reward", message, field, sample_id)


def _to_groups(req: GraphRequest) -> list[Group]:
    seen: set[str] = set()
    groups = []
    for gi, g in enumerate(req.groups):
        if g.group_id in seen:
            raise _invalid("duplicate_id", f"group_id {g.group_id!r} appears twice",
                           f"groups[{gi}].group_id")
        seen.add(g.group_id)
        ids: set[str] = set()
        trajs = []
        for ti, t in enumerate(g.trajectories):
            where = f"groups[{gi}].trajectories[{ti}]"
            if t.id in ids:
                message = f"trajectory id {t.id!r} appears twice in group {g.group_id!r}"
                raise _invalid("duplicate_id", message, f"{where}.id", t.id)
            ids.add(t.id)
            for si, st in enumerate(t.steps):
                _check_reward(float(st.reward), f"{where}.steps[{si}].reward", t.id)
            _check_reward(float(t.final_reward), f"{where}.final_reward", t.id)
            if t.success and t.truncated:
                raise _invalid("invalid_trajectory",
                               "a trajectory cannot be both success and truncated", where, t.id)
            trajs.append(
                Trajectory(
                    id=t.id,
                    steps=[Step(s.state, s.action, float(s.reward)) for s in t.steps],
                    final_state=t.final_state,
                    final_reward=float(t.final_reward),
                    success=t.success,
                    truncated=t.truncated,
                )
            )
        groups.append(Group(g.group_id, trajs))
    return groups


@router.post(
    "/v1/score/graph",
    response_model=GraphResponse,
    responses=error_responses(401, 408, 413, 415, 422),
)
async def score_graph(req: GraphRequest) -> GraphResponse:
    if abs(req.step_weight) > MAX_ABS_STEP_WEIGHT:
        message = f"|step_weight| must be at most {MAX_ABS_STEP_WEIGHT:g}, got {req.step_weight!r}"
        raise _invalid("invalid_option", message, "step_weight")
    groups = _to_groups(req)
    try:
        # pure-Python graph work: off the event loop so /score batching keeps flowing
        results = await asyncio.to_thread(
            score_groups, groups, float(req.gamma), float(req.step_weight), req.undirected
        )
    except (ValueError, TypeError, OverflowError) as e:
        raise _invalid("invalid_trajectory", str(e), "groups") from None
    metrics.GRAPH_TRAJECTORIES.inc(sum(len(g.trajectories) for g in groups))
    metrics.GRAPH_STEPS.inc(sum(len(t.steps) for g in groups for t in g.trajectories))
    # the results' dataclasses carry every field of the response models (and a node hash
    # per step that the response leaves out): validated from their attributes
    return GraphResponse(
        gamma=float(req.gamma),
        groups=[GraphGroupOut.model_validate(r, from_attributes=True) for r in results],
    )
