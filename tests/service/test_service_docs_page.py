"""/docs renders offline: its JavaScript and CSS come from the service itself, and
Swagger UI, run in headless Chromium with every host but the server unresolvable, lists the
API's operations."""

from __future__ import annotations

import re

import pytest
from browser import chromium, needs_chromium
from live_server import Server


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("docs-srv"), name="docs")
    yield srv
    srv.stop()


def test_docs_page_loads_its_assets_from_the_service(docs_server):
    page = "/docs"
    with docs_server.client() as c:
        html = c.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        urls = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert urls, html.text
        for url in urls:
            assert not url.startswith(("http:", "https:", "//")), f"{page} loads {url}"
            asset = c.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url
        # no CDN named anywhere in the page, fonts included
        assert "cdn" not in html.text.lower() and "fonts.googleapis" not in html.text


def test_docs_assets_are_not_in_the_openapi_schema(docs_server):
    with docs_server.client() as c:
        paths = c.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/docs")]
    with docs_server.client() as c:
        assert c.get("/redoc").status_code == 404  # FastAPI's CDN-loaded ReDoc page is off


@needs_chromium
def test_browser_renders_the_operations_offline(docs_server, tmp_path):
    # every host name except the server's address fails to resolve: a page that needed a CDN
    # would render blank
    res = chromium(
        f"--user-data-dir={tmp_path / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=20000",
        "--dump-dom",
        docs_server.url + "/docs",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    # Swagger UI built its operation list from /openapi.json
    shown = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {"/v1/score", "/v1/update", "/v1/score/graph", "/get_reward"} <= shown, dom[-3000:]
    assert "opblock-summary-method" in dom
