"""Smoke run of `flowfield bench update` (flowfield/bench/update.py) against a live demo server
with tiny sizes: the numbers have the documented structure, every /update became exactly one
new flow version that was served, scoring kept going, and the BENCHMARKS.md section replaces
only itself. No timing is asserted (beyond being positive and finite)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowfield.bench.report import SECTION as SCORE_SECTION
from flowfield.bench.report import replace_section
from flowfield.bench.update import SECTION

# slow lane: the update bench end to end against a live server (about a minute)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "updates": 2,
    "samples": 8,
    "warmup-updates": 1,
    "load-updates": 2,
    "idle-seconds": 1.5,
    "score-groups": 1,
    "group-size": 4,
    "score-clients": 2,
    "threads": 1,
}


def test_bench_update_command_end_to_end(tmp_path):
    out, md = tmp_path / "update.json", tmp_path / "BENCHMARKS.md"
    md.write_text(f"# Benchmarks\n\n{SCORE_SECTION}\n\nkeep me\n\n{SECTION}\n\nold\n")
    args = [f"--{k}={v}" for k, v in TINY.items()]
    # an inherited setting must not reach the server (the bench runs the embedded defaults):
    # with this one every sample would be skipped and the bench would fail
    env = {**os.environ, "FLOWFIELD_ACCEPT_THRESHOLD": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "bench", "update", *args, "--json", str(out),
         "--markdown", str(md), "--workdir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())

    # one /update of 8 samples = one learner step = one version, each one served
    n = TINY["warmup-updates"] + TINY["updates"] + TINY["load-updates"]
    v = res["versions"]
    assert v["end"] == v["expected_end"] == v["start"] + n
    assert v["samples_trained"] == n * TINY["samples"]
    assert res["settings"]["FLOWFIELD_LEARNER_BATCH"] == TINY["samples"]
    # every update's samples were scored first, so the learner encoded none of them again
    assert res["config"]["scored_first"] is True
    assert res["latents_reused"] == n * TINY["samples"]
    records = res["warmup"] + res["latency"]["updates"] + res["throughput"]["updates"]["updates"]
    assert [r["version"] for r in records] == list(range(v["start"] + 1, v["end"] + 1))
    for r in records:
        assert r["accepted"] == TINY["samples"]
        assert r["versions_advanced"] == 1 and r["samples_trained"] == TINY["samples"]
        assert 0 < r["post_s"] < r["served_s"] and r["published_s"] < r["served_s"]

    lat = res["latency"]
    assert len(lat["updates"]) == TINY["updates"]
    assert 0 < lat["served_p50_s"] <= lat["served_p95_s"] <= lat["served_max_s"]
    assert isinstance(lat["meets_goal"], bool)

    thr = res["throughput"]
    assert set(thr["windows"]) == {"idle_before", "training", "idle_after"}
    for w in thr["windows"].values():
        assert w["requests"] >= 1 and w["tokens_per_s"] > 0 and w["batches"] >= 1
    assert thr["idle_tokens_per_s"] > 0 and thr["training_tokens_per_s"] > 0
    assert thr["batch_s"] > 0 and math.isfinite(thr["lost_s_per_update"])
    assert thr["drop"] == 1 - thr["training_tokens_per_s"] / thr["idle_tokens_per_s"]
    assert thr["error_count"] == 0, thr["errors"]
    # the scoring stream saw the versions the learner published while it ran
    seen = {x for w in thr["windows"].values() for x in w["flow_versions"]}
    assert max(seen) == v["end"]

    text = md.read_text()
    assert text.count(SECTION) == 1 and "\nold\n" not in text
    assert f"{SCORE_SECTION}\n\nkeep me\n" in text
    section = text[text.index(SECTION):]
    assert "| no other load (2 updates) |" in section and "tokens/s" in section
    assert "FLOWFIELD_LEARNER_BATCH=8" in section
    assert "--json" not in section and "--workdir" not in section  # output paths only
    assert "flowfield bench update --updates=2 " in section  # the command that reproduces it


def test_replace_section_by_title_keeps_the_other_sections(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Benchmarks\n\n{SCORE_SECTION}\n\nscore\n\n## Later\n\nstays\n")
    replace_section(doc, f"{SECTION}\n\nfirst\n", SECTION)  # appended
    replace_section(doc, f"{SECTION}\n\nsecond\n", SECTION)  # replaced in place
    text = doc.read_text()
    assert text.count(SECTION) == 1 and "second" in text and "first" not in text
    assert text.startswith(f"# Benchmarks\n\n{SCORE_SECTION}\n\nscore\n\n## Later\n\nstays\n")
    replace_section(doc, f"{SCORE_SECTION}\n\nnew score\n")  # the default title as before
    text = doc.read_text()
    assert "new score" in text and "\nscore\n" not in text and text.endswith("second\n")
