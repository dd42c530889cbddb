"""verl 0.9.x: a reward-loop manager backed by the flowfield service, and an advantage
estimator that adds its dense token rewards to GRPO's.

Supported: verl 0.9.0 and 0.9.1 (`SUPPORTED_VERL`), whose reward managers subclass
`verl.experimental.reward_loop.reward_manager.base.RewardManagerBase`, implement
`async run_single(data)` on a one-sample `DataProto` and are loaded from
`reward.reward_manager.{source,name,module.path}`:

    python -m verl.trainer.main_ppo ... \\
        reward.reward_manager.source=importlib \\
        reward.reward_manager.name=FlowfieldRewardManager \\
        reward.reward_manager.module.path=pkg://flowfield_client.adapters.verl \\
        +reward.reward_kwargs.flowfield_url=http://flowfield:8000

`FlowfieldRewardManager.run_single` scores the sample's (prompt ids, response ids) on
/v1/score (trailing EOS/pad ids removed: the service scores the response as generated text)
and returns `{"reward_score": verifier + flow_weight * flow_return, "reward_extra_info":
{...}}`; verl puts the scalar at the last response token. The verifier is verl's
`compute_score` (`reward.custom_reward_function`, or verl's default for the data source);
responses it accepts (score >= accept_threshold) are pushed to /v1/update, each with its
own update id.

Dense token rewards (`+reward.reward_kwargs.dense=true`, with
`algorithm.adv_estimator=flowfield_grpo` and `trainer.use_v1=false`): the scalar is the
verifier reward alone, the weighted token rewards travel in the extra info
(`flowfield_token_rewards`, a JSON list: verl stacks extra info with numpy, which needs one
value per sample), and the `flowfield_grpo` estimator gives each token
`A_t = GRPO(verifier) + sum_{t' >= t} r_t'`, the RLFR token advantage. verl 0.9 hands a
custom estimator only the token-level reward tensor, the response mask, the group index and
the algorithm config; the estimator therefore reads the token rewards from the batch that
verl's `compute_advantage` is working on (its caller), which is the whole batch only in the
legacy trainer (`trainer.use_v1=false`). With the v1 trainer it raises and says so. The
estimator is registered whenever the manager class is first resolved, which verl's
`RewardLoopManager` does in the trainer process.

Options come from `reward.reward_kwargs` (verl passes the manager no other arguments) and the
environment: flowfield_url (FLOWFIELD_URL), api_key (FLOWFIELD_API_KEY), flow_weight,
add_verifier, push_accepted, accept_threshold, dense, score_options, strict_updates, timeout.

Nothing from verl or torch is imported when this module is imported: the manager class is
built on first access (`from flowfield_client.adapters.verl import FlowfieldRewardManager`
imports verl), so `flowfield_client` stays httpx-only.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowfield_client.client import AsyncFlowfieldClient
from flowfield_client.errors import FlowfieldError
from flowfield_client.models import Sample, ScoreResult

log = logging.getLogger("flowfield_client.verl")

SUPPORTED_VERL = ">=0.9.0,<0.10"
TOKEN_REWARDS_KEY = "flowfield_token_rewards"
ESTIMATOR_NAME = "flowfield_grpo"

__all__ = [  # noqa: F822 - FlowfieldRewardManager is built on first access (__getattr__)
    "ESTIMATOR_NAME",
    "FlowfieldRewardManager",
    "FlowfieldVerlCore",
    "SUPPORTED_VERL",
    "TOKEN_REWARDS_KEY",
    "VerlOptions",
    "flowfield_grpo_advantage",
    "register_estimator",
    "token_rewards_tensor",
]


@dataclass
class VerlOptions:
    """The manager's options (`reward.reward_kwargs` in the verl config)."""

    flowfield_url: str | list[str] | None = None
    api_key: str | None = None
    flow_weight: float = 1.0
    add_verifier: bool = True
    push_accepted: bool | None = None  # default: when there is a verifier
    accept_threshold: float = 1.0
    dense: bool = False
    score_options: dict[str, Any] = field(default_factory=dict)
    strict_updates: bool = False
    timeout: float = 60.0

    @classmethod
    def from_config(cls, config: Any) -> VerlOptions:
        """Read `config.reward.reward_kwargs` (an OmegaConf node or a plain mapping)."""
        reward = _get(config, "reward")
        kwargs = _plain(_get(reward, "reward_kwargs")) or {}
        known = {f for f in cls.__dataclass_fields__}
        opts = cls(**{k: v for k, v in kwargs.items() if k in known})
        if isinstance(opts.flowfield_url, tuple):
            opts.flowfield_url = list(opts.flowfield_url)
        opts.score_options = dict(opts.score_options or {})
        return opts


class FlowfieldVerlCore:
    """What `FlowfieldRewardManager` does, without the verl base class (usable and testable
    without verl): one sample in, verl's `{"reward_score", "reward_extra_info"}` out."""

    def __init__(
        self,
        tokenizer: Any,
        compute_score: Callable[..., Any] | None,
        options: VerlOptions,
        client: AsyncFlowfieldClient | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.options = options
        self.push_accepted = (
            compute_score is not None if options.push_accepted is None else options.push_accepted
        )
        # verl always passes a compute_score (its default one when none is configured); with
        # add_verifier and push_accepted off the rewards are the flow's alone and it is not called
        use = options.add_verifier or self.push_accepted
        self.verifier = compute_score if use else None
        self._client = client
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.run_id = uuid.uuid4().hex[:12]
        self.strip_ids = frozenset(_special_ids(tokenizer))
        self.update_results: list[Any] = []
        self.update_failures = 0

    @property
    def client(self) -> AsyncFlowfieldClient:
        """One client per event loop (httpx's async pool belongs to the loop it started on)."""
        loop = asyncio.get_running_loop()
        stale = self._client_loop is not None and self._client_loop is not loop
        if self._client is None or stale:
            self._client = AsyncFlowfieldClient(
                self.options.flowfield_url, api_key=self.options.api_key,
                timeout=self.options.timeout,
            )
            self._client_loop = loop
        return self._client

    async def run_single(self, data: Any) -> dict[str, Any]:
        data = data[-1:]  # multi-sequence outputs: the last one is scored, as verl's managers do
        item = data[0]
        prompt_ids, response_ids, n_valid = _ids_of(item)
        scored = list(response_ids)
        while scored and scored[-1] in self.strip_ids:
            scored.pop()
        sample = Sample(id="0", prompt_ids=prompt_ids, response_ids=scored)

        verdict, verifier_info = (None, {})
        if self.verifier is not None:
            verdict, verifier_info = await self._verify(item, response_ids[:n_valid])
        res = (await self.client.score([sample], **self.options.score_options))[0]
        flow = float(res.flow_return or 0.0) if res.ok else 0.0
        if not res.ok:
            log.info("flowfield could not score a sample (%s): flow reward 0", res.error)

        w = self.options.flow_weight
        score = 0.0
        if verdict is not None and self.options.add_verifier:
            score += verdict
        if not self.options.dense:
            score += w * flow
        info: dict[str, Any] = {**verifier_info, "flow_return": flow,
                                "flow_version": int(res.flow_version or 0)}
        if self.options.dense:
            info[TOKEN_REWARDS_KEY] = _token_json(res, w)
        if self.push_accepted and verdict is not None and verdict >= self.options.accept_threshold:
            await self._push(prompt_ids, scored, verdict)
        return {"reward_score": score, "reward_extra_info": info}

    async def _verify(self, item: Any, response_ids: Sequence[int]) -> tuple[float, dict]:
        assert self.verifier is not None
        nt = item.non_tensor_batch
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(
            None, lambda: self.tokenizer.decode(list(response_ids), skip_special_tokens=True)
        )
        rm = nt.get("reward_model") or {}
        kwargs = {
            "data_source": nt.get("data_source"),
            "solution_str": text,
            "ground_truth": rm.get("ground_truth") if isinstance(rm, Mapping) else None,
            "extra_info": nt.get("extra_info") or {},
        }
        if inspect.iscoroutinefunction(self.verifier):
            result = await self.verifier(**kwargs)
        else:
            result = await loop.run_in_executor(None, lambda: self.verifier(**kwargs))
        if isinstance(result, Mapping):
            return float(result["score"]), dict(result)
        return float(result), {"acc": float(result)}

    async def _push(self, prompt_ids: list[int], response_ids: list[int], verdict: float) -> None:
        if not response_ids:
            return
        sample = Sample(id="0", prompt_ids=prompt_ids, response_ids=response_ids, reward=verdict)
        try:
            # verl scores samples concurrently: every push gets its own id
            res = await self.client.update([sample], update_id=f"verl-{uuid.uuid4().hex}")
            self.update_results.append(res)
        except FlowfieldError as e:
            self.update_failures += 1
            if self.options.strict_updates:
                raise
            log.warning("flowfield /update failed, training goes on: %s", e)


# ---- the dense path: token rewards -> GRPO advantages ------------------------------------------


def token_rewards_tensor(values: Sequence[Any], length: int, device: Any = None) -> Any:
    """[batch, length] float tensor of the `flowfield_token_rewards` extra info (JSON lists,
    aligned to the response from position 0; cut or zero-padded to `length`)."""
    import torch

    out = torch.zeros((len(values), length), dtype=torch.float32, device=device)
    for i, v in enumerate(values):
        r = json.loads(v) if isinstance(v, str | bytes) else list(v or [])
        n = min(len(r), length)
        if n:
            out[i, :n] = torch.tensor(r[:n], dtype=torch.float32, device=device)
    return out


def flowfield_grpo_advantage(
    token_level_rewards: Any,
    response_mask: Any,
    index: Any = None,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool | None = None,
    config: Any = None,
    token_rewards: Any = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """GRPO's outcome advantage of `token_level_rewards` plus the reward-to-go of the flow
    token rewards: A_t = (R - mean_g R) / (std_g R + eps) + sum_{t' >= t} r_t'.

    `token_rewards` ([batch, response_len]); when verl does not pass them (it never does in
    0.9), they are read from the batch in the calling `compute_advantage`.
    """
    import torch
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = bool(_get(config, "norm_adv_by_std_in_grpo", True))
    adv, _ = compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards, response_mask=response_mask, index=index,
        epsilon=epsilon, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, config=config,
    )
    if token_rewards is None:
        token_rewards = _token_rewards_from_caller(token_level_rewards)
    if not isinstance(token_rewards, torch.Tensor):
        token_rewards = token_rewards_tensor(
            token_rewards, token_level_rewards.shape[-1], token_level_rewards.device
        )
    mask = response_mask.to(torch.float32)
    r = token_rewards.to(adv.dtype) * mask
    to_go = r.flip(-1).cumsum(-1).flip(-1) * mask
    adv = adv + to_go
    return adv, adv


def _token_rewards_from_caller(token_level_rewards: Any, depth: int = 4) -> Any:
    """The token rewards in the batch whose `token_level_rewards` we were given, found among
    the locals of our callers (verl's `compute_advantage(data, ...)`). Read-only."""
    frame = inspect.currentframe()
    try:
        f = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
        for _ in range(depth):
            if f is None:
                break
            for value in list(f.f_locals.values()):
                batch = getattr(value, "batch", None)
                nt = getattr(value, "non_tensor_batch", None)
                if batch is None or not isinstance(nt, Mapping):
                    continue
                try:
                    same = batch["token_level_rewards"] is token_level_rewards
                except (KeyError, TypeError):
                    same = False
                if same:
                    if TOKEN_REWARDS_KEY not in nt:
                        break
                    return list(nt[TOKEN_REWARDS_KEY])
            f = f.f_back
    finally:
        del frame
    raise RuntimeError(
        f"{ESTIMATOR_NAME}: no '{TOKEN_REWARDS_KEY}' in the batch. Use it with "
        "FlowfieldRewardManager and +reward.reward_kwargs.dense=true, and with the legacy "
        "trainer (trainer.use_v1=false): verl's v1 trainer gives advantage estimators the "
        "reward tensor only, which holds one scalar per response."
    )


def register_estimator(name: str = ESTIMATOR_NAME) -> Callable[..., Any]:
    """Register `flowfield_grpo_advantage` with verl (`algorithm.adv_estimator=<name>`).
    Idempotent; done automatically when the manager class is first resolved."""
    from verl.trainer.ppo import core_algos

    registry = getattr(core_algos, "ADV_ESTIMATOR_REGISTRY", {})
    if registry.get(name) is not flowfield_grpo_advantage:
        core_algos.register_adv_est(name)(flowfield_grpo_advantage)
    return flowfield_grpo_advantage


# ---- the verl class, built on first access ------------------------------------------------------

_manager_cls: type | None = None


def _build_manager() -> type:
    global _manager_cls
    if _manager_cls is not None:
        return _manager_cls
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    _check_version()

    class FlowfieldRewardManager(RewardManagerBase):  # type: ignore[misc, valid-type]
        """verl reward-loop manager: the flow return (+ verifier) as the scalar reward; with
        `dense`, the token rewards in the extra info for the `flowfield_grpo` estimator."""

        def __init__(
            self,
            config: Any,
            tokenizer: Any,
            compute_score: Callable[..., Any] | None,
            reward_router_address: str | None = None,
            reward_model_tokenizer: Any = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(config, tokenizer, compute_score)
            options = VerlOptions.from_config(config)
            for k, v in kwargs.items():  # direct construction (tests, own code)
                if k in VerlOptions.__dataclass_fields__:
                    setattr(options, k, v)
            self.core = FlowfieldVerlCore(tokenizer, compute_score, options)

        async def run_single(self, data: Any) -> dict[str, Any]:
            return await self.core.run_single(data)

    FlowfieldRewardManager.__module__ = __name__
    FlowfieldRewardManager.__qualname__ = "FlowfieldRewardManager"
    register_estimator()
    _manager_cls = FlowfieldRewardManager
    return _manager_cls


def __getattr__(name: str) -> Any:
    if name == "FlowfieldRewardManager":
        return _build_manager()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_version() -> None:
    try:
        from importlib.metadata import version

        v = version("verl")
    except Exception:  # pragma: no cover - verl imported from a source tree
        return
    major_minor = tuple(int(p) for p in v.split(".")[:2] if p.isdigit())
    if major_minor != (0, 9):
        log.warning("flowfield's verl adapter is made for verl %s, found %s", SUPPORTED_VERL, v)


# ---- helpers ------------------------------------------------------------------------------------


def _ids_of(item: Any) -> tuple[list[int], list[int], int]:
    """(valid prompt ids, valid response ids, number of valid response tokens) of one
    `DataProtoItem`: prompts are left-padded, responses right-padded, the attention mask
    [prompt_len + response_len] marks the real tokens (verl's layout)."""
    prompts, responses = item.batch["prompts"], item.batch["responses"]
    mask = item.batch["attention_mask"]
    p_len, r_len = prompts.shape[-1], responses.shape[-1]
    p_mask = mask[:p_len].bool()
    n_valid = int(mask[-r_len:].sum()) if r_len else 0
    prompt_ids = [int(t) for t in prompts[p_mask].tolist()]
    response_ids = [int(t) for t in responses[:n_valid].tolist()]
    return prompt_ids, response_ids, n_valid


def _token_json(res: ScoreResult, weight: float) -> str:
    vals = res.token_rewards if res.ok and res.token_rewards else []
    return json.dumps([round(weight * v, 8) for v in vals if math.isfinite(v)])


def _special_ids(tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for attr in ("eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            ids.append(v)
        elif isinstance(v, list | tuple):
            ids.extend(int(x) for x in v)
    return ids


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    getter = getattr(obj, "get", None)
    if callable(getter):
        try:
            return getter(key, default)
        except Exception:
            pass
    return getattr(obj, key, default)


def _plain(obj: Any) -> Any:
    """An OmegaConf node as plain Python (without importing omegaconf at module level)."""
    if obj is None:
        return None
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, DictConfig | ListConfig):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:
        pass
    return dict(obj) if isinstance(obj, Mapping) else obj
