"""Start and stop a real `flowfield serve` process for one experiment run.

The trainer must be a plain HTTP client of the service, as a user's trainer is, so the
experiment runs the service as a subprocess on 127.0.0.1 and talks to it only through
`flowfield-client`. Each run gets a fresh checkpoint directory (flow version 0, no state from
an earlier run) and its own copy of the start policy, so a run cannot disturb another and
files rebuilt in the repository during a long experiment cannot change a run midway.

The launcher itself is flowfield.live_server (shared with the benchmark and the tests); this
module keeps the experiments' constructor. The library never imports the service package; it
only runs `python -m service.cli serve`.
"""

from __future__ import annotations

from pathlib import Path

from flowfield import live_server
from flowfield.live_server import ServiceError, free_port

__all__ = ["ServiceError", "ServiceProcess", "free_port"]


class ServiceProcess(live_server.ServiceProcess):
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
        self.model_path = Path(model_path)
        self.flow_path = Path(flow_path)
        super().__init__(
            Path(workdir),
            args=["--host", "127.0.0.1"],
            # the policy and flow first: `settings` may override them, as before
            settings={
                "model_path": self.model_path,
                "flow_path": self.flow_path,
                **(settings or {}),
            },
            threads=threads,
            log_path=Path(workdir) / "service.log",
            log_mode="a",
            # an inherited Redis URL would share the queue and version pointer between runs
            unset=("FLOWFIELD_REDIS_URL", "FLOWFIELD_CONFIG"),
            ready_timeout=ready_timeout,
            stop_timeout=stop_timeout,
        )
