"""The `flowfield` command: the library's commands (fit, ...) plus serve, learn and bench.

The console script points here, so the library package never imports the service.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import typer
import uvicorn

from flowfield.bench.cli import bench_app  # stdlib + typer only; torch loads when it runs
from flowfield.cli import app
from flowfield.cli_options import fail


def _exit_drained(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT handler installed before uvicorn starts. uvicorn catches the signal,
    drains, restores the handlers it found (this one) and raises the signal again, which
    lands here: exit 0, a clean stop, instead of the default action's death by signal (-15)
    that supervisors and tests would read as a kill. Before uvicorn runs it just exits."""
    raise SystemExit(0)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app when its graceful shutdown begins.

    uvicorn waits `timeout_graceful_shutdown` seconds for requests in flight, then cancels
    them (a plain-text 500) and only then runs the app's shutdown. So the scheduler is told
    at the start: it drains for `drain_s` (the graceful timeout minus a margin) and answers
    what is left 503 `shutting_down` before uvicorn would cancel anything.
    """

    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s

    async def shutdown(self, sockets=None) -> None:
        begin_drain(self.config.app, self.drain_s)
        await super().shutdown(sockets)


def begin_drain(app, drain_s: float) -> None:
    """Not ready any more (/readyz answers 503), and the scheduler drains for drain_s."""
    state = getattr(getattr(app, "state", None), "flowfield", None)
    if state is None:  # start-up did not get that far
        return
    state.ready = False
    if state.scheduler is not None:
        state.scheduler.drain(drain_s)


@app.command()
def serve(
    host: str = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default 8000)"),
    model: Path = typer.Option(None, help="policy directory (default: the bundled demo policy)"),
    flow: Path = typer.Option(None, help="initial flow checkpoint (default: the demo flow)"),
    redis_url: str = typer.Option(None, help="Redis URL for the durable update queue"),
    no_learner: bool = typer.Option(
        False, "--no-learner", help="do not train in this process"
    ),
    log_level: str = typer.Option(None, help="DEBUG, INFO, WARNING"),
    dtype: str = typer.Option(
        None,
        help="float32, bfloat16 or auto (bf16 where it measures faster); default: bfloat16 on "
        "cuda, float32 on cpu",
    ),
    encoder_name: str = typer.Option(
        None,
        help="the encoder's name in responses (FLOWFIELD_MODEL_NAME; default: \"name\" in "
        "the model directory's flowfield.json, else the folder name)",
    ),
) -> None:
    """Start the reward service (uvicorn). SIGTERM drains in-flight requests, then exits.

    Scoring still running FLOWFIELD_SHUTDOWN_TIMEOUT_S - FLOWFIELD_DRAIN_MARGIN_S seconds
    after SIGTERM is answered 503 shutting_down; the process exits soon after.
    """
    from service.app import create_app
    from service.http import server_options
    from service.logs import setup_logging
    from service.preflight import startup_problem
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
            "dtype": dtype,
            "model_name": encoder_name,
        }.items()
        if v is not None
    }
    if no_learner:
        overrides["learner"] = False
    settings = Settings(**overrides)
    problem = startup_problem(
        Path(settings.model_path), Path(settings.flow_path), settings.layer_fractions,
        flow_given=flow is not None or "FLOWFIELD_FLOW_PATH" in os.environ,
    )
    if problem:
        raise fail(problem)
    setup_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        # the service writes its own JSON access line per request (service/app.py's
        # RequestContext: request id, no query string); uvicorn's would be a second one
        access_log=False,
        # h11 with header size and time limits, connection and keep-alive limits
        **server_options(settings),
    )
    drain_s = max(0.0, settings.shutdown_timeout_s - settings.drain_margin_s)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_drained)
    DrainingServer(config, drain_s).run()


@app.command()
def learn() -> None:
    """Run the stand-alone learner (needs FLOWFIELD_REDIS_URL); one trains at a time."""
    from service.logs import setup_logging
    from service.settings import Settings
    from service.updates.run_learner import run_learner

    settings = Settings()
    setup_logging(settings.log_level)
    run_learner(settings)


app.add_typer(bench_app, name="bench")  # flowfield bench [score] | update | graph


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
