"""LatentMemo: the latents of recently scored samples, kept for the learner.

A trainer scores its rollouts with /score and then sends the verifier-accepted ones to
/update: the same samples, encoded by the same policy a moment later. With a memo on the
encoder, scoring remembers each sample's latents and the learner's step takes them from
here instead of running the policy again, so an update costs the flow's optimiser step and
not a second encoder pass (BENCHMARKS.md, "Online update path").

Only the learner reads the memo. Scoring always encodes afresh, so a score never depends on
what was scored or trained before it. The memo belongs to one encoder (one policy): a policy
swap brings a new encoder and an empty memo. Bounded by bytes, least recently used first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

Key = tuple[tuple[int, ...], tuple[int, ...]]


def memo_key(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> Key:
    return tuple(prompt_ids), tuple(response_ids)


class LatentMemo:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Key, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # the scoring thread writes while a learner may read

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> torch.Tensor | None:
        with self._lock:
            t = self._items.get(key)
            if t is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return t

    def put(self, key: Key, latents: torch.Tensor) -> None:
        """Remember one sample's latents ([L, R + 2, d]); a copy, so that a view does not keep
        a whole batch's activations alive. A sample larger than the whole memo is skipped."""
        size = latents.numel() * latents.element_size()
        if size > self.max_bytes:
            return
        latents = latents.detach().clone()
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.numel() * old.element_size()
            self._items[key] = latents
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= dropped.numel() * dropped.element_size()
