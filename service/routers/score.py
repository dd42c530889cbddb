"""POST /v1/score (and /score): dense per-token flow rewards."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from flowfield.scorer import outcome_groups
from service import metrics
from service.auth import require
from service.errors import ApiError
from service.options import check_cost, score_options
from service.samples import check_request_limits, resolve_ids, sample_problem
from service.scheduler import ScoreJob
from service.schemas import ScoreRequest, ScoreResponse, ScoreResult, error_responses
from service.settings import Settings
from service.state import ServiceState, get_settings_dep, get_state

router = APIRouter(tags=["score"], dependencies=[Depends(require("score"))])

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
    return await score_request(req, state, settings)


async def score_request(
    req: ScoreRequest, state: ServiceState, settings: Settings
) -> ScoreResponse:
    """What POST /v1/score does, for other routes (the token-reward view) to share: same
    limits, errors and scheduler."""
    check_request_limits(req.samples, settings)
    scorer = state.scorer
    options = score_options(req.options, settings, scorer)  # the one options object
    want_adv = req.options.return_advantages
    if want_adv:
        for i, s in enumerate(req.samples):
            if s.reward is None:
                raise ApiError(
                    422,
                    "missing_reward",
                    "return_advantages needs the verifier reward of every sample",
                    f"samples[{i}].reward",
                    s.id,
                )
    prompts, responses = resolve_ids(req.samples, scorer.encoder, settings)
    check_cost(prompts, responses, len(scorer.encoder.layers), options, settings, req.options)
    problems = [
        sample_problem(p, r, scorer.encoder, s)
        for p, r, s in zip(prompts, responses, req.samples)
    ]
    ok = [i for i, pr in enumerate(problems) if pr is None]
    results: dict[int, ScoreResult] = {
        i: ScoreResult(id=req.samples[i].id, status="error", error=pr, num_tokens=len(responses[i]))
        for i, pr in enumerate(problems)
        if pr is not None
    }
    flow_version, encoder_label = scorer.version, scorer.encoder.identity.label()
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
        for i, sc in zip(ok, out.scores):
            results[i] = ScoreResult(
                id=req.samples[i].id,
                status="ok",
                num_tokens=len(responses[i]),
                token_rewards=sc.token_rewards.tolist(),
                flow_return=sc.flow_return,
                deviations=sc.deviations.tolist() if req.options.return_deviations else None,
                advantages=sc.advantages.tolist() if want_adv else None,
            )
    n_err = len(req.samples) - len(ok)
    if ok:
        metrics.SAMPLES_SCORED.labels("ok").inc(len(ok))
    if n_err:
        metrics.SAMPLES_SCORED.labels("error").inc(n_err)
    return ScoreResponse(
        flow_version=flow_version,
        encoder=encoder_label,
        normalization=options.reward.normalization,
        results=[results[i] for i in range(len(req.samples))],
    )
