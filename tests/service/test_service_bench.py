"""Smoke run of `flowfield bench` on a tiny model: the machinery works end to end and every
path (reference, library with and without shared prompts, HTTP) gives the same deviations.
No timing is asserted."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from flowfield.bench import SECTION, BenchConfig, markdown_section, replace_section, run_bench

# slow lane: the scoring bench end to end
pytestmark = pytest.mark.slow

TINY = dict(
    groups=1,
    group_size=3,
    prompt_tokens=8,
    min_response=3,
    max_response=9,
    rounds=1,
    warmup_groups=1,
    hidden=32,
    layers=8,
    heads=4,
    kv_heads=2,
    intermediate=64,
    vocab=64,
    flow_depth=2,
    threads=1,
)


def test_bench_runs_end_to_end_and_paths_agree(tmp_path):
    res = run_bench(BenchConfig(**TINY), tmp_path / "work", log=lambda m: None)
    assert set(res["paths"]) == {"reference", "library", "no_share", "http"}
    for path in res["paths"].values():
        assert len(path["tokens_per_s"]) == 1 and path["median_tokens_per_s"] > 0
    assert res["tokens_per_round"][0] >= 3 * 3
    # deviations: library == reference on comparable tokens; HTTP and no-share == library
    checks = res["checks"]
    assert checks["reference_vs_library"] < 1e-4
    assert checks["no_share_vs_library"] < 1e-5
    assert checks["http_vs_library"] < 1e-5
    assert checks["http_vs_library_rewards_abs"] < 1e-6
    assert set(res["ratios"]) >= {"library_vs_reference", "http_vs_reference", "http_overhead"}
    # achieved GFLOP/s and utilisation against a GEMM measured in the same run
    assert res["dtype"] == "float32" and res["gemm_gflops"] > 0
    for path in [*res["paths"].values(), *res["components"].values()]:
        assert path["median_gflops"] > 0 and path["utilisation"] > 0
    assert set(res["components"]) == {"encoder", "flow"}

    section = markdown_section(res, "flowfield bench --groups 1")
    assert section.startswith(SECTION) and "| path |" in section


def test_markdown_section_is_replaced_and_other_sections_kept(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkeep me\n")
    replace_section(doc, f"{SECTION}\n\nfirst\n")
    replace_section(doc, f"{SECTION}\n\nsecond\n")
    text = doc.read_text()
    assert text.count(SECTION) == 1 and "second" in text and "first" not in text
    assert "## Other\n\nkeep me" in text
    doc.write_text(f"# Benchmarks\n\n{SECTION}\n\nold\n\n## Later\n\nstays\n")
    replace_section(doc, f"{SECTION}\n\nnew\n")
    text = doc.read_text()
    assert "old" not in text and "new" in text and text.endswith("## Later\n\nstays\n")


def test_bench_command_cli_without_http_writes_json_and_markdown(tmp_path):
    from flowfield.bench.cli import bench_command

    app = typer.Typer()
    app.command()(bench_command)
    out, md = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    result = CliRunner().invoke(
        app, [*args, "--no-http", "--json", str(out), "--markdown", str(md)]
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert "http" not in res["paths"] and res["checks"]["no_share_vs_library"] < 1e-5
    assert SECTION in md.read_text()
    # a bf16 run gets its own section next to the float32 one
    result = CliRunner().invoke(
        app, [*args, "--no-http", "--dtype", "bfloat16", "--markdown", str(md)]
    )
    assert result.exit_code == 0, result.output
    text = md.read_text()
    # one section per dtype, device and thread count (the default, 2 threads, is untitled)
    assert text.count(f"{SECTION} (float32, cpu, 1 thread)\n") == 1
    assert text.count(f"{SECTION} (bfloat16, cpu, 1 thread)\n") == 1
    assert "--dtype bfloat16" in text
    bad = CliRunner().invoke(app, [*args, "--dtype", "fp8"])
    assert bad.exit_code != 0 and "dtype must be one of" in bad.output


def test_flop_counts_by_hand():
    from flowfield.bench.flops import attention_flops, flow_flops_per_row, path_flops
    from flowfield.bench.workload import Group

    cfg = BenchConfig(hidden=8, heads=2, kv_heads=1, intermediate=16, layers=4, vocab=10)
    assert attention_flops(0, 3, 8) == 4 * 8 * (1 + 2 + 3)
    assert attention_flops(2, 2, 8) == 4 * 8 * (3 + 4)
    # x_in, c_in: 2 d W; each block: 2 W^2 + 3 W^2; final: 2 W^2 + W d
    assert flow_flops_per_row(8, 4, 2) == 2 * (2 * 32 + 2 * 5 * 16 + 2 * 16 + 32)
    one = path_flops(cfg, [Group("g", [1, 2], [[3], [4, 5]])], hooked=3, blocks_run=3)
    assert one["library"] == one["library_encoder"] + one["library_flow"] == one["http"]
    assert one["no_share"] > one["library"]  # the prompt encoded twice
    assert one["library_flow"] == 3 * 3 * flow_flops_per_row(8, 8, cfg.flow_depth)
