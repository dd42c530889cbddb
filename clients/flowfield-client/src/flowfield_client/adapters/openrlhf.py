"""OpenRLHF: a `reward_func(queries, prompts, labels)` backed by the flowfield service.

Two ways to use flowfield from OpenRLHF:

1. Remote reward model, no code: point `--reward.remote_url` (older releases:
   `--remote_rm_url`) at the service's `/get_reward`. It takes `{"query", "prompts",
   "labels"}` and answers `{"rewards", "scores", "extra_logs"}`, one flow return per query.
   OpenRLHF sends no headers: with keys configured put the score key in the URL,
   `http://flowfield:8000/get_reward?api_key=KEY`. The EOS text OpenRLHF decodes into each
   query is cut off before scoring (`?strip_eos=false` keeps it).

2. A reward-function file, here: `--reward.remote_url /path/to/reward_func.py` whose
   `reward_func` is a `FlowfieldOpenRLHFReward`. It adds the verifier reward to the flow
   return and pushes the accepted rollouts to /v1/update, which the remote URL cannot do:

       # reward_func.py
       from flowfield_client.adapters.openrlhf import FlowfieldOpenRLHFReward

       def verify(prompt: str, response: str, label: str) -> float:
           return 1.0 if my_check(response, label) else 0.0

       reward_func = FlowfieldOpenRLHFReward("http://flowfield:8000", verifier=verify)

   Or use this module's own `reward_func`, configured from the environment: FLOWFIELD_URL,
   FLOWFIELD_API_KEY, FLOWFIELD_VERIFIER ("package.module:function", called as
   `f(prompt, response, label)`), FLOWFIELD_FLOW_WEIGHT, FLOWFIELD_STRIP (a JSON list of
   strings cut from the end of each response, e.g. '["<|im_end|>"]').

OpenRLHF (0.11) calls a reward function from worker threads, one sample per call and the `n`
samples of a prompt at the same time; labels are the dataset's values as they are (any
type). Each call pushes its accepted samples under an update id of its own.

The result is OpenRLHF's dict: `rewards` (verifier + flow_weight * flow return) for the
advantages, `scores` (the verifier reward, or the rewards without a verifier) for dynamic
filtering, and `extra_logs`. Values are torch tensors when torch is importable (it always is
inside OpenRLHF), else lists; torch is imported only when called.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flowfield_client.adapters._base import RewardAdapterBase
from flowfield_client.client import FlowfieldClient
from flowfield_client.errors import FlowfieldError
from flowfield_client.models import Sample

log = logging.getLogger("flowfield_client.openrlhf")

Verifier = Callable[[str, str, Any], float]  # (prompt, response, label) -> outcome reward


class FlowfieldOpenRLHFReward(RewardAdapterBase[FlowfieldClient]):
    """OpenRLHF reward function. Call it as `reward_func(queries, prompts, labels)`.

    Args:
        client: a `FlowfieldClient`, or service URL(s) (default: $FLOWFIELD_URL).
        verifier: `f(prompt, response, label) -> float`, the outcome reward.
        add_verifier: rewards = verifier + flow_weight * flow_return (else the flow part only).
        flow_weight: scale of the flow return.
        push_accepted: push rollouts with verifier reward >= accept_threshold to /v1/update
            (default: when there is a verifier).
        strip: strings cut from the end of each response first: the EOS token's text, which
            OpenRLHF decodes into the query (e.g. ["<|im_end|>"], or [tokenizer.eos_token]).
        score_options: /v1/score options.
        strict_updates: raise when /update fails (default: log and go on).
        return_tensors: torch tensors (default when torch imports) or lists.
    """

    client_class = FlowfieldClient

    def __init__(
        self,
        client: FlowfieldClient | str | Sequence[str] | None = None,
        *,
        verifier: Verifier | None = None,
        add_verifier: bool = True,
        flow_weight: float = 1.0,
        push_accepted: bool | None = None,
        accept_threshold: float = 1.0,
        strip: Sequence[str] = (),
        score_options: Mapping[str, Any] | None = None,
        strict_updates: bool = False,
        return_tensors: bool | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if push_accepted and verifier is None:
            raise ValueError("push_accepted needs a verifier")
        super().__init__(
            client, verifier=verifier, add_verifier=add_verifier, flow_weight=flow_weight,
            push_accepted=push_accepted, accept_threshold=accept_threshold,
            score_options=score_options, strict_updates=strict_updates, client_kwargs=client_kwargs,
        )
        self.strip = tuple(strip)
        self.return_tensors = return_tensors
        self.calls = 0
        self.update_results: list[Any] = []
        self._lock = threading.Lock()  # OpenRLHF calls from several threads at once

    @property
    def client(self) -> FlowfieldClient:
        with self._lock:  # the first calls may come from several threads at once
            return super().client

    def __call__(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
        n = len(queries)
        prompts = list(prompts) if prompts else [""] * n
        labels = list(labels) if labels else [""] * n
        if len(prompts) != n or len(labels) != n:
            raise ValueError(f"{n} queries but {len(prompts)} prompts and {len(labels)} labels")
        pairs = [split_query(q, p, self.strip) for q, p in zip(queries, prompts)]
        samples = [Sample(id=str(i), prompt=p, response=r) for i, (p, r) in enumerate(pairs)]
        flow: list[float] = []
        if n:
            res = self.client.score(samples, **self.score_options)
            flow = [r.flow_return or 0.0 for r in res]  # unscorable (empty) responses: 0
        verdicts: list[float] | None = None
        if self.verifier is not None:
            verdicts = [float(self.verifier(p, r, lab)) for (p, r), lab in zip(pairs, labels)]
        rewards = [self.flow_weight * f for f in flow]
        if verdicts is not None and self.add_verifier:
            rewards = [v + r for v, r in zip(verdicts, rewards)]
        scores = verdicts if verdicts is not None else list(rewards)
        logs = {"flow_return": flow, **({"verifier": verdicts} if verdicts is not None else {})}
        if self.push_accepted and verdicts is not None:
            self._push(samples, verdicts)
        return {
            "rewards": self._out(rewards),
            "scores": self._out(scores),
            "extra_logs": {k: self._out(v) for k, v in logs.items()},
        }

    def _push(self, samples: list[Sample], verdicts: list[float]) -> None:
        accepted = [
            Sample(id=s.id, prompt=s.prompt, response=s.response, reward=v)
            for s, v in zip(samples, verdicts)
            if v >= self.accept_threshold and s.response
        ]
        if not accepted:
            return
        try:
            # unique per call: concurrent calls must never share an id (the service would
            # drop all but the first as duplicates)
            update_id = f"openrlhf-{self.run_id}-{uuid.uuid4().hex}"
            res = self.client.update(accepted, update_id=update_id)
            with self._lock:
                self.update_results.append(res)
        except FlowfieldError as e:
            if self.strict_updates:
                raise
            log.warning("flowfield /update failed, training goes on: %s", e)

    def _out(self, values: list[float]) -> Any:
        if self.return_tensors is False:
            return list(values)
        try:
            import torch
        except ImportError:
            if self.return_tensors:
                raise
            return list(values)
        return torch.tensor(values, dtype=torch.float32)


def split_query(query: str, prompt: str, strip: Sequence[str] = ()) -> tuple[str, str]:
    """(prompt, response) of an OpenRLHF query (prompt + response), as the service's
    /get_reward splits it: without the prompt prefix, the whole query is the response."""
    if prompt and query.startswith(prompt):
        p, r = prompt, query[len(prompt) :]
    else:
        p, r = "", query
    changed = True
    while changed:
        changed = False
        for s in strip:
            if s and r.endswith(s):
                r = r[: -len(s)]
                changed = True
    return p, r


def load_callable(spec: str) -> Callable[..., Any]:
    """"package.module:function" -> the function."""
    mod, _, name = spec.partition(":")
    if not mod or not name:
        raise ValueError(f"expected 'module:function', got {spec!r}")
    return getattr(importlib.import_module(mod), name)


_default: FlowfieldOpenRLHFReward | None = None


_default_lock = threading.Lock()


def reward_func(
    queries: Sequence[str],
    prompts: Sequence[str] | None = None,
    labels: Sequence[Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """OpenRLHF's entry point, configured from the environment (see the module doc)."""
    global _default
    with _default_lock:
        if _default is None:
            spec = os.environ.get("FLOWFIELD_VERIFIER")
            strip = os.environ.get("FLOWFIELD_STRIP")
            _default = FlowfieldOpenRLHFReward(
                verifier=load_callable(spec) if spec else None,
                flow_weight=float(os.environ.get("FLOWFIELD_FLOW_WEIGHT", "1.0")),
                strip=json.loads(strip) if strip else (),
            )
    return _default(queries, prompts, labels, **kwargs)
