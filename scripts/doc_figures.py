"""Figures in the docs that are written from their sources, not copied by hand.

A figure in a Markdown file sits between two HTML comments (invisible when rendered):

    right about <!-- figure:demo-accuracy -->77%<!-- /figure --> of the time

and its text is what `render(name)` makes from the figure's source: the bundled demo assets'
metadata, or the sections of BENCHMARKS.md that the bench commands wrote.

    python scripts/doc_figures.py --check   # exit 1 and name every figure that drifted
    python scripts/doc_figures.py --write   # rewrite the figures in place

tests/test_doc_figures.py runs the check, so a retrained demo or a rerun benchmark that
changes a number fails the suite until the docs say the new one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "flowfield" / "demo" / "assets"
DOCS = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").rglob("*.md"))]
FIGURE = re.compile(r"<!-- figure:([a-z0-9-]+) -->(.*?)<!-- /figure -->", re.S)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def demo_accuracy() -> str:
    """The demo policy's validation accuracy at temperature 1 when its training stopped."""
    acc = _json(ASSETS / "policy" / "training.json")["validation_accuracy_t1"]
    return f"{acc:.0%}"


def demo_fit_report() -> str:
    """The held-out report of the bundled flow's fit, as `flowfield fit` prints it."""
    from flowfield.training.report import FitReport

    meta = _json(ASSETS / "flow" / "flow.json")
    fit = meta["extra"]
    report = FitReport.from_dict(fit["report"])
    head = (
        f"fit: {fit['steps']} steps, {meta['tokens_trained']} tokens, "
        f"final loss {fit['last_loss']:.4f}"
    )
    return "\n```\n" + "\n".join([head, *report.lines()]) + "\n```\n"


def _section(name: str) -> str:
    text = (REPO / "BENCHMARKS.md").read_text()
    start = text.index(f"\n## {name}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _row(section: str, path: str) -> list[str]:
    """The cells of the table row whose first cell starts with `path`."""
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith(path):
            return cells
    raise KeyError(f"no row {path!r}")


def _throughput_section(dtype: str, threads: int) -> str:
    if (dtype, threads) == ("float32", 2):
        return _section("/score throughput")  # the default run's section keeps its plain name
    return _section(f"/score throughput ({dtype}, cpu, {threads} thread{'s' * (threads > 1)})")


def bf16_ratio(threads: int) -> str:
    """The bf16 service's throughput over the float32 service's, at `threads` threads."""
    bf16, fp32 = (
        float(_row(_throughput_section(dt, threads), "service over HTTP")[1])
        for dt in ("bfloat16", "float32")
    )
    return f"{bf16 / fp32:.2f}x"


def bench_summary() -> str:
    """The summary table of BENCHMARKS.md, from the four /score throughput sections."""
    rows = [
        "| `flowfield bench` (d = 512, 8 layers) | tokens/s, service over HTTP | x reference "
        "(same dtype) | library GFLOP/s | utilisation (vs a GEMM of the same dtype) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for dtype, threads in (("float32", 1), ("bfloat16", 1), ("float32", 2), ("bfloat16", 2)):
        sec = _throughput_section(dtype, threads)
        http = _row(sec, "service over HTTP")
        lib = _row(sec, "library: FlowScorer.score")
        gemm = re.search(r"/ ([\d.]+) GFLOP/s, the best rate of a plain", sec).group(1)
        rows.append(
            f"| {dtype}, {threads} thread{'s' if threads > 1 else ''} | {http[1]} | {http[3]} | "
            f"{lib[5]} | {lib[6]} (GEMM {float(gemm):.0f} GFLOP/s) |"
        )
    return "\n" + "\n".join(rows) + "\n"


def update_cost() -> str:
    """Scoring time an /update costs, from the "Online update path" section."""
    sec = _section("Online update path")
    m = re.search(
        r"Scoring time lost per update: \*\*([\d.]+) s\*\* = [\d.]+ scoring batches of ([\d.]+) s",
        sec,
    )
    lost, batch = float(m.group(1)), float(m.group(2))
    return f"scoring {lost:.2f} s, {lost / batch:.2f} scoring batches of {batch:.2f} s"


FIGURES: dict[str, Callable[[], str]] = {
    "demo-accuracy": demo_accuracy,
    "demo-fit-report": demo_fit_report,
    "bench-summary": bench_summary,
    "update-cost": update_cost,
    "bf16-ratio-1": lambda: bf16_ratio(1),
    "bf16-ratio-2": lambda: bf16_ratio(2),
}


def render(name: str) -> str:
    if name not in FIGURES:
        raise KeyError(f"unknown figure {name!r} (known: {', '.join(FIGURES)})")
    return FIGURES[name]()


def _name(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def drifted(files: list[Path] = DOCS) -> list[str]:
    """`path: figure` for every figure whose text is not what its source gives."""
    out = []
    for path in files:
        for m in FIGURE.finditer(path.read_text()):
            if m.group(2) != render(m.group(1)):
                out.append(f"{_name(path)}: {m.group(1)}")
    return out


def write(files: list[Path] = DOCS) -> int:
    changed = 0
    for path in files:
        text = path.read_text()
        new = FIGURE.sub(lambda m: f"<!-- figure:{m.group(1)} -->{render(m.group(1))}"
                         "<!-- /figure -->", text)
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


def used(files: list[Path] = DOCS) -> set[str]:
    return {m.group(1) for p in files for m in FIGURE.finditer(p.read_text())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a figure drifted")
    ap.add_argument("--write", action="store_true", help="rewrite the figures in place")
    args = ap.parse_args(argv)
    if args.write:
        print(f"{write()} file(s) rewritten")
        return 0
    bad = drifted()
    for line in bad:
        print(f"drifted: {line} (python scripts/doc_figures.py --write)")
    if not bad:
        print(f"{len(used())} figures match their sources")
    return 1 if bad and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
