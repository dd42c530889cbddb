"""Learning curves per arm (mean across seeds, seed spread shaded) as a PNG.

matplotlib with the Agg backend: no display needed (CI, servers). Imported lazily by the CLI,
so the rest of the experiment code runs without matplotlib installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _series(runs: Sequence[dict[str, Any]], part: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and a [seeds, steps] array of `key` (NaN where missing) for one arm."""
    steps = sorted({row["step"] for r in runs for row in r[part]})
    index = {s: i for i, s in enumerate(steps)}
    values = np.full((len(runs), len(steps)), np.nan)
    for i, r in enumerate(runs):
        for row in r[part]:
            if row.get(key) is not None:
                values[i, index[row["step"]]] = row[key]
    return np.asarray(steps), values


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along steps (per seed), ignoring NaNs."""
    if window <= 1:
        return values
    out = np.full_like(values, np.nan)
    for j in range(values.shape[1]):
        chunk = values[:, max(0, j - window + 1) : j + 1]
        with np.errstate(all="ignore"):
            out[:, j] = np.nanmean(chunk, axis=1) if chunk.size else np.nan
    return out


PANELS = (
    ("eval", "pass1", "held-out pass@1 (T=1)", 100.0),
    ("eval", "greedy", "held-out greedy accuracy", 100.0),
    ("train", "flow_return", "flow return of training rollouts", 1.0),
    ("train", "response_length", "response length (tokens)", 1.0),
)


def plot_curves(results: dict[str, Any], path: Path, smooth: int | None = None) -> Path:
    """Write a 2x2 figure: held-out pass@1 and greedy accuracy, flow return and response
    length of the training rollouts (moving average over `smooth` steps, default the eval
    interval); mean across seeds as a line, min..max across seeds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["settings"]
    window = smooth if smooth is not None else max(1, int(s["eval_every"]))
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        by_arm.setdefault(run["arm"], []).append(run)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (part, key, title, scale) in zip(axes.flat, PANELS):
        for k, (arm, runs) in enumerate(by_arm.items()):
            steps, vals = _series(runs, part, key)
            if part == "train":
                vals = _smooth(vals, window)
            vals = vals * scale
            if steps.size == 0 or np.all(np.isnan(vals)):
                continue
            with np.errstate(all="ignore"):
                mean = np.nanmean(vals, axis=0)
                lo, hi = np.nanmin(vals, axis=0), np.nanmax(vals, axis=0)
            color = colors[k % len(colors)]
            label = f"{arm} ({len(runs)} seed{'s' if len(runs) != 1 else ''})"
            ax.plot(steps, mean, color=color, label=label, lw=1.6,
                    marker="o" if part == "eval" else None, ms=3)
            if len(runs) > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=0.15, lw=0)
        suffix = f" ({window}-step mean)" if part == "train" and window > 1 else ""
        ax.set_title(title + suffix, fontsize=10)
        ax.set_xlabel("policy-gradient step")
        ax.grid(alpha=0.3)
        if key == "pass1":
            ax.axhline(100 * float(s["target"]), color="grey", ls=":", lw=1)
    axes.flat[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"RLFR toy: GRPO on 4-digit addition, {s['split']} split (n={s['eval_size']}); "
        "line = mean across seeds, shade = min..max",
        fontsize=11,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
