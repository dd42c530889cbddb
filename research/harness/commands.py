"""The parts of `python -m research rlfr | rewardflow` (and their report commands) that
do not depend on the experiment: logging, up-front checks, the output files, and rebuilding
the tables from a results JSON."""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from flowfield.cli_options import comma_separated, fail

Results = dict[str, Any]

# the output options every experiment command offers (defaults inside its --out folder)
JsonOption = Annotated[
    Path | None, typer.Option("--json", help="results JSON (default OUT/results.json)")
]
PlotOption = Annotated[
    Path | None, typer.Option(help="learning-curve PNG (default OUT/curves.png)")
]
MarkdownOption = Annotated[Path | None, typer.Option(help="markdown tables (default OUT/table.md)")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="log every policy update")]
NOISY_LOGGERS = ("httpx", "httpcore", "urllib3", "filelock", "matplotlib")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def parse_ints(text: str | None) -> tuple[int, ...] | None:
    return None if text is None else comma_separated(text, int, "integers")


def parse_names(text: str | None) -> tuple[str, ...] | None:
    """"a, b" -> ("a", "b"); None (the preset's) for no value or "all"."""
    if not text or text == "all":
        return None
    return tuple(x.strip() for x in text.split(",") if x.strip())


def run_experiment_command(
    make_config: Callable[[], Any],
    describe: Callable[[Any], str],
    run: Callable[[Any, Path], Results],
    markdown_table: Callable[[Results], str],
    plot_curves: Callable[[Results, Path], None],
    *,
    out: Path,
    json_out: Path | None,
    plot: Path | None,
    markdown: Path | None,
    verbose: bool,
) -> None:
    """Settings, checks, the runs (`run(cfg, json_path)`), then the table and plot files.

    A SIGTERM (kill, a job scheduler) unwinds like Ctrl-C, so the `flowfield serve`
    subprocesses are stopped by their context managers instead of being left running."""
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = make_config()
    except ValueError as e:
        raise fail(str(e)) from None
    missing = [m for m in ("matplotlib", "flowfield_client") if importlib.util.find_spec(m) is None]
    if missing:  # found out now, not after the last run
        raise fail(f"missing {', '.join(missing)}: pip install matplotlib "
                   "-e clients/flowfield-client (or the project's dev extra)")
    json_path = json_out or out / "results.json"
    plot_path = plot or out / "curves.png"
    md_path = markdown or out / "table.md"
    typer.echo(f"{describe(cfg)} -> {out}", err=True)
    from flowfield_client import FlowfieldError

    try:
        results = run(cfg, json_path)
    except (OSError, ValueError, RuntimeError, FlowfieldError) as e:
        # e.g. a score option the service refuses (422): the runs so far are in the JSON
        raise fail(f"{type(e).__name__}: {e}") from None
    table = markdown_table(results)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(table)
    plot_curves(results, plot_path)
    typer.echo(table)
    typer.echo(f"wrote {json_path}, {plot_path}, {md_path} ({results['seconds']:.0f}s)")


def rebuild_report(
    results_json: Path,
    summarize: Callable[[Results], Any],
    markdown_table: Callable[[Results], str],
    plot_curves: Callable[[Results, Path], None],
    *,
    plot: Path | None,
    markdown: Path | None,
) -> None:
    """The tables (and plot) of a results JSON, without running anything."""
    try:
        results = json.loads(results_json.read_text())
    except (OSError, ValueError) as e:
        raise fail(f"cannot read {results_json}: {e}") from None
    results["summary"] = summarize(results)
    table = markdown_table(results)
    typer.echo(table)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(table)
        typer.echo(f"wrote {markdown}")
    if plot is not None:
        plot_curves(results, plot)
        typer.echo(f"wrote {plot}")


def report_command_for(
    experiment: str, doc: str, parts: Callable[[], tuple[Callable, Callable, Callable]]
) -> Callable[..., None]:
    """The `report` command of an experiment: `parts()` imports its (summarize,
    markdown_table, plot_curves) when the command runs."""

    def command(
        results_json: Path = typer.Argument(
            ..., help=f"results JSON of `python -m research {experiment}`"
        ),
        plot: Path = typer.Option(None, help="write the learning curves here (PNG)"),
        markdown: Path = typer.Option(None, help="write the markdown tables here"),
    ) -> None:
        rebuild_report(results_json, *parts(), plot=plot, markdown=markdown)

    command.__doc__ = doc
    return command
