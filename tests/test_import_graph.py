"""The wheel's import graph (flowfield/ and service/, read with `ast`, local imports included):
no cycles between modules, the library never imports the service, and neither imports what
the wheel does not ship or depend on (research/, the client package, matplotlib)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flowfield", "service")
FORBIDDEN = ("research", "flowfield_client", "matplotlib")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path) -> set[str]:
    """Every module name `module` imports (absolute; `from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if path.name != "__init__.py":
                    package.pop()
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> the wheel's modules it imports, module -> everything it imports)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges, raw = {}, {}
    for module, path in modules.items():
        raw[module] = _imported(module, path)
        edges[module] = {r for r in map(resolve, raw[module]) if r and r != module}
    return edges, raw


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    edges, _ = _graph()
    assert len(edges) > 50  # the walk found the packages
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_library_never_imports_the_service():
    edges, _ = _graph()
    wrong = {m: sorted(t for t in targets if t.split(".")[0] == "service")
             for m, targets in edges.items() if m.split(".")[0] == "flowfield"}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_nothing_outside_the_wheel_is_imported():
    _, raw = _graph()
    wrong = {m: sorted(n for n in names if n.split(".")[0] in FORBIDDEN)
             for m, names in raw.items()}
    assert {m: n for m, n in wrong.items() if n} == {}
