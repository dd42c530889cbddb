"""Every environment x seed x arm run, one `flowfield serve` process for all of them.

/v1/score/graph is stateless (no model, no flow state), so one service serves every run;
it is started only when the rewardflow arm runs. Its /metrics counters are read before and
after each run: the service's own count of graph requests, trajectories and steps, and the
time it spent answering them, per run. The results JSON is rewritten after every run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from research.harness.common import add_run, new_results, package_versions
from research.rewardflow.config import ARMS, ENVIRONMENTS, RewardFlowConfig
from research.rewardflow.report import summarize
from research.rewardflow.trainer import RunOne

log = logging.getLogger("research.experiments")

METRICS = {
    "graph_requests": 'flowfield_requests_total{endpoint="/v1/score/graph",status="200"}',
    "graph_trajectories": "flowfield_graph_trajectories_total",
    "graph_steps": "flowfield_graph_steps_total",
    "graph_seconds": 'flowfield_request_latency_seconds_sum{endpoint="/v1/score/graph"}',
}


def read_metrics(url: str) -> dict[str, float]:
    """The service's graph counters from GET /metrics (Prometheus text)."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10.0).text
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return {k: values.get(m, 0.0) for k, m in METRICS.items()}


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@contextmanager
def live_service(cfg: RewardFlowConfig, workdir: Path) -> Iterator[tuple[Any, Any]]:
    """(ServiceProcess, FlowfieldClient) of a fresh `flowfield serve`, or (None, None) when no
    arm needs it."""
    if not any(a.startswith("rewardflow") for a in cfg.arms):
        yield None, None
        return
    from flowfield_client import FlowfieldClient

    from research.harness.service_process import ServiceProcess
    from research.rlfr.config import DEMO_FLOW, DEMO_POLICY

    # the service loads a policy and flow at start; /v1/score/graph uses neither
    with (
        ServiceProcess(workdir, DEMO_POLICY, DEMO_FLOW, threads=cfg.service_threads) as svc,
        FlowfieldClient(svc.url, timeout=120.0) as client,
    ):
        yield svc, client


def run_experiment(
    cfg: RewardFlowConfig,
    out_dir: Path,
    json_path: Path | None = None,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    out_dir = Path(out_dir)
    results = new_results(
        "rewardflow-toy", package_versions("numpy"), cfg.to_dict(),
        arms={a: ARMS[a] for a in cfg.arms},
        environments={e: ENVIRONMENTS[e].describe() for e in cfg.envs},
        service=None,
    )
    t0 = time.monotonic()
    total = len(cfg.envs) * len(cfg.seeds) * len(cfg.arms)
    done = 0
    with live_service(cfg, out_dir / "work" / "service") as (svc, client):
        if svc is not None:
            results["service"] = {"url": svc.url, "start_seconds": round(svc.start_seconds, 3)}
        for env in cfg.envs:
            for seed in cfg.seeds:
                for arm in cfg.arms:
                    done += 1
                    log.info("run %d/%d: %s, arm %s, seed %d", done, total, env, arm, seed)
                    before = read_metrics(svc.url) if svc is not None else None
                    cpu_before = process_cpu_seconds(svc.proc.pid) if svc is not None else None
                    requests_before = client.stats.by_path["/v1/score/graph"] if client else 0
                    run = RunOne(cfg, arm, env, seed, client).run()
                    if svc is not None and before is not None:
                        after = read_metrics(svc.url)
                        run["service"] = {k: round(after[k] - before[k], 4) for k in METRICS}
                        run["service"]["client_requests"] = (
                            client.stats.by_path["/v1/score/graph"] - requests_before)
                        cpu_after = process_cpu_seconds(svc.proc.pid)
                        run["service"]["cpu_seconds"] = (
                            None if cpu_before is None or cpu_after is None
                            else round(cpu_after - cpu_before, 3))
                    add_run(results, run, summarize, t0, json_path)
                    log.info("run %d/%d done in %.1fs (%d updates; elapsed %.0fs)", done, total,
                             run["seconds"], run["updates"], results["seconds"])
                    if on_run is not None:
                        on_run(run)
        if svc is not None:
            results["service"]["log"] = str(svc.log_path)
    return results
