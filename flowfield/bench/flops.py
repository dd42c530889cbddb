"""FLOP counts of the bench's paths, for achieved GFLOP/s and utilisation.

Counted: every matrix product (2 FLOPs per multiply-add) of the decoder blocks that run, the
causal attention products (a token at position p attends to p + 1 keys: QK^T and AV), the LM
head where it runs, and the flow network's layers. Not counted: norms, activations, softmax,
embeddings lookups, the flow's time and layer embeddings (computed once per distinct value).
The counts are of the work each path performs, padding included (the reference runs its
padded batch; the library runs no padding).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowfield.bench.workload import BenchConfig, Group


def linear_flops_per_token(cfg: BenchConfig) -> int:
    """One decoder block's projections and MLP (SwiGLU: three d x I matrices), per token."""
    d, head = cfg.hidden, cfg.hidden // cfg.heads
    kv = cfg.kv_heads * head
    return 2 * (d * d + 2 * d * kv + d * d + 3 * d * cfg.intermediate)


def attention_flops(first: int, count: int, d: int) -> int:
    """Causal attention of `count` tokens at positions first .. first + count - 1."""
    keys = count * first + count * (count + 1) // 2  # sum of (p + 1)
    return 4 * d * keys


def encoder_flops(
    cfg: BenchConfig, prompt: int, responses: list[int], blocks: int, share: bool
) -> int:
    """Blocks 0 .. blocks-1 over one group: the prompt once (share) or once per response."""
    per_token = linear_flops_per_token(cfg)
    total = 0
    if share:
        total += prompt * per_token + attention_flops(0, prompt, cfg.hidden)
    for r in responses:
        if not share:
            total += prompt * per_token + attention_flops(0, prompt, cfg.hidden)
        total += r * per_token + attention_flops(prompt, r, cfg.hidden)
    return blocks * total


def flow_flops_per_row(d: int, width: int, depth: int) -> int:
    """x_in and c_in (d -> W), each block's MLP (2 W x W) and adaLN (W -> 3W), the final
    adaLN (W -> 2W) and output (W -> d)."""
    w = width
    return 2 * (2 * d * w + depth * (2 * w * w + 3 * w * w) + 2 * w * w + w * d)


def path_flops(cfg: BenchConfig, groups: list[Group], hooked: int, blocks_run: int) -> dict:
    """FLOPs of one round on each path: {"library", "no_share", "reference"} -> FLOPs, and the
    split of the library's into "library_encoder" and "library_flow"."""
    flow_row = flow_flops_per_row(cfg.hidden, cfg.hidden, cfg.flow_depth)
    pairs = len(cfg.timesteps)  # one noise draw per timestep
    out = {"library_encoder": 0, "library_flow": 0, "no_share": 0, "reference": 0}
    for g in groups:
        lens = [len(r) for r in g.responses]
        p = len(g.prompt)
        tokens = sum(lens)
        flow = tokens * hooked * pairs * flow_row
        out["library_encoder"] += encoder_flops(cfg, p, lens, blocks_run, share=True)
        out["library_flow"] += flow
        out["no_share"] += encoder_flops(cfg, p, lens, blocks_run, share=False) + flow
        # the reference: every block, LM head and flow on every position of the padded batch
        rows, width = len(lens), p + max(lens)
        positions = rows * width
        out["reference"] += (
            cfg.layers
            * (
                positions * linear_flops_per_token(cfg)
                + rows * attention_flops(0, width, cfg.hidden)
            )
            + positions * 2 * cfg.hidden * cfg.vocab
            + positions * hooked * pairs * flow_row
        )
    out["library"] = out["library_encoder"] + out["library_flow"]
    out["http"] = out["library"]
    return out
