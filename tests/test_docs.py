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
