"""LatentEncoder: the policy's hidden states at hooked layers, for response tokens only.

RLFR's latents are the raw residual stream (output of decoder block i, before any final
norm) of the policy itself, at depth fractions 0.25/0.5/0.75. The encoder loads any
decoder-only Hugging Face causal LM from a local directory, hooks those blocks, and stops
the forward right after the deepest one: later blocks, the final norm and the LM head are
never run.

Sequences are right-padded into length-sorted micro-batches. With causal attention a real
token never attends to a later (padding) position, so a sample's latents do not depend on
what else is in the batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

DEFAULT_LAYER_FRACTIONS = (0.25, 0.5, 0.75)


class _StopForward(Exception):
    """Raised by the deepest hook to end the forward pass early."""


def layer_indices(fractions: Sequence[float], num_layers: int) -> list[int]:
    """0-based block index for each depth fraction: round(p * L), halves rounded up.

    28 layers -> 7, 14, 21; 32 layers -> 8, 16, 24; 4 layers -> 1, 2, 3.
    """
    out = []
    for p in fractions:
        i = math.floor(p * num_layers + 0.5)
        if not 0 <= i < num_layers:
            raise ValueError(
                f"layer fraction {p} gives block {i}, outside 0..{num_layers - 1} "
                f"for a {num_layers}-layer model"
            )
        out.append(i)
    if len(set(out)) != len(out):
        raise ValueError(f"layer fractions {list(fractions)} map to repeated blocks {out}")
    return out


def _decoder_blocks(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The ModuleList of decoder blocks (model.layers, transformer.h, ...), found generically."""
    base = getattr(model, model.base_model_prefix, model)
    candidates = [m for m in base.children() if isinstance(m, nn.ModuleList)]
    candidates += [m for m in base.modules() if isinstance(m, nn.ModuleList)]
    for m in candidates:
        if len(m) == num_layers:
            return m
    raise ValueError(f"cannot find the {num_layers} decoder blocks of {type(model).__name__}")


@dataclass(frozen=True)
class EncoderIdentity:
    """What a flow checkpoint must agree with: the latent space's shape and where it is read.

    `name` and `revision` are informative (the policy moves during RL); the architecture
    fields and the hooked blocks are checked when a flow is loaded.
    """

    name: str
    revision: str
    model_type: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    layers: tuple[int, ...]

    def label(self) -> str:
        return f"{self.name}@{self.revision}"


@dataclass
class EncodedBatch:
    """Latents of the response tokens of several samples, packed along one token axis.

    h[l, n] is the latent of packed response token n at hooked layer l; prev[l, n] and
    next[l, n] are the latents of its left and right neighbour in the same sequence
    (the last prompt token for the first response token; zero past the end).
    offsets[i]:offsets[i+1] are sample i's tokens.
    """

    h: torch.Tensor  # [L, N, d]
    prev: torch.Tensor  # [L, N, d]
    next: torch.Tensor  # [L, N, d]
    offsets: list[int]

    def context(self, direction: str) -> torch.Tensor:
        if direction == "next":
            return self.next
        if direction == "prev":
            return self.prev
        if direction == "none":
            return torch.zeros_like(self.h)
        raise ValueError(f"unknown context direction {direction!r}")


def _revision_of(path: Path) -> str:
    """A short fingerprint of the weights when no revision is given.

    Hashes each weights file's name, size and first and last MiB: stable across copies and
    clones (unlike mtimes), cheap for multi-GB checkpoints, and different after training.
    """
    h = hashlib.sha1()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()[:8]


class LatentEncoder:
    def __init__(
        self,
        path: str | Path,
        layer_fractions: Sequence[float] = DEFAULT_LAYER_FRACTIONS,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        name: str | None = None,
        revision: str | None = None,
        max_batch_tokens: int = 16384,
    ) -> None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a Hugging Face model directory (no config.json)"
            )
        self.path = path
        self.device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        config = AutoConfig.from_pretrained(path)
        if getattr(config, "is_encoder_decoder", False):
            raise ValueError(f"{path}: encoder-decoder models are not supported")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
        self.config = self.model.config
        self.num_layers = int(self.config.num_hidden_layers)
        self.hidden_size = int(self.config.hidden_size)
        self.vocab_size = int(self.config.vocab_size)
        self.max_positions = getattr(self.config, "max_position_embeddings", None)
        self.layer_fractions = tuple(float(p) for p in layer_fractions)
        self.layers = layer_indices(self.layer_fractions, self.num_layers)
        self.max_batch_tokens = max_batch_tokens
        self.identity = EncoderIdentity(
            name=name or _model_name(path),
            revision=revision or _revision_of(path),
            model_type=str(self.config.model_type),
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            vocab_size=self.vocab_size,
            layers=tuple(self.layers),
        )
        self._blocks = _decoder_blocks(self.model, self.num_layers)
        # hooks write into a per-thread dict, so a scorer thread and a learner thread can
        # share one encoder without mixing up each other's activations
        self._local = threading.local()
        self._deepest = max(self.layers)
        for i in self.layers:
            self._blocks[i].register_forward_hook(self._make_hook(i))

    def _make_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self._local.captured[index] = hidden
            if index == self._deepest:
                raise _StopForward

        return hook

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Residual stream after each hooked block: [L, B, T, d], right-padded input."""
        self._local.captured = captured = {}
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        else:  # pragma: no cover - the hook always fires
            raise RuntimeError("the deepest hooked block did not run")
        finally:
            self._local.captured = {}
        return torch.stack([captured[i] for i in self.layers])

    def tokenize(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """Token ids for a text sample; the response is tokenised on its own, as generated."""
        p = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        r = self.tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
        return list(p), list(r)

    def micro_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Sample indices grouped into batches of at most max_batch_tokens padded tokens.

        Longest first, so neighbours have similar lengths and padding stays small.
        """
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            width = lengths[cur[0]] if cur else lengths[i]
            if cur and width * (len(cur) + 1) > self.max_batch_tokens:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    @torch.inference_mode()
    def encode(
        self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]
    ) -> EncodedBatch:
        """Latents of every response token (and its neighbours) of every sample, packed.

        Samples keep their input order in the packed output.
        """
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        n = len(prompts)
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
        per_sample: list[torch.Tensor | None] = [None] * n  # [L, R + 2, d] each
        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else int(pad)
        for batch in self.micro_batches(lengths):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = list(prompts[i]) + list(responses[i])
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            hs = self.hidden_states(ids.to(self.device), mask.to(self.device))  # [L, B, T, d]
            for row, i in enumerate(batch):
                p, r = len(prompts[i]), len(responses[i])
                # positions p-1 .. p+r-1, with a zero row where p == 0, plus a zero row after
                span = hs[:, row, max(p - 1, 0) : p + r]
                pieces = [span]
                if p == 0:
                    pieces.insert(0, torch.zeros_like(hs[:, row, :1]))
                pieces.append(torch.zeros_like(hs[:, row, :1]))
                per_sample[i] = torch.cat(pieces, dim=1)
        d = self.hidden_size
        L = len(self.layers)
        offsets = [0]
        for r in responses:
            offsets.append(offsets[-1] + len(r))
        if n == 0 or offsets[-1] == 0:
            empty = torch.zeros((L, 0, d), dtype=self.dtype, device=self.device)
            return EncodedBatch(empty, empty, empty, offsets)
        h = torch.cat([s[:, 1:-1] for s in per_sample], dim=1)
        prev = torch.cat([s[:, :-2] for s in per_sample], dim=1)
        nxt = torch.cat([s[:, 2:] for s in per_sample], dim=1)
        return EncodedBatch(h, prev, nxt, offsets)


def _model_name(path: Path) -> str:
    """A readable model id: "name" in the directory's flowfield.json, else the folder name."""
    meta = path / "flowfield.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text())["name"])
        except (KeyError, ValueError):
            pass
    return path.name
