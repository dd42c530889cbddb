"""POST /v1/score (and /score): dense per-token flow rewards."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from flowfield.rewards import RewardOptions
from flowfield.scorer import (
    FlowScorer,
    OptionError,
    ScoreOptions,
    check_timesteps,
    outcome_groups,
)
from service import metrics
from service.auth import require
from service.errors import ApiError
from service.samples import check_request_limits, resolve_ids, sample_problem
from service.scheduler import ScoreJob
from service.schemas import ScoreRequest, ScoreResponse, ScoreResult, error_responses
from service.settings import Settings
from service.state import ServiceState, get_settings_dep, get_state

router = APIRouter(tags=["score"], dependencies=[Depends(require("score"))])

ERRORS = error_responses(401, 403, 408, 413, 415, 422, 429)


def _reward_options(
    req: ScoreRequest, settings: Settings, scorer: FlowScorer, timesteps: tuple[float, ...]
) -> RewardOptions:
    o = req.options
    return RewardOptions(
        normalization=scorer.resolve_normalization(
            o.normalization, settings.normalization, timesteps
        ),
        beta=float(o.beta if o.beta is not None else settings.beta),
        threshold=float(o.threshold if o.threshold is not None else settings.threshold),
        top_k=o.top_k if o.top_k is not None else settings.top_k,
    )


def _timesteps(req: ScoreRequest, settings: Settings) -> tuple[float, ...]:
    ts = tuple(float(t) for t in (req.options.timesteps or settings.timesteps))
    try:
        check_timesteps(ts)  # the library's rule, answered 422 naming the option
    except OptionError as e:
        raise ApiError(422, "invalid_option", str(e), f"options.{e.field}") from None
    return ts


def _check_cost(
    req: ScoreRequest,
    prompts: list[list[int]],
    responses: list[list[int]],
    layers: int,
    timesteps: tuple[float, ...],
    draws: int,
    settings: Settings,
) -> None:
    """422 when tokens x hooked layers x timesteps x noise draws exceeds max_request_cost.

    Every (timestep, draw, layer) multiplies the flow rows (and their noise) of each token;
    prompt tokens are counted too (the encoder reads them), which keeps the measure simple
    and conservative. The default budget fits a request at the sample and token limits with
    the default options (1 timestep, 1 draw, 3 layers); the budget stops the multipliers.
    """
    tokens = sum(len(p) + len(r) for p, r in zip(prompts, responses))
    cost = tokens * layers * len(timesteps) * draws
    if cost <= settings.max_request_cost:
        return
    if req.options.noise_draws is not None and draws > 1:
        field = "options.noise_draws"
    elif req.options.timesteps is not None and len(timesteps) > 1:
        field = "options.timesteps"
    else:
        field = "samples"
    raise ApiError(
        422,
        "request_too_costly",
        f"request cost {cost} ({tokens} tokens x {layers} hooked layers x {len(timesteps)} "
        f"timesteps x {draws} noise draws) exceeds max_request_cost "
        f"{settings.max_request_cost}; send fewer noise_draws or timesteps, or fewer samples",
        field,
    )


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
    timesteps = _timesteps(req, settings)
    opts = _reward_options(req, settings, state.scorer, timesteps)
    draws = req.options.noise_draws or settings.noise_draws
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
    scorer = state.scorer
    try:  # e.g. "expert" normalisation needs a calibrated flow at matching timesteps
        scorer.check_options(ScoreOptions(opts, timesteps, draws))
    except ValueError as e:
        raise ApiError(422, "invalid_option", str(e), "options.normalization") from None
    prompts, responses = resolve_ids(req.samples, scorer.encoder, settings)
    _check_cost(req, prompts, responses, len(scorer.encoder.layers), timesteps, draws, settings)
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
            reward_options=opts,
            timesteps=timesteps,
            noise_draws=draws,
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
        normalization=opts.normalization,
        results=[results[i] for i in range(len(req.samples))],
    )
