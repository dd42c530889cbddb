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
training responses it accepts (score >= accept_threshold) are pushed to /v1/update, each with
its own update id.

Validation rollouts are scored but not pushed (unless `push_validation`). verl 0.9 does not
tell a reward manager which rollouts are validation ones: `RayPPOTrainer._validate` marks the
generation batch (`meta_info["validate"] = True`), but `AgentLoopWorker._compute_score` builds
the reward worker's `DataProto` from the sample's dataset fields alone, without meta_info, and
one manager per reward-loop worker serves training and validation alike. A sample counts as
validation when (`FlowfieldVerlCore.is_validation`): its `DataProto.meta_info["validate"]` is
true (callers that pass verl's flag on); its `extra_info["split"]` is one of
`validation_splits` (verl's data preprocessing scripts write "train"/"test"); or its prompt
(`raw_prompt`, the dataset row's `data.prompt_key` messages, which verl's agent loop hands the
reward worker) is one of the prompts of the validation files (`validation_files`, by default
verl's `data.val_files`, read when the manager is built).

Dense token rewards (`+reward.reward_kwargs.dense=true`, with
`algorithm.adv_estimator=flowfield_grpo` and `trainer.use_v1=false`): the scalar is the
verifier reward alone, the weighted token rewards travel in the extra info
(`flowfield_token_rewards`, a JSON list: verl stacks extra info with numpy, which needs one
value per sample), and the `flowfield_grpo` estimator gives each token
`A_t = GRPO(verifier) + sum_{t' >= t} r_t'`, the RLFR token advantage. The estimator takes
the token rewards from its `non_tensor_batch` argument (or `token_rewards`). verl 0.9.1's
`compute_advantage` (verl/trainer/ppo/ray_trainer.py) calls a registered estimator with
`token_level_rewards`, `response_mask`, `config`, `index` (the uid) and `reward_baselines`
only, and adds `non_tensor_batch` and `batch` for GDPO alone; `forward_batch_to_estimator`
therefore wraps that module's `compute_advantage` so that for `flowfield_grpo` (and nothing
else) it passes them too, as it does for GDPO. `register_estimator` does both, when the
manager class is first resolved, which verl's `RewardLoopManager` does in the trainer process.
The v1 trainer loads only a fixed set of fields for the advantage step (no extra info): there
the estimator raises and says so.

Options come from `reward.reward_kwargs` (verl passes the manager no other arguments) and the
environment: flowfield_url (FLOWFIELD_URL), api_key (FLOWFIELD_API_KEY), flow_weight,
add_verifier, push_accepted, push_validation, validation_splits, validation_files,
accept_threshold, dense, score_options, strict_updates, timeout.

Nothing from verl or torch is imported when this module is imported: the manager class is
built on first access (`from flowfield_client.adapters.verl import FlowfieldRewardManager`
imports verl), so `flowfield_client` stays httpx-only.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowfield_client.client import AsyncFlowfieldClient
from flowfield_client.errors import FlowfieldError
from flowfield_client.models import Sample, ScoreResult

log = logging.getLogger("flowfield_client.verl")

SUPPORTED_VERL = ">=0.9.0,<0.10"
TOKEN_REWARDS_KEY = "flowfield_token_rewards"
ESTIMATOR_NAME = "flowfield_grpo"
# extra_info["split"] values of validation rows (verl's data preprocessing writes "test")
VALIDATION_SPLITS = ("test", "val", "valid", "validation", "eval")

__all__ = [  # noqa: F822 - FlowfieldRewardManager is built on first access (__getattr__)
    "ESTIMATOR_NAME",
    "FlowfieldRewardManager",
    "FlowfieldVerlCore",
    "SUPPORTED_VERL",
    "TOKEN_REWARDS_KEY",
    "VerlOptions",
    "VALIDATION_SPLITS",
    "flowfield_compute_advantage",
    "flowfield_grpo_advantage",
    "forward_batch_to_estimator",
    "load_validation_prompts",
    "prompt_fingerprint",
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
    push_validation: bool = False  # push accepted validation rollouts too
    validation_splits: list[str] = field(default_factory=lambda: list(VALIDATION_SPLITS))
    validation_files: str | list[str] | None = None  # default: the config's data.val_files
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
        if isinstance(opts.validation_splits, str):
            opts.validation_splits = [opts.validation_splits]
        opts.validation_splits = list(opts.validation_splits or [])
        return opts


class FlowfieldVerlCore:
    """What `FlowfieldRewardManager` does, without the verl base class (usable and testable
    without verl): one sample in, verl's `{"reward_score", "reward_extra_info"}` out.

    `validation_prompts`: `prompt_fingerprint`s of the validation set's prompts (the manager
    reads them from the validation files)."""

    def __init__(
        self,
        tokenizer: Any,
        compute_score: Callable[..., Any] | None,
        options: VerlOptions,
        client: AsyncFlowfieldClient | None = None,
        validation_prompts: Collection[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.options = options
        self.validation_prompts = frozenset(validation_prompts)
        self._validation_splits = frozenset(str(s).lower() for s in options.validation_splits)
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
        self.validation_not_pushed = 0  # accepted validation rollouts kept off /update

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

    def is_validation(self, data: Any, item: Any) -> bool:
        """Whether the sample is a validation rollout: `meta_info["validate"]`, an
        `extra_info["split"]` in `validation_splits`, or a prompt of the validation set."""
        meta = getattr(data, "meta_info", None)
        if isinstance(meta, Mapping) and meta.get("validate"):
            return True
        nt = item.non_tensor_batch
        extra = nt.get("extra_info")
        split = extra.get("split") if isinstance(extra, Mapping) else None
        if isinstance(split, str) and split.lower() in self._validation_splits:
            return True
        if self.validation_prompts:
            return prompt_fingerprint(nt.get("raw_prompt")) in self.validation_prompts
        return False

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
            if self.options.push_validation or not self.is_validation(data, item):
                await self._push(prompt_ids, scored, verdict)
            else:
                self.validation_not_pushed += 1
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
    non_tensor_batch: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """GRPO's outcome advantage of `token_level_rewards` plus the reward-to-go of the flow
    token rewards: A_t = (R - mean_g R) / (std_g R + eps) + sum_{t' >= t} r_t'.

    The token rewards: `token_rewards` ([batch, response_len], or one JSON list per sample),
    else `non_tensor_batch["flowfield_token_rewards"]` (the batch's extra info, which verl's
    `compute_advantage` passes once `forward_batch_to_estimator` is installed).
    """
    import torch
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    if token_rewards is None:
        if non_tensor_batch is None or TOKEN_REWARDS_KEY not in non_tensor_batch:
            raise RuntimeError(_NO_TOKEN_REWARDS)
        token_rewards = list(non_tensor_batch[TOKEN_REWARDS_KEY])
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = bool(_get(config, "norm_adv_by_std_in_grpo", True))
    adv, _ = compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards, response_mask=response_mask, index=index,
        epsilon=epsilon, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, config=config,
    )
    if not isinstance(token_rewards, torch.Tensor):
        token_rewards = token_rewards_tensor(
            token_rewards, token_level_rewards.shape[-1], token_level_rewards.device
        )
    mask = response_mask.to(torch.float32)
    r = token_rewards.to(adv.dtype) * mask
    to_go = r.flip(-1).cumsum(-1).flip(-1) * mask
    adv = adv + to_go
    return adv, adv


_NO_TOKEN_REWARDS = (
    f"{ESTIMATOR_NAME}: no '{TOKEN_REWARDS_KEY}' in the batch (non_tensor_batch). Use it with "
    "FlowfieldRewardManager and +reward.reward_kwargs.dense=true, and with the legacy trainer "
    "(trainer.use_v1=false), whose compute_advantage the adapter makes pass the batch to "
    f"{ESTIMATOR_NAME}: verl's v1 trainer gives advantage estimators the reward tensor only, "
    "which holds one scalar per response."
)


def flowfield_compute_advantage(data: Any, config: Any = None, name: str = ESTIMATOR_NAME) -> Any:
    """verl's `compute_advantage` for `flowfield_grpo` (registered as `name`): the same call
    verl makes for a registered estimator (`token_level_rewards`, `response_mask`, `config`,
    `index` = uid), plus the batch (`non_tensor_batch`, `batch`), as verl passes it to GDPO.
    Sets `data.batch["advantages"]` and `["returns"]`; returns `data`."""
    from verl.trainer.ppo import core_algos, ray_trainer

    if "response_mask" not in data.batch:
        data.batch["response_mask"] = ray_trainer.compute_response_mask(data)
    kwargs: dict[str, Any] = {
        "token_level_rewards": data.batch["token_level_rewards"],
        "response_mask": data.batch["response_mask"],
        "config": config,
        "non_tensor_batch": data.non_tensor_batch,
        "batch": data.batch,
    }
    if "uid" in data.non_tensor_batch:
        kwargs["index"] = data.non_tensor_batch["uid"]
    if "reward_baselines" in data.batch:
        kwargs["reward_baselines"] = data.batch["reward_baselines"]
    advantages, returns = core_algos.get_adv_estimator_fn(name)(**kwargs)
    data.batch["advantages"] = advantages
    data.batch["returns"] = returns
    return data


_forwarded: set[str] = set()  # estimator names compute_advantage passes the batch to


def forward_batch_to_estimator(name: str = ESTIMATOR_NAME) -> None:
    """Wrap `verl.trainer.ppo.ray_trainer.compute_advantage` (what the legacy trainer's
    `RayPPOTrainer.fit` calls) so that `adv_estimator=<name>` (`flowfield_grpo`) goes to
    `flowfield_compute_advantage`, which passes the estimator the batch; every other estimator
    goes to verl's function unchanged. Idempotent; the original is `__wrapped__`."""
    from verl.trainer.ppo import ray_trainer

    _forwarded.add(name)
    original = ray_trainer.compute_advantage
    if getattr(original, "_flowfield_forwards_batch", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def compute_advantage(data: Any, adv_estimator: Any, *args: Any, **kwargs: Any) -> Any:
        name = _estimator_name(adv_estimator)
        if name not in _forwarded:
            return original(data, adv_estimator, *args, **kwargs)
        bound = signature.bind(data, adv_estimator, *args, **kwargs)
        return flowfield_compute_advantage(data, config=bound.arguments.get("config"), name=name)

    compute_advantage._flowfield_forwards_batch = True  # type: ignore[attr-defined]
    ray_trainer.compute_advantage = compute_advantage


def register_estimator(name: str = ESTIMATOR_NAME) -> Callable[..., Any]:
    """Register `flowfield_grpo_advantage` with verl (`algorithm.adv_estimator=<name>`) and
    install `forward_batch_to_estimator`. Idempotent; done automatically when the manager class
    is first resolved."""
    from verl.trainer.ppo import core_algos

    registry = getattr(core_algos, "ADV_ESTIMATOR_REGISTRY", {})
    if registry.get(name) is not flowfield_grpo_advantage:
        core_algos.register_adv_est(name)(flowfield_grpo_advantage)
    forward_batch_to_estimator(name)
    return flowfield_grpo_advantage


def _estimator_name(adv_estimator: Any) -> Any:
    value = getattr(adv_estimator, "value", adv_estimator)  # AdvantageEstimator enum members
    return value if isinstance(value, str) else None


# ---- validation rollouts: the prompts of the validation set -------------------------------------

_MEDIA = re.compile(r"<image>|<video>|<audio>")


def prompt_fingerprint(messages: Any) -> str | None:
    """A hash of a prompt's text, equal for a dataset row's `prompt` messages and the
    `raw_prompt` verl's agent loop hands the reward worker (roles and text; media placeholders,
    which verl's `RLHFDataset._build_messages` turns into content parts, left out). None for
    no prompt."""
    if messages is None:
        return None
    if isinstance(messages, str):
        parts: list[list[str]] = [["", _text_of(messages)]]
    else:
        parts = []
        for m in messages:
            if isinstance(m, Mapping):
                parts.append([str(m.get("role") or ""), _text_of(m.get("content"))])
            else:
                parts.append(["", _text_of(m)])
    blob = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return _MEDIA.sub("", content)
    if isinstance(content, Mapping):
        kind = content.get("type", "text")
        return _text_of(content.get("text")) if kind == "text" else ""
    if isinstance(content, bytes):
        return content.decode("utf-8", "replace")
    if hasattr(content, "__iter__"):
        return "".join(_text_of(c) for c in content)
    return str(content)


def load_validation_prompts(
    files: str | Iterable[str], prompt_key: str = "prompt", cache_dir: str | None = None
) -> set[str]:
    """`prompt_fingerprint`s of the prompts (column `prompt_key`) of verl dataset files
    (.parquet, .json, .jsonl: the formats verl's `RLHFDataset` reads; hdfs:// paths are
    copied with verl's `copy_to_local`, as it does)."""
    paths = [files] if isinstance(files, str) else list(files)
    out: set[str] = set()
    for path in paths:
        local = os.path.expanduser(str(path))
        if "://" in local:
            from verl.utils.fs import copy_to_local

            local = copy_to_local(local, cache_dir=cache_dir)
        if local.endswith(".parquet"):
            import pyarrow.parquet as pq

            prompts = pq.read_table(local, columns=[prompt_key]).column(prompt_key).to_pylist()
        elif local.endswith((".json", ".jsonl")):
            import datasets

            prompts = datasets.load_dataset("json", data_files=local)["train"][prompt_key]
        else:
            raise ValueError(f"unsupported dataset file (not .parquet/.json/.jsonl): {path}")
        out.update(fp for fp in map(prompt_fingerprint, prompts) if fp is not None)
    return out


def _validation_prompts_of(config: Any, options: VerlOptions) -> set[str]:
    """The validation set's prompt fingerprints: `validation_files`, else `data.val_files`;
    none (with a warning) when they cannot be read or are the training files."""
    data = _get(config, "data")
    files = options.validation_files
    if files is None:
        files = _plain(_get(data, "val_files"))
        train = _plain(_get(data, "train_files"))
        if files and _paths(files) == _paths(train):
            log.warning(
                "flowfield: data.val_files are the training files, so validation rollouts "
                "cannot be told apart by prompt; they are pushed to /update like training ones "
                "unless their extra_info split says 'test' (or set validation_files)")
            return set()
    if not files:
        return set()
    cache_dir = os.path.expanduser(str(_get(data, "cache_dir", None) or "~/.cache/verl/rlhf"))
    try:
        prompts = load_validation_prompts(
            files, prompt_key=str(_get(data, "prompt_key", None) or "prompt"), cache_dir=cache_dir)
    except Exception as e:
        log.warning(
            "flowfield: cannot read the validation files %s (%s): validation rollouts are "
            "recognised only by meta_info['validate'] and extra_info['split']", files, e)
        return set()
    log.info("flowfield: %d validation prompts are not pushed to /update", len(prompts))
    return prompts


def _paths(files: Any) -> list[str]:
    items = [files] if isinstance(files, str) else list(files or [])
    return sorted(os.path.abspath(os.path.expanduser(str(f))) for f in items)


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
            if self.core.push_accepted and not options.push_validation:
                self.core.validation_prompts = frozenset(_validation_prompts_of(config, options))

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
