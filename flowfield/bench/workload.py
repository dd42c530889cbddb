"""The bench's configuration and assets: a random-initialised Qwen2 policy, a flow with random
non-zero weights, and GRPO-like rounds of responses sharing a prompt."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowfield.encoder import LatentEncoder


@dataclass(frozen=True)
class BenchConfig:
    # workload: GRPO-like groups of responses sharing a prompt
    groups: int = 4  # groups per measured round
    group_size: int = 8
    prompt_tokens: int = 128  # prompt lengths are uniform in +-12.5% around this
    min_response: int = 64
    max_response: int = 256
    rounds: int = 4  # measured rounds, after one warm-up round
    warmup_groups: int = 1
    # policy: a random-initialised Qwen2
    hidden: int = 512
    layers: int = 8
    heads: int = 8
    kv_heads: int = 2
    intermediate: int = 1536
    vocab: int = 32000
    # flow: W = d
    flow_depth: int = 4
    timesteps: tuple[float, ...] = (0.8,)
    # runtime
    threads: int = 2
    batch_max_tokens: int = 32768  # the service's default FLOWFIELD_BATCH_MAX_TOKENS
    http: bool = True
    seed: int = 0


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
