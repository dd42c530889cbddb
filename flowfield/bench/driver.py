"""The bench's run: the live server over HTTP (the load generator's side), every path round by
round, and the checks that all paths agree."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowfield.bench.flops import path_flops
from flowfield.bench.reference import Reference
from flowfield.bench.report import summarise
from flowfield.bench.timing import Timing
from flowfield.bench.workload import (
    BenchConfig,
    Group,
    build_flow,
    build_policy,
    flatten,
    make_round,
)
from flowfield.live_server import SOURCE_ROOT, ServiceProcess

if TYPE_CHECKING:
    import torch

    from flowfield.scorer import FlowScorer, ScoreOptions

PATHS = ("reference", "library", "no_share", "http")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (Linux /proc; 0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# ---- the service over HTTP -------------------------------------------------------------------


class BenchServer(ServiceProcess):
    """`flowfield serve` (flowfield.live_server) with the bench's model and flow, and an HTTP
    client that sends each round's requests."""

    def __init__(
        self, model_dir: Path, flow_dir: Path, workdir: Path, cfg: BenchConfig, dtype: str
    ) -> None:
        """dtype: resolved (float32 or bfloat16), so that the server runs what the bench ran."""
        import httpx

        super().__init__(
            workdir,
            settings={
                "model_path": model_dir,
                "flow_path": flow_dir,
                "learner": "false",
                "batch_max_tokens": cfg.batch_max_tokens,
                "max_samples": max(1024, cfg.group_size),
                "log_level": "WARNING",
                "device": cfg.device,
                "dtype": dtype,
            },
            threads=cfg.threads,
            log_path=workdir / "server.log",
            cwd=SOURCE_ROOT,
            ready_timeout=300,
            stop_timeout=60,
            attempts=1,
        )
        self.start()
        self.client = httpx.Client(base_url=self.url, timeout=600)

    def score_round(
        self, bodies: list[bytes], pool: ThreadPoolExecutor
    ) -> list[list[dict[str, Any]]]:
        """POST every group's body at once; the results of each group, in order."""

        def post(body: bytes) -> list[dict[str, Any]]:
            r = self.client.post(
                "/v1/score", content=body, headers={"content-type": "application/json"}
            )
            r.raise_for_status()
            return r.json()["results"]

        return list(pool.map(post, bodies))

    def batches(self) -> int:
        """Scoring batches the server's scheduler has run so far (its Prometheus counter)."""
        text = self.client.get("/metrics").text
        found = re.search(r"^flowfield_batch_samples_count (\S+)$", text, re.M)
        return int(float(found.group(1))) if found else 0

    def stop(self) -> int | None:  # type: ignore[override]
        if getattr(self, "client", None) is not None:
            self.client.close()
        return super().stop()


def request_body(group: Group, timesteps: tuple[float, ...]) -> bytes:
    samples = [
        {
            "id": f"{group.group_id}-{k}",
            "group_id": group.group_id,
            "prompt_ids": group.prompt,
            "response_ids": r,
        }
        for k, r in enumerate(group.responses)
    ]
    options = {"return_deviations": True, "timesteps": list(timesteps)}
    return json.dumps({"samples": samples, "options": options}).encode()


# ---- the run ---------------------------------------------------------------------------------


def _max_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor], drop_last: bool = False) -> float:
    """max |a - b| / max |b| over all samples (optionally without each sample's last token)."""
    import torch

    cut = slice(None, -1) if drop_last else slice(None)
    x = torch.cat([t[cut].double() for t in a])
    y = torch.cat([t[cut].double() for t in b])
    if y.numel() == 0:
        return 0.0
    return float((x - y).abs().max() / y.abs().max().clamp_min(1e-30))


def run_bench(
    cfg: BenchConfig, workdir: Path | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build the assets, run every path round by round, check agreement, return the numbers."""
    import torch

    from flowfield.checkpoint import load_flow
    from flowfield.encoder import LatentEncoder
    from flowfield.objective import NoiseBank
    from flowfield.precision import gemm_gflops
    from flowfield.scorer import FlowScorer, ScoreOptions

    torch.set_num_threads(cfg.threads)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="flowfield-bench-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    server: BenchServer | None = None
    try:
        log(f"building a {cfg.layers}-layer Qwen2 (d={cfg.hidden}), depth-{cfg.flow_depth} flow")
        model_dir = build_policy(workdir / "policy", cfg)
        encoder = LatentEncoder(
            model_dir,
            max_batch_tokens=cfg.batch_max_tokens,
            device=cfg.device,
            dtype=cfg.dtype,  # None: the library's default (bf16 on cuda, float32 on cpu)
        )
        log(f"dtype {encoder.precision.name} ({encoder.precision.reason})")
        flow_dir = build_flow(workdir / "flow", encoder, cfg)
        flow, meta = load_flow(flow_dir, encoder.identity, encoder.layer_fractions)
        noise = NoiseBank(encoder.hidden_size, seed=0)  # the service's default noise seed
        scorer = FlowScorer(encoder, flow, meta, noise=noise)
        reference = Reference(
            model_dir, flow, meta, encoder.layers, noise, device=cfg.device, dtype=encoder.dtype
        )
        options = ScoreOptions(timesteps=cfg.timesteps)
        blocks_run = max(encoder.layers) + 1  # the encoder stops after the deepest hooked block
        if cfg.http:
            log("starting `flowfield serve`")
            server = BenchServer(model_dir, flow_dir, workdir, cfg, encoder.precision.name)

        # In-process work runs on one model thread, as in the service. With libgomp this is
        # not a detail: a process whose OpenMP work comes from a single thread spin-waits
        # between parallel regions, one with two threads throttles the spinning once its
        # threads outnumber the cores; on a loaded 2-core machine that alone made the same
        # library call up to 1.5x slower in the bench process than in the server.
        model_thread = ThreadPoolExecutor(
            1, "model", initializer=torch.set_num_threads, initargs=(cfg.threads,)
        )

        # each path: the round's groups -> (deviations per sample, token rewards or None)
        def run_reference(groups: list[Group], bodies: list[bytes]):
            devs = model_thread.submit(reference.deviations, groups, cfg.timesteps).result()
            return devs, None

        def run_library(groups: list[Group], bodies: list[bytes], share: bool = True):
            encoder.share_prompts = share
            try:
                scores = model_thread.submit(scorer.score, *flatten(groups), options).result()
            finally:
                encoder.share_prompts = True
            return [s.deviations for s in scores], [s.token_rewards.tolist() for s in scores]

        def run_no_share(groups: list[Group], bodies: list[bytes]):
            return run_library(groups, bodies, share=False)

        def run_http(groups: list[Group], bodies: list[bytes]):
            answers = [a for res in server.score_round(bodies, pool) for a in res]
            devs = [torch.tensor(a["deviations"]) for a in answers]
            return devs, [a["token_rewards"] for a in answers]

        runners = {
            "reference": run_reference,
            "library": run_library,
            "no_share": run_no_share,
            "http": run_http,
        }
        rounds = [make_round(cfg, cfg.warmup_groups, seed=cfg.seed * 1000)]
        rounds += [
            make_round(cfg, cfg.groups, seed=cfg.seed * 1000 + k + 1) for k in range(cfg.rounds)
        ]
        paths = [p for p in PATHS if p != "http" or cfg.http]
        timings = {p: Timing() for p in paths}
        # the library's two halves, timed apart after each measured round (not a path)
        components = {"encoder": Timing(), "flow": Timing()}
        checks: dict[str, float] = {}
        http_batches: list[int] = []  # scheduler batches per measured HTTP round
        pool = ThreadPoolExecutor(max(cfg.groups, cfg.warmup_groups))
        try:
            for k, groups in enumerate(rounds):
                tokens = sum(len(r) for g in groups for r in g.responses)
                flops = path_flops(cfg, groups, len(encoder.layers), blocks_run)
                bodies = [request_body(g, cfg.timesteps) for g in groups]  # the trainer's work
                devs: dict[str, list[torch.Tensor]] = {}
                rewards: dict[str, list[list[float]] | None] = {}
                for path in paths[k % len(paths) :] + paths[: k % len(paths)]:
                    batches = server.batches() if path == "http" else 0
                    server_cpu = process_cpu_seconds(server.proc.pid) if server else 0.0
                    start, cpu = time.perf_counter(), time.process_time()
                    devs[path], rewards[path] = runners[path](groups, bodies)
                    seconds = time.perf_counter() - start
                    cpu = time.process_time() - cpu
                    if server is not None:  # idle outside the HTTP path
                        cpu += process_cpu_seconds(server.proc.pid) - server_cpu
                    if k > 0:  # round 0 is the warm-up
                        timings[path].seconds.append(seconds)
                        timings[path].cpu_seconds.append(cpu)
                        timings[path].tokens.append(tokens)
                        timings[path].flops.append(flops[path])
                        if path == "http":
                            http_batches.append(server.batches() - batches)
                    log(
                        f"round {k}{' (warm-up)' if k == 0 else ''} {path:>9}: "
                        f"{tokens} tokens in {seconds:6.2f}s = {tokens / seconds:7.1f} tokens/s"
                    )
                _check_round(devs, rewards, checks, encoder.dtype)
                if k > 0:
                    halves = model_thread.submit(time_halves, scorer, groups, options).result()
                    for name, seconds in halves.items():
                        components[name].seconds.append(seconds)
                        components[name].tokens.append(tokens)
                        components[name].flops.append(flops[f"library_{name}"])
            gemm = model_thread.submit(
                gemm_gflops, encoder.dtype, 2048, cfg.hidden, cfg.intermediate, cfg.device
            ).result()
        finally:
            pool.shutdown()
            model_thread.shutdown()
        res = summarise(cfg, timings, checks, encoder, components, gemm)
        if http_batches:
            res["http_batches_per_round"] = http_batches
        return res
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()


def time_halves(scorer: FlowScorer, groups: list[Group], options: ScoreOptions) -> dict:
    """Seconds of the library's encoder half (latents) and flow half (deviation sums)."""
    import torch

    def sync() -> None:
        if scorer.encoder.device.type == "cuda":
            torch.cuda.synchronize(scorer.encoder.device)

    start = time.perf_counter()
    lat = scorer.latents(*flatten(groups))
    sync()
    mid = time.perf_counter()
    scorer.deviation_sums(lat, options.timesteps, options.noise_draws)
    sync()
    return {"encoder": mid - start, "flow": time.perf_counter() - mid}


def _check_round(
    results: dict[str, list[torch.Tensor]],
    rewards: dict[str, list[list[float]] | None],
    checks: dict[str, float],
    dtype: torch.dtype,
) -> None:
    """Every path must give the library's deviations (the reference: where comparable)."""
    import torch

    lib = results["library"]
    found = {
        "reference_vs_library": _max_rel_diff(lib, results["reference"], drop_last=True),
        "no_share_vs_library": _max_rel_diff(results["no_share"], lib),
    }
    if "http" in results:
        found["http_vs_library"] = _max_rel_diff(results["http"], lib)
        a = [x for r in rewards["http"] for x in r]
        b = [x for r in rewards["library"] for x in r]
        found["http_vs_library_rewards_abs"] = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
        if len(a) != len(b):
            raise AssertionError("HTTP and library returned different numbers of tokens")
    for key, value in found.items():
        checks[key] = max(checks.get(key, 0.0), value)
    limits = {
        "reference_vs_library": 1e-3,
        "no_share_vs_library": 1e-4,
        "http_vs_library": 1e-4,
        "http_vs_library_rewards_abs": 1e-6,
    }
    if dtype != torch.float32:
        # bf16 keeps 8 bits of mantissa: the same latents computed in other shapes (padded
        # batch, shared prompt or not) differ in the last bits, and the deviations with them
        limits["reference_vs_library"] = limits["no_share_vs_library"] = 5e-2
    bad = {k: v for k, v in found.items() if v > limits[k]}
    if bad:
        raise AssertionError(f"paths disagree beyond tolerance: {bad} (limits {limits})")
