"""Summaries of an experiment's results: per-arm statistics across seeds, markdown tables.

Everything here reads the results dict (runner.py) only, so `python -m research rlfr-report`
can rebuild the tables from a results JSON without running anything.

Arms are compared with rlvr seed by seed (paired: the same seed gives both arms the same
prompts, sampling seeds and evaluation problems), for the area under the pass@1 curve, the
final pass@1, pass@k (when the run took it) and the steps to the target; each difference
has a percentile bootstrap interval over seeds (BOOTSTRAP resamples of the seeds, a fixed
generator). The reading of an arm (docs/experiments/rlfr-toy.md, "Protocol for the next
run") follows its AUC interval: "helps" above 0, "hurts" below 0, else "cannot tell"; with
fewer than MIN_SEEDS paired seeds there is none.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from statistics import fmean, stdev
from typing import Any


def _stats(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {
        "mean": fmean(vals) if vals else None,
        # the sample standard deviation across seeds (n - 1); undefined for one seed
        "std": stdev(vals) if len(vals) > 1 else None,
        "values": vals,
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys against xs (None with fewer than two distinct xs)."""
    if len(xs) < 2:
        return None
    mx, my = fmean(xs), fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def steps_to(evals: Sequence[dict[str, Any]], key: str, target: float) -> int | None:
    """The first evaluated step whose `key` is at least `target` (None: never reached)."""
    for e in evals:
        if e.get(key) is not None and e[key] >= target:
            return int(e["step"])
    return None


BOOTSTRAP = 10_000
REFERENCE_ARM = "rlvr"
NEGATIVE_CONTROL = "shuffled"


def auc(evals: Sequence[dict[str, Any]], key: str = "pass1") -> float | None:
    """Area under the `key` curve (trapezoids over the evaluated steps) divided by the steps
    it spans: the curve's mean level, in the metric's unit (None with fewer than 2 points)."""
    pts = [(e["step"], e[key]) for e in evals if e.get(key) is not None]
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return None
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


def censored_steps_to(run: dict[str, Any], settings: dict[str, Any]) -> float | None:
    """Steps to the target; a run that never reached it counts as steps + eval_every."""
    if not run["eval"]:
        return None
    hit = steps_to(run["eval"], "pass1", float(settings["target"]))
    last = int(run["eval"][-1]["step"])
    return float(hit) if hit is not None else float(last + int(settings["eval_every"]))


def final_pass_k(run: dict[str, Any]) -> float | None:
    """pass@k at the last evaluation (taken at the start and the end only; None: not taken)."""
    return run["eval"][-1].get("pass_k") if run["eval"] else None


def bootstrap_interval(values: Sequence[float], n: int = BOOTSTRAP, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (resampling the values)."""
    vals = [float(v) for v in values]
    if not vals:
        return None
    rng = random.Random(seed)
    k = len(vals)
    means = sorted(fmean(rng.choices(vals, k=k)) for _ in range(n))
    lo = means[int((1 - level) / 2 * (n - 1))]
    hi = means[int((1 + level) / 2 * (n - 1))]
    return lo, hi


PAIRED_METRICS: dict[str, Callable[[dict[str, Any], dict[str, Any]], float | None]] = {
    "auc_pass1": lambda run, s: auc(run["eval"]),
    "final_pass1": lambda run, s: run["eval"][-1]["pass1"] if run["eval"] else None,
    "pass_k": lambda run, s: final_pass_k(run),
    "steps_to_target": censored_steps_to,
}


MIN_SEEDS = 5  # the protocol's minimum for a reading (docs/experiments/rlfr-toy.md)


def reading(interval: Sequence[float] | None, seeds: int = MIN_SEEDS) -> str:
    """The protocol's reading of a paired AUC interval over `seeds` paired seeds."""
    if interval is None:
        return "n/a"
    if seeds < MIN_SEEDS:
        return f"none: {seeds} < {MIN_SEEDS} seeds"
    lo, hi = interval
    if lo > 0:
        return "helps"
    if hi < 0:
        return "hurts"
    return "cannot tell"


def paired_vs_reference(
    runs: Sequence[dict[str, Any]], ref_runs: Sequence[dict[str, Any]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Per-seed differences arm - reference for every PAIRED_METRICS entry, with intervals."""
    ref = {r["seed"]: r for r in ref_runs}
    out: dict[str, Any] = {}
    for name, metric in PAIRED_METRICS.items():
        seeds, diffs = [], []
        for r in runs:
            if r["seed"] not in ref:
                continue
            a, b = metric(r, settings), metric(ref[r["seed"]], settings)
            if a is not None and b is not None:
                seeds.append(r["seed"])
                diffs.append(a - b)
        ci = bootstrap_interval(diffs)
        out[name] = {
            "seeds": seeds,
            "values": diffs,
            "mean": fmean(diffs) if diffs else None,
            "ci95": list(ci) if ci else None,
        }
    out["reading"] = reading(out["auc_pass1"]["ci95"], len(out["auc_pass1"]["seeds"]))
    return out


def _window_mean(train: Sequence[dict[str, Any]], key: str, first: bool, n: int) -> float | None:
    rows = train[:n] if first else train[-n:]
    vals = [r[key] for r in rows if r.get(key) is not None]
    return fmean(vals) if vals else None


def summarize_arm(runs: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Statistics of one arm across its seeds (see module doc of runner.py for the inputs)."""
    target = float(settings["target"])
    window = max(1, int(settings["eval_every"]))
    start = [r["eval"][0] for r in runs]
    final = [r["eval"][-1] for r in runs]
    reached = [steps_to(r["eval"], "pass1", target) for r in runs]
    hit = [s for s in reached if s is not None]

    def trend(key: str) -> dict[str, Any]:
        first = [_window_mean(r["train"], key, True, window) for r in runs]
        last = [_window_mean(r["train"], key, False, window) for r in runs]
        slopes = []
        for r in runs:
            pts = [(t["step"], t[key]) for t in r["train"] if t.get(key) is not None]
            s = slope([p[0] for p in pts], [p[1] for p in pts])
            if s is not None:
                slopes.append(100 * s)
        return {
            "first": _stats([x for x in first if x is not None])["mean"],
            "last": _stats([x for x in last if x is not None])["mean"],
            "slope_per_100_steps": _stats(slopes)["mean"],
        }

    gaps_start = [e["gap"] for e in start if e.get("gap") is not None]
    gaps_end = [e["gap"] for e in final if e.get("gap") is not None]
    return {
        "seeds": [r["seed"] for r in runs],
        "start": {"greedy": _stats([e["greedy"] for e in start]),
                  "pass1": _stats([e["pass1"] for e in start])},
        "final": {"greedy": _stats([e["greedy"] for e in final]),
                  "pass1": _stats([e["pass1"] for e in final])},
        "final_step": final[0]["step"] if final else None,
        "delta_pass1": _stats([f["pass1"] - s["pass1"] for s, f in zip(start, final)]),
        "delta_greedy": _stats([f["greedy"] - s["greedy"] for s, f in zip(start, final)]),
        # mean held-out pass@1 over every evaluation after the start: less noisy than the end
        "mean_pass1_after_start": _stats(
            [fmean(e["pass1"] for e in r["eval"][1:]) for r in runs if len(r["eval"]) > 1]
        ),
        "steps_to_target": {
            "target": target,
            "metric": "pass1",
            "values": reached,
            "reached": len(hit),
            "mean_of_reached": fmean(hit) if hit else None,
        },
        "hacking": {
            "response_length": trend("response_length"),
            "flow_return": trend("flow_return"),
            "train_reward": trend("reward"),
            "heldout_length_pass1": {
                "start": _stats([e["pass1_length"] for e in start])["mean"],
                "end": _stats([e["pass1_length"] for e in final])["mean"],
            },
            "seen_minus_heldout_greedy": {
                "start": _stats(gaps_start)["mean"],
                "end": _stats(gaps_end)["mean"],
            },
        },
        "auc_pass1": _stats([x for x in (auc(r["eval"]) for r in runs) if x is not None]),
        "pass_k": _stats([x for x in (final_pass_k(r) for r in runs) if x is not None]),
        "flow_version_end": _stats([r["service"]["flow_version_end"] for r in runs]),
        "seconds_per_run": _stats([r["seconds"] for r in runs]),
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per-arm summaries of every arm that has at least one finished run."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        by_arm.setdefault(run["arm"], []).append(run)
    order = [a for a in results.get("arms", {}) if a in by_arm] + [
        a for a in by_arm if a not in results.get("arms", {})
    ]
    out = {a: summarize_arm(by_arm[a], results["settings"]) for a in order}
    if REFERENCE_ARM in by_arm:
        for a in order:
            if a != REFERENCE_ARM:
                out[a]["paired_vs_rlvr"] = paired_vs_reference(
                    by_arm[a], by_arm[REFERENCE_ARM], results["settings"]
                )
    if NEGATIVE_CONTROL in by_arm:
        # the secondary reading: does a flow arm beat its rewards with the positions shuffled
        for a in order:
            if a.startswith("rlfr"):
                out[a]["paired_vs_shuffled"] = paired_vs_reference(
                    by_arm[a], by_arm[NEGATIVE_CONTROL], results["settings"]
                )
    return out


def _pm(stats: dict[str, Any], signed: bool = False) -> str:
    """A fraction's mean ± std across seeds, in percent (points when `signed`)."""
    m, s = stats.get("mean"), stats.get("std")
    if m is None:
        return "n/a"
    mean = f"{100 * m:+.1f}" if signed else f"{100 * m:.1f}"
    return f"{mean} ± {100 * s:.1f}" if s is not None else mean


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def markdown_table(results: dict[str, Any]) -> str:
    """Two markdown tables (outcomes; reward-hacking signs) and a line of settings."""
    s = results["settings"]
    summary = results.get("summary") or summarize(results)
    n_seeds = {a: len(v["seeds"]) for a, v in summary.items()}
    target = float(s["target"])
    lines = [
        f"Held-out split `{s['split']}` ({s['eval_size']} problems); {s['steps']} steps of "
        f"{s['prompts_per_step']} prompts x G={s['group_size']} rollouts, lr {s['lr']:g}, "
        f"policy synced every {s['sync_every']} steps; shaping: {s['normalization']}, "
        f"beta {s['beta']:g}, eta {s['threshold']:g}, K {s['top_k']}. Accuracies in %, "
        "mean ± std across seeds (sample std).",
        "",
        "| arm | seeds | greedy: start | greedy: final | pass@1 (T=1): start | pass@1: final "
        f"| Δ pass@1 (points) | mean pass@1 after start | first step with pass@1 ≥ "
        f"{100 * target:.0f}% |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, a in summary.items():
        st = a["steps_to_target"]
        reach = (
            f"{st['mean_of_reached']:.0f} ({st['reached']}/{n_seeds[arm]} seeds)"
            if st["reached"]
            else f"not reached (0/{n_seeds[arm]})"
        )
        lines.append(
            f"| {arm} | {n_seeds[arm]} | {_pm(a['start']['greedy'])} | {_pm(a['final']['greedy'])} "
            f"| {_pm(a['start']['pass1'])} | {_pm(a['final']['pass1'])} "
            f"| {_pm(a['delta_pass1'], signed=True)} | {_pm(a['mean_pass1_after_start'])} "
            f"| {reach} |"
        )
    lines += [
        "",
        "Reward-hacking signs (training rollouts: mean of the first and last "
        f"{s['eval_every']} steps; slope per 100 steps; gap = greedy accuracy on the first "
        f"{s['seen_size']} training prompts minus held-out greedy accuracy, in points):",
        "",
        "| arm | response length: first → last | flow return: first → last (slope) "
        "| train reward: first → last | gap: start → end | flow version at end |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arm, a in summary.items():
        h = a["hacking"]
        ln, fr, tr = h["response_length"], h["flow_return"], h["train_reward"]
        gap = h["seen_minus_heldout_greedy"]
        gap_txt = (
            f"{_num(None if gap['start'] is None else 100 * gap['start'], '{:+.1f}')} → "
            f"{_num(None if gap['end'] is None else 100 * gap['end'], '{:+.1f}')}"
        )
        lines.append(
            f"| {arm} | {_num(ln['first'])} → {_num(ln['last'])} "
            f"| {_num(fr['first'], '{:+.4f}')} → {_num(fr['last'], '{:+.4f}')} "
            f"({_num(fr['slope_per_100_steps'], '{:+.4f}')}) "
            f"| {_num(tr['first'], '{:.3f}')} → {_num(tr['last'], '{:.3f}')} "
            f"| {gap_txt} | {_num(a['flow_version_end']['mean'], '{:.0f}')} |"
        )
    lines += _paired_table(summary, s)
    if results.get("probe"):
        from research.rlfr.probe import probe_table

        lines += ["", probe_table(results["probe"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _ci(d: dict[str, Any], scale: float, fmt: str) -> str:
    if d["mean"] is None:
        return "n/a"
    lo, hi = d["ci95"]
    return f"{fmt.format(scale * d['mean'])} [{fmt.format(scale * lo)}, {fmt.format(scale * hi)}]"


def _paired_table(summary: dict[str, Any], s: dict[str, Any]) -> list[str]:
    rows = [(arm, a["paired_vs_rlvr"]) for arm, a in summary.items() if "paired_vs_rlvr" in a]
    if not rows:
        return []
    k = s.get("pass_k") or 0
    lines = [
        "",
        f"Paired differences against {REFERENCE_ARM} (arm minus {REFERENCE_ARM} at the same "
        "seed; mean [95% percentile bootstrap interval over seeds]; points, steps for the "
        "target; AUC = mean pass@1 over the curve, trapezoids; never reaching the target "
        "counts as the last step + eval_every). Reading: the AUC interval above 0 = helps, "
        f"below 0 = hurts, else cannot tell; none with fewer than {MIN_SEEDS} seeds.",
        "",
        f"| arm | seeds paired | Δ AUC pass@1 | Δ final pass@1 | Δ pass@{k or 'k'} "
        f"| Δ steps to pass@1 ≥ {100 * float(s['target']):.0f}% | reading |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, p in rows:
        lines.append(
            f"| {arm} | {len(p['auc_pass1']['seeds'])} | {_ci(p['auc_pass1'], 100, '{:+.1f}')} "
            f"| {_ci(p['final_pass1'], 100, '{:+.1f}')} | {_ci(p['pass_k'], 100, '{:+.1f}')} "
            f"| {_ci(p['steps_to_target'], 1, '{:+.0f}')} | {p['reading']} |"
        )
    return lines
