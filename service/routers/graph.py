"""POST /v1/score/graph: RewardFlow state-level rewards for agent trajectories (CPU only)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from flowfield.graph import Group, Step, Trajectory, score_groups
from service import metrics
from service.auth import require
from service.errors import ApiError
from service.offload import (
    PART_VALIDATORS,
    OffloadRoute,
    dump_spliced,
    no_cyclic_gc,
    validation_error,
)
from service.schemas import (
    GraphGroup,
    GraphGroupOut,
    GraphRequest,
    GraphResponse,
    GraphTrajectory,
    GraphTrajectoryOut,
    error_responses,
)
from service.settings import Settings
from service.state import get_settings_dep

router = APIRouter(
    tags=["graph"], dependencies=[Depends(require("score"))], route_class=OffloadRoute
)

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


# one graph request computes at a time (pure Python: more would only share the GIL, and each
# holds its graph in memory); the others wait their turn off the event loop
_GRAPH_SLOTS: anyio.CapacityLimiter | None = None


def _graph_slots() -> anyio.CapacityLimiter:
    global _GRAPH_SLOTS
    if _GRAPH_SLOTS is None:
        _GRAPH_SLOTS = anyio.CapacityLimiter(1)
    return _GRAPH_SLOTS


def check_graph_size(req: GraphRequest, settings: Settings) -> None:
    """422 `request_too_costly` when the request's steps over all trajectories (its graph's
    states, what building and propagating cost) exceed max_graph_steps."""
    steps = sum(len(t.steps) + 1 for g in req.groups for t in g.trajectories)
    _check_steps(steps, sum(len(g.trajectories) for g in req.groups), settings)


def _check_steps(steps: int, trajectories: int, settings: Settings) -> None:
    if steps > settings.max_graph_steps:
        raise _invalid(
            "request_too_costly",
            f"{steps} states ({trajectories} trajectories, their steps and final states) "
            f"exceed max_graph_steps {settings.max_graph_steps}; send fewer trajectories or "
            "groups per request",
            "groups",
        )


def _score_quietly(req: GraphRequest, settings: Settings) -> bytes:
    with no_cyclic_gc():  # ~10 objects per step: no full collection over them meanwhile
        return _score(req, settings)


def _score(req: GraphRequest, settings: Settings) -> bytes:
    """Blocking: checks, graphs, propagation and the response's JSON bytes."""
    if abs(req.step_weight) > MAX_ABS_STEP_WEIGHT:
        message = f"|step_weight| must be at most {MAX_ABS_STEP_WEIGHT:g}, got {req.step_weight!r}"
        raise _invalid("invalid_option", message, "step_weight")
    check_graph_size(req, settings)
    groups = _to_groups(req)
    try:
        results = score_groups(groups, float(req.gamma), float(req.step_weight), req.undirected)
    except (ValueError, TypeError, OverflowError) as e:
        raise _invalid("invalid_trajectory", str(e), "groups") from None
    metrics.GRAPH_TRAJECTORIES.inc(sum(len(g.trajectories) for g in groups))
    metrics.GRAPH_STEPS.inc(sum(len(t.steps) for g in groups for t in g.trajectories))
    # the results' dataclasses carry every field of the response models (and a node hash
    # per step that the response leaves out): validated from their attributes, and encoded,
    # a trajectory at a time (a 100k-step response in one call would hold the GIL ~0.5 s)
    groups = []
    for r in results:
        trajs = [
            _json(GraphTrajectoryOut.model_validate(t, from_attributes=True))
            for t in r.trajectories
        ]
        head = GraphGroupOut(
            group_id=r.group_id, num_nodes=r.num_nodes, num_edges=r.num_edges, trajectories=[]
        )
        groups.append(dump_spliced(head, trajs))
    return dump_spliced(GraphResponse(gamma=float(req.gamma), groups=[]), groups)


def _json(model: BaseModel) -> bytes:
    return model.__pydantic_serializer__.to_json(model)


def validate_in_parts(data: Any, settings: Settings | None = None) -> GraphRequest:
    """GraphRequest validation a trajectory at a time (OffloadRoute, service/offload.py): one
    pydantic call over a 7 MB request holds the GIL, and so the event loop, for seconds. The
    same model and the same first error as validating it whole: the request's own fields
    first, then each group's id, then its trajectories in order."""
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("trajectories"), list) for g in groups
    ):
        return _whole(data)
    if settings is not None:  # the size budget before any validation work
        trajs = [t for g in groups for t in g["trajectories"]]
        steps = sum(
            len(t["steps"]) + 1 if isinstance(t, dict) and isinstance(t.get("steps"), list) else 1
            for t in trajs
        )
        _check_steps(steps, len(trajs), settings)
    _outside(GraphRequest, {**data, "groups": []}, "groups", (), data)
    out = []
    for gi, g in enumerate(groups):
        _outside(GraphGroup, {**g, "trajectories": []}, "trajectories", ("groups", gi), data)
        trajs = []
        for ti, t in enumerate(g["trajectories"]):
            try:
                trajs.append(GraphTrajectory.model_validate(t))
            except ValidationError as e:
                raise validation_error(e, ("groups", gi, "trajectories", ti), data) from None
        try:  # instances pass as they are; this checks the list's length
            out.append(GraphGroup.model_validate({**g, "trajectories": trajs}))
        except ValidationError as e:
            raise validation_error(e, ("groups", gi), data) from None
    try:
        return GraphRequest.model_validate({**data, "groups": out})
    except ValidationError as e:
        raise validation_error(e, (), data) from None


def _whole(data: Any) -> GraphRequest:
    try:
        return GraphRequest.model_validate(data)
    except ValidationError as e:
        raise validation_error(e, (), data) from None


def _outside(model: type[BaseModel], value: Any, field: str, loc: tuple, data: Any) -> None:
    """Raise the errors of `value` (its `field` emptied) that are not about `field`."""
    try:
        model.model_validate(value)
    except ValidationError as e:
        errors = [err for err in e.errors(include_url=False) if err["loc"][:1] != (field,)]
        if errors:
            raise RequestValidationError(
                [{**err, "loc": ("body", *loc, *err["loc"])} for err in errors], body=data
            ) from None


PART_VALIDATORS[GraphRequest] = validate_in_parts


@router.post(
    "/v1/score/graph",
    response_model=GraphResponse,
    responses=error_responses(401, 408, 413, 415, 422),
)
async def score_graph(
    req: GraphRequest, settings: Settings = Depends(get_settings_dep)
) -> GraphResponse:
    # pure-Python graph work: off the event loop, one request at a time
    body = await anyio.to_thread.run_sync(
        _score_quietly, req, settings, limiter=_graph_slots(), abandon_on_cancel=True
    )
    return Response(content=body, media_type="application/json")
