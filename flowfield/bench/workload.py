"""The bench's configuration and assets: a random-initialised Qwen2 policy, a flow with random
non-zero weights, and GRPO-like rounds of responses sharing a prompt."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flowfield import defaults
from flowfield.cli_options import opt
from flowfield.precision import check_dtype_name

if TYPE_CHECKING:
    from flowfield.encoder import LatentEncoder


@dataclass(frozen=True)
class BenchConfig:
    """End-to-end /score throughput vs. the reference computation (docs/method.md#cost), as ratios.

    Each field is an option of `flowfield bench` (flowfield/bench/cli.py)."""

    # workload: GRPO-like groups of responses sharing a prompt
    groups: int = opt(4, "groups per measured round")
    group_size: int = opt(8, "responses per group (sharing one prompt)")
    prompt_tokens: int = opt(128, "typical prompt length (+-12.5%)")
    min_response: int = opt(64, "shortest response")
    max_response: int = opt(256, "longest response")
    rounds: int = opt(4, "measured rounds (after one warm-up round)")
    warmup_groups: int = opt(1, "groups in the warm-up round")
    # policy: a random-initialised Qwen2
    hidden: int = opt(512, "policy hidden size d (and flow width W)")
    layers: int = opt(8, "policy decoder blocks")
    heads: int = opt(8, "attention heads")
    kv_heads: int = opt(2, "key/value heads")
    intermediate: int = opt(1536, "MLP size")
    vocab: int = opt(32000, "vocabulary size")
    # flow: W = d
    flow_depth: int = opt(4, "flow residual blocks")
    timesteps: tuple[float, ...] = opt(defaults.TIMESTEPS, "comma-separated flow timesteps")
    # runtime
    device: str = opt("cpu", "cpu or cuda (every path, the server too)")
    dtype: str | None = opt(
        None,
        "float32, bfloat16 or auto, every path (default: bfloat16 on cuda, float32 on cpu); "
        "BENCHMARKS.md gets one section per dtype and device",
    )
    threads: int = opt(2, "torch threads for every path (and the server)")
    batch_max_tokens: int = opt(32768, "scheduler / encoder batch budget (the service's)")
    http: bool = opt(True, "also measure the service over HTTP")
    seed: int = opt(0, "weights and workload seed")

    def check(self) -> None:
        sizes = (self.groups, self.group_size, self.rounds, self.warmup_groups)
        if min(sizes) < 1 or self.min_response > self.max_response:
            raise ValueError("sizes must be positive and min-response <= max-response")
        if self.dtype is not None:
            check_dtype_name(self.dtype)


@dataclass
class Group:
    group_id: str
    prompt: list[int]
    responses: list[list[int]]


def build_policy(directory: Path, cfg: BenchConfig) -> Path:
    """A random-initialised Qwen2 of the configured shape, saved like any HF checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from flowfield.demo.tokenizer import build_tokenizer

    config = Qwen2Config(
        vocab_size=cfg.vocab,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=max(2048, 2 * (cfg.prompt_tokens + cfg.max_response)),
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(cfg.seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(directory))
    build_tokenizer().save_pretrained(str(directory))  # only ids are sent; the service wants one
    return directory


def build_flow(directory: Path, encoder: LatentEncoder, cfg: BenchConfig) -> Path:
    """A flow with W = d and random non-zero weights (an untrained one is exactly v = 0)."""
    import torch

    from flowfield.checkpoint import save_flow
    from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder

    torch.manual_seed(cfg.seed + 1)
    net = FlowNet(
        flow_for_encoder(encoder.hidden_size, encoder.layer_fractions, depth=cfg.flow_depth)
    )
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2 and not p.any():  # the zero-initialised adaLN and output layers
                p.normal_(std=0.02)
    meta = FlowMetadata(net.config, dataclasses.asdict(encoder.identity))
    return save_flow(directory, net, meta)


def make_round(cfg: BenchConfig, groups: int, seed: int) -> list[Group]:
    """`groups` groups of `group_size` random responses to one random prompt each."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def uniform(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    def ids(n: int) -> list[int]:
        return torch.randint(3, cfg.vocab, (n,), generator=g).tolist()

    spread = cfg.prompt_tokens // 8
    out = []
    for k in range(groups):
        prompt = ids(uniform(cfg.prompt_tokens - spread, cfg.prompt_tokens + spread))
        responses = [
            ids(uniform(cfg.min_response, cfg.max_response)) for _ in range(cfg.group_size)
        ]
        out.append(Group(f"r{seed}-g{k}", prompt, responses))
    return out


def flatten(groups: list[Group]) -> tuple[list[list[int]], list[list[int]]]:
    prompts = [g.prompt for g in groups for _ in g.responses]
    responses = [r for g in groups for r in g.responses]
    return prompts, responses
