"""GET /ui and POST /ui/render: the token-reward view in a browser.

Rollouts are shown with each response token coloured by its flow reward (green rewarded, red
penalised), the verifier outcome (the sample's `reward`) and the flow version that scored
them. The page is one self-contained HTML document (inline CSS and JS, nothing fetched from
elsewhere), rendered by flowfield.evaluation.html, the same renderer as `flowfield eval
--html`.

- GET /ui: the page: a form that scores a /v1/score-shaped request and shows it (its script
  posts to /ui/render), the rollouts recently rendered here (a small in-memory ring buffer
  per app), and with ?demo=N, N held-out demo problems scored now (expert solutions and
  copies with digits corrupted; only meaningful with the demo policy).
- POST /ui/render: a /v1/score request body in, the page (or with ?fragment=1 only the
  rollouts) out. Scoring goes through the /v1/score handler: same limits, errors and
  scheduler; deviations are always returned for the tooltips.

Both need the score scope when API keys are set (a browser then needs a proxy that adds the
key); POST bodies are JSON like every other POST.
"""

from __future__ import annotations

import html
import json
import random
from collections import deque

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from flowfield.demo.task import (
    corrupt_digits,
    expert_solution,
    first_error,
    parse_prompt,
    verify,
)
from flowfield.evaluation.evaluate import token_strings
from flowfield.evaluation.html import TokenView, render_fragment, render_page
from flowfield.evaluation.problems import eval_problems
from service.auth import require
from service.offload import OffloadRoute, run_cpu
from service.routers.score import score_request
from service.samples import resolve_ids
from service.schemas import ScoreRequest, ScoreSample
from service.settings import Settings
from service.state import ServiceState, get_settings_dep, get_state

router = APIRouter(
    tags=["ui"], dependencies=[Depends(require("score"))], route_class=OffloadRoute
)

RECENT = 32  # rollouts kept for GET /ui

# the errors are the JSON error object, whatever the route's own (HTML) media type
# Errors are JSON (ErrorResponse) while the route's own responses are HTML: error_responses()
# would document them under the route's media type (text/html), so the content is explicit.
_JSON_ERROR = {
    "description": "Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}

EXAMPLE = {
    "samples": [
        {
            "id": "ok",
            "reward": 1.0,
            "prompt": "Q:1234+5678\n",
            "response": "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06,A:6912.",
        },
        {
            "id": "wrong",
            "reward": 0.0,
            "prompt": "Q:1234+5678\n",
            "response": "4+8+0=12,3+7+1=11,2+6+1=19,1+5+1=07,A:7912.",
        },
    ]
}

SCRIPT = """
async function scoreAndShow() {
  const status = document.getElementById('status');
  const live = document.getElementById('live');
  status.textContent = 'scoring...';
  try {
    const url = location.pathname.replace(/\\/?$/, '') + '/render?fragment=1';
    const r = await fetch(url, {method: 'POST',
      headers: {'content-type': 'application/json'},
      body: document.getElementById('request').value});
    const text = await r.text();
    if (!r.ok) {
      let msg = text;
      try { msg = JSON.parse(text).error.message; } catch (e) {}
      status.textContent = 'error ' + r.status + ': ' + msg;
      return;
    }
    live.insertAdjacentHTML('afterbegin', text);
    status.textContent = 'scored';
  } catch (e) { status.textContent = 'error: ' + e; }
}
document.getElementById('go').addEventListener('click', scoreAndShow);
if (new URLSearchParams(location.search).get('run') === '1') scoreAndShow();
"""


def _recent(request: Request) -> deque:
    buf = getattr(request.app.state, "ui_recent", None)
    if buf is None:
        buf = request.app.state.ui_recent = deque(maxlen=RECENT)
    return buf


async def _score_views(
    req: ScoreRequest, state: ServiceState, settings: Settings
) -> tuple[list[TokenView], int]:
    req.options.return_deviations = True
    out = await score_request(req, state, settings)
    encoder = state.scorer.encoder
    prompts, responses = await run_cpu(resolve_ids, req.samples, encoder, settings)
    views = []
    for s, p, r, res in zip(req.samples, prompts, responses, out.results):
        # ids outside the vocabulary (the sample's error) come back as "<id>", never raise
        tokens = token_strings(encoder, r)
        prompt = s.prompt if s.prompt is not None else "".join(token_strings(encoder, p))
        outcome = None if s.reward is None else float(s.reward)
        fe = None
        problem = parse_prompt(prompt)
        if problem is not None and all(len(t) == 1 for t in tokens):
            text = "".join(tokens)
            fe = first_error(problem, text)
            outcome = verify(problem, text) if outcome is None else outcome
        views.append(
            TokenView(
                id=s.id,
                tokens=tokens if res.status == "ok" else [],
                rewards=res.token_rewards or [],
                flow_version=out.flow_version,
                outcome=outcome,
                deviations=res.deviations,
                prompt=prompt,
                first_error=fe,
                error=res.error,
            )
        )
    return views, out.flow_version


def _demo_request(n: int) -> ScoreRequest:
    """n held-out demo problems: even ones solved as the expert does, odd ones corrupted."""
    rng = random.Random(0)
    samples = []
    for i, p in enumerate(eval_problems(n)):
        text = expert_solution(p)
        if i % 2:
            text = corrupt_digits(text, 2, rng)
        samples.append(
            ScoreSample(id=f"demo-{i}", prompt=p.prompt, response=text, reward=verify(p, text))
        )
    return ScoreRequest(samples=samples)


def _page(state: ServiceState, sections: list[tuple[str, list[TokenView]]]) -> str:
    sc = state.scorer
    example = json.dumps(EXAMPLE, indent=2)
    form = (
        "<h2>Score rollouts</h2>"
        '<div class="sub">A <code>/v1/score</code> request body; each sample\'s '
        "<code>reward</code> is its verifier outcome.</div>"
        f'<textarea id="request" spellcheck="false">{html.escape(example)}</textarea>'
        '<div><button id="go">Score and show</button> <span id="status"></span></div>'
        '<div id="live"></div>'
    )
    return render_page(
        [],
        title="flowfield: token rewards",
        subtitle=f"flow v{sc.version} · encoder {sc.encoder.identity.label()} · "
        f"context {sc.meta.config.context}",
        extra_html=form,
        script=SCRIPT,
        sections=sections,
    )


@router.get(
    "/ui",
    response_class=HTMLResponse,
    responses={code: _JSON_ERROR for code in (401, 422, 429)},
)
async def ui(
    request: Request,
    demo: int = Query(0, ge=0, le=16, description="score this many demo problems now"),
    state: ServiceState = Depends(get_state),
    settings: Settings = Depends(get_settings_dep),
) -> HTMLResponse:
    """The token-reward view: recent rollouts, a form to score more, optional demo examples."""
    sections: list[tuple[str, list[TokenView]]] = []
    if demo:
        views, _ = await _score_views(_demo_request(demo), state, settings)
        sections.append(("Demo: held-out problems (odd ones with 2 digits corrupted)", views))
    sections.append(("Recent rollouts rendered here", list(reversed(_recent(request)))))
    return HTMLResponse(_page(state, sections))


@router.post(
    "/ui/render",
    response_class=HTMLResponse,
    # the JSON errors of /v1/score, which it goes through (and the guards' 408, 413, 415)
    responses={code: _JSON_ERROR for code in (401, 408, 413, 415, 422, 429)},
)
async def render(
    req: ScoreRequest,
    request: Request,
    fragment: bool = Query(False, description="only the rollouts, for insertion in /ui"),
    state: ServiceState = Depends(get_state),
    settings: Settings = Depends(get_settings_dep),
) -> HTMLResponse:
    """Score the rollouts of a /v1/score request and return them as HTML."""
    views, _ = await _score_views(req, state, settings)
    _recent(request).extend(views)
    if fragment:
        return HTMLResponse(render_fragment(views))
    return HTMLResponse(_page(state, [("Rendered rollouts", views)]))
