"""Does bf16 move reward quality? The same rollouts scored in float32 and in bfloat16.

    python -m research dtype-quality --demo 400 --markdown BENCHMARKS.md
    python -m research dtype-quality --demo 400 --flows runs/fits/default --labels "fit defaults"

`flowfield eval` runs twice on the same rollouts (the policy that samples them and the logit
baselines do not depend on the scoring dtype), once with the encoder and flow in float32 and
once in bfloat16. Reported: the AUROC of every flow score with its bootstrap interval in both
dtypes; the per-token deviation's relative error |e16 - e32| / e32 (median, 99th percentile,
max); and token selection agreement: of the tokens the default shaping rewards (nonzero
reward: past the threshold, in the top K), the share selected in both dtypes (Jaccard), and
the share of rollouts whose most-penalised token is the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import typer

from flowfield.bench.report import replace_section
from flowfield.demo import DEMO_FLOW, DEMO_POLICY
from flowfield.evaluation import EvalConfig, run_evaluation
from research.cli import run_command

SECTION = "## bf16 reward quality"
SCORES = ("flow_mean_deviation", "flow_max_deviation", "flow_return_expert")


def compare(model: Path, flow: Path, demo: int, seed: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = EvalConfig(model=model, flow=flow, demo=demo, seed=seed, logits=False, dtype=dtype)
        runs[dtype] = run_evaluation(cfg)
    a, b = runs["float32"], runs["bfloat16"]
    ra, rb = a.scored[0][2], b.scored[0][2]
    assert [x.rollout.response_ids for x in ra] == [x.rollout.response_ids for x in rb]
    e32 = np.concatenate([x.deviations for x in ra])
    e16 = np.concatenate([x.deviations for x in rb])
    rel = np.abs(e16 - e32) / np.maximum(np.abs(e32), 1e-12)
    jaccard, same_argmax = [], []
    for x, y in zip(ra, rb):
        sa, sb = set(np.flatnonzero(x.rewards)), set(np.flatnonzero(y.rewards))
        if sa or sb:
            jaccard.append(len(sa & sb) / len(sa | sb))
        same_argmax.append(int(x.deviations.argmax()) == int(y.deviations.argmax()))
    ev = {k: r.report["evaluations"][0] for k, r in runs.items()}
    return {
        "model": str(model),
        "flow": str(flow),
        "rollouts": len(ra),
        "incorrect": ev["float32"]["n_incorrect"],
        "tokens": len(e32),
        "auroc": {k: {s: ev[k]["auroc"][s] for s in SCORES} for k in runs},
        "seconds": {k: r.report["seconds"] for k, r in runs.items()},
        "deviation_rel_error": {
            "median": float(np.median(rel)),
            "p99": float(np.quantile(rel, 0.99)),
            "max": float(rel.max()),
        },
        "selection_jaccard_mean": float(np.mean(jaccard)) if jaccard else 1.0,
        "same_max_token_share": float(np.mean(same_argmax)),
    }


def markdown(rows: list[tuple[str, dict]], command: str) -> str:
    def cell(a: dict) -> str:
        return f"{a['auroc']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]"

    lines = [
        SECTION,
        "",
        f"- Command: `{command}`",
        "- The same held-out demo rollouts (one each at T = 1) scored with the encoder and flow "
        "in float32 and in bfloat16; AUROC for 'incorrect' with 95% bootstrap intervals",
        "- `runs/fits/default` (a flow fitted by `flowfield fit` with its defaults): "
        "`python -m research expert-data --out runs/demo/expert.jsonl`, then `flowfield fit "
        "--model flowfield/demo/assets/policy --data runs/demo/expert.jsonl --out "
        "runs/fits/default`",
        "",
        "| flow | score | float32 | bfloat16 |",
        "| --- | --- | --- | --- |",
    ]
    for label, r in rows:
        for s in SCORES:
            lines.append(
                f"| {label} | {s} | {cell(r['auroc']['float32'][s])} | "
                f"{cell(r['auroc']['bfloat16'][s])} |"
            )
    lines += ["", "| flow | rollouts (incorrect) | tokens | deviation rel. error median / p99 "
              "/ max | selected tokens, Jaccard | same max-deviation token | eval seconds "
              "fp32 / bf16 |", "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for label, r in rows:
        e = r["deviation_rel_error"]
        lines.append(
            f"| {label} | {r['rollouts']} ({r['incorrect']}) | {r['tokens']} | "
            f"{e['median']:.1e} / {e['p99']:.1e} / {e['max']:.1e} | "
            f"{r['selection_jaccard_mean']:.3f} | {100 * r['same_max_token_share']:.1f}% | "
            f"{r['seconds']['float32']:.0f} / {r['seconds']['bfloat16']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def command(
    demo: int = typer.Option(400, help="held-out demo problems (one rollout each)"),
    seed: int = typer.Option(0, help="sampling seed"),
    model: Path = typer.Option(DEMO_POLICY, help="policy directory"),
    flows: str = typer.Option(
        str(DEMO_FLOW), help="comma-separated flow checkpoints (each compared on the rollouts)"
    ),
    labels: str = typer.Option("bundled demo flow", help="comma-separated labels of the flows"),
    threads: int = typer.Option(1, help="torch threads"),
    json_out: Path = typer.Option(None, "--json"),
    markdown_out: Path = typer.Option(None, "--markdown", help="replace its bf16 section"),
) -> None:
    """Does bf16 move reward quality? The same rollouts in fp32 and bf16."""
    paths = [Path(f) for f in flows.split(",")]
    names = labels.split(",")
    if len(names) != len(paths):
        raise typer.BadParameter("one label per flow")
    rows = []
    for label, flow in zip(names, paths):
        r = compare(model, flow, demo, seed, threads)
        typer.echo(json.dumps({"label": label, **r}))
        rows.append((label, r))
    if json_out:
        json_out.write_text(json.dumps(dict(rows), indent=2) + "\n")
    if markdown_out:
        command = f"python -m research dtype-quality --demo {demo} --seed {seed}"
        if flows != str(DEMO_FLOW):
            command += f" --flows {flows} --labels '{labels}'"
        replace_section(markdown_out, markdown(rows, command + f" --markdown {markdown_out}"),
                        SECTION)


def main(argv: list[str]) -> int:
    return run_command(command, argv, "dtype-quality")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
