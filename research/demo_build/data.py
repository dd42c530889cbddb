"""Expert data for the demo flow: the expert solutions of the flow split as JSONL.

    python -m research expert-data --out runs/demo/expert.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from flowfield.demo.task import Problem, expert_solution, split_problems
from research.cli import run_command


def write_expert_jsonl(path: str | Path, problems: list[Problem]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"prompt": p.prompt, "response": expert_solution(p)}) + "\n")
    return path


def command(out: Path = typer.Option(..., help="JSONL file to write"), seed: int = 0) -> None:
    """Write the demo's expert solutions (the flow split) as JSONL."""
    _, flow_problems, _ = split_problems(seed)
    write_expert_jsonl(out, flow_problems)
    typer.echo(f"wrote {len(flow_problems)} expert solutions to {out}")


def main(argv: list[str]) -> int:
    return run_command(command, argv, "expert-data")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
