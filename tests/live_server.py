"""Run the real service (uvicorn, `flowfield serve`) in a subprocess for HTTP tests (shared by
every test folder: tests/ is on sys.path through its conftest).

The launcher is the library's (flowfield.live_server.ServiceProcess); `Server` only sets the
tests' defaults: a log and checkpoint directory per name in `tmp`, one torch thread, started
and ready on construction."""

from __future__ import annotations

from pathlib import Path

import httpx

from flowfield.live_server import ServiceProcess, free_port

REPO = Path(__file__).resolve().parents[1]

__all__ = ["REPO", "Server", "free_port"]


class Server(ServiceProcess):
    def __init__(
        self,
        tmp: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        name: str = "server",
        *,
        port: int | None = None,
        ready_timeout: float = 90.0,
    ) -> None:
        super().__init__(
            tmp,
            env,
            args or [],
            name=name,
            port=port,
            checkpoint_dir=tmp / f"checkpoints-{name}",
            cwd=REPO,
            ready_timeout=ready_timeout,
        )
        self.start()

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)
