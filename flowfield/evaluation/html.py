"""Token-reward view: rollouts as HTML with every response token coloured by its flow reward.

One self-contained page (inline CSS and JS, nothing fetched from elsewhere). Green tokens
are rewarded (low deviation), red ones penalised (high deviation), the colour's strength is
|reward| relative to the largest |reward| on the page; uncoloured tokens got a zero reward
(filtered). Hovering a token shows its index, reward and raw deviation. Each rollout shows
its verifier outcome and the flow version that scored it; for the demo task the first wrong
token is outlined. `flowfield eval --html` and the service's /ui both render with this module.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

# colours of rewarded / penalised tokens (r, g, b); alpha carries the strength
POSITIVE = (22, 163, 74)
NEGATIVE = (220, 38, 38)
_VISIBLE = {"\n": "\u23ce", "\t": "\u21e5", "\r": "\u240d"}


@dataclass
class TokenView:
    """What the page shows of one scored rollout."""

    id: str
    tokens: Sequence[str]
    rewards: Sequence[float]
    flow_version: int | None = None
    outcome: float | None = None  # the verifier's reward, when known
    deviations: Sequence[float] | None = None
    prompt: str = ""
    first_error: int | None = None  # response token index of the first wrong token
    note: str = ""  # a short line of extra information (e.g. scores)
    error: str | None = None  # why this rollout could not be scored


def _token_text(tok: str) -> str:
    if tok == "":
        return "\u2205"
    shown = "".join(_VISIBLE.get(ch, ch) for ch in tok)
    return html.escape(shown)


def _style(r: float, scale: float) -> str:
    if not (math.isfinite(r) and r != 0 and scale > 0):
        return ""
    alpha = min(1.0, abs(r) / scale)
    rgb = POSITIVE if r > 0 else NEGATIVE
    return f' style="background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.15 + 0.75 * alpha:.3f})"'


def _outcome(v: TokenView) -> str:
    if v.error:
        return '<span class="badge err">not scored</span>'
    if v.outcome is None:
        return '<span class="badge">outcome unknown</span>'
    cls = "ok" if v.outcome >= 1.0 else "bad"
    word = "correct" if v.outcome >= 1.0 else "incorrect"
    return f'<span class="badge {cls}">verifier: {word} (reward {v.outcome:g})</span>'


def render_rollout(v: TokenView, scale: float) -> str:
    """One rollout as an HTML card (a fragment)."""
    head = [
        f'<span class="rid">{html.escape(v.id)}</span>',
        _outcome(v),
        f'<span class="badge ver">flow v{v.flow_version}</span>'
        if v.flow_version is not None
        else "",
    ]
    if v.error:
        body = f'<div class="error">{html.escape(v.error)}</div>'
    else:
        spans = []
        for k, (tok, r) in enumerate(zip(v.tokens, v.rewards)):
            tip = f"#{k} {tok!r} reward {r:+.5f}"
            if v.deviations is not None and k < len(v.deviations):
                tip += f" deviation {v.deviations[k]:.4g}"
            cls = "tok"
            if v.first_error == k:
                cls += " ferr"
                tip += " (first error)"
            sign = "pos" if r > 0 else "neg" if r < 0 else "zero"
            spans.append(
                f'<span class="{cls} {sign}" data-k="{k}" data-reward="{r:.6g}" '
                f'title="{html.escape(tip)}"{_style(r, scale)}>{_token_text(tok)}</span>'
            )
        total = sum(v.rewards)
        body = (
            f'<div class="prompt">{_token_text(v.prompt)}</div>'
            f'<div class="tokens">{"".join(spans)}</div>'
            f'<div class="meta">flow return {total:+.4f} over {len(v.tokens)} tokens'
            f"{' &middot; ' + html.escape(v.note) if v.note else ''}</div>"
        )
    return (
        f'<div class="rollout" data-id="{html.escape(v.id)}">'
        f'<div class="head">{"".join(head)}</div>{body}</div>'
    )


def reward_scale(views: Sequence[TokenView]) -> float:
    """The largest |reward| on the page (what full colour means)."""
    vals = [abs(r) for v in views if not v.error for r in v.rewards if math.isfinite(r)]
    return max(vals, default=0.0)


def render_fragment(views: Sequence[TokenView], scale: float | None = None) -> str:
    scale = reward_scale(views) if scale is None else scale
    return "\n".join(render_rollout(v, scale) for v in views)


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.2em 2em; color: #111; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
.sub { color: #555; margin-bottom: .8em; }
.legend span { padding: 0 .4em; border-radius: 3px; margin-right: .6em; }
.rollout { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .5em .8em;
           margin: .5em 0; }
.head { margin-bottom: .3em; } .rid { font-weight: 600; margin-right: .6em; }
.badge { font-size: .8em; padding: .1em .5em; border-radius: 9px; background: #eee;
         margin-right: .4em; }
.badge.ok { background: #dcfce7; color: #166534; } .badge.bad { background: #fee2e2;
  color: #991b1b; } .badge.err { background: #fde68a; } .badge.ver { background: #e0e7ff; }
.prompt { font-family: ui-monospace, monospace; color: #777; font-size: .9em; }
.tokens { font-family: ui-monospace, monospace; font-size: 1.15em; line-height: 1.9em;
          word-break: break-all; }
.tok { padding: .15em .05em; border-radius: 2px; white-space: pre; }
.tok.ferr { outline: 2px solid #2563eb; outline-offset: 1px; }
.meta { color: #666; font-size: .8em; } .error { color: #991b1b; }
textarea { width: 100%; height: 11em; font-family: ui-monospace, monospace; font-size: .85em; }
table.stats { border-collapse: collapse; font-size: .9em; }
table.stats td, table.stats th { border: 1px solid #ddd; padding: .2em .6em; text-align: right; }
table.stats td:first-child, table.stats th:first-child { text-align: left; }
"""


def legend(scale: float) -> str:
    p, n = POSITIVE, NEGATIVE
    return (
        '<div class="legend">'
        f'<span style="background:rgba({p[0]},{p[1]},{p[2]},.8)">rewarded (low deviation)</span>'
        f'<span style="background:rgba({n[0]},{n[1]},{n[2]},.8)">penalised (high deviation)'
        "</span><span>uncoloured: reward 0 (filtered)</span>"
        '<span style="outline:2px solid #2563eb">first wrong token</span>'
        f"<span>full colour = |reward| {scale:.3g}</span></div>"
    )


def render_page(
    views: Sequence[TokenView],
    title: str = "flowfield: token rewards",
    subtitle: str = "",
    extra_html: str = "",
    script: str = "",
    sections: Sequence[tuple[str, Sequence[TokenView]]] | None = None,
) -> str:
    """A whole page. sections: (heading, views) groups; default one untitled group of views.

    extra_html is inserted (unescaped) after the legend: a form, a table of figures, ...
    """
    groups = list(sections) if sections is not None else [("", views)]
    scale = reward_scale([v for _, vs in groups for v in vs]) or 0.01
    body = []
    for heading, vs in groups:
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(render_fragment(vs, scale) if vs else '<div class="sub">none yet</div>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><div class="sub">{html.escape(subtitle)}</div>'
        f'{legend(scale)}{extra_html}<div id="rollouts">{"".join(body)}</div>'
        f"{f'<script>{script}</script>' if script else ''}</body></html>\n"
    )
