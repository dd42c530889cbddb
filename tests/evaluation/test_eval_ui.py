"""The token-reward view at /ui, against a real server, checked in headless Chromium.

Chromium is Debian's package (`apt-get install -y chromium`); the browser tests are skipped
only where no Chromium is installed. The HTTP tests run everywhere.
"""

from __future__ import annotations

import re

import pytest
from browser import chromium, needs_chromium
from live_server import Server

WRONG = {
    "id": "ui-wrong",
    "reward": 0.0,
    "prompt": "Q:1234+5678\n",
    "response": "4+8+0=12,3+7+1=11,2+6+1=19,1+5+1=07,A:7912.",
}
RIGHT = {**WRONG, "id": "ui-right", "reward": 1.0,
         "response": "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06,A:6912."}  # fmt: skip


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("ui-srv"), name="ui")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def rendered(ui_server):
    """Submit two rollouts through POST /ui/render (they then show on GET /ui)."""
    with ui_server.client() as c:
        r = c.post("/ui/render", json={"samples": [WRONG, RIGHT]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return r.text


def _spans(page: str, rollout_id: str) -> list[str]:
    """The token spans of one rollout card."""
    start = page.index(f'data-id="{rollout_id}"')
    end = page.find('<div class="rollout"', start + 1)
    card = page[start : end if end > 0 else None]
    return re.findall(r'<span class="tok[^"]*"[^>]*>', card)


def test_render_colours_every_token_and_shows_outcome_and_version(rendered):
    spans = _spans(rendered, "ui-wrong")
    assert len(spans) == len(WRONG["response"])
    coloured = [s for s in spans if "background:rgba(" in s]
    assert 0 < len(coloured) <= 15  # top-K filtering keeps at most 15 non-zero rewards
    assert any("tok pos" in s for s in coloured) and any("neg" in s for s in coloured)
    assert "verifier: incorrect (reward 0)" in rendered and "verifier: correct" in rendered
    assert "flow v0" in rendered
    # the demo's first wrong token (the "1" of "19") is outlined
    assert any("ferr" in s and 'data-k="24"' in s for s in spans)


def test_ui_page_lists_recent_rollouts_and_demo_examples(ui_server, rendered):
    with ui_server.client() as c:
        page = c.get("/ui", params={"demo": 2}).text
        frag = c.post("/ui/render?fragment=1", json={"samples": [RIGHT]}).text
        bad = c.post("/ui/render", json={"samples": [{"id": "x", "response_ids": [999]}]})
        wrong_type = c.post("/ui/render", content="x", headers={"content-type": "text/plain"})
    assert 'data-id="ui-wrong"' in page and 'data-id="demo-1"' in page
    assert "flow v0" in page and "encoder demo-arith@" in page
    assert frag.startswith('<div class="rollout"') and "<html" not in frag
    assert bad.status_code == 200 and "outside the vocabulary" in bad.text
    assert wrong_type.status_code == 415


@needs_chromium
def test_browser_screenshot_of_ui(ui_server, rendered, tmp_path):
    png = tmp_path / "ui.png"  # kept under pytest's tmp dir for a look
    res = chromium(
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}",
        "--window-size=1200,900",
        ui_server.url + "/ui",
    )
    assert png.is_file() and png.stat().st_size > 20_000, res.stderr[-2000:]
    try:
        from PIL import Image
    except ImportError:  # pillow is a dev extra; without it the size check has to do
        return
    img = Image.open(png).convert("RGB")
    assert img.size == (1200, 900)
    colours = img.getcolors(maxcolors=1 << 24)  # [(count, (r, g, b)), ...]
    greenish = sum(n for n, (r, g, b) in colours if g > 120 and g > r + 40 and g > b + 30)
    reddish = sum(n for n, (r, g, b) in colours if r > 180 and r > g + 60 and r > b + 60)
    assert greenish > 200 and reddish > 200  # rewarded and penalised tokens are visible


@needs_chromium
def test_browser_dom_has_coloured_tokens(ui_server, rendered, tmp_path):
    """The server-rendered page, as the browser parsed it."""
    res = chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", ui_server.url + "/ui")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert 'data-id="ui-wrong"' in dom
    spans = _spans(dom, "ui-wrong")
    assert len(spans) == len(WRONG["response"])
    assert sum("background: rgba(" in s or "background:rgba(" in s for s in spans) > 0


@needs_chromium
def test_browser_runs_the_form_script(ui_server, tmp_path):
    """?run=1 makes the page's script post the form's request and insert the result."""
    res = chromium(
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        ui_server.url + "/ui?run=1",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    live = res.stdout.split('id="live"', 1)[1].split('id="rollouts"', 1)[0]
    assert 'data-id="ok"' in live and 'data-id="wrong"' in live, res.stdout[-3000:]
    assert "background: rgba(" in live or "background:rgba(" in live
    assert 'id="status">scored<' in res.stdout
