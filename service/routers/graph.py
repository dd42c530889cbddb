"""POST /v1/score/graph: RewardFlow state-level rewards for agent trajectories (CPU only)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from flowfield.graph import Group, Step, Trajectory, score_groups
from service import metrics
from service.auth import require
from service.errors import ApiError
from service.schemas import (
    ErrorResponse,
    GraphGroupOut,
    GraphRequest,
    GraphResponse,
    GraphStepOut,
    GraphTrajectoryOut,
)

router = APIRouter(tags=["graph"], dependencies=[Depends(require("score"))])

# Magnitudes that keep every sum, difference and advantage finite: a return adds up to 10,001
# rewards (|R| <= 1e16), a step reward is a difference of two values (<= 2e12) and an
# advantage adds step_weight times one (<= 4e18). 1e308 would overflow math.fsum.
MAX_ABS_REWARD = 1e12
MAX_ABS_STEP_WEIGHT = 1e6


def _check_reward(value: float, field: str, sample_id: str | None = None) -> None:
    if abs(value) > MAX_ABS_REWARD:
        raise ApiError(
            422,
            "invalid_reward",
            f"{field}: |reward| must be at most {MAX_ABS_REWARD:g}, got {value!r}",
            field,
            sample_id,
        )


def _to_groups(req: GraphRequest) -> list[Group]:
    seen: set[str] = set()
    groups = []
    for gi, g in enumerate(req.groups):
        if g.group_id in seen:
            raise ApiError(
                422,
                "duplicate_id",
                f"group_id {g.group_id!r} appears twice",
                f"groups[{gi}].group_id",
            )
        seen.add(g.group_id)
        ids: set[str] = set()
        trajs = []
        for ti, t in enumerate(g.trajectories):
            if t.id in ids:
                raise ApiError(
                    422,
                    "duplicate_id",
                    f"trajectory id {t.id!r} appears twice in group {g.group_id!r}",
                    f"groups[{gi}].trajectories[{ti}].id",
                    t.id,
                )
            ids.add(t.id)
            where = f"groups[{gi}].trajectories[{ti}]"
            for si, st in enumerate(t.steps):
                _check_reward(float(st.reward), f"{where}.steps[{si}].reward", t.id)
            _check_reward(float(t.final_reward), f"{where}.final_reward", t.id)
            if t.success and t.truncated:
                raise ApiError(
                    422,
                    "invalid_trajectory",
                    "a trajectory cannot be both success and truncated",
                    f"groups[{gi}].trajectories[{ti}]",
                    t.id,
                )
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
    responses={code: {"model": ErrorResponse} for code in (401, 408, 413, 415, 422)},
)
async def score_graph(req: GraphRequest) -> GraphResponse:
    if abs(req.step_weight) > MAX_ABS_STEP_WEIGHT:
        raise ApiError(
            422,
            "invalid_option",
            f"|step_weight| must be at most {MAX_ABS_STEP_WEIGHT:g}, got {req.step_weight!r}",
            "step_weight",
        )
    groups = _to_groups(req)
    try:
        # pure-Python graph work: off the event loop so /score batching keeps flowing
        results = await asyncio.to_thread(
            score_groups, groups, float(req.gamma), float(req.step_weight), req.undirected
        )
    except (ValueError, TypeError, OverflowError) as e:
        raise ApiError(422, "invalid_trajectory", str(e), "groups") from None
    metrics.GRAPH_TRAJECTORIES.inc(sum(len(g.trajectories) for g in groups))
    metrics.GRAPH_STEPS.inc(sum(len(t.steps) for g in groups for t in g.trajectories))
    return GraphResponse(
        gamma=float(req.gamma),
        groups=[
            GraphGroupOut(
                group_id=r.group_id,
                num_nodes=r.num_nodes,
                num_edges=r.num_edges,
                trajectories=[
                    GraphTrajectoryOut(
                        id=t.id,
                        episode_return=t.episode_return,
                        episode_advantage=t.episode_advantage,
                        final_value=t.final_value,
                        success=t.success,
                        steps=[
                            GraphStepOut(
                                value=s.value,
                                step_reward=s.step_reward,
                                advantage=s.advantage,
                                step_advantage=s.step_advantage,
                            )
                            for s in t.steps
                        ],
                    )
                    for t in r.trajectories
                ],
            )
            for r in results
        ],
    )
