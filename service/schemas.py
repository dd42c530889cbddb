"""Request and response models: the single source of the HTTP schema (docs/api.md)."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from flowfield import defaults

# reject NaN/inf everywhere a number is read; ids must be real integers, not "3" or 3.0
_STRICT = ConfigDict(allow_inf_nan=False, str_max_length=1_000_000)


def _float_range(v: Any) -> Any:
    """A JSON integer as the float it stands for; one beyond the float range (1e400 written
    as digits, which JSON reads as an integer) is refused here, where the field is named,
    instead of overflowing later in float(). Anything else is left to the float schema."""
    if isinstance(v, int) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            raise ValueError(
                f"number out of range: a {len(str(abs(v)))}-digit integer; numbers must be "
                f"finite, of magnitude at most {sys.float_info.max:.6g}"
            ) from None
    return v


# a JSON number (integer or float) read as a finite float: no NaN, no Infinity, no integer
# beyond the float range (each a 422 naming the field); not a string, not a bool. One type
# (no union), so a validation error's location is the field itself.
def number(**constraints: Any) -> Any:
    """The Number type with Field constraints (ge, lt, ...) on the float itself, so that they
    show in the OpenAPI schema as minimum, exclusiveMaximum, ..."""
    return Annotated[
        StrictFloat,
        AllowInfNan(False),
        Field(**constraints),
        BeforeValidator(_float_range),
    ]


Number = number()
NonNegative = number(ge=0)
Discount = number(ge=0, lt=1)
# a rewarding timestep: (0, 1) shows in the OpenAPI schema (exclusiveMinimum/Maximum), while
# the check stays the library's one rule (flowfield.scorer.check_timesteps), answered 422
# invalid_option naming the timestep, as documented
Timestep = number(json_schema_extra={"exclusiveMinimum": 0, "exclusiveMaximum": 1})

# r = -beta * s with |s| <= 1: a token reward is at most beta, and a flow return or an
# advantage adds up to one per token. 1e300 keeps those sums finite for any request the body
# limit lets through (millions of tokens), where a beta near 1.8e308 would overflow to inf.
MAX_BETA = 1e300


def _beta_at_most(v: float) -> float:
    if v > MAX_BETA:
        raise ValueError(f"beta must be at most {MAX_BETA:g}, got {v!r}")
    return v


# (the bound is checked by a validator, whose message reads better than pydantic's le= one
# with 1e300 written out in 301 digits; the schema still says maximum)
Beta = Annotated[
    number(ge=0, json_schema_extra={"maximum": MAX_BETA}), AfterValidator(_beta_at_most)
]


def _valid_unicode(v: str) -> str:
    """JSON may carry a lone UTF-16 surrogate ("\\ud800"): not text, and it cannot be
    tokenised, logged or echoed back as UTF-8; refuse it where it is read."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"not valid Unicode text: a lone UTF-16 surrogate at character {e.start}"
        ) from None
    return v


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]


class ScoreOptionsIn(BaseModel):
    """Per-request overrides of the service's scoring defaults (FLOWFIELD_NORMALIZATION, ...,
    shipped with flowfield/defaults.py's values); unknown keys are an error. Each option
    left out takes the service's default; service/options.py resolves them."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    normalization: Literal["bilateral", "unilateral", "expert"] | None = Field(
        None,
        description="how deviations become scores s: "
        + defaults.normalization_help(
            f"default FLOWFIELD_NORMALIZATION ({defaults.NORMALIZATION} as shipped)"
        ),
    )
    beta: Beta | None = Field(  # -beta * s: a negative beta inverts the reward
        None,
        description="reward scale, r = -beta * s (default FLOWFIELD_BETA, "
        f"{defaults.BETA:g} as shipped)",
    )
    threshold: NonNegative | None = Field(
        None, description=f"eta: zero every |s| <= eta (default FLOWFIELD_THRESHOLD, "
        f"{defaults.THRESHOLD:g} as shipped)"
    )
    top_k: StrictInt | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="K: keep at most K non-zero tokens, 0 = all (default FLOWFIELD_TOP_K, "
        f"{defaults.TOP_K} as shipped)",
    )
    timesteps: list[Timestep] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="flow timesteps the deviation is measured at, each in (0, 1) (default "
        f"FLOWFIELD_TIMESTEPS, {list(defaults.TIMESTEPS)} as shipped)",
    )
    noise_draws: StrictInt | None = Field(
        None,
        ge=1,
        le=64,
        description="noise draws per token and timestep (default FLOWFIELD_NOISE_DRAWS, "
        f"{defaults.NOISE_DRAWS} as shipped)",
    )
    return_deviations: StrictBool = False
    return_advantages: StrictBool = False


class ScoreSample(BaseModel):
    model_config = _STRICT

    id: Text = Field(min_length=1, max_length=256)
    group_id: Text | None = Field(None, max_length=256)
    prompt_ids: list[StrictInt] | None = None
    response_ids: list[StrictInt] | None = None
    prompt: Text | None = None
    response: Text | None = None
    reward: Number | None = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    samples: list[ScoreSample]
    options: ScoreOptionsIn = Field(default_factory=ScoreOptionsIn)


class ScoreResult(BaseModel):
    id: str
    status: Literal["ok", "error"]
    num_tokens: int = 0
    token_rewards: list[float] | None = None
    flow_return: float | None = None
    deviations: list[float] | None = None
    advantages: list[float] | None = None
    error: str | None = None
    # what the service did to the sample or doubts about it (service/samples.py: a trailing
    # end-of-turn token not scored, a chat model's prompt without its template's header)
    warnings: list[str] | None = None


class ScoreResponse(BaseModel):
    flow_version: int
    encoder: str
    # the normalisation the token rewards were shaped with (the request's, else the default)
    normalization: str | None = None
    results: list[ScoreResult]


class UpdateSampleIn(BaseModel):
    model_config = _STRICT

    id: Text = Field(min_length=1, max_length=256)
    prompt_ids: list[StrictInt] | None = None
    response_ids: list[StrictInt] | None = None
    prompt: Text | None = None
    response: Text | None = None
    reward: Number


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    update_id: Text | None = Field(None, min_length=1, max_length=256)
    samples: list[UpdateSampleIn]


class UpdateResponse(BaseModel):
    update_id: str
    accepted: int
    skipped: int
    duplicate: bool
    pending: int


class FlowInfo(BaseModel):
    flow_version: int
    encoder: str
    dtype: str  # what the encoder and flow compute in here (FLOWFIELD_DTYPE resolved)
    metadata: dict[str, Any]
    samples_trained: int
    last_update: float | None
    # null while the update queue (Redis) is unreachable; pending_error says why
    pending: int | None
    pending_error: str | None = None
    queue_backend: str
    # Redis policy sync: the policy epoch this process encodes with (null without Redis),
    # and why it could not load the recorded current policy (null when in sync)
    policy_epoch: int | None = None
    policy_error: str | None = None


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Text = Field(min_length=1, max_length=4096)  # PATH_MAX on Linux
    revision: Text | None = Field(None, max_length=256)
    name: Text | None = Field(None, max_length=256)


class PolicyResponse(BaseModel):
    encoder: str
    flow_version: int
    layers: list[int]
    policy_epoch: int | None = None  # the recorded policy epoch (Redis only)


class OpenRLHFResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    sample_id: str | None = None
    request_id: str | None = None  # as in the X-Request-ID response header


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route: an ErrorResponse body for each status."""
    return {status: {"model": ErrorResponse} for status in statuses}


# ---- RewardFlow mode (/v1/score/graph) ------------------------------------------------------

JsonValue = Any  # a state key: a string or any JSON value; equal values are the same state


class GraphStep(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    state: JsonValue
    action: JsonValue = None
    reward: Number = 0.0


class GraphTrajectory(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    id: Text = Field(min_length=1, max_length=256)
    steps: list[GraphStep] = Field(max_length=10_000)
    final_state: JsonValue
    final_reward: Number = 0.0
    success: StrictBool = False
    truncated: StrictBool = False  # ended by the step limit: the final state is not terminal


class GraphGroup(BaseModel):
    group_id: Text = Field(min_length=1, max_length=256)
    trajectories: list[GraphTrajectory] = Field(min_length=1, max_length=1024)


class GraphRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    gamma: Discount = defaults.GAMMA
    step_weight: Number = defaults.STEP_WEIGHT
    undirected: StrictBool = False
    groups: list[GraphGroup] = Field(max_length=4096)


class GraphStepOut(BaseModel):
    value: float
    step_reward: float
    advantage: float
    step_advantage: float


class GraphTrajectoryOut(BaseModel):
    id: str
    steps: list[GraphStepOut]
    episode_return: float
    episode_advantage: float
    final_value: float
    success: bool


class GraphGroupOut(BaseModel):
    group_id: str
    num_nodes: int
    num_edges: int
    trajectories: list[GraphTrajectoryOut]


class GraphResponse(BaseModel):
    gamma: float
    groups: list[GraphGroupOut]
