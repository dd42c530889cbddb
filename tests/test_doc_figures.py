"""The figures in README.md, BENCHMARKS.md and docs/ that scripts/doc_figures.py computes from
their sources (the bundled demo's metadata, the benchmark sections) say what the sources say
today."""

from __future__ import annotations

import subprocess
import sys

from live_server import REPO

SCRIPT = REPO / "scripts" / "doc_figures.py"


def test_every_figure_matches_its_source():
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_docs_use_every_figure_and_a_drift_is_caught(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import doc_figures
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert doc_figures.used() == set(doc_figures.FIGURES)
    # a hand edit inside a figure is reported, with the file and the figure's name
    page = tmp_path / "page.md"
    page.write_text("right <!-- figure:demo-accuracy -->60%<!-- /figure --> of the time\n")
    assert [line.split(": ")[1] for line in doc_figures.drifted([page])] == ["demo-accuracy"]
    doc_figures.write([page])
    assert doc_figures.drifted([page]) == []
