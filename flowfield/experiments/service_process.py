"""Start and stop a real `flowfield serve` process for one experiment run.

The trainer must be a plain HTTP client of the service, as a user's trainer is, so the
experiment runs the service as a subprocess on 127.0.0.1 and talks to it only through
`flowfield-client`. Each run gets a fresh checkpoint directory (flow version 0, no state from
an earlier run) and its own copy of the start policy, so a run cannot disturb another and
files rebuilt in the repository during a long experiment cannot change a run midway.

The library never imports the service package; it only runs `python -m service.cli serve`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger("flowfield.experiments")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceError(RuntimeError):
    """The service subprocess did not come up (its log is in the message)."""


class ServiceProcess:
    """A `flowfield serve` subprocess bound to a free loopback port.

    Args:
        workdir: directory for the checkpoint dir and the log (created if missing).
        model_path: policy directory the service loads at start (FLOWFIELD_MODEL_PATH).
        flow_path: initial flow checkpoint (FLOWFIELD_FLOW_PATH).
        settings: more FLOWFIELD_* settings, by name without the prefix (e.g. learner_batch).
        threads: torch CPU threads of the service (the trainer keeps the other cores).

    Use as a context manager: the process is started on enter and stopped (SIGTERM, then
    SIGKILL after `stop_timeout`) on exit.
    """

    def __init__(
        self,
        workdir: Path,
        model_path: Path,
        flow_path: Path,
        settings: dict[str, object] | None = None,
        threads: int = 1,
        ready_timeout: float = 180.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.model_path = Path(model_path)
        self.flow_path = Path(flow_path)
        self.settings = dict(settings or {})
        self.threads = threads
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self.url = ""
        self.log_path = self.workdir / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "FLOWFIELD_CHECKPOINT_DIR": str(self.workdir / "checkpoints"),
            "FLOWFIELD_MODEL_PATH": str(self.model_path),
            "FLOWFIELD_FLOW_PATH": str(self.flow_path),
            "FLOWFIELD_THREADS": str(self.threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
        # an inherited Redis URL would share the queue and version pointer between runs
        env.pop("FLOWFIELD_REDIS_URL", None)
        env.pop("FLOWFIELD_CONFIG", None)
        for key, value in self.settings.items():
            env[f"FLOWFIELD_{key.upper()}"] = str(value)
        return env

    def start(self, attempts: int = 3) -> ServiceProcess:
        """Start and wait for /readyz; retries on a fresh port if the first one was taken."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        last: Exception | None = None
        for _ in range(attempts):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            with open(self.log_path, "ab") as logf:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                     "--port", str(self.port)],
                    env=self.env(),
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                )
            try:
                self._wait_ready()
            except ServiceError as e:
                last = e
                self.stop()
                if "address already in use" not in str(e).lower():
                    raise
                continue
            self.start_seconds = time.monotonic() - t0
            log.debug("service ready at %s in %.1fs", self.url, self.start_seconds)
            return self
        raise ServiceError(f"service did not start after {attempts} attempts: {last}")

    def _wait_ready(self) -> None:
        from flowfield_client import NO_RETRY, FlowfieldClient

        deadline = time.monotonic() + self.ready_timeout
        with FlowfieldClient(self.url, retry=NO_RETRY, timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise ServiceError(
                        f"flowfield serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                if client.health().ok:
                    return
                time.sleep(0.2)
        raise ServiceError(f"flowfield serve not ready in {self.ready_timeout:.0f}s:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM (the service drains), SIGKILL if it does not exit in time."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
