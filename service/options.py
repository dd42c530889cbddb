"""A request's scoring options, resolved once, and the request-cost check.

Every scoring route (/v1/score, /score, /get_reward, the token-reward view) turns its
request's overrides and the service's defaults (FLOWFIELD_NORMALIZATION, ...; their values
are flowfield/defaults.py's) into one `ScoreOptions` here; that object goes into the
ScoreJob and on to FlowScorer.shape unchanged. The same cost check follows for all routes.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowfield.rewards import RewardOptions
from flowfield.scorer import FlowScorer, OptionError, ScoreOptions
from service.budget import CostModel
from service.errors import ApiError
from service.schemas import ScoreOptionsIn
from service.settings import Settings


def score_options(
    overrides: ScoreOptionsIn | None, settings: Settings, scorer: FlowScorer
) -> ScoreOptions:
    """The request's options over the service's defaults, resolved for this scorer's flow
    (an unset normalisation becomes FLOWFIELD_NORMALIZATION, "expert" falling back to
    "bilateral" where the flow has no calibration at these timesteps: FlowScorer.resolve).

    422 `invalid_option` naming the option for a timestep outside (0, 1) or a normalisation
    this flow cannot serve (an explicit "expert" without a matching calibration).
    """
    o = overrides or ScoreOptionsIn()
    try:
        options = ScoreOptions(
            RewardOptions(
                normalization=o.normalization,
                beta=float(o.beta if o.beta is not None else settings.beta),
                threshold=float(o.threshold if o.threshold is not None else settings.threshold),
                top_k=o.top_k if o.top_k is not None else settings.top_k,
            ),
            tuple(float(t) for t in (o.timesteps or settings.timesteps)),
            o.noise_draws or settings.noise_draws,
        )
    except OptionError as e:  # the library's rule, answered 422 naming the option
        raise ApiError(422, "invalid_option", str(e), f"options.{e.field}") from None
    try:  # e.g. "expert" normalisation needs a calibrated flow at matching timesteps
        return scorer.resolve(options, settings.normalization)
    except ValueError as e:
        raise ApiError(422, "invalid_option", str(e), "options.normalization") from None


def check_cost(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    layers: int,
    options: ScoreOptions,
    settings: Settings,
    overrides: ScoreOptionsIn | None = None,
    samples_field: str = "samples",
    cost_model: CostModel | None = None,
    scored: Sequence[int] | None = None,
) -> None:
    """422 `request_too_costly` when tokens x hooked layers x timesteps x noise draws exceeds
    max_request_cost, or when the model time of the samples to be scored (`scored`, indices;
    None = all), estimated by `cost_model` (calibrated at start-up, service/budget.py),
    exceeds max_request_seconds.

    Every (timestep, draw, layer) multiplies the flow rows (and their noise) of each token;
    prompt tokens are counted too (the encoder reads them), which keeps the measure simple
    and conservative. The default budget fits a request at the sample and token limits with
    the default options (1 timestep, 1 draw, 3 layers); the budget stops the multipliers.
    The error names the option the request raised (`overrides`), else `samples_field`.
    """
    tokens = sum(len(p) + len(r) for p, r in zip(prompts, responses))
    timesteps, draws = len(options.timesteps), options.noise_draws
    cost = tokens * layers * timesteps * draws
    o = overrides or ScoreOptionsIn()
    if o.noise_draws is not None and draws > 1:
        field = "options.noise_draws"
    elif o.timesteps is not None and timesteps > 1:
        field = "options.timesteps"
    else:
        field = samples_field
    if cost > settings.max_request_cost:
        raise ApiError(
            422,
            "request_too_costly",
            f"request cost {cost} ({tokens} tokens x {layers} hooked layers x {timesteps} "
            f"timesteps x {draws} noise draws) exceeds max_request_cost "
            f"{settings.max_request_cost}; send fewer noise_draws or timesteps, or fewer "
            "samples",
            field,
        )
    if cost_model is None or settings.max_request_seconds <= 0:
        return
    if scored is not None:  # samples that fail alone (too long, ...) take no model time
        prompts = [prompts[i] for i in scored]
        responses = [responses[i] for i in scored]
        tokens = sum(len(p) + len(r) for p, r in zip(prompts, responses))
    response_tokens = sum(len(r) for r in responses)
    seconds = cost_model.seconds(tokens, response_tokens, layers, timesteps * draws)
    if seconds > settings.max_request_seconds:
        raise ApiError(
            422,
            "request_too_costly",
            f"request would take about {seconds:.0f} s of model time on this service "
            f"({tokens} tokens, {response_tokens} response tokens x {layers} hooked layers x "
            f"{timesteps} timesteps x {draws} noise draws), over max_request_seconds "
            f"{settings.max_request_seconds:g}; send fewer noise_draws or timesteps, or "
            "fewer samples",
            field,
        )
