"""LatentEncoder: the policy's hidden states at hooked layers, for response tokens only.

RLFR's latents are the raw residual stream (output of decoder block i, before any final
norm) of the policy itself, at depth fractions 0.25/0.5/0.75. The encoder loads any
decoder-only Hugging Face causal LM from a local directory, hooks those blocks, and stops
the forward right after the deepest one: later blocks, the final norm and the LM head are
never run.

Sequences are right-padded into length-sorted micro-batches, cut where padding would pass
1/8 of a batch's width. With causal attention a real token never attends to a later
(padding) position, so a sample's latents do not depend on what else is in the batch.

Shared prompts (GRPO groups: several responses to one prompt) are encoded once: the distinct
prompts run as one padded batch that keeps the keys and values of blocks 0..deepest (KV
cache); each group's responses then run as a continuation of that cache, with the prompt's
columns in the attention mask and positions counted on from the prompt's end. The latents
are the same as running every prompt + response in full (checked once per model at load
time; architectures whose cache is not a plain growing one, e.g. sliding-window layers, keep
the plain path).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import DynamicLayer

from flowfield import defaults
from flowfield.latent_memo import LatentMemo, memo_key
from flowfield.precision import Precision, dtype_name, resolve_dtype

log = logging.getLogger("flowfield.encoder")

# transformers' from_pretrained swaps class and module attributes for the duration of a load
# (PreTrainedModel.tie_weights and init_weights, torch's init functions) and puts back what it
# found, so two loads that overlap in one process can leave a no-op behind, after which a
# later load skips weight tying (a GPT-2 policy's lm_head stays on the meta device). A process
# that loads policies from several threads (serving states, a policy reload beside a learner)
# takes them one at a time.
MODEL_LOAD_LOCK = threading.Lock()

DEFAULT_LAYER_FRACTIONS = defaults.LAYER_FRACTIONS


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


# files any Hugging Face tokenizer is saved as; a directory with none of them has no tokenizer
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
)
NO_TOKENIZER = "this policy has no tokenizer: send token ids (prompt_ids, response_ids)"


class NoTokenizerError(ValueError):
    """Text was sent, but the policy directory has no tokenizer to turn it into ids."""


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase | None:
    """The directory's tokenizer, or None (with a warning) when it has none.

    Without tokenizer files transformers either fails (Llama) or silently builds an empty
    tokenizer (GPT-2) that turns every text into no tokens at all; both become None here,
    so text input gets a clear error instead of "empty response".
    """
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        log.warning("%s has no tokenizer files: only token ids can be scored", path)
        return None
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        log.warning("%s: the tokenizer does not load (%s): only token ids can be scored", path, e)
        return None
    if len(tok) <= 1:
        log.warning("%s: the tokenizer is empty: only token ids can be scored", path)
        return None
    return tok


def layer_mapping(fractions: Sequence[float], blocks: Sequence[int], num_layers: int) -> str:
    """'0.25 -> block 1 (hidden_states[2]), ...' for log lines and reports."""
    parts = [f"{p:g} -> block {i} (hidden_states[{i + 1}])" for p, i in zip(fractions, blocks)]
    return ", ".join(parts) + f" of {num_layers} blocks"


def cache_argument(model: nn.Module) -> str:
    """The forward argument that takes a key/value cache: `cache` in current transformers
    (`past_key_values` is deprecated there and warns on every call), `past_key_values` in
    older versions and remote-code models."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


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


def weights_revision(path: Path) -> str:
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


def _gemm_shape(config: PretrainedConfig) -> tuple[int, int]:
    """(hidden size, MLP size) of a decoder config: the shape `auto` times its GEMM at."""
    d = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 512)
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    return d, int(inner or 4 * d)


class LatentEncoder:
    def __init__(
        self,
        path: str | Path,
        layer_fractions: Sequence[float] = DEFAULT_LAYER_FRACTIONS,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        name: str | None = None,
        revision: str | None = None,
        max_batch_tokens: int = 16384,
        share_prompts: bool = True,
        memo_bytes: int = 0,
    ) -> None:
        """share_prompts: encode a prompt shared by several samples once (KV reuse).
        memo_bytes: keep up to this many bytes of scored samples' latents for the learner
        (flowfield.latent_memo; 0 = no memo).

        dtype: a torch dtype, or "float32", "bfloat16" or "auto" (bf16 where it measures
        faster, see flowfield.precision); None: bf16 on cuda, float32 elsewhere. The chosen
        dtype and why are in `precision`."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a Hugging Face model directory (no config.json)"
            )
        self.path = path
        self.device = torch.device(device)
        config = AutoConfig.from_pretrained(path)
        if getattr(config, "is_encoder_decoder", False):
            raise ValueError(f"{path}: encoder-decoder models are not supported")
        if dtype is None:  # the library's default: bf16 on cuda, float32 elsewhere
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            self.precision = Precision(dtype, "default", f"the default on {self.device.type}")
        elif isinstance(dtype, str):  # "float32", "bfloat16" or "auto" (measured: precision)
            self.precision = resolve_dtype(dtype, self.device, _gemm_shape(config))
        else:
            self.precision = Precision(dtype, dtype_name(dtype), "requested")
        self.dtype = dtype = self.precision.dtype
        with MODEL_LOAD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self.model = model.to(self.device).eval()
        self.tokenizer: PreTrainedTokenizerBase | None = _load_tokenizer(path)
        self.config = self.model.config
        self.num_layers = int(self.config.num_hidden_layers)
        self.hidden_size = int(self.config.hidden_size)
        self.vocab_size = int(self.config.vocab_size)
        self.max_positions = getattr(self.config, "max_position_embeddings", None)
        self.layer_fractions = tuple(float(p) for p in layer_fractions)
        self.layers = layer_indices(self.layer_fractions, self.num_layers)
        self.max_batch_tokens = max_batch_tokens
        # padding bound of micro_batches; batches below min_batch_tokens are not cut for it
        # (small batches waste less on padding than they lose in matmul efficiency)
        self.max_padding = 0.125
        self.min_batch_tokens = 1024 if self.device.type == "cpu" else 4096
        self.identity = EncoderIdentity(
            name=name or _model_name(path),
            revision=revision or weights_revision(path),
            model_type=str(self.config.model_type),
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            vocab_size=self.vocab_size,
            layers=tuple(self.layers),
        )
        self._blocks = _decoder_blocks(self.model, self.num_layers)
        self._cache_kw = cache_argument(self.model)
        # hooks write into a per-thread dict, so a scorer thread and a learner thread can
        # share one encoder without mixing up each other's activations
        self._local = threading.local()
        self._deepest = max(self.layers)
        for i in self.layers:
            self._blocks[i].register_forward_hook(self._make_hook(i))
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None else None
        self._pad = 0 if pad is None else int(pad)
        # may be switched off by hand (benchmarks); only switched on where it is known to work
        self.share_prompts = share_prompts and self._prompt_sharing_works()
        self.memo = LatentMemo(memo_bytes) if memo_bytes > 0 else None

    def _make_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            captured = getattr(self._local, "captured", None)
            if captured is None:  # a forward of the model itself (logits, sampling): pass
                return
            hidden = output[0] if isinstance(output, tuple) else output
            captured[index] = hidden
            if index == self._deepest:
                raise _StopForward

        return hook

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs
    ) -> torch.Tensor:
        """Run the model up to the deepest hooked block: latents [L, B, T, d]."""
        self._local.captured = captured = {}
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        except _StopForward:
            pass
        else:  # pragma: no cover - the hook always fires
            raise RuntimeError("the deepest hooked block did not run")
        finally:
            self._local.captured = None
        return torch.stack([captured[i] for i in self.layers])

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Residual stream after each hooked block: [L, B, T, d], right-padded input."""
        return self._forward(input_ids, attention_mask, use_cache=False)

    def describe_layers(self) -> str:
        """How the depth fractions map to blocks, in `hidden_states` terms.

        Fraction p reads block round(p * L) (0-based), whose output is hidden_states[i + 1]
        of a full forward with output_hidden_states (hidden_states[0] is the embeddings).
        """
        return layer_mapping(self.layer_fractions, self.layers, self.num_layers)

    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer is not None

    def tokenize(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """Token ids for a text sample; the response is tokenised on its own, as generated.

        Raises NoTokenizerError for text when the policy directory has no tokenizer.
        """
        if self.tokenizer is None:
            if prompt or response:
                raise NoTokenizerError(NO_TOKENIZER)
            return [], []
        p = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        r = self.tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
        return list(p), list(r)

    def micro_batches(
        self, lengths: Sequence[int], max_padding: float | None = None
    ) -> list[list[int]]:
        """Sample indices grouped into batches of at most max_batch_tokens padded tokens.

        Longest first, so neighbours have similar lengths. A batch that already holds
        min_batch_tokens real tokens also closes when the next sample would be padded by more
        than `max_padding` (default self.max_padding) of the batch's width: one batch of
        responses of 64..256 tokens would spend 40-60% of its compute on padding, batches cut
        at 1/8 spend 7-16%.
        """
        max_padding = self.max_padding if max_padding is None else max_padding
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        batches: list[list[int]] = []
        cur: list[int] = []
        real = 0  # unpadded tokens in cur
        for i in order:
            width = lengths[cur[0]] if cur else lengths[i]
            full = width * (len(cur) + 1) > self.max_batch_tokens
            loose = real >= self.min_batch_tokens and lengths[i] < (1 - max_padding) * width
            if cur and (full or loose):
                batches.append(cur)
                cur, real = [], 0
            cur.append(i)
            real += lengths[i]
        if cur:
            batches.append(cur)
        return batches

    def _right_pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, right-padded: [B, T] each, on the model's device."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def encode(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        fixed_shapes: bool = False,
        check: Callable[[], None] | None = None,
        remember: bool = False,
        reuse: bool = False,
        share_prefix: bool = False,
    ) -> EncodedBatch:
        """Latents of every response token (and its neighbours) of every sample, packed.

        Samples keep their input order in the packed output. fixed_shapes: every forward's
        shapes depend on one sample alone (batch invariance, see `_encode_fixed`); check is
        then called before each forward and may raise to abandon the call (shutdown).
        With a `memo` (flowfield.latent_memo): remember puts each encoded sample in it
        (scoring), reuse takes samples found there instead of encoding them (the learner).
        share_prefix (not with fixed_shapes): when every prompt of the call starts with the
        same MIN_SHARED_PREFIX or more tokens (a chat template's system prompt, few-shot
        examples), that prefix runs once and each sample continues from it (`_encode_prefixed`;
        the offline fit's latent cache uses it).
        """
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        prompts = [list(p) for p in prompts]
        responses = [list(r) for r in responses]
        n = len(prompts)
        # per sample: [L, R + 2, d] = latent before the first response token (zero without a
        # prompt), the R response latents, a zero row after the end
        per_sample: list[torch.Tensor | None] = [None] * n
        memo = self.memo if remember or reuse else None
        keys = [memo_key(p, r) for p, r in zip(prompts, responses)] if memo is not None else []
        if memo is not None and reuse:
            per_sample = [memo.get(k) for k in keys]
        todo = [i for i in range(n) if per_sample[i] is None]
        if todo:
            fresh = self._encode_samples(
                [prompts[i] for i in todo],
                [responses[i] for i in todo],
                fixed_shapes,
                check,
                share_prefix,
            )
            for i, latents in zip(todo, fresh):
                per_sample[i] = latents
                if memo is not None and remember:
                    memo.put(keys[i], latents)
        return self._pack(per_sample, responses)

    def _encode_samples(
        self,
        prompts: list[list[int]],
        responses: list[list[int]],
        fixed_shapes: bool,
        check: Callable[[], None] | None,
        share_prefix: bool = False,
    ) -> list[torch.Tensor | None]:
        """Each sample's [L, R + 2, d] latents (see encode)."""
        n = len(prompts)
        per_sample: list[torch.Tensor | None] = [None] * n
        if fixed_shapes:
            self._encode_fixed(prompts, responses, per_sample, check or _no_check)
            return per_sample
        prefix = shared_prefix_length(prompts) if share_prefix and self.share_prompts else 0
        if n >= 2 and prefix >= MIN_SHARED_PREFIX and all(responses):
            self._encode_prefixed(prefix, prompts, responses, per_sample)
            return per_sample
        groups = self._shared_prompt_groups(prompts, responses) if self.share_prompts else []
        grouped = {i for g in groups for i in g}
        alone = [i for i in range(n) if i not in grouped]
        self._encode_alone(alone, prompts, responses, per_sample)
        self._encode_groups(groups, prompts, responses, per_sample)
        return per_sample

    def _encode_fixed(
        self,
        prompts: list[list[int]],
        responses: list[list[int]],
        per_sample: list[torch.Tensor | None],
        check: Callable[[], None],
    ) -> None:
        """Batch-invariant encoding: a sample's latents are a function of that sample alone.

        No padding and no batch dimension: each distinct prompt runs alone ([1, P]) and each
        response alone ([1, R]) as a continuation of its prompt's cache, whether other
        samples share the prompt or not (a prompt shared in this call still runs once); where
        prompts cannot be shared, each sample runs alone in full. Every matrix product then
        has shapes that only this sample decides, so batch-mates cannot change a bit of it.

        Short samples (prompt + response + 1 <= bucket_tokens / 2) go in fixed-shape buckets
        instead (`_encode_buckets`): one forward per tiny sequence is mostly overhead.
        """
        width = self._bucket_width
        buckets: dict[int, list[int]] = {}
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        alone = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            w = width(len(p) + len(r))
            if w:
                buckets.setdefault(w, []).append(i)
            elif self.share_prompts and p and r:
                by_prompt.setdefault(tuple(p), []).append(i)
            else:
                alone.append(i)
        for i in alone:
            check()
            self._encode_alone([i], prompts, responses, per_sample)
        owner = torch.zeros(1, dtype=torch.long, device=self.device)
        for members in by_prompt.values():
            check()
            kv, prompt_mask, last = self._prompt_pass([prompts[members[0]]])
            for i in members:
                check()
                hs = self._response_pass(kv, prompt_mask, owner, [responses[i]])  # [L, 1, R, d]
                zero = torch.zeros_like(hs[:, 0, :1])
                per_sample[i] = torch.cat([last, hs[:, 0], zero], dim=1)
        for w, members in buckets.items():
            self._encode_buckets(w, members, prompts, responses, per_sample, check)

    @property
    def bucket_tokens(self) -> int:
        """Tokens (rows x width) of every bucketed forward of the batch-invariant path: at
        least 256, and 32 per torch thread on a CPU (as the flow's fixed chunks)."""
        if self.device.type == "cpu":
            return max(BUCKET_TOKENS, 32 * torch.get_num_threads())
        return BUCKET_TOKENS

    def _bucket_width(self, length: int) -> int:
        """The bucket (padded width) of a sample of `length` prompt + response tokens, or 0
        for none (an empty sample, or one too long for two rows of a bucketed forward)."""
        if length == 0:
            return 0
        # at least one padding column: every row of every bucketed forward has padding, so
        # the attention always runs with its mask (never the maskless causal path)
        w = -(-(length + 1) // BUCKET_STEP) * BUCKET_STEP
        return w if 2 * w <= self.bucket_tokens else 0

    def _encode_buckets(
        self,
        width: int,
        members: list[int],
        prompts: list[list[int]],
        responses: list[list[int]],
        per_sample: list[torch.Tensor | None],
        check: Callable[[], None],
    ) -> None:
        """Batch-invariant path for short samples: each forward has exactly
        bucket_tokens // width rows of `width` tokens, prompt + response right-padded (causal
        attention: a real token never sees the padding), rows left over filled with a
        one-token dummy. Shapes depend on the sample's own length alone, and a row's numbers
        on its own tokens (the premise of the flow's fixed row chunks too), so batch-mates
        cannot change a bit of it, while short samples share a forward."""
        rows = self.bucket_tokens // width
        for start in range(0, len(members), rows):
            check()
            chunk = members[start : start + rows]
            ids = torch.full((rows, width), self._pad, dtype=torch.long)
            mask = torch.zeros((rows, width), dtype=torch.long)
            mask[:, 0] = 1  # the dummy rows: one token, so no row is all padding
            for row, i in enumerate(chunk):
                seq = prompts[i] + responses[i]
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            hs = self._forward(ids.to(self.device), mask.to(self.device), use_cache=False)
            zero = torch.zeros_like(hs[:, 0, :1])  # [L, 1, d]
            for row, i in enumerate(chunk):
                p, r = len(prompts[i]), len(responses[i])
                span = hs[:, row, max(p - 1, 0) : p + r]
                pieces = [zero, span, zero] if p == 0 else [span, zero]
                per_sample[i] = torch.cat(pieces, dim=1)

    def _pack(
        self, per_sample: list[torch.Tensor | None], responses: list[list[int]]
    ) -> EncodedBatch:
        d, L = self.hidden_size, len(self.layers)
        offsets = [0]
        for r in responses:
            offsets.append(offsets[-1] + len(r))
        if not responses or offsets[-1] == 0:
            empty = torch.zeros((L, 0, d), dtype=self.dtype, device=self.device)
            return EncodedBatch(empty, empty, empty, offsets)
        h = torch.cat([s[:, 1:-1] for s in per_sample], dim=1)
        prev = torch.cat([s[:, :-2] for s in per_sample], dim=1)
        nxt = torch.cat([s[:, 2:] for s in per_sample], dim=1)
        return EncodedBatch(h, prev, nxt, offsets)

    def _encode_alone(
        self,
        samples: list[int],
        prompts: list[list[int]],
        responses: list[list[int]],
        per_sample: list[torch.Tensor | None],
    ) -> None:
        """The plain path: each sample's prompt + response in full, length-sorted batches."""
        lengths = [len(prompts[i]) + len(responses[i]) for i in samples]
        for batch in self.micro_batches(lengths):
            rows = [samples[b] for b in batch]
            if lengths[batch[0]] == 0:  # nothing to run: no prompt and no response
                shape = (len(self.layers), 2, self.hidden_size)
                for i in rows:
                    per_sample[i] = torch.zeros(shape, dtype=self.dtype, device=self.device)
                continue
            ids, mask = self._right_pad([prompts[i] + responses[i] for i in rows])
            hs = self._forward(ids, mask, use_cache=False)  # [L, B, T, d]
            zero = torch.zeros_like(hs[:, 0, :1])  # [L, 1, d]
            for row, i in enumerate(rows):
                p, r = len(prompts[i]), len(responses[i])
                # positions p-1 .. p+r-1, with a zero row where p == 0, plus a zero row after
                span = hs[:, row, max(p - 1, 0) : p + r]
                pieces = [zero, span, zero] if p == 0 else [span, zero]
                per_sample[i] = torch.cat(pieces, dim=1)

    @staticmethod
    def _shared_prompt_groups(
        prompts: list[list[int]], responses: list[list[int]]
    ) -> list[list[int]]:
        """Sample indices by identical non-empty prompt, for prompts shared by 2+ samples."""
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for i, (p, r) in enumerate(zip(prompts, responses)):
            if p and r:
                by_prompt.setdefault(tuple(p), []).append(i)
        return [g for g in by_prompt.values() if len(g) >= 2]

    def _encode_groups(
        self,
        groups: list[list[int]],
        prompts: list[list[int]],
        responses: list[list[int]],
        per_sample: list[torch.Tensor | None],
    ) -> None:
        """Shared-prompt path: each distinct prompt runs once, its responses continue from it.

        Groups go in chunks whose padded prompts fit one batch; within a chunk, the responses
        of all its groups are length-sorted into batches, each row continuing from its own
        group's cached prompt.
        """
        prompt_lengths = [len(prompts[g[0]]) for g in groups]
        # chunks are not cut for padding: the prompt pass is a small part of the work, and
        # fewer chunks leave more responses to sort into tight batches
        for chunk in self.micro_batches(prompt_lengths, max_padding=1.0):
            kv, prompt_mask, last = self._prompt_pass([prompts[groups[c][0]] for c in chunk])
            # (sample, row of its prompt in this chunk) for every response of the chunk
            members = [(i, k) for k, c in enumerate(chunk) for i in groups[c]]
            for batch in self.micro_batches([len(responses[i]) for i, _ in members]):
                rows = [members[b] for b in batch]
                owner = torch.tensor([k for _, k in rows], device=self.device)
                hs = self._response_pass(kv, prompt_mask, owner, [responses[i] for i, _ in rows])
                zero = torch.zeros_like(hs[:, 0, :1])  # [L, 1, d]
                for row, (i, k) in enumerate(rows):
                    span = hs[:, row, : len(responses[i])]  # [L, R, d]
                    per_sample[i] = torch.cat([last[:, k, None], span, zero], dim=1)

    def _encode_prefixed(
        self,
        prefix: int,
        prompts: list[list[int]],
        responses: list[list[int]],
        per_sample: list[torch.Tensor | None],
    ) -> None:
        """Shared-prefix path: the first `prefix` prompt tokens (the same in every sample)
        run once; each sample's rest of the prompt and its response continue from that cache
        (the same continuation as the shared-prompt path, checked by _prompt_sharing_works).
        `prefix` is below every prompt's length, so each continuation holds at least the
        prompt's last token, whose latent is the first response token's "prev"."""
        kv, prompt_mask, _ = self._prompt_pass([prompts[0][:prefix]])
        rests = [p[prefix:] + r for p, r in zip(prompts, responses)]
        # every row holds the prefix's keys and values in each block up to the deepest hooked
        # one: a quarter of the usual token budget (prefix included) bounds that memory
        budget = max(1, self.max_batch_tokens // 4)
        order = sorted(range(len(rests)), key=lambda i: (-len(rests[i]), i))
        batches: list[list[int]] = []
        for i in order:
            width = prefix + len(rests[batches[-1][0]]) if batches else 0
            if batches and width * (len(batches[-1]) + 1) <= budget:
                batches[-1].append(i)
            else:
                batches.append([i])
        for batch in batches:
            owner = torch.zeros(len(batch), dtype=torch.long, device=self.device)
            hs = self._response_pass(kv, prompt_mask, owner, [rests[i] for i in batch])
            zero = torch.zeros_like(hs[:, 0, :1])  # [L, 1, d]
            for row, i in enumerate(batch):
                p = len(prompts[i]) - prefix  # >= 1
                span = hs[:, row, p - 1 : p + len(responses[i])]  # last prompt token + response
                per_sample[i] = torch.cat([span, zero], dim=1)

    def _prompt_pass(
        self, prompts: list[list[int]]
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
        """Run G distinct prompts once, right-padded, keeping the cache of blocks 0..deepest.

        Returns kv (per block 0..deepest: keys, values [G, H, P, dh]), the prompts' attention
        mask [G, P] and the latents at each prompt's last position [L, G, d].
        """
        ids, mask = self._right_pad(prompts)  # [G, P]
        cache = DynamicCache(config=self.config)
        # the early stop fires after block `deepest` has written its keys and values
        hs = self._forward(ids, mask, **{self._cache_kw: cache}, use_cache=True)  # [L, G, P, d]
        kv = [(cache.layers[b].keys, cache.layers[b].values) for b in range(self._deepest + 1)]
        rows = torch.arange(len(prompts), device=self.device)
        last = hs[:, rows, mask.sum(dim=1) - 1]  # [L, G, d]
        return kv, mask, last

    def _response_pass(
        self,
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        prompt_mask: torch.Tensor,
        owner: torch.Tensor,
        responses: list[list[int]],
    ) -> torch.Tensor:
        """Responses continuing from their group's cached prompt: latents [L, B, R, d].

        owner[b] is the prompt (row of kv / prompt_mask) that response b continues.
        """
        ids, resp_mask = self._right_pad(responses)  # [B, R]
        prompt_mask = prompt_mask[owner]  # [B, P]
        width = int(prompt_mask.sum(dim=1).max())  # prompts are right-padded: drop unused columns
        prompt_mask = prompt_mask[:, :width]
        cache = DynamicCache(config=self.config)
        for block, (k, v) in enumerate(kv):
            cache.update(k[owner, :, :width], v[owner, :, :width], block)  # [B, H, P, dh]
        mask = torch.cat([prompt_mask, resp_mask], dim=1)  # [B, P + R]; holes = prompt padding
        steps = torch.arange(ids.shape[1], device=self.device)
        positions = prompt_mask.sum(dim=1, keepdim=True) + steps  # [B, R], after each prompt
        return self._forward(
            ids, mask, **{self._cache_kw: cache}, use_cache=True, position_ids=positions
        )

    def _prompt_sharing_works(self) -> bool:
        """Whether encoding shared prompts once gives this model's plain-path latents.

        Needs a plain growing key/value cache in blocks 0..deepest (sliding-window or
        linear-attention layers keep only part of the past, so they are refused), and is then
        checked once on a tiny input with two groups of different prompt lengths.
        """
        try:
            cache_layers = DynamicCache(config=self.config).layers
        except Exception as e:  # an architecture the cache API does not know
            log.info("prompt sharing off for %s: %s", self.identity.model_type, e)
            return False
        if any(type(layer) is not DynamicLayer for layer in cache_layers[: self._deepest + 1]):
            log.info(
                "prompt sharing off for %s: its key/value cache is not a plain growing one "
                "(sliding-window or linear-attention layers)",
                self.identity.model_type,
            )
            return False
        v = self.vocab_size
        prompts = [[3 % v, 4 % v, 5 % v]] * 2 + [[6 % v, 7 % v]] * 2
        responses = [[8 % v], [9 % v, 10 % v, 11 % v], [12 % v, 13 % v], [14 % v]]
        try:
            with torch.inference_mode():
                plain: list[torch.Tensor | None] = [None] * 4
                shared: list[torch.Tensor | None] = [None] * 4
                self._encode_alone(list(range(4)), prompts, responses, plain)
                self._encode_groups([[0, 1], [2, 3]], prompts, responses, shared)
        except Exception as e:
            log.warning("prompt sharing off for %s: %s", self.identity.model_type, e)
            return False
        tol = 1e-4 if self.dtype == torch.float32 else 5e-2  # relative to the largest latent
        for a, b in zip(plain, shared):
            scale = float(a.abs().max())
            if a.shape != b.shape or float((a - b).abs().max()) > tol * scale:
                log.warning(
                    "prompt sharing off for %s: its latents differ from the plain path",
                    self.identity.model_type,
                )
                return False
        return True


def _no_check() -> None:
    pass


# the batch-invariant path's fixed-shape buckets for short samples (LatentEncoder._encode_fixed):
# widths in steps of BUCKET_STEP tokens, BUCKET_TOKENS tokens (rows x width) per forward
BUCKET_STEP = 8
BUCKET_TOKENS = 256


MIN_SHARED_PREFIX = 32  # shorter common prefixes are not worth a pass of their own


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """The number of leading tokens every prompt shares, below the shortest prompt's length
    (each prompt keeps at least its last token); 0 for no prompts or an empty one."""
    if not prompts or not all(prompts):
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def _model_name(path: Path) -> str:
    """A readable model id: "name" in the directory's flowfield.json, else the folder name."""
    meta = path / "flowfield.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text())["name"])
        except (KeyError, ValueError):
            pass
    return path.name
