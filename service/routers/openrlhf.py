"""POST /get_reward: OpenRLHF's remote reward model shape (--reward.remote_url)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from flowfield.rewards import RewardOptions
from service.auth import require_score
from service.errors import ApiError
from service.scheduler import Overloaded, ScoreJob
from service.schemas import ErrorResponse, OpenRLHFRequest, OpenRLHFResponse
from service.settings import Settings
from service.state import ServiceState, get_settings_dep, get_state

router = APIRouter(tags=["openrlhf"], dependencies=[Depends(require_score)])


@router.post(
    "/get_reward",
    response_model=OpenRLHFResponse,
    responses={422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
)
async def get_reward(
    req: OpenRLHFRequest,
    state: ServiceState = Depends(get_state),
    settings: Settings = Depends(get_settings_dep),
) -> OpenRLHFResponse:
    """One reward per query: the sum of its token rewards (the flow return).

    The response is the query with its prompt prefix removed; without prompts (or when a
    query does not start with its prompt) the whole query is scored as the response.
    """
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
    if n == 0:
        return OpenRLHFResponse(rewards=[], scores=[], extra_logs={})
    enc = state.scorer.encoder
    prompts, responses = [], []
    for i, q in enumerate(req.query):
        p = req.prompts[i] if req.prompts else ""
        resp = q[len(p) :] if p and q.startswith(p) else q
        if not p or not q.startswith(p):
            p = ""
        pi, ri = enc.tokenize(p, resp)
        if len(pi) + len(ri) > settings.max_tokens_per_sample:
            raise ApiError(
                422,
                "too_many_tokens",
                f"{len(pi) + len(ri)} tokens; the limit is {settings.max_tokens_per_sample}",
                f"query[{i}]",
            )
        prompts.append(pi)
        responses.append(ri)
    ok = [i for i, r in enumerate(responses) if r]
    rewards = [0.0] * n
    mean_dev = [0.0] * n
    if ok:
        job = ScoreJob(
            [prompts[i] for i in ok],
            [responses[i] for i in ok],
            RewardOptions(
                settings.normalization, settings.beta, settings.threshold, settings.top_k
            ),
            tuple(settings.timesteps),
            settings.noise_draws,
        )
        try:
            out = await state.scheduler.submit(job)
        except Overloaded as e:
            raise ApiError(
                429, "overloaded", f"scoring queue is full ({e})", headers={"Retry-After": "1"}
            ) from None
        for i, sc in zip(ok, out.scores):
            rewards[i] = sc.flow_return
            mean_dev[i] = float(sc.deviations.mean())
    return OpenRLHFResponse(
        rewards=rewards,
        scores=list(rewards),
        extra_logs={"flow_return": list(rewards), "mean_deviation": mean_dev},
    )
