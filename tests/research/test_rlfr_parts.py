"""The experiment's pieces without a service: problems, loss, shaping, summaries, settings."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flowfield.demo.policy import sample_rollouts
from flowfield.evaluation.logits import token_logit_stats
from flowfield.evaluation.problems import eval_problems
from flowfield.rewards import RewardOptions, group_advantages, token_rewards
from research.rlfr.arms import ARMS, parse_arms, with_update
from research.rlfr.config import FULL, SMOKE, ExperimentConfig
from research.rlfr.evaluate import prompt_schedule, train_pool
from research.rlfr.policy_gradient import ended, policy_forward, policy_gradient_loss
from research.rlfr.report import markdown_table, slope, steps_to, summarize
from research.rlfr.shaping import shape_outcome, shape_service, shape_signal


@pytest.fixture(scope="module")
def policy():
    path = FULL.policy
    return AutoModelForCausalLM.from_pretrained(path).float().eval(), AutoTokenizer.from_pretrained(
        path
    )


@pytest.fixture(scope="module")
def rollouts(policy):
    model, tok = policy
    problems = [p for p in prompt_schedule(0, 1, 3)[0] for _ in range(4)]
    return sample_rollouts(model, tok, problems, temperature=1.0, seed=5)


def test_train_prompts_never_held_out():
    pool = set(train_pool())
    assert not pool & set(eval_problems(1000, "eval"))
    assert not pool & set(eval_problems(2000, "dev"))
    a, b = prompt_schedule(3, 5, 4), prompt_schedule(3, 5, 4)
    assert a == b and len({p for step in a for p in step}) == 20  # reproducible, no repeats
    assert prompt_schedule(4, 5, 4) != a


def test_forward_signals_match_the_evaluation_baselines(policy, rollouts):
    model, tok = policy
    fwd = policy_forward(model, rollouts, tok.eos_token_id, tok.pad_token_id)
    ref = token_logit_stats(model, [r.prompt_ids for r in rollouts],
                            [r.response_ids for r in rollouts], tok.pad_token_id)
    for r, lp, nll, ent, (ref_nll, ref_ent) in zip(rollouts, fwd.logp, fwd.nll, fwd.entropy, ref):
        n = len(r.response_ids)
        assert lp.shape == (n + int(ended(r)),) and lp.requires_grad
        torch.testing.assert_close(nll, ref_nll, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ent, ref_ent, atol=1e-4, rtol=1e-4)


def test_loss_is_the_token_mean_of_minus_advantage_logp(policy, rollouts):
    model, tok = policy
    fwd = policy_forward(model, rollouts[:2], tok.eos_token_id, tok.pad_token_id)
    adv = [torch.full_like(lp, 2.0).detach() for lp in fwd.logp]
    loss = policy_gradient_loss(fwd.logp, adv)
    flat = torch.cat([lp.detach() for lp in fwd.logp])
    assert loss.item() == pytest.approx(-2.0 * flat.mean().item(), rel=1e-5)
    with pytest.raises(ValueError):
        policy_gradient_loss(fwd.logp, [a[:-1] for a in adv])


def test_logit_shaping_is_the_service_shaping():
    g = torch.Generator().manual_seed(0)
    signals = [torch.rand(n, generator=g) * 3 for n in (20, 25, 7, 30)]
    rewards, groups, ends = [1.0, 0.0, 0.0, 1.0], ["a", "a", "b", "b"], [True, False, True, True]
    opts = RewardOptions("bilateral", 0.01, 0.6, 5)
    shaped = shape_signal(signals, rewards, groups, ends, opts)
    expected = group_advantages([token_rewards(s, opts) for s in signals], rewards, groups)
    for a, e, s, end in zip(shaped.advantages, expected, signals, ends):
        assert a.shape == (len(s) + int(end),)
        torch.testing.assert_close(a[: len(s)], e.float())
    # the end token carries the outcome advantage alone: +-1/sqrt(2) in a group of two
    assert shaped.advantages[0][-1].item() == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    assert shaped.dense_return[0] == pytest.approx(float(token_rewards(signals[0], opts).sum()))


def test_outcome_and_service_shaping():
    out = shape_outcome([3, 4, 2], [1.0, 1.0, 0.0], ["a", "a", "b"], [True, False, False])
    assert [a.tolist() for a in out.advantages] == [[0.0] * 4, [0.0] * 4, [0.0] * 2]
    out = shape_outcome([2, 2], [1.0, 0.0], ["a", "a"], [False, True])
    assert out.advantages[0].tolist() == pytest.approx([1 / math.sqrt(2)] * 2)
    assert out.advantages[1].tolist() == pytest.approx([-1 / math.sqrt(2)] * 3)
    # a sample the service could not score (None) falls back to its outcome advantage
    svc = shape_service([[0.5, 0.4], None], [-0.1, None], [2, 0], [1.0, 0.0], ["a", "a"],
                        [True, True])
    assert svc.advantages[0].tolist() == pytest.approx([0.5, 0.4, 1 / math.sqrt(2)])
    assert svc.advantages[1].tolist() == pytest.approx([-1 / math.sqrt(2)])
    assert svc.dense_return == [-0.1, 0.0]


def test_settings_and_arms():
    assert SMOKE.steps == 2 and SMOKE.seeds == (0,) and SMOKE.sync_every == 1
    assert FULL.eval_steps()[0] == 0 and FULL.eval_steps()[-1] == FULL.steps
    cfg = FULL.with_overrides(steps=7, eval_every=3, lr=None)
    assert cfg.eval_steps() == [0, 3, 6, 7] and cfg.lr == FULL.lr
    for bad in ({"split": "train"}, {"group_size": 1}, {"update": "maybe"}, {"seeds": ()}):
        with pytest.raises(ValueError):
            FULL.with_overrides(**bad)
    with pytest.raises(ValueError):
        ExperimentConfig(arms=("rlvr", "bogus"))
    assert [a.name for a in parse_arms("all")] == list(ARMS)
    assert [a.name for a in parse_arms("nll, rlfr")] == ["nll", "rlfr"]
    with pytest.raises(ValueError):
        parse_arms("rlvr,rlvr")
    assert with_update(ARMS["rlfr"], "off").update is False
    assert with_update(ARMS["rlfr-frozen"], "auto").update is False


def _fake_run(arm: str, seed: int, pass1: list[float]) -> dict:
    evals = [
        {"step": 5 * i, "greedy": p + 0.1, "pass1": p, "greedy_length": 43.0,
         "pass1_length": 43.5, "seen_greedy": p + 0.15, "gap": 0.05}
        for i, p in enumerate(pass1)
    ]
    train = [
        {"step": s, "reward": 0.5, "response_length": 44.0, "flow_return": 0.01 * s}
        for s in range(1, 5 * (len(pass1) - 1) + 1)
    ]
    return {"arm": arm, "seed": seed, "eval": evals, "train": train, "seconds": 10.0,
            "service": {"flow_version_end": 3}}


def test_summary_and_table():
    assert steps_to([{"step": 0, "pass1": 0.5}, {"step": 5, "pass1": 0.7}], "pass1", 0.65) == 5
    assert steps_to([{"step": 0, "pass1": 0.5}], "pass1", 0.65) is None
    assert slope([0, 1, 2], [1, 3, 5]) == pytest.approx(2.0) and slope([1], [1]) is None
    settings = FULL.with_overrides(eval_every=5, steps=10, target=0.65).to_dict()
    results = {
        "settings": settings,
        "arms": {"rlvr": {}, "rlfr": {}},
        "runs": [_fake_run("rlvr", 0, [0.5, 0.6, 0.7]), _fake_run("rlvr", 1, [0.5, 0.55, 0.6]),
                 _fake_run("rlfr", 0, [0.5, 0.66, 0.8])],
    }
    summary = summarize(results)
    assert list(summary) == ["rlvr", "rlfr"]
    rlvr = summary["rlvr"]
    assert rlvr["final"]["pass1"]["mean"] == pytest.approx(0.65)
    assert rlvr["final"]["pass1"]["std"] == pytest.approx(math.sqrt(0.005))
    assert rlvr["steps_to_target"]["values"] == [10, None]
    assert rlvr["hacking"]["flow_return"]["slope_per_100_steps"] == pytest.approx(1.0)
    assert summary["rlfr"]["final"]["pass1"]["std"] is None  # one seed
    table = markdown_table({**results, "summary": summary})
    assert "| rlvr | 2 | 60.0 ± 0.0 | 75.0 ± 7.1 |" in table
    assert "10 (1/2 seeds)" in table and "| rlfr | 1 |" in table
