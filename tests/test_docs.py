"""The README's settings table is the one generated from Settings, and its commands exist."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_settings_table_is_current():
    table = subprocess.run([sys.executable, "scripts/settings_table.py"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert table in (REPO / "README.md").read_text(), "run scripts/settings_table.py"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    assert "flowfield serve" in readme


def test_cli_lists_its_commands():
    out = subprocess.run([sys.executable, "-m", "service.cli", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for cmd in ("serve", "learn", "fit", "bench"):
        assert cmd in out


def test_method_doc_maps_every_setting():
    """docs/method.md's Settings table names every FLOWFIELD_* setting (README is generated
    from the same Settings)."""
    from service.settings import Settings

    text = (REPO / "docs" / "method.md").read_text()
    table = text[text.index("## Settings"):]
    missing = [n for n in Settings.model_fields if f"`FLOWFIELD_{n.upper()}`" not in table]
    assert not missing, f"docs/method.md#settings does not name: {missing}"


def test_code_and_docs_cite_the_method_doc_not_design_notes():
    """Users see the repository only: comments, help texts and docs cite docs/method.md or
    the papers, never design notes kept beside it."""
    notes = ("RLFR" + ".md", "REWARDFLOW" + ".md")
    found = []
    for path in REPO.rglob("*"):
        parts = path.relative_to(REPO).parts
        if not path.is_file() or parts[0] in {".git", "runs", "build", "dist", ".venv"}:
            continue
        if any(p.endswith(".egg-info") or p == "__pycache__" for p in parts):
            continue
        if path.suffix not in {".py", ".md", ".toml", ".txt", ".sh", ".yml", ".yaml", ".cfg"}:
            continue
        text = path.read_text(errors="replace")
        found += [f"{path.relative_to(REPO)}: {n}" for n in notes if n in text]
    assert not found, found
