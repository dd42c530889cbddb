"""verl: a reward manager that fills the `[batch, response_len]` token-reward tensor with
flowfield's dense token rewards.

verl calls a reward manager as `manager(data, return_dict=...)` with a `DataProto` whose
`batch` holds `prompts` ([B, P], left-padded), `responses` ([B, R], right-padded) and
`attention_mask` ([B, P + R]); it returns the reward tensor, or with `return_dict` the dict
`{"reward_tensor": ..., "reward_extra_info": {...}}`. `FlowfieldRewardManager`:

- sends each valid (prompt ids, response ids) pair to /v1/score;
- writes `flow_weight * token_rewards` at the response positions (`dense=True`), or the flow
  return at the last valid token (`dense=False`);
- adds the verifier's outcome reward (verl's `compute_score`, e.g. from
  `custom_reward_function`) at the last valid token, as verl's naive manager does;
- pushes the responses with verifier reward >= `accept_threshold` to /v1/update.

Which token rewards an algorithm uses is verl's business: GRPO, RLOO and the other outcome
estimators sum `token_level_rewards` over the response (so only the flow return counts);
PPO with GAE and REINFORCE++ consume them per token. See docs/clients.md for the recipe.

Nothing from verl or torch is imported at module level (torch only inside `__call__`), so
the class imports without verl; `register_with_verl` registers it by name for verl's
registry-based loading.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flowfield_client.client import FlowfieldClient
from flowfield_client.errors import FlowfieldError
from flowfield_client.models import Sample

log = logging.getLogger("flowfield_client.verl")


class FlowfieldRewardManager:
    """A verl reward manager (the `AbstractRewardManager` interface).

    The first four arguments are the ones verl passes; the rest come from
    `reward_model.reward_kwargs` (or `reward.reward_kwargs`) in the verl config.

    Args:
        tokenizer: the policy's tokenizer (decodes responses for `compute_score`; its EOS id
            is stripped from responses before scoring).
        num_examine: how many decoded samples to print per call (verl's convention).
        compute_score: the verifier, `compute_score(data_source, solution_str, ground_truth,
            extra_info)` returning a float or a dict with "score"; None: flow rewards only.
        reward_fn_key: the non-tensor field naming each sample's data source.
        flowfield_url: service URL(s) (default: $FLOWFIELD_URL); or pass `client`.
        dense: token rewards per position (True) or the flow return at the last token.
        flow_weight: scale of the flow rewards.
        add_verifier: add the verifier reward at the last valid token.
        push_accepted: push responses with verifier reward >= accept_threshold to /update.
        score_options: /v1/score options.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        num_examine: int = 0,
        compute_score: Callable[..., Any] | None = None,
        reward_fn_key: str = "data_source",
        *,
        flowfield_url: str | Sequence[str] | None = None,
        api_key: str | None = None,
        client: FlowfieldClient | None = None,
        dense: bool = True,
        flow_weight: float = 1.0,
        add_verifier: bool = True,
        push_accepted: bool | None = None,
        accept_threshold: float = 1.0,
        score_options: Mapping[str, Any] | None = None,
        strict_updates: bool = False,
        **kwargs: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self.num_examine = int(num_examine)
        self.compute_score = compute_score
        self.reward_fn_key = reward_fn_key
        self._client = client
        self._url = flowfield_url
        self._api_key = api_key
        self.dense = bool(dense)
        self.flow_weight = float(flow_weight)
        self.add_verifier = bool(add_verifier)
        self.push_accepted = compute_score is not None if push_accepted is None else push_accepted
        self.accept_threshold = float(accept_threshold)
        self.score_options = dict(score_options or {})
        self.strict_updates = strict_updates
        self.extra_kwargs = kwargs  # other reward_kwargs verl passes (ignored)
        self.run_id = uuid.uuid4().hex[:12]
        self.calls = 0
        self.update_results: list[Any] = []
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else list(eos or []))

    @property
    def client(self) -> FlowfieldClient:
        if self._client is None:
            self._client = FlowfieldClient(self._url, api_key=self._api_key)
        return self._client

    def __call__(self, data: Any, return_dict: bool = False) -> Any:
        import torch

        batch = data.batch
        if "rm_scores" in batch.keys():  # noqa: SIM118 - a TensorDict; a reward model scored
            return {"reward_tensor": batch["rm_scores"]} if return_dict else batch["rm_scores"]
        self.calls += 1
        prompts, responses, mask = batch["prompts"], batch["responses"], batch["attention_mask"]
        n, p_len = prompts.shape[0], prompts.shape[-1]
        prompt_lens = mask[:, :p_len].sum(dim=-1).tolist()
        resp_lens = mask[:, p_len:].sum(dim=-1).tolist()
        samples: list[Sample] = []
        for i in range(n):
            pl, rl = int(prompt_lens[i]), int(resp_lens[i])
            p_ids = prompts[i, p_len - pl :].tolist() if pl else []
            r_ids = responses[i, :rl].tolist()
            while r_ids and r_ids[-1] in self.eos_ids:  # score the response as text, no EOS
                r_ids.pop()
            samples.append(Sample(id=str(i), prompt_ids=p_ids, response_ids=r_ids))

        verdicts = self._verify(data, samples) if self.compute_score is not None else None
        res = self.client.score(samples, **self.score_options)

        reward = torch.zeros_like(responses, dtype=torch.float32)
        flow_returns: list[float] = []
        for i, r in enumerate(res):
            last = int(resp_lens[i]) - 1
            flow_returns.append(r.flow_return or 0.0)
            if last < 0:
                continue
            if r.ok and r.token_rewards:
                if self.dense:
                    tr = torch.tensor(r.token_rewards, dtype=torch.float32)
                    reward[i, : tr.numel()] += self.flow_weight * tr
                else:
                    reward[i, last] += self.flow_weight * float(r.flow_return or 0.0)
            if verdicts is not None and self.add_verifier:
                reward[i, last] += verdicts[i]

        if self.push_accepted and verdicts is not None:
            self._push(samples, verdicts)
        for i in range(min(self.num_examine, n)):
            print(f"[flowfield] sample {i}: flow_return={flow_returns[i]:.4f}"
                  + ("" if verdicts is None else f" verifier={verdicts[i]}"))
        if not return_dict:
            return reward
        extra: dict[str, list[float]] = {
            "flow_return": flow_returns,
            "flow_version": [float(r.flow_version or 0) for r in res],
        }
        if verdicts is not None:
            extra["verifier"] = list(verdicts)
        return {"reward_tensor": reward, "reward_extra_info": extra}

    def _verify(self, data: Any, samples: list[Sample]) -> list[float]:
        assert self.compute_score is not None
        nt = getattr(data, "non_tensor_batch", {}) or {}
        out = []
        for i, s in enumerate(samples):
            text = self.tokenizer.decode(s.response_ids, skip_special_tokens=True)
            rm = _item(nt.get("reward_model"), i) or {}
            score = self.compute_score(
                data_source=_item(nt.get(self.reward_fn_key), i),
                solution_str=text,
                ground_truth=rm.get("ground_truth") if isinstance(rm, Mapping) else None,
                extra_info=_item(nt.get("extra_info"), i),
            )
            out.append(float(score["score"] if isinstance(score, Mapping) else score))
        return out

    def _push(self, samples: list[Sample], verdicts: list[float]) -> None:
        accepted = [
            Sample(id=s.id, prompt_ids=s.prompt_ids, response_ids=s.response_ids, reward=v)
            for s, v in zip(samples, verdicts)
            if v >= self.accept_threshold and s.response_ids
        ]
        if not accepted:
            return
        try:
            self.update_results.append(
                self.client.update(accepted, update_id=f"verl-{self.run_id}-{self.calls}")
            )
        except FlowfieldError as e:
            if self.strict_updates:
                raise
            log.warning("flowfield /update failed, training goes on: %s", e)


def register_with_verl(name: str = "flowfield") -> type[FlowfieldRewardManager]:
    """Register the manager in verl's registry (`reward_model.reward_manager=<name>`).

    Call it in the process that builds the reward manager, before verl looks the name up
    (e.g. from your own `main_ppo` entry point). Loading by file path
    (`reward_manager.source=importlib`) needs no registration.
    """
    from verl.workers.reward_manager import register  # verl is optional: imported here

    return register(name)(FlowfieldRewardManager)


def _item(values: Any, i: int) -> Any:
    if values is None:
        return None
    try:
        return values[i]
    except (IndexError, KeyError, TypeError):
        return None
