"""Unit tests of the evaluation's metrics: AUROC, bootstrap, localisation, token classes,
the logit baselines and the HTML renderer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from flowfield.demo.task import Problem, expert_solution
from flowfield.evaluation.evaluate import EvalRollout, ScoredRollout, metrics_for
from flowfield.evaluation.html import TokenView, render_page
from flowfield.evaluation.logits import token_logit_stats
from flowfield.evaluation.metrics import (
    auroc,
    bootstrap_auroc,
    localisation,
    most_extreme,
    most_penalised,
    random_rate,
)
from flowfield.evaluation.tokens import (
    ANSWER,
    CARRY,
    OPERAND,
    SUM_ONES,
    SUM_TENS,
    class_table,
    demo_token_classes,
)

# ---- AUROC --------------------------------------------------------------------------------


def test_auroc_hand_computed_with_a_tie():
    # incorrect (positive) scores 0.35, 0.8 ; correct 0.1, 0.4, 0.8
    # pairs (pos, neg): 0.35>0.1 1, 0.35<0.4 0, 0.35<0.8 0, 0.8>0.1 1, 0.8>0.4 1, 0.8=0.8 1/2
    scores = [0.1, 0.4, 0.35, 0.8, 0.8]
    incorrect = [False, False, True, True, False]
    assert auroc(scores, incorrect) == pytest.approx(3.5 / 6)


def test_auroc_orientation_and_edge_cases():
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert auroc([5, 5, 5, 5], [True, False, True, False]) == 0.5  # all tied: chance
    assert math.isnan(auroc([1, 2], [True, True]))  # one class only
    with pytest.raises(ValueError):
        auroc([1, 2, 3], [True, False])


def test_auroc_matches_brute_force_pair_count():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 6, 60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    pos, neg = s[y], s[~y]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert auroc(s, y) == pytest.approx(brute)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = rng.normal(size=300) + y
    a = bootstrap_auroc(s, y, resamples=300, seed=3)
    b = bootstrap_auroc(s, y, resamples=300, seed=3)
    assert a == b
    assert a.low < a.auroc < a.high and 0.6 < a.auroc < 0.9
    assert a.high - a.low < 0.2
    none = bootstrap_auroc(s, y, resamples=0)
    assert none.auroc == a.auroc and math.isnan(none.low)


# ---- localisation -------------------------------------------------------------------------


def test_picks_break_ties_at_the_earliest_token():
    assert most_penalised([0.0, -0.01, 0.01, -0.01]) == 1
    assert most_extreme([1.0, 3.0, 3.0, 2.0]) == 1


def test_clipped_rewards_tie_break_on_the_raw_deviation():
    # `expert` clips at z = 1: tokens 1 and 3 both get -beta; token 3 deviates more
    rewards, deviations = [0.0, -0.01, 0.0, -0.01], [1.0, 7.0, 2.0, 9.0]
    assert most_penalised(rewards, deviations) == 3
    assert most_penalised(rewards) == 1


def test_random_rate_clips_the_window_to_the_response():
    assert random_rate(5, 10, (0, 0)) == pytest.approx(0.1)
    assert random_rate(5, 10, (-1, 2)) == pytest.approx(0.4)
    assert random_rate(9, 10, (0, 2)) == pytest.approx(0.1)  # only f itself is inside
    assert random_rate(0, 10, (-1, 2)) == pytest.approx(0.3)


def test_localisation_rule():
    # three incorrect rollouts of length 10, first errors at 4, 4, 9
    chosen = [4, 3, 9]  # at f; just before f; at f (the last token)
    loc = localisation(chosen, [4, 4, 9], [10, 10, 10])
    assert loc.n == 3
    assert loc.hits["f"] == pytest.approx(2 / 3)
    assert loc.hits["f..f+2"] == pytest.approx(2 / 3)
    assert loc.hits["f-1..f+2"] == pytest.approx(1.0)
    assert loc.random["f"] == pytest.approx(0.1)
    assert loc.random["f-1..f+2"] == pytest.approx((0.4 + 0.4 + 0.2) / 3)
    assert loc.offsets == {0: 2, -1: 1}
    with pytest.raises(ValueError):
        localisation([0], [10], [10])  # a first error outside the response


# ---- token classes ------------------------------------------------------------------------


def test_demo_token_classes_follow_the_scratchpad():
    s = expert_solution(Problem(1234, 5678))  # 4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06,A:6912.
    c = demo_token_classes(s)
    assert len(c) == len(s)
    assert c[:9] == [
        OPERAND,
        "'+' (plus)",
        OPERAND,
        "'+' (plus)",
        CARRY,
        "'=' (equals)",
        SUM_TENS,
        SUM_ONES,
        "',' (step separator)",
    ]
    assert c[-7:] == ["'A' (answer marker)", "':' (after A)", *[ANSWER] * 4, "'.' (end)"]
    assert c.count(ANSWER) == 4 and c.count(CARRY) == 4 and c.count(OPERAND) == 8
    assert demo_token_classes("12x") == [OPERAND, OPERAND, "other"]  # malformed text is fine


def test_class_table_sorts_by_mean_reward():
    table = class_table(
        [["a", "b", "a"], ["b"]], [[0.01, -0.01, 0.0], [0.0]], [[1.0, 3.0, 2.0], [2.0]]
    )
    assert [t.name for t in table] == ["a", "b"]
    a, b = table
    assert a.count == 2 and a.mean_reward == pytest.approx(0.005) and a.positive == 0.5
    assert b.negative == 0.5 and b.mean_deviation == pytest.approx(2.5)


# ---- metrics_for --------------------------------------------------------------------------


def _scored(dev: list[float], reward: float, fe: int | None) -> ScoredRollout:
    d = np.array(dev)
    r = -0.01 * (d - d.min()) / (d.max() - d.min())
    ro = EvalRollout([1], list(range(len(dev))), reward, "p", "x" * len(dev), fe)
    return ScoredRollout(
        ro,
        d,
        r,
        float(r.sum()),
        nll=d.copy(),
        entropy=d.copy(),
        tokens=["x"] * len(dev),
        classes=["x"] * len(dev),
    )


def test_metrics_for_separable_set():
    good = [_scored([1, 1, 1, 2], 1.0, None) for _ in range(3)]
    bad = [_scored([1, 5, 1, 1], 0.0, 1), _scored([1, 1, 1, 6], 0.0, 2), _scored([1, 7], 0.0, 2)]
    m = metrics_for(good + bad, bootstrap=50)
    assert m["n_correct"] == 3 and m["n_incorrect"] == 3
    assert m["auroc"]["flow_max_deviation"]["auroc"] == 1.0
    loc = m["localisation"]
    assert loc["n"] == 2 and loc["excluded"] == 1  # f = 2 lies past a 2-token response
    hits = loc["rules"]["flow_min_reward"]["hits"]
    assert hits["f"] == 0.5 and hits["f..f+1"] == 1.0


# ---- logit baselines ----------------------------------------------------------------------


def test_token_logit_stats_match_a_direct_computation(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    prompts = [[5, 6, 7], [8], []]
    responses = [[9, 10], [11, 12, 13, 14], [15, 16]]
    stats = token_logit_stats(model, prompts, responses, max_batch_tokens=8)
    for p, r, (nll, ent) in zip(prompts, responses, stats):
        with torch.no_grad():
            logits = model(torch.tensor([p + r])).logits[0]
        logp = torch.log_softmax(logits, -1)
        for k, tok in enumerate(r):
            pos = len(p) + k - 1
            if pos < 0:
                assert math.isnan(nll[k]) and math.isnan(ent[k])
                continue
            assert nll[k] == pytest.approx(-logp[pos, tok].item(), abs=1e-4)
            assert ent[k] == pytest.approx(-(logp[pos].exp() * logp[pos]).sum().item(), abs=1e-4)


# ---- HTML ---------------------------------------------------------------------------------


def test_html_colours_tokens_and_escapes_text():
    v = TokenView(
        id="<r1>",
        tokens=["a", "<", "\n"],
        rewards=[0.01, -0.005, 0.0],
        flow_version=3,
        outcome=0.0,
        deviations=[1.0, 2.0, 1.5],
        first_error=1,
    )
    page = render_page([v])
    assert "&lt;r1&gt;" in page and "<r1>" not in page
    assert page.count('class="tok pos"') == 1 and page.count('class="tok ferr neg"') == 1
    assert page.count('class="tok zero"') == 1
    assert "rgba(22,163,74,0.900)" in page  # the largest |reward| gets full colour
    assert "flow v3" in page and "incorrect" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: no external links
