"""The bench's numbers and their reporting: the summary, the table, the BENCHMARKS.md section
and the command line that reproduces a run."""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowfield.bench.timing import Timing
    from flowfield.bench.workload import BenchConfig
    from flowfield.encoder import LatentEncoder

SECTION = "## /score throughput"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    import torch

    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lscpu.splitlines()
                if ln.startswith("Model name")
            ),
            model,
        )
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "accelerator": (
            torch.cuda.get_device_name(torch.device(device))
            if device.startswith("cuda") and torch.cuda.is_available()
            else None
        ),
    }


def summarise(
    cfg: BenchConfig,
    timings: dict[str, Timing],
    checks: dict[str, float],
    encoder: LatentEncoder,
    components: dict[str, Timing] | None = None,
    gemm_gflops: float | None = None,
) -> dict[str, Any]:
    """components: the library's encoder and flow halves timed apart; gemm_gflops: the rate
    of a plain GEMM of the encoder's MLP shape in the same dtype (utilisation's denominator)."""
    rates = {p: t.rates() for p, t in timings.items()}
    cpu_rates = {p: t.cpu_rates() for p, t in timings.items()}

    def achieved(t: Timing) -> dict[str, Any]:
        if not t.flops:
            return {}
        gflops = statistics.median(t.gflops())
        out: dict[str, Any] = {"median_gflops": gflops}
        if gemm_gflops:
            out["utilisation"] = gflops / gemm_gflops
        return out

    def paired(a: str, b: str, r: dict[str, list[float]] = rates) -> float:
        return statistics.median(x / y for x, y in zip(r[a], r[b]))

    out: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "dtype": encoder.precision.name,
        "dtype_reason": encoder.precision.reason,
        "gemm_gflops": gemm_gflops,
        "machine": machine_info(cfg.device),
        "model": {
            "type": "qwen2 (random init)",
            "parameters": sum(p.numel() for p in encoder.model.parameters()),
            "hooked_blocks": encoder.layers,
        },
        "tokens_per_round": timings["library"].tokens,
        "paths": {
            p: {
                "seconds": t.seconds,
                "tokens_per_s": rates[p],
                "median_tokens_per_s": statistics.median(rates[p]),
                "best_tokens_per_s": max(rates[p]),
                "cpu_seconds": t.cpu_seconds,
                "median_tokens_per_cpu_s": statistics.median(cpu_rates[p]),
                **achieved(t),
            }
            for p, t in timings.items()
        },
        "components": {
            name: {
                "seconds": t.seconds,
                "median_tokens_per_s": statistics.median(t.rates()),
                **achieved(t),
            }
            for name, t in (components or {}).items()
            if t.seconds
        },
        "ratios": {
            "library_vs_reference": paired("library", "reference"),
            "no_share_vs_reference": paired("no_share", "reference"),
            "share_prompts_speedup": paired("library", "no_share"),
        },
        "checks": checks,
    }
    if "http" in rates:
        out["ratios"]["http_vs_reference"] = paired("http", "reference")
        out["ratios"]["http_overhead"] = 1.0 - paired("http", "library")
        # the same from CPU time (server + client vs. library): insensitive to other load
        out["ratios"]["http_overhead_cpu"] = 1.0 - paired("http", "library", cpu_rates)
    return out


def format_table(res: dict[str, Any]) -> str:
    names = {
        "reference": "reference: full forward + flow on every position",
        "library": "library: FlowScorer.score (shared prompts once)",
        "no_share": "library, share_prompts off",
        "http": "service over HTTP (one POST /v1/score per group)",
    }
    lines = [
        "| path | tokens/s (median) | tokens/s (best) | x reference | tokens per CPU-second "
        "| GFLOP/s | utilisation |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p, v in res["paths"].items():
        ratio = 1.0 if p == "reference" else res["ratios"][f"{p}_vs_reference"]
        lines.append(
            f"| {names[p]} | {v['median_tokens_per_s']:.0f} | {v['best_tokens_per_s']:.0f} | "
            f"{ratio:.2f}x | {v['median_tokens_per_cpu_s']:.0f} | {_rate(v)} |"
        )
    parts = {"encoder": "library, encoder half (latents)", "flow": "library, flow half"}
    for name, v in res.get("components", {}).items():
        lines.append(
            f"| {parts[name]} | {v['median_tokens_per_s']:.0f} | - | - | - | {_rate(v)} |"
        )
    return "\n".join(lines)


def _rate(v: dict[str, Any]) -> str:
    """'GFLOP/s | utilisation' cells of a path or component."""
    if "median_gflops" not in v:
        return "- | -"
    util = f"{100 * v['utilisation']:.0f}%" if "utilisation" in v else "-"
    return f"{v['median_gflops']:.1f} | {util}"


def section_title(res: dict[str, Any]) -> str:
    """`## /score throughput` for the default run (float32, cpu, 2 threads), with dtype,
    device and threads otherwise: BENCHMARKS.md keeps one section per combination."""
    c = res["config"]
    device, dtype, threads = c.get("device", "cpu"), res.get("dtype", "float32"), c["threads"]
    if (device, dtype, threads) == ("cpu", "float32", 2):
        return SECTION
    unit = "thread" if threads == 1 else "threads"
    return f"{SECTION} ({dtype}, {device}, {threads} {unit})"


def markdown_section(res: dict[str, Any], command: str) -> str:
    c, m, r, chk = res["config"], res["machine"], res["ratios"], res["checks"]
    tokens = res["tokens_per_round"]
    accel = f", {m['accelerator']}" if m.get("accelerator") else ""
    lines = [
        section_title(res),
        "",
        f"- Command: `{command}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores{accel}, Python "
        f"{m['python']}, torch {m['torch']}, {c['threads']} torch threads for every path "
        f"(FLOWFIELD_THREADS={c['threads']} for the server); the paths take turns round by "
        "round, never at the same time; in-process paths run on one model thread, as the service "
        "does",
        f"- Policy: random-initialised Qwen2, d={c['hidden']}, {c['layers']} layers, "
        f"{c['heads']} heads ({c['kv_heads']} KV), MLP {c['intermediate']}, vocab {c['vocab']}, "
        f"{res['model']['parameters'] / 1e6:.1f}M parameters, hooked blocks "
        f"{res['model']['hooked_blocks']}; flow W=d={c['hidden']}, depth {c['flow_depth']}, "
        f"timesteps {list(c['timesteps'])}",
        f"- Workload per round: {c['groups']} groups x {c['group_size']} responses sharing a "
        f"prompt of ~{c['prompt_tokens']} tokens, responses uniform in "
        f"{c['min_response']}-{c['max_response']} tokens ({min(tokens)}-{max(tokens)} response "
        f"tokens per round); {c['rounds']} measured rounds after a {c['warmup_groups']}-group "
        "warm-up round",
        "",
        format_table(res),
        "",
        f"- Library / reference: **{r['library_vs_reference']:.2f}x**; shared-prompt encoding "
        f"alone: {r['share_prompts_speedup']:.2f}x over share_prompts off",
        f"- dtype: {res.get('dtype', 'float32')} ({res.get('dtype_reason', 'requested')}), every "
        "path (reference included); the flow's path and target velocity in float32",
    ]
    if res.get("gemm_gflops"):
        lines.append(
            f"- Utilisation = achieved GFLOP/s / {res['gemm_gflops']:.1f} GFLOP/s, the best rate "
            f"of a plain [2048, {c['hidden']}] x [{c['hidden']}, {c['intermediate']}] GEMM in "
            "the same dtype, threads and device, measured in the same run. FLOPs counted "
            "(flowfield/bench/flops.py): every matrix product performed (causal attention, "
            "padding where a path computes it, the reference's LM head, the flow's layers); "
            "norms, activations and embeddings are not counted. The encoder and flow halves "
            "are the library's two stages timed apart after each round"
        )
    if "http_vs_reference" in r:
        lines.append(
            f"- Service end to end / reference: **{r['http_vs_reference']:.2f}x** (target >= 2x);"
            f" HTTP overhead (1 - HTTP / library throughput): **{100 * r['http_overhead']:.1f}%**"
            f" (target < 10%); counted in CPU time of server + client vs. library: "
            f"{100 * r['http_overhead_cpu']:.1f}%; the scheduler ran "
            f"{'/'.join(str(n) for n in res.get('http_batches_per_round', []))} batches in the "
            "measured rounds"
        )
    lines.append(
        f"- Agreement: library vs reference deviations max rel. diff "
        f"{chk['reference_vs_library']:.1e} (all response tokens but the last, whose next-token "
        f"context in a padded batch is a padding latent); share_prompts off vs on "
        f"{chk['no_share_vs_library']:.1e}"
        + (
            f"; HTTP vs library {chk['http_vs_library']:.1e} (token rewards max abs diff "
            f"{chk['http_vs_library_rewards_abs']:.1e})"
            if "http_vs_library" in chk
            else ""
        )
    )
    lines.append(
        "- Ratios are medians of per-round ratios (the paths take turns within each round); "
        "tokens/s are response tokens per wall-clock second; tokens per CPU-second count the "
        "CPU time of every process involved (bench process, and the server for HTTP)"
    )
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str, title: str = SECTION) -> None:
    """Put `section` in place of the file's section headed `title` (by default `## /score
    throughput`), from its heading to the next `## ` heading, or append it; the other
    sections are left as they are. Other benchmarks (flowfield/bench/update.py) pass their
    own heading."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
        text = text.rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def command_line(cfg: BenchConfig, markdown: Path | None = None) -> str:
    """The `flowfield bench` command that reproduces this configuration."""
    args = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == f.default:
            continue
        name = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(name if value else f"--no-{f.name}")
        elif isinstance(value, tuple):
            args.append(f"{name} {','.join(str(v) for v in value)}")
        else:
            args.append(f"{name} {value}")
    if markdown is not None:
        args.append(f"--markdown {markdown}")
    return " ".join(["flowfield bench", *args])
