"""`flowfield bench invariance`: what FLOWFIELD_BATCH_INVARIANT costs, over HTTP, A/B.

    flowfield bench invariance                            # both workloads, print the numbers
    flowfield bench invariance --markdown BENCHMARKS.md   # and record them there

Two `flowfield serve` processes of the same configuration but for FLOWFIELD_BATCH_INVARIANT
(true / false) are started with `flowfield.live_server.ServiceProcess` (learner off, log
level WARNING, FLOWFIELD_THREADS=`threads`); the load goes to one at a time, the two taking
turns round by round, so both see the same machine.

- short sequences: the bundled demo (policy and flow), text samples of the demo task (~55
  prompt + response tokens each), `demo_samples` per request, `clients` client threads each
  posting one request after another (a closed loop) for `seconds` per round: requests per
  second and latency percentiles.
- long sequences: the `flowfield bench` policy and flow (random Qwen2, d=512, 8 layers;
  flowfield/bench/workload.py), `groups` groups of `group_size` responses of exactly
  `response_tokens` tokens sharing a `prompt_tokens` prompt, one POST per group, all at once:
  response tokens per second.

Each mode's numbers are medians over the rounds; the ratio is invariant / batched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowfield.bench.driver import process_cpu_seconds
from flowfield.cli_options import opt

SECTION = "## Batch invariance over HTTP"
MODES = ("invariant", "batched")


@dataclass(frozen=True)
class InvarianceBenchConfig:
    """FLOWFIELD_BATCH_INVARIANT on vs. off: service throughput on short and long sequences."""

    rounds: int = opt(3, "measured rounds per mode and workload (after a warm-up round)")
    threads: int = opt(1, "FLOWFIELD_THREADS of both servers")
    clients: int = opt(16, "short sequences: concurrent client threads")
    demo_samples: int = opt(4, "short sequences: demo samples per request")
    seconds: float = opt(8.0, "short sequences: seconds of load per round")
    groups: int = opt(4, "long sequences: groups (one POST each) per round")
    group_size: int = opt(8, "long sequences: responses per group")
    prompt_tokens: int = opt(64, "long sequences: prompt tokens")
    response_tokens: int = opt(256, "long sequences: tokens of every response")
    long: bool = opt(True, "also run the long-sequence workload (builds the bench policy)")

    def check(self) -> None:
        sizes = (self.rounds, self.threads, self.clients, self.demo_samples, self.groups,
                 self.group_size, self.response_tokens)
        if min(sizes) < 1 or self.seconds <= 0 or self.prompt_tokens < 0:
            raise ValueError("sizes and seconds must be positive")


def _servers(workdir: Path, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    from flowfield.live_server import SOURCE_ROOT, ServiceProcess

    out = {}
    for mode in MODES:
        srv = ServiceProcess(
            workdir / mode,
            settings={
                **settings,
                "batch_invariant": "true" if mode == "invariant" else "false",
                "learner": "false",
                "log_level": "WARNING",
            },
            threads=threads,
            name=mode,
            cwd=SOURCE_ROOT,
            ready_timeout=300,
            unset=[k for k in os.environ if k.startswith("FLOWFIELD_")],
        )
        out[mode] = srv.start()
    return out


def _demo_bodies(n: int) -> list[bytes]:
    from flowfield.demo.task import Problem, expert_solution

    bodies = []
    for k in range(64):
        samples = []
        for j in range(n):
            p = Problem(1000 + 37 * k + j, 2000 + 11 * j)
            samples.append({"id": f"s{j}", "prompt": p.prompt, "response": expert_solution(p)})
        bodies.append(json.dumps({"samples": samples}).encode())
    return bodies


def _closed_loop(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """`clients` threads posting bodies one after another for `seconds`."""
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            i = k
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.post("/v1/score", content=bodies[i % len(bodies)],
                           headers={"content-type": "application/json"})
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t0)
                i += clients

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.monotonic() - t0
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [0.0] * 19
    return {"requests_per_s": len(latencies) / elapsed, "p50_s": statistics.median(latencies),
            "p95_s": q[18], "requests": len(latencies)}


def _long_bodies(cfg: InvarianceBenchConfig, vocab: int, seed: int) -> tuple[list[bytes], int]:
    import torch

    g = torch.Generator().manual_seed(seed)
    bodies, tokens = [], 0
    for k in range(cfg.groups):
        prompt = torch.randint(3, vocab, (cfg.prompt_tokens,), generator=g).tolist()
        samples = []
        for j in range(cfg.group_size):
            resp = torch.randint(3, vocab, (cfg.response_tokens,), generator=g).tolist()
            samples.append({"id": f"g{k}-{j}", "group_id": f"g{k}", "prompt_ids": prompt,
                            "response_ids": resp})
            tokens += len(resp)
        bodies.append(json.dumps({"samples": samples}).encode())
    return bodies, tokens


def _round(url: str, bodies: list[bytes]) -> float:
    import httpx

    def post(body: bytes) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            c.post("/v1/score", content=body,
                   headers={"content-type": "application/json"}).raise_for_status()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(bodies)) as pool:
        list(pool.map(post, bodies))
    return time.perf_counter() - t0


def _summary(per_round: dict[str, list[dict[str, float]]], key: str) -> dict[str, Any]:
    med = {m: statistics.median(r[key] for r in per_round[m]) for m in MODES}
    return {"median": med, "ratio": med["invariant"] / med["batched"]}


def run_invariance_bench(
    cfg: InvarianceBenchConfig, workdir: Path | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    from flowfield.bench.report import machine_info

    cfg.check()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="flowfield-bench-inv-")
        workdir = Path(tmp.name)
    load_before = os.getloadavg()[0]
    res: dict[str, Any] = {"config": dataclasses.asdict(cfg), "machine": machine_info()}
    try:
        log("short sequences: two demo servers")
        servers = _servers(workdir / "demo", {}, cfg.threads)
        try:
            bodies = _demo_bodies(cfg.demo_samples)
            for mode in MODES:  # warm-up
                _closed_loop(servers[mode].url, bodies, cfg.clients, min(2.0, cfg.seconds))
            rounds: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
            for k in range(cfg.rounds):
                for mode in MODES if k % 2 == 0 else MODES[::-1]:
                    cpu = process_cpu_seconds(servers[mode].proc.pid)
                    r = _closed_loop(servers[mode].url, bodies, cfg.clients, cfg.seconds)
                    cpu = process_cpu_seconds(servers[mode].proc.pid) - cpu
                    r["requests_per_cpu_s"] = r["requests"] / cpu if cpu > 0 else 0.0
                    rounds[mode].append(r)
                    log(f"  {mode}: {r['requests_per_s']:.1f} req/s "
                        f"({r['requests_per_cpu_s']:.1f} per server CPU-second), "
                        f"p50 {r['p50_s']:.3f} s")
        finally:
            for s in servers.values():
                s.stop()
        res["short"] = {
            "rounds": rounds,
            "requests_per_s": _summary(rounds, "requests_per_s"),
            "requests_per_cpu_s": _summary(rounds, "requests_per_cpu_s"),
            "p50_s": _summary(rounds, "p50_s"),
            "p95_s": _summary(rounds, "p95_s"),
        }
        if cfg.long:
            res["long"] = _run_long(cfg, workdir / "long", log)
    finally:
        if tmp is not None:
            tmp.cleanup()
    res["machine"]["load_before"] = load_before
    res["machine"]["load_after"] = os.getloadavg()[0]
    return res


def _run_long(cfg: InvarianceBenchConfig, workdir: Path, log: Callable[[str], None]) -> dict:
    from flowfield.bench.workload import BenchConfig, build_flow, build_policy
    from flowfield.encoder import LatentEncoder

    bench = BenchConfig(prompt_tokens=cfg.prompt_tokens, max_response=cfg.response_tokens)
    log(f"long sequences: building the bench policy (d={bench.hidden}, {bench.layers} layers)")
    model_dir = build_policy(workdir / "policy", bench)
    flow_dir = build_flow(workdir / "flow", LatentEncoder(model_dir), bench)
    servers = _servers(workdir, {"model_path": model_dir, "flow_path": flow_dir}, cfg.threads)
    try:
        warm, _ = _long_bodies(dataclasses.replace(cfg, groups=1), bench.vocab, 99)
        for mode in MODES:
            _round(servers[mode].url, warm)
        rounds: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for k in range(cfg.rounds):
            bodies, tokens = _long_bodies(cfg, bench.vocab, k)
            for mode in MODES if k % 2 == 0 else MODES[::-1]:
                cpu = process_cpu_seconds(servers[mode].proc.pid)
                seconds = _round(servers[mode].url, bodies)
                cpu = process_cpu_seconds(servers[mode].proc.pid) - cpu
                rounds[mode].append({"tokens_per_s": tokens / seconds, "seconds": seconds,
                                     "tokens_per_cpu_s": tokens / cpu if cpu > 0 else 0.0})
                log(f"  {mode}: {tokens / seconds:.0f} response tokens/s, "
                    f"{rounds[mode][-1]['tokens_per_cpu_s']:.0f} per server CPU-second")
    finally:
        for s in servers.values():
            s.stop()
    return {"rounds": rounds, "tokens_per_s": _summary(rounds, "tokens_per_s"),
            "tokens_per_cpu_s": _summary(rounds, "tokens_per_cpu_s"),
            "policy": {"hidden": bench.hidden, "layers": bench.layers}}


def report_lines(res: dict[str, Any], command: str) -> list[str]:
    c, m = res["config"], res["machine"]
    s = res["short"]
    rps, p50, p95 = s["requests_per_s"], s["p50_s"], s["p95_s"]
    rpc = s["requests_per_cpu_s"]
    lines = [
        f"- Command: `{command}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores (load average {m['load_before']:.1f} "
        f"before, {m['load_after']:.1f} after), Python {m['python']}, torch {m['torch']}; two "
        f"`flowfield serve` processes (FLOWFIELD_BATCH_INVARIANT true / false, "
        f"FLOWFIELD_THREADS={c['threads']}, learner off), loaded one at a time, taking turns "
        f"round by round; {c['rounds']} rounds per mode after a warm-up",
        "",
        "| workload | measure | invariant | batched | invariant / batched |",
        "| --- | --- | ---: | ---: | ---: |",
        f"| short: bundled demo, {c['demo_samples']} text samples (~55 tokens) per request, "
        f"{c['clients']} clients, {c['seconds']:g} s per round | requests/s | "
        f"{rps['median']['invariant']:.1f} | {rps['median']['batched']:.1f} | "
        f"{rps['ratio']:.2f} |",
        f"| | requests per server CPU-second | {rpc['median']['invariant']:.1f} | "
        f"{rpc['median']['batched']:.1f} | {rpc['ratio']:.2f} |",
        f"| | p50 latency (s) | {p50['median']['invariant']:.3f} | "
        f"{p50['median']['batched']:.3f} | {p50['ratio']:.2f} |",
        f"| | p95 latency (s) | {p95['median']['invariant']:.3f} | "
        f"{p95['median']['batched']:.3f} | {p95['ratio']:.2f} |",
    ]
    if "long" in res:
        lg = res["long"]["tokens_per_s"]
        pol = res["long"]["policy"]
        lines.append(
            f"| long: bench policy (random Qwen2 d={pol['hidden']}, {pol['layers']} layers), "
            f"{c['groups']} groups x {c['group_size']} responses of {c['response_tokens']} "
            f"tokens, {c['prompt_tokens']}-token prompt, one POST per group | response "
            f"tokens/s | {lg['median']['invariant']:.0f} | {lg['median']['batched']:.0f} | "
            f"{lg['ratio']:.2f} |"
        )
        lc = res["long"]["tokens_per_cpu_s"]
        lines.append(
            f"| | response tokens per server CPU-second | {lc['median']['invariant']:.0f} | "
            f"{lc['median']['batched']:.0f} | {lc['ratio']:.2f} |"
        )
    lines += [
        "",
        "- Medians over the rounds; the ratio is invariant / batched (latency: higher is "
        "slower). Wall-clock rates move by 10-20% between rounds on a machine shared with "
        "other work; the CPU time of the server process is steadier",
    ]
    return lines
