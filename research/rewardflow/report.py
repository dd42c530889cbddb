"""Summaries of the RewardFlow toy results (per environment and arm, across seeds), the
markdown tables and the learning-curve plot. Reads the results dict only, so
`python -m research rewardflow-report` rebuilds them from a results JSON."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean, stdev
from typing import Any


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    return {
        "mean": fmean(vals) if vals else None,
        "std": stdev(vals) if len(vals) > 1 else None,  # sample std across seeds
        "min": min(vals) if vals else None,
        "max": max(vals) if vals else None,
        "values": [None if v is None else float(v) for v in values],
    }


def steps_to(evals: Sequence[dict[str, Any]], key: str, target: float) -> int | None:
    """The first evaluation (nominal environment steps) whose `key` is at least `target`."""
    for e in evals:
        if e.get(key) is not None and e[key] >= target:
            return int(e["step"])
    return None


def summarize_arm(runs: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    target = float(settings["target"])
    reached = [steps_to(r["eval"], "success", target) for r in runs]
    hit = [s for s in reached if s is not None]
    timings = {k: _stats([r["timings"][k] for r in runs])["mean"] for k in runs[0]["timings"]}
    service = [r["service"] for r in runs if r.get("service")]
    return {
        "seeds": [r["seed"] for r in runs],
        "start_success": _stats([r["eval"][0]["success"] for r in runs]),
        "final_success": _stats([r["eval"][-1]["success"] for r in runs]),
        "final_greedy_success": _stats([r["eval"][-1]["greedy_success"] for r in runs]),
        "final_steps_to_goal": _stats([r["eval"][-1]["steps_to_goal"] for r in runs]),
        "final_length": _stats([r["eval"][-1]["length"] for r in runs]),
        # mean held-out success over every evaluation after the start: the area under the
        # learning curve, a measure of training efficiency less noisy than one point
        "mean_success_after_start": _stats(
            [fmean(e["success"] for e in r["eval"][1:]) for r in runs if len(r["eval"]) > 1]
        ),
        "steps_to_target": {
            "target": target,
            "values": reached,
            "reached": len(hit),
            "mean_of_reached": fmean(hit) if hit else None,
        },
        "updates": _stats([r["updates"] for r in runs]),
        "env_steps": _stats([r["env_steps"] for r in runs]),
        "graph_calls": sum(r.get("graph_calls", 0) for r in runs),
        "service_graph_requests": sum(s.get("graph_requests", 0) for s in service),
        "service_graph_seconds": _stats([s.get("graph_seconds") for s in service])["mean"],
        "service_cpu_seconds": _stats([s.get("cpu_seconds") for s in service])["mean"],
        "cpu_seconds_per_run": _stats([r.get("cpu_seconds") for r in runs]),
        "timings": timings,
        "seconds_per_run": _stats([r["seconds"] for r in runs]),
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """{env: {arm: summary}} for every environment and arm with at least one finished run."""
    by: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in results["runs"]:
        by.setdefault(run["env"], {}).setdefault(run["arm"], []).append(run)
    order = list(results.get("arms", {}))
    return {
        env: {a: summarize_arm(arms[a], results["settings"])
              for a in sorted(arms, key=lambda a: order.index(a) if a in order else 99)}
        for env, arms in by.items()
    }


def _pm(stats: dict[str, Any], scale: float = 100.0, fmt: str = "{:.1f}") -> str:
    m, s = stats.get("mean"), stats.get("std")
    if m is None:
        return "n/a"
    text = fmt.format(scale * m)
    return f"{text} ± {fmt.format(scale * s)}" if s is not None else text


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _k(steps: float | None) -> str:
    return "n/a" if steps is None else f"{steps / 1000:.0f}k"


def markdown_table(results: dict[str, Any]) -> str:
    s = results["settings"]
    summary = results.get("summary") or summarize(results)
    target = float(s["target"])
    envs = results.get("environments", {})
    lines = [
        "Environment steps per run (every arm): "
        + ", ".join(f"{e} {b:,}" for e, b in s.get("budget", {}).items())
        + f"; updates of {s['groups']} starts x "
        f"G={s['group_size']} rollouts; MLP {s['hidden']}x{s['hidden']}, Adam lr {s['lr']:g}; "
        f"RewardFlow gamma {s['gamma']:g}, step weight {s['step_weight']:g}; MC gamma "
        f"{s['mc_gamma']:g}. Held-out: {s['eval_size']} starts never trained on, one sampled "
        "episode each (success in %, mean ± sample std across seeds; steps to goal over the "
        "successful episodes).",
        "",
    ]
    for env, arms in summary.items():
        lines += [
            f"**{env}** ({envs.get(env, '')})",
            "",
            "| arm | seeds | success: start | success: final | greedy success: final "
            "| steps to goal: final | mean success over evals | env steps to "
            f"≥ {100 * target:.0f}% success | updates |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for arm, a in arms.items():
            st = a["steps_to_target"]
            n = len(a["seeds"])
            per_seed = ", ".join(_k(v) if v is not None else "—" for v in st["values"])
            reach = (f"{_k(st['mean_of_reached'])} ({st['reached']}/{n}: {per_seed})"
                     if st["reached"] else f"not reached (0/{n})")
            lines.append(
                f"| {arm} | {n} | {_pm(a['start_success'])} | {_pm(a['final_success'])} "
                f"| {_pm(a['final_greedy_success'])} "
                f"| {_pm(a['final_steps_to_goal'], 1.0)} "
                f"| {_pm(a['mean_success_after_start'])} | {reach} "
                f"| {_pm(a['updates'], 1.0, '{:.0f}')} |"
            )
        lines.append("")
    lines += [
        "Where the time goes (seconds per run, mean across seeds; graph = the rewardflow "
        "arm's /v1/score/graph round trip: request building, HTTP, reading the answer; "
        "service = the service's own time on those requests, from its /metrics):",
        "",
        "| env | arm | run | rollouts | advantages (graph: build / HTTP / parse) | policy update "
        "| held-out eval | service (wall / CPU) | trainer CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for env, arms in summary.items():
        for arm, a in arms.items():
            t = a["timings"]
            graph = (f" ({t['graph_build']:.1f} / {t['graph_http']:.1f} / {t['graph_parse']:.1f})"
                     if t.get("graph_http") else "")
            svc, svc_cpu = a["service_graph_seconds"], a["service_cpu_seconds"]
            svc_text = "—" if not svc else f"{svc:.1f} / {_num(svc_cpu)}"
            lines.append(
                f"| {env} | {arm} | {a['seconds_per_run']['mean']:.1f} | {t['rollout']:.1f} "
                f"| {t['advantages']:.1f}{graph} | {t['update']:.1f} | {t['eval']:.1f} "
                f"| {svc_text} | {_num(a['cpu_seconds_per_run']['mean'])} |"
            )
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """Held-out success and steps to goal against environment steps, one row per
    environment; mean across seeds as a line, min..max shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    s = results["settings"]
    by: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in results["runs"]:
        by.setdefault(run["env"], {}).setdefault(run["arm"], []).append(run)
    envs = list(by)
    fig, axes = plt.subplots(len(envs), 2, figsize=(11, 3.8 * len(envs)),
                             constrained_layout=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    arm_order = list(results.get("arms", {}))
    panels = (("success", "held-out success (%)", 100.0),
              ("steps_to_goal", "held-out steps to goal (successful episodes)", 1.0))
    for row, env in enumerate(envs):
        for col, (key, title, scale) in enumerate(panels):
            ax = axes[row][col]
            for arm, runs in by[env].items():
                k = arm_order.index(arm) if arm in arm_order else len(arm_order)
                steps = sorted({e["step"] for r in runs for e in r["eval"]})
                idx = {x: i for i, x in enumerate(steps)}
                vals = np.full((len(runs), len(steps)), np.nan)
                for i, r in enumerate(runs):
                    for e in r["eval"]:
                        if e.get(key) is not None:
                            vals[i, idx[e["step"]]] = e[key] * scale
                x = np.asarray(steps) / 1000
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                    mean = np.nanmean(vals, axis=0)
                    lo, hi = np.nanmin(vals, axis=0), np.nanmax(vals, axis=0)
                color = colors[k % len(colors)]
                ax.plot(x, mean, color=color, lw=1.6, marker="o", ms=2.5,
                        label=f"{arm} ({len(runs)} seed{'s' if len(runs) != 1 else ''})")
                if len(runs) > 1:
                    ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
            if key == "success":
                ax.axhline(100 * float(s["target"]), color="grey", ls=":", lw=1)
                ax.legend(fontsize=8, loc="upper left")
            env_text = results.get("environments", {}).get(env, "")
            ax.set_title(f"{env}: {env_text}\n{title}", fontsize=9)
            ax.set_xlabel("environment steps (thousands)")
            ax.grid(alpha=0.3)
    fig.suptitle("RewardFlow toy: GRPO-style updates of an MLP policy in grid rooms; "
                 f"{s['eval_size']} held-out starts; line = mean across seeds, "
                 "shade = min..max", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
