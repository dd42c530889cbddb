"""Reward-quality evaluation: does the flow reward carry signal, and where? (`flowfield eval`)

metrics.py   AUROC (rank formula) with a bootstrap interval; error localisation
logits.py    logit-space baselines: token NLL and entropy under the policy
tokens.py    token classes (demo scratchpad roles, else the token string) and their table
evaluate.py  scoring rollouts with FlowScorer and computing every figure
refine.py    one round of online refinement for the before/after comparison
run.py       the whole evaluation as one call (what the CLI runs)
report.py    terminal tables and the evaluation's HTML page
html.py      the token-reward view (also served by the service at /ui)
problems.py  disjoint demo problem sets: eval, dev, refinement, extra expert data

The studies that refit flows on the demo (diagnosis, lever sweeps) are research harness:
research/diagnose/, run as `python -m research diagnose | levers` from a checkout.
"""

from flowfield.evaluation.evaluate import EvalRollout, ScoredRollout, load_rollouts, metrics_for
from flowfield.evaluation.html import TokenView, render_fragment, render_page
from flowfield.evaluation.metrics import auroc, bootstrap_auroc, localisation
from flowfield.evaluation.refine import RefineConfig
from flowfield.evaluation.report import eval_html, format_report
from flowfield.evaluation.run import EvalConfig, EvalRun, run_evaluation

__all__ = [
    "EvalConfig",
    "EvalRollout",
    "EvalRun",
    "RefineConfig",
    "ScoredRollout",
    "TokenView",
    "auroc",
    "bootstrap_auroc",
    "eval_html",
    "format_report",
    "load_rollouts",
    "localisation",
    "metrics_for",
    "render_fragment",
    "render_page",
    "run_evaluation",
]
