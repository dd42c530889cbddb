"""Print the README's settings table from service.settings.Settings (the single source)."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def table() -> str:
    rows = ["| variable | default | what it does |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = default.relative_to(REPO) if default.is_absolute() else default
        if isinstance(default, tuple):
            default = list(default)
        rows.append(f"| `FLOWFIELD_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
