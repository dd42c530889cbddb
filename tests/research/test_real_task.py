"""The real-model task's generator and verifier (research/real/task.py): no model needed."""

from __future__ import annotations

import itertools

import pytest

from research.real.task import (
    Problem,
    TaskConfig,
    char_to_token,
    chat_messages,
    final_answer,
    first_error_char,
    first_step_error,
    make_splits,
    verify,
)


def _key(p: Problem) -> tuple[int, ...]:
    return tuple(sorted(p.numbers))


def test_splits_are_deterministic():
    assert make_splits(TaskConfig()) == make_splits(TaskConfig())
    assert make_splits(TaskConfig(split_seed=1)) != make_splits(TaskConfig())


def test_splits_are_disjoint_by_multiset_and_cover_the_expert_orders():
    cfg = TaskConfig()
    s = make_splits(cfg)
    assert (len(s.shots), len(s.dev), len(s.eval)) == (cfg.shots, cfg.dev, cfg.eval)
    keys = {name: {_key(p) for p in s[name]} for name in ("shots", "dev", "eval", "expert")}
    for a, b in itertools.combinations(keys, 2):
        assert not keys[a] & keys[b], (a, b)
    everything = set(itertools.combinations_with_replacement(range(cfg.lo, cfg.hi + 1), 3))
    assert set().union(*keys.values()) == everything
    # expert holds every ordering of its multisets, once
    assert len(set(s.expert)) == len(s.expert)
    assert {p.numbers for p in s.expert} == {
        q for k in keys["expert"] for q in itertools.permutations(k)
    }
    assert all(cfg.lo <= x <= cfg.hi for p in s.dev + s.eval for x in p.numbers)


def test_prompt_has_the_shots_then_the_question():
    s = make_splits(TaskConfig())
    msgs = chat_messages(s.dev[0], s.shots)
    assert [m["role"] for m in msgs] == ["user", "assistant"] * len(s.shots) + ["user"]
    assert msgs[1]["content"] == s.shots[0].solution()
    assert msgs[-1]["content"] == s.dev[0].question()


def test_verifier_accepts_every_templated_expert_solution():
    s = make_splits(TaskConfig())
    for p in s.expert + s.shots:
        assert verify(p, p.solution()) == 1.0
        assert first_step_error(p, p.solution()) is None
        assert first_error_char(p, p.solution()) is None
    assert Problem((7, 8, 3)).solution() == "7 + 8 = 15. 15 + 3 = 18. The answer is 18."


@pytest.mark.parametrize("numbers", [(7, 8, 3), (2, 2, 2), (12, 11, 9), (5, 10, 2)])
def test_verifier_rejects_a_one_digit_corruption_of_the_answer(numbers):
    p = Problem(numbers)
    good = p.solution()
    head, _, tail = good.rpartition("answer is ")
    digits = tail.rstrip(".")
    for k in range(len(digits)):
        for d in "0123456789":
            if d == digits[k]:
                continue
            bad = head + "answer is " + digits[:k] + d + digits[k + 1 :] + "."
            assert verify(p, bad) == 0.0
            assert first_error_char(p, bad) == len(head) + len("answer is ") + k


def test_final_answer_parsing():
    assert final_answer("so the answer is 18.") == 18
    assert final_answer("The answer is: 18") == 18
    assert final_answer("The Answer is 7. The answer is 9.") == 7  # the first one counts
    assert final_answer("18 is the answer.") is None
    assert verify(Problem((7, 8, 3)), "7 + 8 + 3 = 18.") == 0.0  # no "answer is": no credit


def test_first_error_points_at_the_first_wrong_digit_of_a_step():
    p = Problem((7, 8, 3))
    r = "7 + 8 = 16. 16 + 3 = 19. The answer is 19."
    assert first_error_char(p, r) == r.index("16") + 1  # "1" is right, "6" is wrong
    r = "7 + 8 = 25. 25 + 3 = 28. The answer is 28."
    assert first_error_char(p, r) == r.index("25")
    # cut short: 7 + 8 = 1 then "." -- the "." is where "5" should have come
    r = "7 + 8 = 1. 1 + 3 = 4. The answer is 4."
    assert first_error_char(p, r) == r.index(".")
    # true sums, but 8 used twice: the second 8 is the error
    r = "7 + 8 = 15. 15 + 8 = 23. The answer is 23."
    assert first_error_char(p, r) == r.index("+ 8 = 23") + 2
    # an operator other than +
    r = "7 + 8 = 15. 15 - 3 = 12. The answer is 12."
    assert first_error_char(p, r) == r.index("-")
    # all steps right but the stated answer wrong: its first wrong digit
    r = "7 + 8 = 15. 15 + 3 = 18. The answer is 19."
    assert first_error_char(p, r) == r.rindex("19") + 1
    # no steps and no answer: nothing to locate
    assert first_error_char(p, "I do not know.") is None


def test_correct_answer_with_a_wrong_step_is_rewarded_but_flagged():
    p = Problem((9, 10, 4))
    r = "9 + 10 + 4 = 19. 19 + 4 = 23. The answer is 23."
    assert verify(p, r) == 1.0
    assert first_error_char(p, r) is None  # located only for wrong rollouts
    assert first_step_error(p, r) == r.index("19")  # 9 + 10 + 4 is 23: its "1" is wrong


def test_char_to_token_on_a_constructed_tokenisation():
    p = Problem((7, 8, 3))
    tokens = ["7", " +", " ", "8", " =", " ", "1", "6", ".", " ", "1", "6", " +", " ", "3"]
    response = "".join(tokens)
    assert response == "7 + 8 = 16. 16 + 3"
    pos = first_error_char(p, response + " = 19. The answer is 19.")
    assert char_to_token(tokens, pos) == 7  # the token "6" of the first "16"
    assert char_to_token(tokens, 0) == 0
    assert char_to_token(tokens, len(response)) is None
