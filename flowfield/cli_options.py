"""Small pieces the `flowfield` commands share (fit / eval, bench, experiment): the one-line
user error and comma-separated option values."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

T = TypeVar("T")


def fail(message: str) -> typer.Exit:
    """Print a one-line error for the user and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def comma_separated(text: str, kind: Callable[[str], T], what: str) -> tuple[T, ...]:
    """"0.25,0.5" -> (0.25, 0.5) with `kind` (float, int); blank items are skipped. A bad
    item is a usage error: "expected comma-separated <what>, got '...'"."""
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated {what}, got {text!r}") from None
