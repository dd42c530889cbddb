"""POST /get_reward: OpenRLHF's remote reward model shape (--reward.remote_url).

What OpenRLHF (0.11) sends: one request per sample (`n` samples of a prompt concurrently),
`{"query": [prompt + response decoded with special tokens], "prompts": [prompt], "labels":
[the dataset's label, any JSON value]}`, over aiohttp without headers; it retries 5 times,
then logs the failure and trains the sample without a reward. Hence:

- the key may come in the URL: `--reward.remote_url "http://host:8000/get_reward?api_key=KEY"`
  (service/auth.py removes it from the request before anything is logged);
- labels are taken as they come (the service does not read them);
- the EOS text OpenRLHF decodes into the query is cut off the response (`strip_eos`, default
  on): the tokenizer's EOS and padding tokens, repeated, at the end of the response.

Scoring takes the service's default options, resolved by the same code as /v1/score's
(service/options.py), and the same request-cost check (422 `request_too_costly`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from flowfield.samples import SampleLimits, check_sample
from flowfield.scorer import FlowScorer, ScoreOptions
from service.auth import require
from service.budget import CostModel
from service.errors import ApiError
from service.offload import OffloadRoute, run_cpu
from service.options import check_cost, score_options
from service.scheduler import ScoreJob
from service.schemas import OpenRLHFResponse, Text, error_responses
from service.settings import Settings
from service.state import ServiceState, get_settings_dep, get_state

router = APIRouter(
    tags=["openrlhf"],
    dependencies=[Depends(require("score", url_key=True))],
    route_class=OffloadRoute,
)


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward request. Lists may be empty."""

    model_config = ConfigDict(extra="allow")

    query: list[Text]  # Text: a lone surrogate (\ud800) is a 422, not a tokenizer crash
    prompts: list[Text] = Field(default_factory=list)
    labels: list[Any] = Field(
        default_factory=list, description="the dataset's label values, of any JSON type (unused)"
    )


def end_tokens(tokenizer: Any) -> list[str]:
    """The texts `strip_eos` cuts off: the tokenizer's EOS and padding tokens."""
    out = []
    for attr in ("eos_token", "pad_token"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, str) and v and v not in out:
            out.append(v)
    return out


def strip_end(text: str, tokens: list[str]) -> str:
    """`text` without any run of `tokens` at its end."""
    changed = True
    while changed and text:
        changed = False
        for t in tokens:
            if text.endswith(t):
                text = text[: -len(t)]
                changed = True
    return text


def _check_lengths(req: GetRewardRequest, settings: Settings) -> None:
    n = len(req.query)
    if req.prompts and len(req.prompts) != n:
        raise ApiError(
            422, "length_mismatch", f"{len(req.prompts)} prompts for {n} queries", "prompts"
        )
    if req.labels and len(req.labels) != n:
        raise ApiError(
            422, "length_mismatch", f"{len(req.labels)} labels for {n} queries", "labels"
        )
    if n > settings.max_samples:
        raise ApiError(
            422, "too_many_samples", f"{n} queries; the limit is {settings.max_samples}", "query"
        )


def _prepare(
    req: GetRewardRequest,
    strip_eos: bool,
    settings: Settings,
    scorer: FlowScorer,
    cost_model: CostModel | None,
) -> tuple[ScoreOptions, list[list[int]], list[list[int]]]:
    """Blocking (off the event loop): checks, options and tokenisation of every query."""
    _check_lengths(req, settings)
    options = score_options(None, settings, scorer)  # the defaults, resolved as /v1/score does
    enc = scorer.encoder
    limits = SampleLimits.of(enc)
    if not limits.has_tokenizer:
        raise ApiError(422, "no_tokenizer", "the policy has no tokenizer: /get_reward takes "
                       "text; score token ids on /v1/score", "query")
    ends = end_tokens(enc.tokenizer) if strip_eos else []
    prompts, responses = [], []
    for i, q in enumerate(req.query):
        p = req.prompts[i] if req.prompts else ""
        resp = q[len(p) :] if p and q.startswith(p) else q
        if not p or not q.startswith(p):
            p = ""
        pi, ri = enc.tokenize(p, strip_end(resp, ends))
        if len(pi) + len(ri) > settings.max_tokens_per_sample:
            raise ApiError(
                422,
                "too_many_tokens",
                f"{len(pi) + len(ri)} tokens; the limit is {settings.max_tokens_per_sample}",
                f"query[{i}]",
            )
        # an empty response is not an error here: it gets 0.0 (docs/api.md)
        problem = check_sample(pi, ri, limits) if ri else None
        if problem:  # no per-sample error in OpenRLHF's shape: the request is refused
            raise ApiError(422, "invalid_sample", f"query[{i}]: {problem}", f"query[{i}]")
        prompts.append(pi)
        responses.append(ri)
    # counted as /v1/score counts the same samples: every query's prompt and response tokens
    check_cost(prompts, responses, len(enc.layers), options, settings, samples_field="query",
               cost_model=cost_model)
    return options, prompts, responses


@router.post(
    "/get_reward",
    response_model=OpenRLHFResponse,
    responses=error_responses(401, 408, 413, 415, 422, 429),
)
async def get_reward(
    req: GetRewardRequest,
    strip_eos: bool = Query(
        True, description="cut the tokenizer's EOS/pad token texts off the end of each response"
    ),
    state: ServiceState = Depends(get_state),
    settings: Settings = Depends(get_settings_dep),
) -> OpenRLHFResponse:
    """One reward per query: the sum of its token rewards (the flow return).

    The response is the query with its prompt prefix removed; without prompts (or when a
    query does not start with its prompt) the whole query is scored as the response. A query
    with an empty response gets 0.0; one the policy cannot score (flowfield.samples: a token
    id outside the vocabulary, longer than the model's context) is a 422 `invalid_sample`
    naming it, as OpenRLHF's shape has no per-sample error.
    """
    n = len(req.query)
    if n == 0:
        _check_lengths(req, settings)
        return OpenRLHFResponse(rewards=[], scores=[], extra_logs={})
    options, prompts, responses = await run_cpu(
        _prepare, req, strip_eos, settings, state.scorer, state.cost_model
    )
    ok = [i for i, r in enumerate(responses) if r]
    rewards = [0.0] * n
    mean_dev = [0.0] * n
    if ok:
        job = ScoreJob([prompts[i] for i in ok], [responses[i] for i in ok], options)
        try:
            out = await state.scheduler.submit(job)
        except ValueError as e:  # the service's default options do not fit the current flow
            raise ApiError(422, "invalid_option", str(e), "options") from None
        for i, sc in zip(ok, out.scores):
            rewards[i] = sc.flow_return
            mean_dev[i] = float(sc.deviations.mean())
    return OpenRLHFResponse(
        rewards=rewards,
        scores=list(rewards),
        extra_logs={"flow_return": list(rewards), "mean_deviation": mean_dev},
    )
