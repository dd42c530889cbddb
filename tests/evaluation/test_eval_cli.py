"""`flowfield eval` end to end on a small held-out demo set (the CI run of the evaluation).

Small on purpose (48 rollouts, one short refinement round): it checks that every figure is
produced, well-formed and written as JSON and HTML, not the study's numbers (those are in
docs/evaluation.md, from `flowfield eval --demo 1000 ...`).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flowfield.cli import app

N = 48


@pytest.fixture(scope="module")
def demo_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    args = [
        "eval",
        "--demo", str(N),
        "--bootstrap", "100",
        "--refine",
        "--refine-rollouts", "48",
        "--refine-epochs", "1",
        "--json", str(out / "report.json"),
        "--html", str(out / "view.html"),
        "--html-rollouts", "6",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output, json.loads((out / "report.json").read_text()), out


@pytest.mark.slow
def test_eval_prints_the_tables(demo_eval):
    text, _, _ = demo_eval
    for heading in (
        "hooked layers: 0.25 -> block 1 (hidden_states[2])",
        "AUROC, incorrect vs correct",
        "Localisation",
        "Confident errors",
        "Token classes",
    ):
        assert heading in text
    for row in ("flow: mean deviation", "policy: mean token NLL", "uniformly random position"):
        assert row in text
    # every flow-return row names its normalisation; the headline one is the service's default
    rows = [line for line in text.splitlines() if line.startswith("flow: flow return")]
    assert [r.split("  ")[0] for r in rows] == [
        "flow: flow return, expert (default)",
        "flow: flow return, bilateral",
        "flow: flow return, unilateral",
    ]
    assert "bilateral: per-sequence min-max to [-1, 1]" in text  # and says what each does


@pytest.mark.slow  # the module's demo eval takes about a minute
def test_eval_headline_return_uses_the_service_default(demo_eval):
    _, report, _ = demo_eval
    assert report["setup"]["normalization"] == {"name": "expert", "default": True}
    assert report["setup"]["reward"]["normalization"] == "expert"
    assert report["labels"]["flow_return"] == "flow: flow return, expert (default)"
    assert report["labels"]["flow_return_unilateral"] == "flow: flow return, unilateral"
    for ev in report["evaluations"]:  # the headline return is the expert one
        assert ev["auroc"]["flow_return"] == ev["auroc"]["flow_return_expert"]


@pytest.mark.slow  # the module's demo eval takes about a minute
def test_eval_json_has_every_figure_before_and_after_refinement(demo_eval):
    _, report, _ = demo_eval
    before, after = report["evaluations"]
    assert before["flow"]["version"] == 0 and after["flow"]["version"] == 1
    assert report["refine"]["accepted"] > 0 and report["refine"]["steps"] >= 1
    for ev in (before, after):
        assert ev["n"] == N and ev["n_correct"] + ev["n_incorrect"] == N
        assert 0 < ev["n_incorrect"] < N
        for key in ("flow_mean_deviation", "flow_max_deviation", "flow_return", "nll_mean",
                    "entropy_mean", "flow_return_bilateral", "flow_return_unilateral",
                    "flow_return_expert", "flow_plus_nll"):  # fmt: skip
            a = ev["auroc"][key]
            lo, hi = a["ci95"]
            assert 0 <= lo <= a["auroc"] <= hi <= 1, (key, a)
        loc = ev["localisation"]
        assert loc["n"] + loc["excluded"] == ev["n_incorrect"]
        for rule in ("flow_min_reward", "flow_max_deviation", "nll_max", "entropy_max"):
            hits = loc["rules"][rule]["hits"]
            assert set(hits) == {"f", "f..f+1", "f..f+2", "f-1..f+2"}
            assert hits["f"] <= hits["f..f+1"] <= hits["f..f+2"] <= hits["f-1..f+2"]
        assert 0 < loc["random"]["f"] < loc["random"]["f-1..f+2"] < 0.2
        # errors the policy found likely (p >= 0.2 for the first wrong token)
        ce = ev["confident_errors"]
        assert 0 < ce["n"] <= loc["n"] and ce["min_p"] == 0.2
        assert set(ce["auroc"]) >= {"flow_mean_deviation", "nll_mean", "flow_plus_nll"}
        assert set(ce["localisation"]["rules"]) >= {"flow_max_deviation", "flow_plus_nll"}
        names = {c["name"] for c in ev["token_classes"]}
        assert {"operand digit", "carry digit", "answer digit"} <= names
    # the policy's own likelihood separates a toy's errors well (docs/evaluation.md: 0.935)
    assert before["auroc"]["nll_mean"]["auroc"] > 0.7
    # refinement changes the flow's numbers, not the policy's
    assert before["auroc"]["nll_mean"] == after["auroc"]["nll_mean"]
    assert before["mean_deviation_correct"] != after["mean_deviation_correct"]


@pytest.mark.slow  # the module's demo eval takes about a minute
def test_eval_html_colours_tokens(demo_eval):
    _, _, out = demo_eval
    page = (out / "view.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('class="rollout"') == 12  # 6 per flow
    assert "flow v0" in page and "flow v1" in page
    assert 'class="tok pos"' in page and "neg" in page and "rgba(" in page
    assert "verifier: correct" in page and "verifier: incorrect" in page


@pytest.mark.slow
def test_eval_on_a_jsonl_of_rollouts(tmp_path):
    from flowfield.demo.task import Problem, expert_solution

    rows = []
    for i in range(12):
        p = Problem(1000 + 37 * i, 2345 + 11 * i)
        text = expert_solution(p)
        if i % 2:  # a wrong answer digit: the first error is known
            k = text.index("A:") + 2
            text = text[:k] + ("1" if text[k] != "1" else "2") + text[k + 1 :]
            rows.append({"prompt": p.prompt, "response": text, "reward": 0.0, "first_error": k})
        else:
            rows.append({"prompt": p.prompt, "response": text, "reward": 1.0})
    data = tmp_path / "rollouts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = CliRunner().invoke(
        app, ["eval", "--data", str(data), "--bootstrap", "0", "--json", str(tmp_path / "r.json")]
    )
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "r.json").read_text())["evaluations"][0]
    assert ev["n"] == 12 and ev["n_incorrect"] == 6
    assert ev["auroc"]["flow_mean_deviation"]["ci95"] == [None, None]  # no bootstrap asked
    assert ev["localisation"]["n"] == 6
    # a corrupted answer digit is easy for the policy to spot
    assert ev["auroc"]["nll_max"]["auroc"] > 0.9


def test_eval_reports_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q:1+1\\n", "response": "2"}\n')  # no reward
    res = CliRunner().invoke(app, ["eval", "--data", str(bad)])
    assert res.exit_code == 2 and "needs a numeric verifier reward" in res.output
    res = CliRunner().invoke(app, ["eval", "--demo", "5000"])
    assert res.exit_code == 2 and "1000 problems" in res.output
