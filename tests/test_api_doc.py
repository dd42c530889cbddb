"""docs/api.md, the users' HTTP contract, against the OpenAPI schema the app generates from
service/schemas.py and the routers, and the repository's docs against links that leave it.

The schema is built in-process: create_app() loads no model (that happens in the lifespan,
which app.openapi() does not run).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from service.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "api.md"
METHODS = ("get", "put", "post", "delete", "patch")
# FastAPI's default 422 body, declared on routes without their own 422 response; never sent:
# service/errors.py answers every validation error with ErrorResponse.
FRAMEWORK_SCHEMAS = {"HTTPValidationError", "ValidationError"}
ERROR_MODELS = ("ErrorResponse", "ErrorBody")  # every endpoint's error body: see "Errors"
SKIP_DIRS = {".git", "runs", "out", "build", "dist", ".venv", "node_modules", "__pycache__"}


@pytest.fixture(scope="module")
def app():
    return create_app(Settings())


@pytest.fixture(scope="module")
def schema(app) -> dict:
    return app.openapi()


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [
        (method.upper(), path, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def mentions_operation(text: str, method: str, path: str) -> bool:
    """`POST /v1/score` in text, not as the start of `POST /v1/score/graph`."""
    return re.search(rf"\b{method} {re.escape(path)}(?![\w/])", text) is not None


def section(doc: str, method: str, path: str) -> str | None:
    """The text under the heading that names `METHOD /path`."""
    return _section(doc, lambda line: mentions_operation(line, method, path))


def _section(doc: str, is_it) -> str | None:
    lines = doc.splitlines()
    levels, fenced = [], False  # heading level of each line (0: not a heading)
    for line in lines:
        fenced ^= line.startswith("```")
        m = None if fenced else re.match(r"(#+) ", line)
        levels.append(len(m.group(1)) if m else 0)
    for i, line in enumerate(lines):
        if levels[i] and is_it(line):
            end = next(
                (j for j in range(i + 1, len(lines)) if 0 < levels[j] <= levels[i]), len(lines)
            )
            return "\n".join(lines[i:end])
    return None


def heading_section(doc: str, title: str) -> str | None:
    """The text under the heading `title`, up to the next heading of the same or a higher
    level."""
    return _section(doc, lambda line: line.lstrip("#").strip() == title)


def documents_field(doc: str, name: str) -> bool:
    """`name` in backticks, alone or as the last part of a field path (`results[].name`)."""
    return re.search(rf"`(?:[A-Za-z_]\w*(?:\[\])?\.)*{re.escape(name)}`", doc) is not None


def reachable_models(schema: dict, op: dict) -> set[str]:
    """Names of the component schemas an operation's request and responses refer to."""
    components = schema["components"]["schemas"]
    seen: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in seen and name not in FRAMEWORK_SCHEMAS:
                    seen.add(name)
                    walk(components[name])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(op.get("requestBody", {}))
    walk(op.get("responses", {}))
    return seen


def enum_values(node) -> list:
    if isinstance(node, dict):
        return list(node.get("enum", [])) + [v for x in node.values() for v in enum_values(x)]
    if isinstance(node, list):
        return [v for x in node for v in enum_values(x)]
    return []


def test_schema_is_built_and_has_the_endpoints(schema):
    ops = {(m, p) for m, p, _ in operations(schema)}
    assert ("POST", "/v1/score") in ops and ("POST", "/get_reward") in ops, sorted(ops)
    assert len(ops) >= 10


def test_every_operation_has_its_section(schema, doc):
    missing = [f"{m} {p}" for m, p, _ in operations(schema) if section(doc, m, p) is None]
    assert not missing, f"docs/api.md has no heading naming {missing}"


def test_every_status_code_and_parameter_is_in_its_section(schema, doc):
    problems = []
    for method, path, op in operations(schema):
        text = section(doc, method, path) or ""
        for code in op.get("responses", {}):
            if not re.search(rf"\b{code}\b", text):
                problems.append(f"{method} {path}: status {code}")
        for param in op.get("parameters", []):
            if f"`{param['name']}`" not in text:
                problems.append(f"{method} {path}: {param['in']} parameter {param['name']}")
    assert not problems, f"not in their section of docs/api.md: {problems}"


def test_every_field_of_every_model_is_documented(schema, doc):
    """Each field in backticks: the error body's under "Errors", every other model's in the
    section of an endpoint that takes or returns it."""
    components = schema["components"]["schemas"]
    users: dict[str, list[str]] = {}  # model -> sections of the operations that reach it
    for method, path, op in operations(schema):
        for model in reachable_models(schema, op):
            users.setdefault(model, []).append(section(doc, method, path) or "")
    assert {"ScoreRequest", "ScoreOptionsIn", "ScoreResult", "GraphStepOut"} <= set(users)
    assert set(ERROR_MODELS) <= set(users)
    errors = heading_section(doc, "Errors")
    assert errors, "docs/api.md needs an Errors section"
    missing = sorted(
        f"{model}.{name}"
        for model, texts in users.items()
        for name in components[model].get("properties", {})
        if not any(
            documents_field(text, name)
            for text in ([errors] if model in ERROR_MODELS else texts)
        )
    )
    assert not missing, f"fields not named (in backticks) in their docs/api.md section: {missing}"


def test_every_enum_value_is_documented(schema, doc):
    components = schema["components"]["schemas"]
    values = {
        v
        for _, _, op in operations(schema)
        for model in reachable_models(schema, op)
        for v in enum_values(components[model])
    }
    assert "expert" in values
    missing = sorted(v for v in values if f'"{v}"' not in doc)
    assert not missing, f"enum values not in docs/api.md: {missing}"


def test_routes_outside_the_schema_are_documented_too(app, doc):
    """/score and /update are served but left out of the schema."""
    hidden = [r for r in app.routes if isinstance(r, APIRoute) and not r.include_in_schema]
    assert hidden
    missing = [r.path for r in hidden if f"`{r.path}`" not in doc
               and not any(mentions_operation(doc, m, r.path) for m in r.methods)]
    assert not missing, f"served but not in docs/api.md: {missing}"


def markdown_files() -> list[Path]:
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        out += [Path(root) / f for f in files if f.endswith(".md")]
    return out


def test_docs_link_nothing_outside_the_repository():
    """Users never see what lies beside the repository; its docs carry the contract."""
    outside = []
    files = markdown_files()
    assert DOC in files
    for f in files:
        text = f.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-zA-Z][\w+.-]*:|#", target):  # URLs, anchors
                continue
            resolved = (f.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(REPO):
                outside.append(f"{f.relative_to(REPO)}: {target}")
        if "../shared" in text:
            outside.append(f"{f.relative_to(REPO)}: mentions ../shared")
    assert not outside, f"links leaving the repository: {outside}"
    assert "(docs/api.md)" in (REPO / "README.md").read_text(), "README links the API doc"
