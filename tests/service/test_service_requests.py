"""Request handling over real HTTP against the real server (`flowfield serve`): which key the
write endpoints take, X-Request-ID, the access log, the body read timeout (408), and 405 (not
415) for a POST to a GET-only path."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from live_server import Server
from service_helpers import demo_sample

from service.app import create_app
from service.auth import open_update_warning, scope_keys
from service.settings import DEMO_ASSETS, Settings

KEY = "read-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEX32 = re.compile(r"[0-9a-f]{32}")
MAX_BODY = 65536


def _score_key_server(tmp_path_factory, name: str, **env: str):
    """A service with only a score key and no learner, plus `env`."""
    env = {"FLOWFIELD_SCORE_API_KEY": KEY, "FLOWFIELD_LEARNER": "false", **env}
    with Server(tmp_path_factory.mktemp(name), name=name, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """Only a score key, a small body limit and a short body read timeout."""
    yield from _score_key_server(tmp_path_factory, "keyed", FLOWFIELD_BODY_READ_TIMEOUT_S="1",
                                 FLOWFIELD_MAX_BODY_BYTES=str(MAX_BODY))


@pytest.fixture(scope="module")
def opted_in(tmp_path_factory):
    """Only a score key, with the update endpoints explicitly left open."""
    yield from _score_key_server(tmp_path_factory, "open", FLOWFIELD_OPEN_UPDATE_ENDPOINTS="true")


def log_lines(srv: Server) -> list[dict]:
    out = []
    for line in srv.log().splitlines():
        with contextlib.suppress(ValueError):  # a line that is not JSON
            out.append(json.loads(line))
    return out


def wait_for_lines(srv: Server, pred, n: int = 1, timeout: float = 5.0) -> list[dict]:
    """The JSON log lines that satisfy `pred`, once there are at least `n` of them."""
    deadline = time.time() + timeout
    while True:
        found = [x for x in log_lines(srv) if pred(x)]
        if len(found) >= n or time.time() > deadline:
            return found
        time.sleep(0.05)


def access_lines(srv: Server, rid: str, n: int = 1) -> list[dict]:
    return wait_for_lines(
        srv, lambda x: x.get("logger") == "flowfield.access" and x.get("request_id") == rid, n
    )


def raw_http(
    port: int, data: bytes, wait: float = 10.0, check_closed: bool = False
) -> tuple[int, dict, bytes, bool]:
    """Send bytes as written; read the answer. Returns (status, headers, body, closed): closed
    is whether the server closed the connection after the response (with `check_closed`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        closed = False
        if check_closed:
            s.settimeout(3)
            try:
                closed = s.recv(1) == b""
            except TimeoutError:
                closed = False
            except ConnectionResetError:
                closed = True
    return status, headers, body, closed


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["request_id"] == r.headers["x-request-id"]
    return err


# ---- which key the write endpoints take ------------------------------------------------------


@pytest.mark.parametrize(
    "score,update,opt_in,read,write,forbidden",
    [
        (None, None, False, [], [], None),
        (None, None, True, [], [], None),
        ("s", None, False, ["s"], ["s"], None),
        ("s", None, True, ["s"], [], None),
        (None, "u", False, [], ["u"], None),
        ("s", "u", False, ["s", "u"], ["u"], "s"),
        ("s", "u", True, ["s", "u"], ["u"], "s"),  # an update key makes the opt-in moot
    ],
)
def test_scope_keys_for_every_configuration(score, update, opt_in, read, write, forbidden):
    s = Settings(
        _env_file=None, score_api_key=score, update_api_key=update, open_update_endpoints=opt_in
    )
    assert scope_keys("score", s) == (read, None)
    assert scope_keys("update", s) == (write, forbidden)
    # no configuration leaves the writes open while the reads are protected, but the opt-in
    assert not (read and not write) or (opt_in and open_update_warning(s))


def test_write_endpoints_take_the_score_key_when_no_update_key_is_set(keyed):
    upd = {"samples": [demo_sample(0, reward=1.0)]}
    with keyed.client() as c:
        for path in ("/v1/update", "/update"):
            err = error_of(c.post(path, json=upd), 401)
            assert err["code"] == "unauthorized"
            assert error_of(c.post(path, json=upd, headers={"X-API-Key": "nope"}), 401)[
                "message"
            ] == "wrong API key"
            r = c.post(path, json=upd, headers=AUTH)
            assert r.status_code == 202, r.text
        assert error_of(c.post("/v1/policy", json={"path": "/nowhere"}), 401)
        err = error_of(c.post("/v1/policy", json={"path": "/nowhere"}, headers=AUTH), 422)
        assert err["code"] == "invalid_path"  # past the key check
        assert error_of(c.post("/v1/score", json={"samples": []}), 401)
        assert c.post("/v1/score", json={"samples": []}, headers=AUTH).status_code == 200
    assert not wait_for_lines(keyed, lambda x: x.get("level") == "WARNING"
                              and "open_endpoints" in x, timeout=0)


def test_open_update_endpoints_is_an_explicit_opt_in_and_warns(opted_in):
    with opted_in.client() as c:
        r = c.post("/v1/update", json={"samples": [demo_sample(0, reward=1.0)]})
        assert r.status_code == 202, r.text
        assert error_of(c.post("/v1/policy", json={"path": "/nowhere"}), 422)["code"] == (
            "invalid_path"
        )
        assert error_of(c.post("/v1/score", json={"samples": []}), 401)  # reads stay protected
    warnings = [x for x in log_lines(opted_in) if "open_endpoints" in x]
    assert len(warnings) == 1, opted_in.log()
    assert warnings[0]["level"] == "WARNING"
    assert warnings[0]["open_endpoints"] == ["/v1/update", "/update", "/v1/policy"]
    assert KEY not in opted_in.log()


# ---- X-Request-ID ----------------------------------------------------------------------------


def test_request_id_is_taken_from_the_request_and_returned(keyed):
    with keyed.client() as c:
        r = c.post("/v1/score", json={"samples": [demo_sample(0)]},
                   headers={**AUTH, "X-Request-ID": "trainer-step-7/a"})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "trainer-step-7/a"
        r = c.get("/healthz", headers={"X-Request-ID": "x" * 128})
        assert r.headers["x-request-id"] == "x" * 128
        err = error_of(c.post("/v1/score", json={}, headers={"X-Request-ID": "mine 1"}), 401)
        assert err["request_id"] == "mine 1"


@pytest.mark.parametrize(
    "value", [b"x" * 129, "caf\u00e9".encode(), b"tab\there", b"\xff\xfe", b""],
    ids=["too long", "not ascii", "tab", "not utf-8", "empty"],
)
def test_invalid_request_id_is_replaced_by_a_generated_one(keyed, value):
    req = b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + value + b"\r\n\r\n"
    status, headers, body, _ = raw_http(keyed.port, req)
    assert status == 404
    assert HEX32.fullmatch(headers["x-request-id"]), headers
    assert json.loads(body)["error"]["request_id"] == headers["x-request-id"]


def test_generated_request_ids_differ(keyed):
    with keyed.client() as c:
        ids = {c.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5 and all(HEX32.fullmatch(i) for i in ids)


@pytest.mark.parametrize(
    "method,path,kw,status,code",
    [
        ("GET", "/v1/nothing", {}, 404, "not_found"),
        ("GET", "/v1/score", {}, 405, "method_not_allowed"),
        ("POST", "/v1/score", {"content": b"{}", "headers": {"content-type": "text/plain"}},
         415, "unsupported_media_type"),
        ("POST", "/v1/score", {"json": {"samples": "x"}, "headers": AUTH}, 422,
         "invalid_request"),
        ("POST", "/v1/score", {"content": b"{" + b" " * MAX_BODY + b"}",
                               "headers": {"content-type": "application/json"}},
         413, "body_too_large"),
    ],
    ids=["404", "405", "415", "422", "413"],
)
def test_every_error_carries_the_request_id(keyed, method, path, kw, status, code):
    rid = f"err-{status}"
    headers = {"X-Request-ID": rid, **kw.pop("headers", {})}
    with keyed.client() as c:
        r = c.request(method, path, headers=headers, **kw)
    err = error_of(r, status)
    assert err["code"] == code
    assert r.headers["x-request-id"] == rid == err["request_id"]


def test_413_on_a_chunked_body_carries_the_request_id(keyed):
    def chunks():
        for _ in range(4):
            yield b" " * (MAX_BODY // 2)

    with keyed.client() as c:
        r = c.post("/v1/score", content=chunks(),
                   headers={"content-type": "application/json", "X-Request-ID": "chunked"})
    assert error_of(r, 413)["request_id"] == "chunked"


def test_log_lines_written_while_handling_carry_the_request_id(keyed):
    rid = "policy-reload-1"
    with keyed.client() as c:
        r = c.post("/v1/policy", json={"path": str(DEMO_ASSETS / "policy"), "revision": "r2"},
                   headers={**AUTH, "X-Request-ID": rid})
    assert r.status_code == 200, r.text
    access_lines(keyed, rid)
    mine = [x for x in log_lines(keyed) if x.get("request_id") == rid]
    loggers = {x["logger"] for x in mine}
    assert "flowfield.access" in loggers and len(loggers) >= 2, mine  # the reload logged too
    # lines outside any request carry no request id
    ready = [x for x in log_lines(keyed) if x.get("msg") == "flowfield ready"]
    assert ready and "request_id" not in ready[0]


# ---- access log ------------------------------------------------------------------------------


def test_one_access_line_per_request_without_the_query_string(keyed):
    body = {"query": ["Q:1+1\nA:2."]}
    with keyed.client() as c:
        r = c.post(f"/get_reward?strip_eos=false&api_key={KEY}", json=body,
                   headers={"X-Request-ID": "acc-1"})
        assert r.status_code == 200, r.text
        r = c.post("/get_reward?api_key=wrong-key-456", json=body,
                   headers={"X-Request-ID": "acc-2"})
        assert r.status_code == 401
        c.get("/healthz?x=1", headers={"X-Request-ID": "acc-3"})
    for rid, path, status, method in [("acc-1", "/get_reward", 200, "POST"),
                                      ("acc-2", "/get_reward", 401, "POST"),
                                      ("acc-3", "/healthz", 200, "GET")]:
        lines = access_lines(keyed, rid)
        assert len(lines) == 1, lines
        line = lines[0]
        assert (line["method"], line["path"], line["status"]) == (method, path, status)
        assert line["level"] == "INFO"
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert line["client"].startswith("127.0.0.1:")
    log = keyed.log()
    assert KEY not in log and "wrong-key-456" not in log and "api_key" not in log
    assert "HTTP/1.1\"" not in log  # no uvicorn access line


# ---- body read timeout -----------------------------------------------------------------------


def test_body_not_received_in_time_is_a_408_and_the_connection_closes(keyed):
    start = time.monotonic()
    req = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 1000\r\nX-Request-ID: slow-1\r\n\r\n" + b'{"samples": [')
    status, headers, body, closed = raw_http(keyed.port, req, check_closed=True)
    took = time.monotonic() - start
    assert status == 408, body
    assert 0.9 <= took < 8, took  # FLOWFIELD_BODY_READ_TIMEOUT_S=1
    err = json.loads(body)["error"]
    assert err["code"] == "body_timeout" and err["field"] == "body"
    assert err["request_id"] == headers["x-request-id"] == "slow-1"
    assert closed
    lines = access_lines(keyed, "slow-1")
    assert [x["status"] for x in lines] == [408]
    warn = [x for x in log_lines(keyed) if x.get("request_id") == "slow-1"
            and x["level"] == "WARNING"]
    assert warn and warn[0]["received_bytes"] == len(b'{"samples": [')
    with keyed.client() as c:  # still serving
        assert c.post("/v1/score", json={"samples": []}, headers=AUTH).status_code == 200


def test_slow_but_complete_body_within_the_timeout_is_served(keyed):
    body = json.dumps({"samples": []}).encode()
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as s:
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5])
        time.sleep(0.3)
        s.sendall(body[5:])
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


# ---- 405, not 415 ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/v1/flow", "/ui"])
@pytest.mark.parametrize("ctype", [None, "text/plain", "application/json"])
def test_post_to_a_get_only_path_is_a_405(keyed, path, ctype):
    headers = {"content-type": ctype} if ctype else {}
    with keyed.client() as c:
        r = c.post(path, content=b"{}", headers=headers)
    err = error_of(r, 405)
    assert err["code"] == "method_not_allowed"
    assert "GET" in r.headers["allow"]


def test_post_to_an_unknown_path_is_a_404_and_415_stays_for_post_routes(keyed):
    with keyed.client() as c:
        assert error_of(c.post("/v1/nothing", content=b"x"), 404)["code"] == "not_found"
        for path in ("/v1/score", "/score", "/v1/update", "/v1/policy", "/get_reward",
                     "/v1/score/graph", "/ui/render"):
            err = error_of(c.post(path, content=b"{}"), 415)
            assert err["code"] == "unsupported_media_type", path


# ---- 500 -------------------------------------------------------------------------------------


def test_internal_error_carries_the_request_id(caplog):
    app: FastAPI = create_app(Settings(_env_file=None))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    c = TestClient(app, raise_server_exceptions=False)  # no lifespan: no model needed here
    with caplog.at_level("ERROR"):
        r = c.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "boom-1"
    assert r.json()["error"] == {"code": "internal_error",
                                 "message": "internal error; see the service log",
                                 "field": None, "sample_id": None, "request_id": "boom-1"}
    assert "unhandled error on GET /boom" in caplog.text
