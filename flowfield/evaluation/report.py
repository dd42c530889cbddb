"""Printing an evaluation report as terminal tables, and its rollouts as an HTML page."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence

from flowfield.evaluation.evaluate import (
    PICKS,
    SEQUENCE_SCORES,
    ScoredRollout,
    normalization_legend,
)
from flowfield.evaluation.html import TokenView, render_page
from flowfield.evaluation.metrics import WINDOWS


def to_json(report: dict) -> str:
    """The report as strict JSON: NaN (an undefined figure) becomes null."""

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(report), indent=2, allow_nan=False) + "\n"


def _num(x: float | None, fmt: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: Sequence[str]) -> str:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), line, *(fmt(r) for r in rows)])


def _col(ev: dict) -> str:
    return f"{ev['label']} v{ev['flow']['version']}"


def format_report(report: dict, class_rows: int = 6) -> str:
    """The report as plain-text tables (what `flowfield eval` prints)."""
    evs = report["evaluations"]
    setup = report["setup"]
    labels = report.get("labels", SEQUENCE_SCORES)
    headline = setup.get("normalization", {}).get("name")
    first = evs[0]
    src = setup["source"]
    out = []
    if src["kind"] == "demo":
        where = (
            f"demo task, {src['split']} split: {src['problems']} problems, one rollout each at "
            f"temperature {src['temperature']:g} (seed {src['seed']})"
        )
    else:
        where = f"rollouts from {src['path']}"
    out.append(
        f"{where}\n{first['n']} rollouts: {first['n_correct']} correct, {first['n_incorrect']} "
        f"incorrect (accuracy {_pct(first['accuracy'])}); encoder {setup['encoder']} "
        f"({setup.get('dtype', 'float32')}); timesteps "
        f"{setup['timesteps']} x {setup['noise_draws']} noise draw(s)"
    )
    for ev in evs:
        f = ev["flow"]
        out.append(
            f"{_col(ev)}: context {f['context']}, width {f['width']}, depth {f['depth']}, "
            f"layers {f['hooked_layers']}, {f['samples_trained']} samples trained"
            + (f" ({f['path']})" if f.get("path") else "")
        )
    if report.get("refine"):
        r = report["refine"]
        c = r["config"]
        out.append(
            f"refinement round: {c['rollouts']} fresh problems -> {r['accepted']} accepted "
            f"rollouts, {r['steps']} steps ({c['epochs']} epochs, batch {c['batch_size']}, "
            f"lr {c['lr']:g}); flow-matching loss on them {r['loss_before']:.3f} -> "
            f"{r['loss_after']:.3f}"
        )

    # AUROC
    header = ["score (higher = predicts incorrect)", *(_col(e) for e in evs)]
    rows = []
    for key, label in labels.items():
        if key not in first["auroc"] or key == f"flow_return_{headline}":
            continue  # (the headline flow return is that normalisation's row)
        same = key.startswith(("nll", "entropy"))  # does not depend on the flow
        cells = []
        for i, ev in enumerate(evs):
            a = ev["auroc"][key]
            if same and i > 0:
                cells.append("(same)")
                continue
            lo, hi = a["ci95"]
            ci = f" [{_num(lo)}, {_num(hi)}]" if not math.isnan(lo) else ""
            cells.append(f"{_num(a['auroc'])}{ci}")
        rows.append([label, *cells])
    out.append(
        f"\nAUROC, incorrect vs correct (0.5 = chance; 95% bootstrap CI, "
        f"{setup['bootstrap']} resamples)\n" + _table(header, rows)
        + "\nflow returns enter negated (a low return predicts incorrect); normalisations:"
        + normalization_legend()
    )

    # localisation
    if first.get("localisation"):
        loc0 = first["localisation"]
        header = ["token picked in an incorrect rollout", *WINDOWS]
        rows = []
        for ev in evs:
            loc = ev["localisation"]
            for key, label in PICKS.items():
                if key not in loc["rules"]:
                    continue
                if key.startswith(("nll", "entropy")) and ev is not first:
                    continue
                name = f"{_col(ev)}: {label}" if key.startswith("flow") else label
                rows.append([name, *(_pct(loc["rules"][key]["hits"][w]) for w in WINDOWS)])
        rows.append(["uniformly random position", *(_pct(loc0["random"][w]) for w in WINDOWS)])
        out.append(
            f"\nLocalisation: share of incorrect rollouts whose picked token lies in the window "
            f"around the first wrong token f (n = {loc0['n']}; {loc0['excluded']} cut short "
            f"before their first error, excluded)\n" + _table(header, rows)
        )

    # confident errors
    for ev in evs:
        ce = ev.get("confident_errors")
        if not ce:
            continue
        if not ce["n"]:
            out.append(
                f"\nConfident errors ({_col(ev)}): no incorrect rollout whose first wrong token "
                f"had policy probability >= {ce['min_p']:g}"
            )
            continue
        rows = []
        for key in (
            "flow_mean_deviation",
            "flow_max_deviation",
            "nll_mean",
            "entropy_mean",
            "flow_plus_nll",
        ):
            a = ce["auroc"].get(key)
            if a:
                lo, hi = a["ci95"]
                ci = f" [{_num(lo)}, {_num(hi)}]" if not math.isnan(lo) else ""
                rows.append([labels.get(key, SEQUENCE_SCORES[key]), f"{_num(a['auroc'])}{ci}"])
        out.append(
            f"\nConfident errors ({_col(ev)}): {ce['n']} incorrect rollouts whose first wrong "
            f"token had policy probability >= {ce['min_p']:g}, against all correct ones\n"
            + _table(["score", "AUROC"], rows)
        )
        loc = ce["localisation"]
        labels = {**PICKS, "flow_plus_nll": "flow + policy: largest rank sum (deviation, NLL)"}
        rows = [
            [labels[k], *(_pct(r["hits"][w]) for w in WINDOWS)] for k, r in loc["rules"].items()
        ]
        rows.append(["uniformly random position", *(_pct(loc["random"][w]) for w in WINDOWS)])
        out.append("localisation on them\n" + _table(["token picked", *WINDOWS], rows))

    # token classes
    for ev in evs:
        classes = ev["token_classes"]
        if not classes:
            continue
        shown = classes
        note = ""
        if len(classes) > 2 * class_rows:
            shown = classes[:class_rows] + classes[-class_rows:]
            note = f" (top and bottom {class_rows} of {len(classes)} classes)"
        header = ["token class", "tokens", "mean reward", "rewarded", "penalised", "mean dev"]
        rows = [
            [
                c["name"],
                str(c["count"]),
                f"{c['mean_reward']:+.5f}",
                _pct(c["positive"]),
                _pct(c["negative"]),
                _num(c["mean_deviation"], ".3g"),
            ]
            for c in shown
        ]
        out.append(
            f"\nToken classes by mean reward, {_col(ev)}, all rollouts{note}\n"
            + _table(header, rows)
        )
    out.append(f"\nTotal time (rollouts, scoring, metrics): {report['seconds']:.1f}s")
    return "\n".join(out)


def pick_for_view(scored: Sequence[ScoredRollout], n: int, threshold: float = 1.0) -> list[int]:
    """Up to n rollout indices for the HTML view: incorrect and correct ones alternately."""
    bad = [i for i, s in enumerate(scored) if s.rollout.reward < threshold]
    good = [i for i, s in enumerate(scored) if s.rollout.reward >= threshold]
    out: list[int] = []
    while len(out) < n and (bad or good):
        for pool in (bad, good):
            if pool and len(out) < n:
                out.append(pool.pop(0))
    return out


def views_of(scored: Sequence[ScoredRollout], version: int, idx: Sequence[int]) -> list[TokenView]:
    out = []
    for i in idx:
        s = scored[i]
        r = s.rollout
        note = f"mean deviation {s.deviations.mean():.3f}, max {s.deviations.max():.3f}"
        if s.nll is not None:
            note += f"; policy mean NLL {float(s.nll.mean()):.3f}"
        out.append(
            TokenView(
                id=r.id or str(i),
                tokens=s.tokens,
                rewards=[float(x) for x in s.rewards],
                flow_version=version,
                outcome=r.reward,
                deviations=[float(x) for x in s.deviations],
                prompt=r.prompt,
                first_error=r.first_error,
                note=note,
            )
        )
    return out


def eval_html(
    report: dict, scored_sets: Sequence[tuple[str, int, list[ScoredRollout]]], n: int = 40
) -> str:
    """A page with the report's figures and n rollouts per evaluated flow, tokens coloured."""
    sections = []
    threshold = report["setup"]["correct_threshold"]
    for label, version, scored in scored_sets:
        idx = pick_for_view(scored, n, threshold)
        sections.append((f"{label} (flow v{version})", views_of(scored, version, idx)))
    text = html.escape(format_report(report))
    extra = f"<details><summary>figures</summary><pre>{text}</pre></details>"
    src = report["setup"]["source"]
    subtitle = f"encoder {report['setup']['encoder']}; " + (
        f"demo {src['split']} split, temperature {src['temperature']:g}"
        if src["kind"] == "demo"
        else f"rollouts from {src['path']}"
    )
    return render_page([], "flowfield eval: token rewards", subtitle, extra, sections=sections)
