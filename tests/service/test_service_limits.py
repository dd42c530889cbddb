"""Limits on everything a client controls, each a setting with a clear error, over real HTTP
(rows 2, 4, 6 and 7 of the issue, and its minor findings): header size and count, the time to
send headers, bytes of bodies in flight, the scoring time budget; /v1/flow without Redis, the
warning for an open score scope, /metrics without host names, the timestep bounds in OpenAPI.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from event_loop_support import HealthProbe
from live_server import Server, free_port
from service_helpers import demo_sample

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Small limits, so that the tests are quick: 1 s for headers, 16 MiB of bodies in flight."""
    srv = Server(
        tmp_path_factory.mktemp("limits"),
        env={
            "FLOWFIELD_LEARNER": "false",
            "FLOWFIELD_HEADER_READ_TIMEOUT_S": "1",
            "FLOWFIELD_MAX_INFLIGHT_BODY_BYTES": str(16 * 1024 * 1024),
        },
    )
    yield srv
    srv.stop()


def _connect(srv: Server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _read_all(s: socket.socket, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def _closed_by_server(s: socket.socket, timeout: float) -> bytes | None:
    """What the server sent before closing the connection within `timeout`, or None if it is
    still open then."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return out


def _rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1))


# ---- headers (row 2) --------------------------------------------------------------------------


def test_a_32mib_header_gets_431_without_stalling_healthz(server):
    # row 2: one 256 MiB header value stalled every endpoint 47 s (64 MiB: 5.7 s) under
    # httptools, which bounds no header; h11 refuses the block past FLOWFIELD_MAX_HEADER_BYTES
    s = _connect(server)
    with HealthProbe(server.url) as probe:
        t0 = time.perf_counter()
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"a" * (1 << 20)
            for _ in range(32):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: what should happen
        answer = _read_all(s)
        took = time.perf_counter() - t0
    s.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"16384-byte limit" in answer
    assert took < 10, took
    probe.check("a 32 MiB header")


def test_headers_over_the_size_or_count_limit_in_one_read_get_a_json_431(server):
    with server.client() as c:
        r = c.get("/healthz", headers={"x-big": "a" * 20_000})
        assert r.status_code == 431, r.text
        err = r.json()["error"]
        assert err["code"] == "headers_too_large" and err["field"] == "headers"
        assert "16384" in err["message"] and r.headers["x-request-id"] == err["request_id"]
    with server.client() as c:
        r = c.get("/healthz", headers={f"x-h{i}": "1" for i in range(150)})
        assert r.status_code == 431, r.text
        assert "the limit is 100" in r.json()["error"]["message"]
    with server.client() as c:  # within both limits
        assert c.get("/healthz", headers={f"x-h{i}": "1" for i in range(50)}).status_code == 200


# ---- the time to send headers (row 6) ---------------------------------------------------------


def test_connections_that_drip_or_never_send_headers_are_closed(server):
    # row 6: 200 connections dripping a header byte every 5 s and 2,000 that never send a byte
    # were all still open after 60 s. Here FLOWFIELD_HEADER_READ_TIMEOUT_S is 1 s.
    silent = [_connect(server) for _ in range(300)]
    drips = [_connect(server) for _ in range(40)]
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    deadline = time.monotonic() + 2.5
    k = 0
    while time.monotonic() < deadline:  # one byte per connection every ~0.25 s
        for d in drips:
            with contextlib.suppress(OSError):
                d.sendall(request[k : k + 1])
        k += 1
        time.sleep(0.25)
    for d in drips:  # closed, with a plain 408 as part of a request came
        got = _closed_by_server(d, timeout=2)
        assert got is not None, "a dripping connection is still open"
        assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:100]
    for s in silent:  # closed without a word
        assert _closed_by_server(s, timeout=2) == b"", "a silent connection is still open"
    for s in silent + drips:
        s.close()
    with server.client() as c:  # and new clients are served
        assert c.get("/healthz").status_code == 200


# ---- bodies in flight (row 7) -----------------------------------------------------------------


def _start_upload(srv: Server, size: int, send: int) -> socket.socket:
    s = _connect(srv)
    s.sendall(
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode()
    )
    s.sendall(b" " * send)
    return s


def test_stalled_uploads_cannot_hold_more_than_the_inflight_budget(server):
    # row 7: 100 concurrent 8 MB bodies, each missing its last byte, held +830 MB until their
    # 408s. With FLOWFIELD_MAX_INFLIGHT_BODY_BYTES (16 MiB here) a body past the budget is
    # refused at once: 503 busy, Retry-After, connection closed.
    pid = server.proc.pid
    before = _rss_kb(pid)
    size = 8 * 1024 * 1024 - 16
    held = [_start_upload(server, size, size - 1) for _ in range(2)]  # the budget, all but 2 B
    time.sleep(0.5)
    refused = []
    for _ in range(20):
        s = _start_upload(server, size, 0)
        refused.append(_read_all(s, timeout=5))
        s.close()
    for answer in refused:
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"retry-after: 1" in answer.lower() and b'"code":"busy"' in answer
    grew_mb = (_rss_kb(pid) - before) / 1024
    assert grew_mb < 60, f"the server grew {grew_mb:.0f} MB"
    for s in held:
        s.close()
    time.sleep(0.5)
    with server.client() as c:  # the budget is given back
        r = c.post("/v1/score", json={"samples": [demo_sample(0)]})
        assert r.status_code == 200, r.text


# ---- the scoring time budget (row 4) ----------------------------------------------------------


def test_a_request_over_the_calibrated_time_budget_is_refused(server):
    # row 4: 90 samples x 120 ids, 64 noise draws, 16 timesteps: cost 33.2M, under
    # max_request_cost, yet ~15-20 CPU-minutes. The budget in seconds, calibrated at start-up
    # (FLOWFIELD_MAX_REQUEST_SECONDS, 60 s), refuses it.
    body = {
        "samples": [
            {"id": f"s{i}", "prompt_ids": [3 + i % 7] * 60, "response_ids": [4 + i % 5] * 60}
            for i in range(90)
        ],
        "options": {"noise_draws": 64, "timesteps": [0.05 + 0.06 * i for i in range(16)]},
    }
    assert len(json.dumps(body)) < 45_000
    with server.client() as c:
        t0 = time.perf_counter()
        r = c.post("/v1/score", json=body)
        assert time.perf_counter() - t0 < 5
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "request_too_costly" and err["field"] == "options.noise_draws"
        assert "max_request_seconds" in err["message"]
        # the same samples with the default options fit
        del body["options"]
        assert c.post("/v1/score", json=body).status_code == 200
    assert '"calibration": {"encoder_us_per_token"' in server.log()


# ---- minor findings -----------------------------------------------------------------------------


def test_metrics_do_not_show_the_host_name(server):
    with server.client() as c:
        text = c.get("/metrics").text
    assert "flowfield_encoder_info{" in text
    assert socket.gethostname() not in text and "process=" not in text
    assert "flowfield_score_cancelled_units_total" in text


def test_openapi_bounds_timesteps_to_the_open_unit_interval(server):
    with server.client() as c:
        spec = c.get("/openapi.json").json()
    timesteps = spec["components"]["schemas"]["ScoreOptionsIn"]["properties"]["timesteps"]
    items = next(s for s in timesteps["anyOf"] if s.get("type") == "array")["items"]
    assert items["exclusiveMinimum"] == 0 and items["exclusiveMaximum"] == 1
    with server.client() as c:  # the documented error stays the library's
        r = c.post("/v1/score", json={"samples": [demo_sample(0)], "options": {"timesteps": [1]}})
        assert r.json()["error"]["code"] == "invalid_option"


def test_only_an_update_key_on_a_public_address_logs_that_scoring_is_open(tmp_path):
    srv = Server(
        tmp_path,
        env={"FLOWFIELD_LEARNER": "false", "FLOWFIELD_UPDATE_API_KEY": "u-key"},
        args=["--host", "0.0.0.0"],
    )
    try:
        deadline = time.time() + 10
        while "only FLOWFIELD_UPDATE_API_KEY set" not in srv.log() and time.time() < deadline:
            time.sleep(0.1)
        assert "anyone who can reach 0.0.0.0" in srv.log() and "can score" in srv.log()
    finally:
        srv.stop()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_flow_answers_200_while_redis_is_down(tmp_path):
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(tmp_path)]
    redis = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = None
    try:
        deadline = time.time() + 20
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            assert redis.poll() is None and time.time() < deadline, "redis did not start"
            time.sleep(0.1)
        srv = Server(tmp_path, env={"FLOWFIELD_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                                    "FLOWFIELD_LEARNER": "false",
                                    "FLOWFIELD_REDIS_PREFIX": "flow-down"})
        with srv.client() as c:
            up = c.get("/v1/flow").json()
            assert up["pending"] == 0 and up["pending_error"] is None
            redis.terminate()
            redis.wait(20)
            r = c.get("/v1/flow")
            assert r.status_code == 200, r.text
            down = r.json()
            assert down["pending"] is None and "unavailable" in down["pending_error"]
            assert down["flow_version"] == up["flow_version"] and down["queue_backend"] == "redis"
    finally:
        if srv is not None:
            srv.stop()
        if redis.poll() is None:
            redis.terminate()
            redis.wait(20)


def test_keep_alive_and_request_limits_are_the_settings():
    """The uvicorn options come from the settings (service/http.py)."""
    from service.http import GuardedH11Protocol, server_options
    from service.settings import Settings

    opts = server_options(Settings(max_header_bytes=4096, max_connections=7, keep_alive_s=3,
                                   header_read_timeout_s=2.5))
    assert issubclass(opts["http"], GuardedH11Protocol)
    assert opts["http"].header_timeout == 2.5 and opts["http"].max_header_bytes == 4096
    assert opts["h11_max_incomplete_event_size"] == 4096
    assert opts["limit_concurrency"] == 7 and opts["timeout_keep_alive"] == 3
