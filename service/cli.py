"""The `flowfield` command: the library's commands (fit, ...) plus serve, learn and bench.

The console script points here, so the library package never imports the service.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import typer
import uvicorn

from flowfield.cli import app
from service.bench import bench_command  # stdlib + typer only; torch loads when it runs


def _exit_drained(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT handler installed before uvicorn starts. uvicorn catches the signal,
    drains, restores the handlers it found (this one) and raises the signal again, which
    lands here: exit 0, a clean stop, instead of the default action's death by signal (-15)
    that supervisors and tests would read as a kill. Before uvicorn runs it just exits."""
    raise SystemExit(0)


@app.command()
def serve(
    host: str = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default 8000)"),
    model: Path = typer.Option(None, help="policy directory (default: the bundled demo policy)"),
    flow: Path = typer.Option(None, help="initial flow checkpoint (default: the demo flow)"),
    redis_url: str = typer.Option(None, help="Redis URL for the durable update queue"),
    no_learner: bool = typer.Option(False, help="do not train in this process"),
    log_level: str = typer.Option(None, help="DEBUG, INFO, WARNING"),
) -> None:
    """Start the reward service (uvicorn). SIGTERM drains in-flight requests, then exits."""
    from service.app import create_app
    from service.logs import setup_logging
    from service.settings import Settings

    overrides = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "model_path": model,
            "flow_path": flow,
            "redis_url": redis_url,
            "log_level": log_level,
        }.items()
        if v is not None
    }
    if no_learner:
        overrides["learner"] = False
    settings = Settings(**overrides)
    setup_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=30,
        access_log=False,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_drained)
    uvicorn.Server(config).run()


@app.command()
def learn() -> None:
    """Run the stand-alone learner (needs FLOWFIELD_REDIS_URL); one trains at a time."""
    from service.logs import setup_logging
    from service.settings import Settings
    from service.updates.run_learner import run_learner

    settings = Settings()
    setup_logging(settings.log_level)
    run_learner(settings)


app.command("bench")(bench_command)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
