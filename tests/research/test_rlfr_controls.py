"""The controls and tooling of issue 24: oracle and shuffled arms, the uniform-only ablation,
the gradient probe and the paired report (no service)."""

from __future__ import annotations

import math

import pytest
import torch

from flowfield.demo.policy import Rollout
from flowfield.demo.task import Problem, expert_solution, first_error
from flowfield.rewards import RewardOptions, grouped_outcome_advantages
from research.rlfr.arms import ARMS, parse_arms
from research.rlfr.config import FULL, SMOKE
from research.rlfr.probe import compare, probe_table, run_probe, suggested_beta
from research.rlfr.report import (
    auc,
    bootstrap_interval,
    markdown_table,
    reading,
    summarize,
)
from research.rlfr.shaping import (
    oracle_deviations,
    shape_arm,
    shape_outcome,
    shuffle_token_rewards,
)

OPTS = RewardOptions("bilateral", 0.5, 0.6, 15)


def _rollout(problem: Problem, text: str) -> Rollout:
    reward = 1.0 if text.endswith(f"A:{problem.answer}.") else 0.0
    return Rollout(problem, [1, 2, 3], [10 + ord(c) % 7 for c in text], text, reward,
                   first_error(problem, text))


def _batch() -> tuple[list[Rollout], list[str]]:
    p = Problem(1234, 5678)
    good = expert_solution(p)
    wrong = good.replace("2+6+1=09", "2+6+1=08").replace("A:6912.", "A:6812.")
    early = "5" + good[1:-7] + "A:6913."  # wrong from the first token on
    q = Problem(1111, 2222)
    q_good = expert_solution(q)
    rollouts = [_rollout(p, good), _rollout(p, wrong), _rollout(p, early), _rollout(p, good),
                _rollout(q, q_good), _rollout(q, q_good)]
    return rollouts, ["a", "a", "a", "a", "b", "b"]


def test_oracle_penalises_the_first_error():
    rollouts, groups = _batch()
    assert [r.reward for r in rollouts] == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    fe = rollouts[1].first_error
    assert fe == expert_solution(rollouts[1].problem).index("2+6+1=09") + 7
    devs = oracle_deviations(rollouts)
    assert devs[1].nonzero().flatten().tolist() == [fe]
    assert devs[2].nonzero().flatten().tolist() == [0]
    assert all(float(d.abs().sum()) == 0 for i, d in enumerate(devs) if i not in (1, 2))

    shaped = shape_arm("oracle", OPTS, rollouts, groups)
    outcome = grouped_outcome_advantages([r.reward for r in rollouts], groups)
    assert shaped.dense_return == pytest.approx([0.0, -0.5, -0.5, 0.0, 0.0, 0.0])
    adv = shaped.advantages[1] - outcome[1]
    n = len(rollouts[1].response_ids)
    # the reward-to-go of one penalty -beta at the first error: on every token up to it
    assert adv[: fe + 1].tolist() == pytest.approx([-0.5] * (fe + 1))
    assert adv[fe + 1 : n].abs().max().item() == 0.0
    # oracle-local: the penalty on the wrong token alone
    local = shape_arm("oracle-local", OPTS, rollouts, groups).advantages[1] - outcome[1]
    assert local[:n].nonzero().flatten().tolist() == [fe]
    assert local[fe].item() == pytest.approx(-0.5)


def test_shuffled_keeps_each_rollouts_rewards():
    g = torch.Generator().manual_seed(1)
    rewards = [torch.randn(n, generator=g, dtype=torch.float64) for n in (43, 43, 20, 1, 0)]
    a = shuffle_token_rewards(rewards, 11)
    assert [x.tolist() for x in a] == [x.tolist() for x in shuffle_token_rewards(rewards, 11)]
    for orig, perm in zip(rewards, a):
        assert sorted(orig.tolist()) == sorted(perm.tolist())
    assert a[0].tolist() != rewards[0].tolist()
    # through shape_arm: the dense return (the sum) is the flow's
    rollouts, groups = _batch()
    flow = [torch.linspace(-0.01, 0.0, len(r.response_ids), dtype=torch.float64)
            for r in rollouts]
    shaped = shape_arm("shuffled", OPTS, rollouts, groups, flow_token_rewards=flow, shuffle=3)
    assert shaped.dense_return == pytest.approx([float(f.sum()) for f in flow])
    plain = shape_arm("flow", OPTS, rollouts, groups, flow_token_rewards=flow)
    assert not torch.equal(shaped.advantages[0], plain.advantages[0])


def test_uniform_only_shapes_nothing_in_mixed_groups():
    rollouts, groups = _batch()  # group a mixed, group b all correct
    lengths = [len(r.response_ids) for r in rollouts]
    flow = [torch.full((n,), -0.01, dtype=torch.float64) for n in lengths]
    base = shape_outcome(lengths, [r.reward for r in rollouts], groups,
                         [True] * len(rollouts))
    for signal in ("flow", "oracle", "shuffled"):
        full = shape_arm(signal, OPTS, rollouts, groups, flow_token_rewards=flow)
        only = shape_arm(signal, OPTS, rollouts, groups, flow_token_rewards=flow, uniform=True)
        for i, g in enumerate(groups):
            if g == "a":
                assert torch.equal(only.advantages[i], base.advantages[i]), (signal, i)
                assert only.dense_return[i] == 0.0
            else:
                assert torch.equal(only.advantages[i], full.advantages[i]), (signal, i)
    flow_only = shape_arm("flow", OPTS, rollouts, groups, flow_token_rewards=flow, uniform=True)
    assert not torch.equal(flow_only.advantages[4], base.advantages[4])  # uniform: shaped


def test_probe_cosine():
    cfg = SMOKE.with_overrides(steps=1)
    arms = parse_arms("rlvr,oracle")
    rec = run_probe(cfg, arms, betas=(0.0, 1.0), batches=1, seed=0)
    rows = {(e["arm"], e["beta"]): e for e in rec["table"]}
    assert rows[("rlvr", 1.0)]["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert rows[("rlvr", 1.0)]["norm_ratio"] == 0.0 and rows[("rlvr", 1.0)]["sign_flip"] == 0.0
    assert rows[("oracle", 0.0)]["cosine"] == pytest.approx(1.0, abs=1e-9)  # no shaping
    assert rows[("oracle", 1.0)]["cosine"] < 1.0 - 1e-6
    assert rows[("oracle", 1.0)]["norm_ratio"] > 0 and rows[("oracle", 0.0)]["cannot_differ"]
    assert "| oracle | 1 |" in probe_table(rec)
    assert suggested_beta(rec, "rlvr") is None
    assert compare(torch.ones(3), torch.zeros(3)) is None
    flips = compare(torch.tensor([1.0, -1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert flips["sign_flip"] == pytest.approx(2 / 3)


def _run(arm: str, seed: int, pass1: list[float], pass_k: float | None = None) -> dict:
    evals = [{"step": 10 * i, "greedy": p, "pass1": p, "greedy_length": 43.0,
              "pass1_length": 43.0, "seen_greedy": p, "gap": 0.0, "pass_k": None}
             for i, p in enumerate(pass1)]
    evals[-1]["pass_k"] = pass_k
    train = [{"step": s, "reward": 0.8, "response_length": 43.0, "flow_return": 0.0}
             for s in range(1, 10 * (len(pass1) - 1) + 1)]
    return {"arm": arm, "seed": seed, "beta": 0.1, "eval": evals, "train": train,
            "seconds": 1.0, "service": {"flow_version_end": 0}}


def test_paired_report():
    assert auc([{"step": 0, "pass1": 0.0}, {"step": 10, "pass1": 1.0}]) == pytest.approx(0.5)
    assert bootstrap_interval([0.1, 0.1, 0.1]) == pytest.approx((0.1, 0.1))
    lo, hi = bootstrap_interval([0.0, 0.1, 0.2, 0.3])
    assert 0.0 <= lo < 0.15 < hi <= 0.3
    assert (reading((0.01, 0.02)), reading((-0.1, 0.1)), reading((-2, -1))) == (
        "helps", "cannot tell", "hurts")
    assert reading((0.01, 0.02), seeds=2).startswith("none")
    settings = FULL.with_overrides(steps=20, eval_every=10, target=0.85, pass_k=8).to_dict()
    runs = []
    for seed in range(5):
        runs.append(_run("rlvr", seed, [0.8, 0.82, 0.84], 0.95))
        runs.append(_run("oracle", seed, [0.8, 0.85 + 0.01 * seed, 0.88], 0.97))
        runs.append(_run("shuffled", seed, [0.8, 0.81, 0.83], 0.95))
        runs.append(_run("rlfr", seed, [0.8, 0.82 + 0.01 * (seed - 2), 0.84], 0.95))
    arms = {"rlvr": {}, "oracle": {}, "shuffled": {}, "rlfr": {}}
    results = {"settings": settings, "arms": arms, "runs": runs}
    summary = summarize(results)
    p = summary["oracle"]["paired_vs_rlvr"]
    assert p["final_pass1"]["values"] == pytest.approx([0.04] * 5)
    assert p["pass_k"]["mean"] == pytest.approx(0.02)
    assert p["steps_to_target"]["values"] == [-20.0] * 5  # 10 vs never (30)
    assert p["auc_pass1"]["ci95"][0] > 0 and p["reading"] == "helps"
    assert "paired_vs_rlvr" not in summary["rlvr"]
    assert summary["rlfr"]["paired_vs_rlvr"]["reading"] == "cannot tell"  # -2 to +2 points
    assert summary["rlfr"]["paired_vs_shuffled"]["final_pass1"]["mean"] == pytest.approx(0.01)
    assert "paired_vs_shuffled" not in summary["oracle"]
    table = markdown_table({**results, "summary": summary})
    assert "| oracle | 5 | +" in table and "| helps |" in table


def test_new_arms_and_settings():
    assert ARMS["rlfr-unilateral"].normalization == "unilateral"
    assert ARMS["oracle"].signal == "oracle" and ARMS["shuffled"].signal == "shuffled"
    assert not FULL.shape_uniform_only and FULL.pass_k == 0 and FULL.probe_batches == 6
    assert SMOKE.probe_batches == 1
    with pytest.raises(ValueError):
        FULL.with_overrides(pass_k=-1)
    assert math.isfinite(FULL.beta)
