"""The samples in the examples are real demo-task samples: in docs/clients.md's Python blocks
and in examples/trainers/*.py, every `Sample(...)` (or sample dict) with a prompt, a response
and a reward has the reward the demo verifier gives, and every sample passed to `update` is the
expert trace of its prompt with reward 1.0. A made-up trace in an update example would train
the live flow on garbage (the verifier reads the answer only, so it alone cannot catch it).
"""

from __future__ import annotations

import ast
import contextlib
import re
from pathlib import Path

import pytest
from client_server import REPO

from flowfield.demo.task import expert_solution, parse_prompt, verify

DOCS = REPO / "docs" / "clients.md"
EXAMPLES = sorted((REPO / "examples" / "trainers").glob("*.py"))


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def sources() -> list[tuple[str, str]]:
    out = [(f"{DOCS.name} block {i}", code) for i, code in enumerate(python_blocks(DOCS))]
    return out + [(p.name, p.read_text()) for p in EXAMPLES]


def literal_samples(node: ast.AST) -> list[dict]:
    """The samples written out in `node`: `Sample(prompt=..., response=..., reward=...)` calls
    and dicts with those keys, literal values only."""
    found = []
    for n in ast.walk(node):
        fields: dict = {}
        if isinstance(n, ast.Call) and _name(n.func) == "Sample":
            pairs = [(k.arg, k.value) for k in n.keywords if k.arg]
        elif isinstance(n, ast.Dict):
            pairs = [(k.value, v) for k, v in zip(n.keys, n.values)
                     if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        else:
            continue
        for key, value in pairs:
            if key in ("prompt", "response", "reward"):
                with contextlib.suppress(ValueError):  # a variable: not a written-out sample
                    fields[key] = ast.literal_eval(value)
        if {"prompt", "response"} <= fields.keys():
            found.append(fields)
    return found


def _name(func: ast.expr) -> str:
    return getattr(func, "id", getattr(func, "attr", ""))


def update_samples(tree: ast.AST) -> list[dict]:
    """The written-out samples passed to an `.update(...)` call."""
    return [s for n in ast.walk(tree)
            if isinstance(n, ast.Call) and _name(n.func) == "update"
            for s in literal_samples(n)]


@pytest.mark.parametrize("name,code", sources(), ids=[name for name, _ in sources()])
def test_example_samples_are_real(name, code):
    tree = ast.parse(code)
    for s in literal_samples(tree):
        problem = parse_prompt(s["prompt"])
        assert problem is not None, f"{name}: not a demo prompt: {s['prompt']!r}"
        if "reward" in s:
            assert s["reward"] == verify(problem, s["response"]), f"{name}: {s}"
    for s in update_samples(tree):
        problem = parse_prompt(s["prompt"])
        assert s["response"] == expert_solution(problem), f"{name}: not a real trace: {s}"
        assert s.get("reward") == 1.0, f"{name}: an update example is an accepted sample: {s}"


def test_the_docs_have_update_examples():
    """The check above is not vacuous: the client example pushes a written-out sample."""
    samples = [s for code in python_blocks(DOCS) for s in update_samples(ast.parse(code))]
    assert samples and all(s["response"] == expert_solution(parse_prompt(s["prompt"]))
                           for s in samples)
