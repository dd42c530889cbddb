"""Running a typer command function as a research NAME's `main(argv)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import typer
from typer.main import get_command


def run_command(function: Callable[..., None], argv: Sequence[str], name: str) -> int:
    """Parse `argv` for the typer command `function` and run it, as `python -m research NAME`;
    returns the exit code (0, 2 on a usage error, a command's own)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(function)
    try:
        get_command(app).main(args=list(argv), prog_name=f"python -m research {name}")
    except SystemExit as e:  # click's standalone mode always exits
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
