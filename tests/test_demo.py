"""The bundled demo: task, tokenizer and policy (60-90% right at T=1). The flow's learned signal
is checked with the demo builder's check, in tests/research/test_demo_build.py."""

import random

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from flowfield.demo.policy import sample_rollouts
from flowfield.demo.task import (
    Problem,
    corrupt_digits,
    expert_solution,
    first_error,
    parse_answer,
    split_problems,
    verify,
)
from flowfield.demo.tokenizer import build_tokenizer
from service.settings import DEMO_ASSETS


def test_expert_solution_and_verifier():
    p = Problem(1234, 5678)
    s = expert_solution(p)
    assert s == "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06,A:6912."
    assert verify(p, s) == 1.0 and parse_answer(s) == 6912
    assert expert_solution(Problem(9999, 1)).endswith("A:10000.")
    assert verify(p, s.replace("6912", "6913")) == 0.0
    assert verify(p, "garbage") == 0.0 and parse_answer("A:12") == 12


def test_first_error():
    p = Problem(1234, 5678)
    s = expert_solution(p)
    assert first_error(p, s) is None
    assert first_error(p, s[:5] + "9" + s[6:]) == 5
    assert first_error(p, s[:10]) == 10  # cut short
    assert first_error(p, s + "x") == len(s)


def test_splits_are_disjoint_and_stable():
    a, b, c = split_problems(0)
    assert not (set(a) & set(b)) and not (set(a) & set(c)) and not (set(b) & set(c))
    assert split_problems(0)[2][:5] == c[:5]


def test_corrupt_digits_changes_exactly_n_digits():
    s = expert_solution(Problem(1234, 5678))
    bad = corrupt_digits(s, 3, random.Random(0))
    assert len(bad) == len(s) and sum(x != y for x, y in zip(s, bad)) == 3


def test_tokenizer_is_character_level_and_round_trips():
    tok = build_tokenizer()
    text = Problem(12, 3400).prompt + expert_solution(Problem(12, 3400))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    saved = AutoTokenizer.from_pretrained(DEMO_ASSETS / "policy")
    assert saved(text, add_special_tokens=False)["input_ids"] == ids


@pytest.mark.slow
def test_bundled_policy_is_right_60_to_90_percent_at_temperature_1():
    model = AutoModelForCausalLM.from_pretrained(DEMO_ASSETS / "policy")
    tok = AutoTokenizer.from_pretrained(DEMO_ASSETS / "policy")
    _, _, held_out = split_problems(0)
    rollouts = sample_rollouts(model, tok, held_out[:300], temperature=1.0, seed=1)
    acc = sum(r.reward for r in rollouts) / len(rollouts)
    assert 0.6 <= acc <= 0.9, acc  # trained to 75% on validation problems
    greedy = sample_rollouts(model, tok, held_out[:100], temperature=1e-4, seed=1)
    assert sum(r.reward for r in greedy) / 100 > acc  # sampling noise causes the errors
    wrong = [r for r in rollouts if r.reward == 0]
    assert all(r.first_error is not None for r in wrong)


def test_parse_prompt_round_trips_only_the_demo_format():
    from flowfield.demo.task import Problem, parse_prompt

    assert parse_prompt("Q:0012+5678\n") == Problem(12, 5678)
    for bad in ("Q:12+34\n", "Q:1234+5678", "Q:+\n", "1234+5678\n", "Q:١٢٣٤+5678\n"):
        assert parse_prompt(bad) is None
