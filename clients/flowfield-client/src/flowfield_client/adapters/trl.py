"""TRL `GRPOTrainer`: an async reward function that returns each completion's flow return.

    from flowfield_client.adapters.trl import flowfield_reward_func

    flow = flowfield_reward_func("http://127.0.0.1:8000", verifier=accuracy)
    trainer = GRPOTrainer(model=..., reward_funcs=[accuracy, flow], args=GRPOConfig(...), ...)
    flow.adapter.bind(trainer)   # prompt ids and EOS ids exactly as the trainer has them

Each call (one per generation batch) sends the completions to /v1/score and returns
`flow_weight * flow_return` per completion, plus the verifier reward when `add_verifier` is
set (leave it off when the verifier is already one of `reward_funcs`, as above: TRL sums the
reward functions itself, weighted by `GRPOConfig.reward_weights`). The completions the
verifier accepted (reward >= `accept_threshold`) are then pushed to /v1/update with their
verifier reward, and the service refines its flow from them.

What is sent: TRL hands reward functions the prompts (text, or chat messages), the completions
(text decoded without special tokens) and `completion_ids` (ending in the EOS token), not the
prompt ids. With a tokenizer (`tokenizer=`, or `bind(trainer)`), the adapter sends token ids:
the prompt tokenised the way `GRPOTrainer` tokenises it (chat template with the generation
prompt for conversations, the tokenizer's own special tokens for text) and `completion_ids`
without trailing EOS ids (`eos_token_ids`, default: the trainer's, else the tokenizer's EOS),
so the service scores the policy's own tokens. A `prompt_ids` column in the dataset (or from a
`rollout_func`) is used as is. Without a tokenizer and without `eos_token_ids` it sends text
(the prompt, and the completion as TRL decoded it, without EOS) for the service to tokenise.

TRL reduces every reward function to one scalar per completion and GRPO normalises it within
the group, so the dense token rewards reach the policy only through their sum. For the token
advantages of RLFR (`return_advantages=True`), use a trainer loop that takes per-token
advantages (examples/trainers/grpo_token_advantages.py).

No TRL, torch or transformers import here: the function only needs TRL's call convention
(`prompts`, `completions`, `completion_ids`, dataset columns and `trainer_state` as keyword
arguments), so this module imports anywhere.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowfield_client.adapters._base import RewardAdapterBase
from flowfield_client.client import AsyncFlowfieldClient
from flowfield_client.errors import FlowfieldError
from flowfield_client.models import Sample

log = logging.getLogger("flowfield_client.trl")

Verifier = Callable[..., Sequence[float | None] | Awaitable[Sequence[float | None]]]


@dataclass
class RewardStats:
    """What the reward function has done so far (read it from the adapter's `stats`)."""

    calls: int = 0
    scored: int = 0  # completions scored by the service
    score_errors: int = 0  # completions the service could not score (empty, too long)
    updates: int = 0  # /update requests that succeeded
    pushed: int = 0  # completions sent to /update
    accepted: int = 0  # of those, queued for training by the service
    duplicates: int = 0
    update_failures: int = 0
    flow_versions: list[int] = field(default_factory=list)  # version of each /score answer
    last_flow_returns: list[float | None] = field(default_factory=list)


class FlowfieldReward(RewardAdapterBase[AsyncFlowfieldClient]):
    """The state and logic behind `flowfield_reward_func` (call it, or pass `.func` to TRL).

    Args:
        client: an `AsyncFlowfieldClient`, or the service URL(s) to build one from on first
            use (inside TRL's event loop).
        verifier: a TRL-style reward function (sync or async) giving the outcome reward of
            each completion; needed to push accepted completions and for `add_verifier`.
        add_verifier: return flow_weight * flow_return + verifier reward.
        flow_weight: scale of the flow return (token rewards are about +-0.01 each).
        push_accepted: send the completions the verifier accepted to /v1/update (default:
            when there is a verifier).
        accept_threshold: verifier reward at which a completion counts as accepted.
        eos_token_ids: token ids stripped from the end of `completion_ids` (TRL keeps the EOS
            token; the service scores the response without it, as generated text). Default:
            the bound trainer's `eos_token_ids`, else the tokenizer's EOS; `()` strips nothing.
        tokenizer: the trainer's tokenizer (`processing_class`): prompt ids are sent, made the
            way GRPOTrainer makes them; needed for conversational prompts.
        chat_template_kwargs: passed to `apply_chat_template` (GRPOConfig.chat_template_kwargs).
        score_options: /v1/score options (normalization, beta, threshold, top_k, ...).
        strict_updates: raise when /update fails (default: log it, count it, go on).
        name: the name TRL logs the reward under (`rewards/<name>/mean`).
        client_kwargs: passed to `AsyncFlowfieldClient` when `client` is a URL.
    """

    client_class = AsyncFlowfieldClient

    def __init__(
        self,
        client: AsyncFlowfieldClient | str | Sequence[str] | None = None,
        *,
        verifier: Verifier | None = None,
        add_verifier: bool = False,
        flow_weight: float = 1.0,
        push_accepted: bool | None = None,
        accept_threshold: float = 1.0,
        eos_token_ids: Iterable[int] | None = None,
        tokenizer: Any = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        score_options: Mapping[str, Any] | None = None,
        strict_updates: bool = False,
        name: str = "flowfield",
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if verifier is None and (add_verifier or push_accepted):
            raise ValueError("add_verifier and push_accepted need a verifier")
        super().__init__(
            client, verifier=verifier, add_verifier=add_verifier, flow_weight=flow_weight,
            push_accepted=push_accepted, accept_threshold=accept_threshold,
            score_options=score_options, strict_updates=strict_updates, client_kwargs=client_kwargs,
        )
        self._eos_given = eos_token_ids is not None
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids or ())
        self.tokenizer = None
        self.chat_template: str | None = None
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.tools: list[Any] | None = None
        if tokenizer is not None:
            self._set_tokenizer(tokenizer)
        self.name = name
        self.stats = RewardStats()

    def bind(self, trainer: Any) -> FlowfieldReward:
        """Take the tokenizer, chat template, its kwargs, tools and EOS ids from a
        `GRPOTrainer`, so that the ids sent are the ones the trainer generated from."""
        tok = getattr(trainer, "processing_class", None)
        self._set_tokenizer(getattr(tok, "tokenizer", tok))
        self.chat_template = getattr(trainer, "chat_template", None)
        self.chat_template_kwargs = dict(getattr(trainer, "chat_template_kwargs", None) or {})
        self.tools = getattr(trainer, "tools", None) or None
        eos = getattr(trainer, "eos_token_ids", None)
        if eos is not None and not self._eos_given:
            self.eos_token_ids = frozenset(int(t) for t in eos)
        return self

    def _set_tokenizer(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        eos = getattr(tokenizer, "eos_token_id", None)
        if not self._eos_given and isinstance(eos, int):
            self.eos_token_ids = frozenset([eos])

    @property
    def func(self) -> Callable[..., Awaitable[list[float | None]]]:
        """A plain `async def` function (named `name`) that TRL recognises as async."""

        async def reward(
            prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
        ) -> list[float | None]:
            return await self(prompts, completions, **kwargs)

        reward.__name__ = reward.__qualname__ = self.name
        reward.adapter = self  # type: ignore[attr-defined]
        return reward

    async def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        self.stats.calls += 1
        n = len(completions)
        prompt_ids = self._prompt_ids(prompts, kwargs.get("prompt_ids"))
        samples = [
            self._sample(i, prompts[i], completions[i],
                         None if completion_ids is None else completion_ids[i],
                         None if prompt_ids is None else prompt_ids[i])
            for i in range(n)
        ]
        verdicts: list[float | None] = [None] * n
        if self.verifier is not None:
            verdicts = await self._verify(prompts, completions, completion_ids, kwargs)
        res = await self.client.score(samples, **self.score_options)
        self.stats.scored += sum(r.ok for r in res)
        self.stats.score_errors += sum(not r.ok for r in res)
        self.stats.flow_versions.extend(sorted(set(res.flow_versions)))
        self.stats.last_flow_returns = res.flow_returns

        out: list[float | None] = []
        for r, v in zip(res, verdicts):
            flow = None if r.flow_return is None else self.flow_weight * r.flow_return
            if self.add_verifier:
                out.append((v or 0.0) + (flow or 0.0) if v is not None or flow is not None
                           else None)
            else:
                out.append(flow)  # None for an unscorable completion: TRL leaves it out

        if self.push_accepted:
            await self._push(samples, verdicts, kwargs.get("trainer_state"))
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"{self.name}/flow_version", float(res.flow_version))
        return out

    # ---- helpers -----------------------------------------------------------------------------

    def _sample(self, i: int, prompt: Any, completion: Any, ids: Sequence[int] | None,
                prompt_ids: Sequence[int] | None) -> Sample:
        s = Sample(id=str(i))
        use_ids = ids is not None and (self.tokenizer is not None or self._eos_given
                                       or prompt_ids is not None)
        if use_ids:
            resp = [int(t) for t in ids]  # type: ignore[union-attr]
            while resp and resp[-1] in self.eos_token_ids:
                resp.pop()
            s.response_ids = resp
        else:  # text as TRL decoded it: no special tokens, so no EOS
            s.response = _completion_text(completion)
        if prompt_ids is not None:
            s.prompt_ids = [int(t) for t in prompt_ids]
        else:
            s.prompt = self._prompt_text(prompt)
        return s

    def _prompt_ids(self, prompts: Sequence[Any], given: Any) -> list[list[int]] | None:
        """Per completion, the prompt's token ids: the dataset's/rollout's `prompt_ids` when
        present, else tokenised as GRPOTrainer does (needs the tokenizer)."""
        if isinstance(given, Sequence) and len(given) == len(prompts) and all(
            isinstance(p, Sequence) and not isinstance(p, str) for p in given
        ):
            return [[int(t) for t in p] for p in given]
        if self.tokenizer is None:
            return None
        cache: dict[str, list[int]] = {}  # TRL repeats each prompt once per generation
        out = []
        for p in prompts:
            key = p if isinstance(p, str) else repr(p)
            if key not in cache:
                cache[key] = self._tokenize_prompt(p)
            out.append(cache[key])
        return out

    def _tokenize_prompt(self, prompt: Any) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, str):  # GRPOTrainer: processing_class(text=prompts)["input_ids"]
            return [int(t) for t in tok(text=prompt)["input_ids"]]
        out = tok.apply_chat_template(
            conversation=[prompt], tools=self.tools, chat_template=self.chat_template,
            add_generation_prompt=True, tokenize=True, return_dict=True,
            **self.chat_template_kwargs,
        )
        return [int(t) for t in out["input_ids"][0]]

    def _prompt_text(self, prompt: Any) -> str:
        if isinstance(prompt, str):
            return prompt
        if self.tokenizer is None:
            raise TypeError(
                "conversational prompts need tokenizer= (its chat template renders them); "
                "or use a standard (plain text) dataset"
            )
        return str(
            self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        )

    async def _verify(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Any,
        kwargs: dict[str, Any],
    ) -> list[float | None]:
        assert self.verifier is not None
        out = self.verifier(
            prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs
        )
        if inspect.isawaitable(out):
            out = await out
        vals = [None if v is None else float(v) for v in out]
        if len(vals) != len(completions):
            raise ValueError(f"the verifier returned {len(vals)} rewards for {len(completions)}")
        return vals

    async def _push(
        self, samples: list[Sample], verdicts: list[float | None], trainer_state: Any
    ) -> None:
        accepted = []
        for s, v in zip(samples, verdicts):
            if v is not None and v >= self.accept_threshold and (s.response_ids or s.response):
                accepted.append(Sample(id=s.id, prompt=s.prompt, response_ids=s.response_ids,
                                       response=s.response, reward=v))
        if not accepted:
            return
        step = getattr(trainer_state, "global_step", None)
        update_id = f"trl-{self.run_id}-{self.stats.calls}" + ("" if step is None else f"-s{step}")
        self.stats.pushed += len(accepted)
        try:
            res = await self.client.update(accepted, update_id=update_id)
        except FlowfieldError as e:
            self.stats.update_failures += 1
            if self.strict_updates:
                raise
            log.warning("flowfield /update failed, training goes on: %s", e)
            return
        self.stats.updates += 1
        self.stats.accepted += res.accepted
        self.stats.duplicates += int(res.duplicate)


def flowfield_reward_func(
    client: AsyncFlowfieldClient | str | Sequence[str] | None = None, **kwargs: Any
) -> Callable[..., Awaitable[list[float | None]]]:
    """An async TRL reward function backed by the flowfield service (see `FlowfieldReward`
    for the options). The adapter, with its `stats`, is the function's `.adapter`."""
    return FlowfieldReward(client, **kwargs).func


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))  # conversational: the assistant turn
    return str(completion)
