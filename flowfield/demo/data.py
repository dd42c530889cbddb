"""Expert data for the demo flow, and the corrupted-digits check.

python -m flowfield.demo.data --out runs/demo/expert.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import typer

from flowfield.demo.task import Problem, expert_solution, split_problems


def write_expert_jsonl(path: str | Path, problems: list[Problem]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"prompt": p.prompt, "response": expert_solution(p)}) + "\n")
    return path


def corrupt_digits(text: str, n: int, rng: random.Random) -> str:
    """Replace n digits of text with different random digits (the format stays valid)."""
    chars = list(text)
    where = [i for i, ch in enumerate(chars) if ch.isdigit()]
    for i in rng.sample(where, min(n, len(where))):
        chars[i] = rng.choice([d for d in "0123456789" if d != chars[i]])
    return "".join(chars)


def main(out: Path = typer.Option(..., help="JSONL file to write"), seed: int = 0) -> None:
    _, flow_problems, _ = split_problems(seed)
    write_expert_jsonl(out, flow_problems)
    typer.echo(f"wrote {len(flow_problems)} expert solutions to {out}")


if __name__ == "__main__":
    typer.run(main)
