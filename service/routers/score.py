"""POST /v1/score (and /score): dense per-token flow rewards."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Depends, Response

from flowfield.scorer import FlowScorer, ScoreOptions, outcome_groups
from service import metrics
from service.auth import require
from service.budget import CostModel
from service.errors import ApiError
from service.offload import OffloadRoute, dump_spliced, run_cpu
from service.options import check_cost, score_options
from service.samples import (
    SampleNotes,
    check_request_limits,
    resolve_samples,
    sample_problem,
    with_notes,
)
from service.scheduler import ScoreJob
from service.schemas import ScoreRequest, ScoreResponse, ScoreResult, error_responses
from service.settings import Settings
from service.state import ServiceState, get_settings_dep, get_state

router = APIRouter(
    tags=["score"], dependencies=[Depends(require("score"))], route_class=OffloadRoute
)

ERRORS = error_responses(401, 403, 408, 413, 415, 422, 429)


@router.post(
    "/v1/score", response_model=ScoreResponse, responses=ERRORS, response_model_exclude_none=True
)
async def score(
    req: ScoreRequest,
    state: ServiceState = Depends(get_state),
    settings: Settings = Depends(get_settings_dep),
) -> ScoreResponse:
    """Score rollouts: per-token rewards aligned to response_ids (docs/api.md)."""
    out = await score_request(req, state, settings)
    return Response(await run_cpu(encode_response, out), media_type="application/json")


def encode_response(out: ScoreResponse) -> bytes:
    """FastAPI's JSON of the response (None fields left out), a result at a time: one call
    over thousands of results would hold the GIL, and so the event loop, for all of them."""
    items = [r.__pydantic_serializer__.to_json(r, exclude_none=True) for r in out.results]
    return dump_spliced(out.model_copy(update={"results": []}), items, exclude_none=True)


@dataclass
class Prepared:
    """A /v1/score request checked and turned into token ids (off the event loop)."""

    options: ScoreOptions
    prompts: list[list[int]]
    responses: list[list[int]]
    ok: list[int]  # the samples to score
    errors: dict[int, ScoreResult]  # the samples that fail alone
    notes: list[SampleNotes]  # per sample: end-of-turn tokens stripped, warnings


def prepare(
    req: ScoreRequest, settings: Settings, scorer: FlowScorer, cost_model: CostModel | None
) -> Prepared:
    """Blocking: limits, options, tokenisation, cost and per-sample checks (ApiError on a
    request-level problem)."""
    check_request_limits(req.samples, settings)
    options = score_options(req.options, settings, scorer)  # the one options object
    if req.options.return_advantages:
        for i, s in enumerate(req.samples):
            if s.reward is None:
                raise ApiError(
                    422,
                    "missing_reward",
                    "return_advantages needs the verifier reward of every sample",
                    f"samples[{i}].reward",
                    s.id,
                )
    prompts, responses, notes = resolve_samples(req.samples, scorer.encoder, settings)
    problems = [
        sample_problem(p, r, scorer.encoder, s)
        for p, r, s in zip(prompts, responses, req.samples)
    ]
    ok = [i for i, pr in enumerate(problems) if pr is None]
    layers = len(scorer.encoder.layers)
    check_cost(prompts, responses, layers, options, settings, req.options,
               cost_model=cost_model, scored=ok)
    errors = {
        i: ScoreResult(id=req.samples[i].id, status="error", error=pr, num_tokens=len(responses[i]))
        for i, pr in enumerate(problems)
        if pr is not None
    }
    return Prepared(options, prompts, responses, ok, errors, notes)


async def score_request(
    req: ScoreRequest, state: ServiceState, settings: Settings
) -> ScoreResponse:
    """What POST /v1/score does, for other routes (the token-reward view) to share: same
    limits, errors and scheduler. Everything but the scheduler's wait runs off the loop."""
    scorer = state.scorer
    prep = await run_cpu(prepare, req, settings, scorer, state.cost_model)
    options, prompts, responses, ok = prep.options, prep.prompts, prep.responses, prep.ok
    want_adv = req.options.return_advantages
    flow_version, encoder_label = scorer.version, scorer.encoder.identity.label()
    out = None
    if ok:
        group_ids = outcome_groups([prompts[i] for i in ok], [req.samples[i].group_id for i in ok])
        job = ScoreJob(
            prompts=[prompts[i] for i in ok],
            responses=[responses[i] for i in ok],
            options=options,
            outcome_rewards=[float(req.samples[i].reward) for i in ok] if want_adv else None,
            group_ids=group_ids if want_adv else None,
        )
        try:
            out = await state.scheduler.submit(job)
        except ValueError as e:  # the flow changed under the request and cannot serve it
            raise ApiError(422, "invalid_option", str(e), "options.normalization") from None
        flow_version, encoder_label = out.flow_version, out.encoder
    n_err = len(req.samples) - len(ok)
    if ok:
        metrics.SAMPLES_SCORED.labels("ok").inc(len(ok))
    if n_err:
        metrics.SAMPLES_SCORED.labels("error").inc(n_err)

    def build() -> ScoreResponse:
        results = dict(prep.errors)
        for i, sc in zip(ok, out.scores if out is not None else []):
            results[i] = ScoreResult(
                id=req.samples[i].id,
                status="ok",
                num_tokens=len(responses[i]),
                token_rewards=sc.token_rewards.tolist(),
                flow_return=sc.flow_return,
                deviations=sc.deviations.tolist() if req.options.return_deviations else None,
                advantages=sc.advantages.tolist() if want_adv else None,
            )
        return ScoreResponse(
            flow_version=flow_version,
            encoder=encoder_label,
            normalization=options.reward.normalization,
            results=[with_notes(results[i], prep.notes[i]) for i in range(len(req.samples))],
        )

    return await run_cpu(build)
