"""The whole experiment: every arm x seed run, one fresh service each, into one results dict.

Runs go seed by seed (all arms of seed 0 first), so a partial results file, written after
every run, already compares the arms. The start policy and flow are copied once into the
output folder and every run starts from those copies: a demo rebuilt in the repository while
the experiment runs cannot change later runs, and the results record their hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowfield.rewards import RewardOptions
from research.harness.common import add_run, new_results, package_versions, write_json
from research.rlfr.arms import ARMS, parse_arms, with_update
from research.rlfr.config import ExperimentConfig
from research.rlfr.report import summarize
from research.rlfr.trainer import ArmSeedRun

log = logging.getLogger("research.experiments")


def dir_sha256(path: Path) -> str:
    """One hash over every file of a directory (names and contents, sorted)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def collect_versions(policy: Path, flow: Path) -> dict[str, Any]:
    """What a reader needs to know which code, packages and assets produced the numbers."""
    flow_meta: dict[str, Any] = {}
    flow_json = Path(flow) / "flow.json"
    if flow_json.is_file():
        meta = json.loads(flow_json.read_text())
        flow_meta = {k: meta.get(k) for k in ("version", "samples_trained", "created_at")}
        flow_meta["encoder"] = meta.get("encoder")
        flow_meta["config"] = meta.get("config")
    return {
        **package_versions("transformers"),
        "policy_sha256": dir_sha256(policy),
        "flow_sha256": dir_sha256(flow),
        "flow": flow_meta,
    }


def _copy_fresh(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def run_experiment(
    cfg: ExperimentConfig,
    out_dir: Path,
    json_path: Path | None = None,
    keep_work: bool = False,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every arm x seed of `cfg`; returns (and writes to `json_path`) the results."""
    arms = [with_update(a, cfg.update) for a in parse_arms(",".join(cfg.arms))]
    if any(a.signal in ("entropy", "nll", "oracle", "oracle-local") for a in arms):
        # the logit arms shape with flowfield.rewards here; fail before any run starts
        RewardOptions(cfg.normalization, cfg.beta, cfg.threshold, cfg.top_k)
    out_dir = Path(out_dir)
    work = out_dir / "work"
    start = work / "start"
    policy = _copy_fresh(cfg.policy, start / "policy")
    flow = _copy_fresh(cfg.flow, start / "flow")
    results = new_results(
        "rlfr-toy", collect_versions(policy, flow), cfg.to_dict(),
        arms={a.name: {**a.to_dict(), "defined_update": ARMS[a.name].update} for a in arms},
    )
    t0 = time.monotonic()
    if cfg.probe_batches:
        # the gradient pre-check for this run's arms and beta, on the first seed's first
        # batches, before any run: recorded, and printed by the report
        from research.rlfr.probe import run_probe

        probe_cfg = cfg.with_overrides(policy=policy, flow=flow)
        results["probe"] = run_probe(probe_cfg, arms, betas=(cfg.beta,),
                                     batches=cfg.probe_batches, seed=cfg.seeds[0])
        if json_path is not None:
            write_json(results, json_path)
    total = len(arms) * len(cfg.seeds)
    done = 0
    for seed in cfg.seeds:
        for arm in arms:
            done += 1
            name = f"{arm.name}-s{seed}"
            log.info("run %d/%d: arm %s, seed %d (%s)", done, total, arm.name, seed,
                     arm.description)
            workdir = work / name
            if workdir.exists():
                shutil.rmtree(workdir)
            run = ArmSeedRun(cfg, arm, seed, workdir, policy_dir=policy, flow_dir=flow).run()
            logs = out_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            service_log = Path(run["service"]["log"])
            if service_log.is_file():
                kept = logs / f"{name}-service.log"
                shutil.copyfile(service_log, kept)
                run["service"]["log"] = str(kept)
            if not keep_work:
                shutil.rmtree(workdir, ignore_errors=True)
            add_run(results, run, summarize, t0, json_path)
            log.info("run %d/%d done in %.1fs (elapsed %.1fs)", done, total, run["seconds"],
                     results["seconds"])
            if on_run is not None:
                on_run(run)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return results
