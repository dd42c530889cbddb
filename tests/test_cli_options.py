"""config_command: a typer command whose options are a config dataclass's fields."""

from __future__ import annotations

from dataclasses import dataclass

import typer
from typer.testing import CliRunner

from flowfield.cli_options import Outputs, config_command, opt


@dataclass(frozen=True)
class Demo:
    """A demo command.

    Not shown in --help (only the first paragraph is)."""

    rounds: int = opt(4, "measured rounds")
    rate: float = opt(0.5, "a rate")
    timesteps: tuple[float, ...] = opt((0.8,), "comma-separated timesteps")
    http: bool = opt(True, "also over HTTP")
    dtype: str | None = opt(None, "float32 or bfloat16")

    def check(self) -> None:
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")


def _app(seen: list) -> typer.Typer:
    app = typer.Typer()
    app.command()(config_command(Demo, lambda cfg, out: seen.append((cfg, out)),
                                 {"json": "numbers here", "markdown": "a section here"}))
    return app


def test_fields_become_options_and_values_arrive_typed(tmp_path):
    seen: list = []
    args = ["--rounds", "2", "--rate", "0.25", "--timesteps", "0.5,0.9", "--no-http",
            "--dtype", "bfloat16", "--json", str(tmp_path / "x.json")]
    result = CliRunner().invoke(_app(seen), args)
    assert result.exit_code == 0, result.output
    cfg, out = seen[0]
    assert cfg == Demo(rounds=2, rate=0.25, timesteps=(0.5, 0.9), http=False, dtype="bfloat16")
    assert out == Outputs(json=tmp_path / "x.json")


def test_defaults_help_and_usage_errors():
    seen: list = []
    assert CliRunner().invoke(_app(seen), []).exit_code == 0
    assert seen[0] == (Demo(), Outputs())
    help_text = CliRunner().invoke(_app(seen), ["--help"]).output
    assert "A demo command." in help_text and "Not shown" not in help_text
    assert "measured rounds" in help_text and "--no-http" in help_text and "--markdown" in help_text
    bad = CliRunner().invoke(_app(seen), ["--rounds", "0"])
    assert bad.exit_code == 2 and "rounds must be >= 1" in bad.output
    bad = CliRunner().invoke(_app(seen), ["--timesteps", "0.5,x"])
    assert bad.exit_code == 2 and "comma-separated timesteps" in bad.output
    assert len(seen) == 1  # neither bad call ran the command
