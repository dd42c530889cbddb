"""Real HTTP servers for the client tests: the flowfield service in a subprocess, and a small
flaky proxy in a thread that fails on cue (status codes, dropped connections) in front of it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from live_server import REPO, Server, free_port  # noqa: F401 - free_port: re-exported

CLIENT_SRC = REPO / "clients" / "flowfield-client" / "src"  # the client package's source
DEMO_POLICY = str(REPO / "flowfield" / "demo" / "assets" / "policy")


def wrong_answer(text: str) -> str:
    """A demo-task solution with the answer's first digit off by one (the verifier rejects it)."""
    head, _, ans = text.rpartition("A:")
    return f"{head}A:{(int(ans[0]) + 1) % 10}{ans[1:]}"


class FlowfieldServer(Server):
    """`flowfield serve` on a free port: the tests' live server (tests/live_server.py), with
    a longer wait for readiness and a few helpers of the client tests."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None, name: str = "ff") -> None:
        super().__init__(tmp, env, name=name, ready_timeout=120.0)

    def flow(self) -> dict[str, Any]:
        return httpx.get(self.url + "/v1/flow", timeout=10).json()

    def metric(self, name: str, **labels: str) -> float:
        """A Prometheus sample summed over the label sets that match `labels` (0 if none)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def wait_quiet(self, timeout: float = 60.0, stable_s: float = 1.5) -> dict[str, Any]:
        """Wait until nothing is pending and the flow version has not moved for stable_s."""
        deadline = time.time() + timeout
        last = self.flow()
        since = time.time()
        while time.time() < deadline:
            time.sleep(0.2)
            cur = self.flow()
            if cur["flow_version"] != last["flow_version"] or cur["pending"]:
                since = time.time()
            last = cur
            if not cur["pending"] and time.time() - since >= stable_s:
                return cur
        raise TimeoutError(f"service not quiet in {timeout}s: {last}")


@dataclass
class Seen:
    """One request the proxy received."""

    method: str
    path: str
    body: Any
    action: str
    at: float


class FlakyProxy:
    """An HTTP server on 127.0.0.1 that fails on cue, then forwards to `upstream`.

    `script` is consumed one action per request (requests whose path is not in `paths`, when
    given, skip the script):
      ("status", 503, {"Retry-After": "1"}): answer that status with a service-style error
      "drop": close the connection without answering (the upstream never sees the request)
      "forward_then_drop": forward to the upstream, then close without answering
      "forward": forward (what every request gets once the script is spent)
    """

    def __init__(
        self, upstream: str, script: Iterable[Any] = (), paths: Iterable[str] | None = None
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.script = list(script)
        self.paths = set(paths) if paths is not None else None
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=60)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def requests(self, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if path is None or s.path == path]

    def _next_action(self, path: str) -> Any:
        with self._lock:
            if self.paths is not None and path not in self.paths:
                return "forward"
            return self.script.pop(0) if self.script else "forward"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        n = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        action = self._next_action(h.path)
        name = action if isinstance(action, str) else f"status {action[1]}"
        with self._lock:
            self.seen.append(Seen(h.command, h.path, body, name, time.monotonic()))
        if isinstance(action, tuple):
            _, status, headers = action
            payload = json.dumps(
                {"error": {"code": "flaky", "message": f"injected {status}", "field": None,
                           "sample_id": None}}
            ).encode()
            self._send(h, status, payload, {"content-type": "application/json", **headers})
            return
        if action == "drop":
            h.close_connection = True
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("content-type",
                                                                         "authorization",
                                                                         "x-api-key")}
        resp = self._http.request(h.command, self.upstream + h.path, content=raw, headers=headers)
        if action == "forward_then_drop":
            h.close_connection = True
            return
        keep = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type",
                                                                        "retry-after")}
        self._send(h, resp.status_code, resp.content, keep)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._http.close()
