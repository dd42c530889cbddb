"""What the RLFR (research/rlfr/) and RewardFlow (research/rewardflow/) toy
experiments share: settings overrides and checks, per-phase timings, and the results file
(header, versions, one run appended at a time, written atomically)."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Self

RESULTS_FORMAT = 1


# ---- settings ---------------------------------------------------------------------------


class Settings:
    """Mixin of the frozen settings dataclasses: overrides from the command line and the
    checks their `__post_init__` share."""

    def with_overrides(self, **overrides: Any) -> Self:
        """A copy with the given fields replaced; None values leave the field as it is."""
        known = {f.name for f in fields(self)}  # type: ignore[arg-type]
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[type-var]

    def _check_common(self, at_least_one: Iterable[str], finite: Iterable[str]) -> None:
        seeds = self.seeds  # type: ignore[attr-defined]
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.group_size < 2:  # type: ignore[attr-defined]
            raise ValueError("group_size must be at least 2 (GRPO needs a group baseline)")
        for name in finite:
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")


# ---- timings ----------------------------------------------------------------------------


class Timings(dict[str, float]):
    """Seconds spent per phase of a run: `with timings.timed("eval"): ...`."""

    def __init__(self, phases: Iterable[str]) -> None:
        super().__init__(dict.fromkeys(phases, 0.0))

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[phase] += time.perf_counter() - t0

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.items()}


# ---- the results file -------------------------------------------------------------------


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git(*args: str) -> str | None:
    """`git <args>` in the repository this package runs from; None outside a checkout."""
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def package_versions(*packages: str) -> dict[str, Any]:
    """Versions of flowfield, its client, torch and `packages`, Python, and the git commit
    (and whether the working tree had uncommitted changes)."""
    status = git("status", "--porcelain")
    names = ("flowfield", "flowfield-client", "torch", *packages)
    return {
        **{name.replace("-", "_"): package_version(name) for name in names},
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


def write_json(results: dict[str, Any], path: Path) -> None:
    """Atomically (temp file + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def new_results(experiment: str, versions: dict[str, Any], settings: dict[str, Any],
                **described: Any) -> dict[str, Any]:
    """The results dict before the first run: what ran, with which code and settings."""
    return {
        "experiment": experiment,
        "format": RESULTS_FORMAT,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": list(sys.argv),  # the command line that ran the experiment
        "versions": versions,
        "settings": settings,
        **described,
        "runs": [],
        "summary": {},
        "seconds": 0.0,
    }


def add_run(
    results: dict[str, Any],
    run: dict[str, Any],
    summarize: Callable[[dict[str, Any]], dict[str, Any]],
    started: float,
    json_path: Path | None,
) -> None:
    """Append a finished run, refresh the summary and elapsed time (since the monotonic
    `started`), and rewrite the results file, so a partial file already compares the arms."""
    results["runs"].append(run)
    results["summary"] = summarize(results)
    results["seconds"] = round(time.monotonic() - started, 3)
    if json_path is not None:
        write_json(results, json_path)
