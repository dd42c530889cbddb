"""The flow network's cost, change by change: adaLN projections fused, embeddings per value.

    FLOWFIELD_THREADS=1 python -m research bench-flow --markdown BENCHMARKS.md

Three forwards of the same FlowNet (the bench's shape: d = W = 512, depth 4, 3 hooked layers,
one timestep), in float32 and bfloat16, on rows chunked as the scorer sends them (256 rows
per call, batch-invariant mode) and in one 8192-row call:

  separate       each block's adaLN projection its own GEMM, time and layer embeddings
                 computed on every row (the network before this change)
  fused          all blocks' adaLN projections in one GEMM, embeddings on every row
  fused+values   the current FlowNet.forward: fused, and the embeddings computed once per
                 distinct (t, layer) value

The variants take turns (round-robin, best of --rounds), in one process, so a busy machine
slows them alike. Outputs are checked against each other.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

import torch
import typer

from flowfield.bench.flops import flow_flops_per_row
from flowfield.bench.report import replace_section
from flowfield.cli_options import Outputs, config_command, measuring_args, opt
from flowfield.flownet import FlowNet, flow_for_encoder
from research.cli import run_command

SECTION = "## Flow network cost"


def forward_separate(net: FlowNet, x, t, c, lf) -> torch.Tensor:
    y = net.c_in(c) + net.t_embed(t) + net.l_embed(lf)
    h = net.x_in(x)
    for block in net.blocks:
        h = block(h, block.ada(y))
    return net.final(h, net.final.ada(y))


def forward_fused(net: FlowNet, x, t, c, lf) -> torch.Tensor:
    y = net.c_in(c) + net.t_embed(t) + net.l_embed(lf)
    mods = net.modulation(y).split(net._mod_sizes, dim=-1)
    h = net.x_in(x)
    for block, mod in zip(net.blocks, mods):
        h = block(h, mod)
    return net.final(h, mods[-1])


VARIANTS = {
    "separate": forward_separate,
    "fused": forward_fused,
    "fused+values": lambda net, x, t, c, lf: net(x, t, c, lf),
}


@dataclass(frozen=True)
class FlowBenchConfig:
    """The flow network's cost, change by change (adaLN fused, embeddings per value)."""

    hidden: int = opt(512, "d = W")
    depth: int = opt(4, "flow residual blocks")
    rows: int = opt(8192, "rows per measurement (tokens x layers)")
    chunk: int = opt(256, "rows per call in the chunked mode")
    rounds: int = opt(5, "measured rounds (best of)")


def run(cfg: FlowBenchConfig, out: Outputs) -> None:
    hidden, depth, rows, chunk, rounds = cfg.hidden, cfg.depth, cfg.rows, cfg.chunk, cfg.rounds
    torch.set_num_threads(int(os.environ.get("FLOWFIELD_THREADS", "1")))
    torch.manual_seed(0)
    fractions = (0.25, 0.5, 0.75)
    base = FlowNet(flow_for_encoder(hidden, fractions, depth=depth, context="prev"))
    with torch.no_grad():
        for p in base.parameters():
            if p.dim() == 2 and not p.any():  # the zero-initialised adaLN and output layers
                p.normal_(std=0.02)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, hidden, generator=g) * 5
    c = torch.randn(rows, hidden, generator=g) * 5
    t = torch.full((rows,), 0.8)
    lf = torch.tensor(fractions).repeat_interleave(rows // 3 + 1)[:rows]
    flops = rows * flow_flops_per_row(hidden, hidden, depth)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        net = FlowNet(base.config)
        net.load_state_dict(base.state_dict())
        net = net.to(dtype).eval()
        inputs = (x.to(dtype), t, c.to(dtype), lf)
        for mode, size in (("chunked", chunk), ("one call", rows)):
            best = {name: float("inf") for name in VARIANTS}
            outs = {}
            with torch.inference_mode():
                for r in range(rounds + 1):  # round 0 warms up
                    for name, fwd in VARIANTS.items():
                        start = time.perf_counter()
                        chunks = [
                            fwd(net, *(a[s : s + size] for a in inputs))
                            for s in range(0, rows, size)
                        ]
                        dt = time.perf_counter() - start
                        if r > 0:
                            best[name] = min(best[name], dt)
                        outs[name] = torch.cat(chunks).float()
            ref = outs["separate"]
            for name in VARIANTS:
                diff = float((outs[name] - ref).abs().max() / ref.abs().max())
                results.append(
                    {
                        "dtype": str(dtype).removeprefix("torch."),
                        "mode": f"{mode} ({size} rows)",
                        "variant": name,
                        "seconds": best[name],
                        "rows_per_s": rows / best[name],
                        "gflops": flops / best[name] / 1e9,
                        "speedup_vs_separate": best["separate"] / best[name],
                        "max_rel_diff_vs_separate": diff,
                    }
                )
    lines = [
        "| dtype | calls | variant | rows/s | GFLOP/s | x separate | max rel. diff |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['dtype']} | {r['mode']} | {r['variant']} | {r['rows_per_s']:.0f} | "
            f"{r['gflops']:.1f} | {r['speedup_vs_separate']:.2f}x | "
            f"{r['max_rel_diff_vs_separate']:.1e} |"
        )
    table = "\n".join(lines)
    typer.echo(table)
    if out.json:
        out.json.write_text(json.dumps(results, indent=2) + "\n")
    if out.markdown:
        threads = torch.get_num_threads()
        command = " ".join(["-m research bench-flow", *measuring_args(("--json",))])
        section = (
            f"{SECTION}\n\n- Command: `FLOWFIELD_THREADS={threads} python {command}`\n"
            f"- FlowNet d = W = {hidden}, depth {depth}, {rows} rows "
            f"(3 layers, t = 0.8), {threads} torch thread(s); best of {rounds} rounds, the "
            "variants taking turns\n\n" + table + "\n"
        )
        replace_section(out.markdown, section, SECTION)


def main(argv: list[str]) -> int:
    outputs = {"json": "write the rows as JSON here", "markdown": f"replace its '{SECTION}'"}
    return run_command(config_command(FlowBenchConfig, run, outputs), argv, "bench-flow")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
