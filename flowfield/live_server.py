"""One launcher for a live `flowfield serve`: a subprocess on a free loopback port.

Used by everything that talks to the real service over HTTP: the benchmark (`flowfield bench`),
the experiments (a fresh service per run) and the tests' server helpers. It builds the
environment (FLOWFIELD_* settings, a checkpoint directory, torch threads), starts
`python -m service.cli serve`, writes its output to a log file, waits for GET /readyz to answer
200, and stops it with SIGTERM (the service drains), then SIGKILL if it does not exit in time.

Standard library only: the library never imports the service package (it only runs it), and
importing this module does not slow down `flowfield --help`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

# the folder holding the flowfield and service packages (the repository root in a checkout)
SOURCE_ROOT = Path(__file__).resolve().parents[1]

# urllib without proxies: a loopback service is never behind one
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceError(RuntimeError):
    """The service subprocess did not come up (its log is in the message)."""


class ServiceNotReady(ServiceError, TimeoutError):
    """The service subprocess is running but did not become ready in time."""


class ServiceProcess:
    """`flowfield serve` in a subprocess on 127.0.0.1.

    Args:
        workdir: directory for the default checkpoint dir and log (created if missing).
        env: environment variables set last, over everything else (raw names).
        args: extra arguments of `flowfield serve` (e.g. ["--host", "0.0.0.0"]).
        name: names the default log file, `{name}-{port}.log` in workdir.
        port: the port to bind; a free one when None (then a start that finds it taken
            retries on a fresh one, up to `attempts` times).
        settings: FLOWFIELD_* settings by name without the prefix (e.g. {"learner": "false"}).
        threads: torch CPU threads of the service (FLOWFIELD_THREADS).
        checkpoint_dir: FLOWFIELD_CHECKPOINT_DIR; `workdir / "checkpoints"` when None.
        log_path: where the service's stdout and stderr go; see `name` when None.
        log_mode: "w" to start the log afresh, "a" to append to it.
        unset: names removed from the inherited environment (before settings and env).
        cwd: working directory of the subprocess (None: this process's).
        ready_timeout: seconds to wait for /readyz.
        stop_timeout: seconds between SIGTERM and SIGKILL.
        attempts: starts to try when the chosen free port turns out to be taken.

    `start()` (or entering it as a context manager) starts the process and waits until it is
    ready; on failure the process is stopped and a ServiceError carrying the log is raised.
    `stop()` (or leaving the context) terminates it and returns its exit status.
    """

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        *,
        name: str = "server",
        port: int | None = None,
        settings: Mapping[str, object] | None = None,
        threads: int = 1,
        checkpoint_dir: Path | None = None,
        log_path: Path | None = None,
        log_mode: str = "w",
        unset: Sequence[str] = (),
        cwd: Path | None = None,
        ready_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        attempts: int = 3,
    ) -> None:
        self.workdir = Path(workdir)
        self.extra_env = dict(env or {})
        self.args = list(args)
        self.name = name
        self.fixed_port = port
        self.port = port or 0
        self.url = f"http://127.0.0.1:{self.port}" if port else ""
        self.settings = dict(settings or {})
        self.threads = threads
        self.checkpoint_dir = checkpoint_dir
        self._log_path = Path(log_path) if log_path is not None else None
        self.log_mode = log_mode
        self.unset = tuple(unset)
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.attempts = attempts
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    # ---- configuration ------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        if self._log_path is not None:
            return self._log_path
        return self.workdir / f"{self.name}-{self.port}.log"

    def env(self) -> dict[str, str]:
        """The subprocess's environment: this one's, less `unset`, plus the service's settings."""
        env = {k: v for k, v in os.environ.items() if k not in self.unset}
        env["FLOWFIELD_CHECKPOINT_DIR"] = str(self.checkpoint_dir or self.workdir / "checkpoints")
        env["FLOWFIELD_THREADS"] = str(self.threads)
        env["TOKENIZERS_PARALLELISM"] = "false"
        for key, value in self.settings.items():
            env[f"FLOWFIELD_{key.upper()}"] = str(value)
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port), *self.args]

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self, attempts: int | None = None) -> ServiceProcess:
        """Start and wait for /readyz; on a taken free port, retry on a fresh one (up to
        `attempts` starts, default the constructor's)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        attempts = 1 if self.fixed_port else max(1, attempts or self.attempts)
        for attempt in range(attempts):
            if not self.fixed_port:
                self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            mode = self.log_mode if attempt == 0 else "a"  # a retry keeps the failed start's log
            with open(self.log_path, mode + "b") as log:  # the child keeps its own descriptor
                self.proc = subprocess.Popen(
                    self.command(),
                    cwd=self.cwd,
                    env=self.env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                self.wait_ready()
            except BaseException as e:
                self.stop()
                retry = isinstance(e, ServiceError) and attempt + 1 < attempts
                if retry and "address already in use" in str(e).lower():
                    continue
                raise
            self.start_seconds = time.monotonic() - t0
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll GET /readyz until it answers 200; ServiceError if the process exits first."""
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ServiceError(f"flowfield serve exited early ({code}):\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise ServiceNotReady(f"flowfield serve not ready in {timeout:.0f}s:\n{self.log_tail()}")

    def ready(self) -> bool:
        """Whether GET /readyz answers 200 now."""
        try:
            with _LOCAL.open(self.url + "/readyz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):  # HTTPError is a URLError
            return False

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int | None:
        """Send `sig` (SIGTERM: the service drains), SIGKILL if it does not exit in time.

        Returns the exit status (None if it was never started); calling it again is harmless.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start() if self.proc is None else self  # a started one is entered as is

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- the log ------------------------------------------------------------------------------

    def log(self) -> str:
        """Everything the service has written so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def log_tail(self, lines: int = 100) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
