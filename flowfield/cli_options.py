"""Small pieces the `flowfield` commands share (fit / eval, bench, experiment): the one-line
user error, comma-separated option values, and commands whose options are a config
dataclass's fields."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from inspect import Parameter
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import typer

KEYWORD_ONLY = Parameter.KEYWORD_ONLY

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


def opt(default: Any, help: str) -> Any:
    """A config dataclass field with its command-line help (see `config_command`)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Outputs:
    """Where a command writes what it measured (each None when not asked for)."""

    json: Path | None = None  # --json: all numbers
    markdown: Path | None = None  # --markdown: replace the command's section of this file
    workdir: Path | None = None  # --workdir: keep the run's files here


def config_command(
    cls: type,
    run: Callable[[Any, Outputs], None],
    outputs: Mapping[str, str] | None = None,
    doc: str | None = None,
) -> Callable[..., None]:
    """A typer command whose options are the fields of the dataclass `cls`, written once.

    Each field becomes `--field-name` with the field's default and `metadata["help"]` (see
    `opt`); booleans become `--x/--no-x`, tuples a comma-separated string. `outputs` names
    the `Outputs` fields the command offers, with their help. The command builds
    `cls(**fields)` (a ValueError from the dataclass, or from its `check()`, is a usage error)
    and calls `run(config, Outputs(...))`.
    """
    hints = get_type_hints(cls)
    params, tuples = [], {}
    for f in fields(cls):
        kind = hints[f.name]
        default = f.default
        if get_origin(kind) is tuple:
            tuples[f.name] = get_args(kind)[0]
            kind, default = str, ",".join(str(v) for v in default)
        elif get_origin(kind) in (Union, UnionType):  # X | None
            kind = next(a for a in get_args(kind) if a is not type(None))
        option = typer.Option(default, help=f.metadata.get("help", ""))
        params.append(Parameter(f.name, KEYWORD_ONLY, default=option, annotation=kind))
    names = {p.name for p in params}
    for name, help in (outputs or {}).items():
        option = typer.Option(None, f"--{name}", help=help)
        params.append(Parameter(f"out_{name}", KEYWORD_ONLY, default=option, annotation=Path))

    def command(**values: Any) -> None:
        config_values = {k: v for k, v in values.items() if k in names}
        for name, item in tuples.items():
            config_values[name] = comma_separated(config_values[name], item, name)
        try:
            config = cls(**config_values)
            if hasattr(config, "check"):
                config.check()
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        out = {k.removeprefix("out_"): v for k, v in values.items() if k.startswith("out_")}
        run(config, Outputs(**out))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = doc or (cls.__doc__ or "").split("\n\n")[0]  # its first paragraph
    command.__name__ = getattr(run, "__name__", "command")
    return command


def measuring_args(drop: Sequence[str]) -> list[str]:
    """This run's arguments (sys.argv) less the options in `drop` and their values (where
    output goes: --json, --workdir): the command a benchmark records reproduces its
    numbers, not one machine's paths."""
    out, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in drop:
            skip = "=" not in arg  # "--json PATH": drop PATH too
            continue
        out.append(arg)
    return out
