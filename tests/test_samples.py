"""flowfield.samples: the one rule for "can this sample be scored", and the places using it
(the service's sample_problem, the learner, the fitting and evaluation JSONL loaders)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from flowfield.encoder import NO_TOKENIZER
from flowfield.evaluation.evaluate import load_rollouts
from flowfield.samples import EMPTY_RESPONSE, SampleLimits, check_sample
from flowfield.training.data import load_jsonl

LIMITS = SampleLimits(vocab_size=10, max_positions=8)


@pytest.mark.parametrize(
    "prompt,response,kw,reason",
    [
        ([1, 2], [3, 4], {}, None),
        ([], [9], {}, None),
        ([1] * 4, [2] * 4, {}, None),  # exactly the context
        (np.array([1, 2]), np.array([3], dtype=np.int64), {}, None),  # numpy ids are ids
        ([1], [], {}, EMPTY_RESPONSE),
        ([1], [], {"needs_tokenizer": True}, EMPTY_RESPONSE),  # a tokenizer is there
        ([1], [3, 10], {}, "response_ids holds token id 10, outside the vocabulary [0, 10)"),
        ([-1], [3], {}, "prompt_ids holds token id -1, outside the vocabulary [0, 10)"),
        ([1], [2**70], {}, f"response_ids holds token id {2**70}, outside the vocabulary"),
        ([1], [3, 1.5], {}, "response_ids holds 1.5, not a token id (an integer in [0, 10))"),
        ([True], [3], {}, "prompt_ids holds True, not a token id"),
        ([1], ["x" * 100], {}, "response_ids holds 'xxxx"),
        ([1], [{"a": 1}], {}, "response_ids holds {'a': 1}, not a token id"),
        ([1] * 5, [2] * 4, {}, "9 tokens, longer than the model's context of 8"),
        # the vocabulary is checked before the length, the empty response before both
        ([1] * 5, [2] * 3 + [11], {}, "response_ids holds token id 11"),
        ([-5] * 20, [], {}, EMPTY_RESPONSE),
    ],
)
def test_check_sample(prompt, response, kw, reason):
    got = check_sample(prompt, response, LIMITS, **kw)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason), got


def test_no_tokenizer_comes_first_and_only_for_text():
    no_tok = SampleLimits(vocab_size=10, has_tokenizer=False)
    assert check_sample([], [], no_tok, needs_tokenizer=True) == NO_TOKENIZER
    assert check_sample([], [3], no_tok) is None  # ids need no tokenizer
    assert check_sample([], [], no_tok) == EMPTY_RESPONSE


def test_caller_limit_and_unknown_context():
    assert check_sample([1] * 100, [2], SampleLimits(vocab_size=10)) is None  # no max_positions
    capped = SampleLimits(vocab_size=10, max_positions=8, max_tokens=4)
    assert check_sample([1, 1], [2, 2, 2], capped) == "5 tokens, more than the limit 4"
    assert check_sample([1, 1], [2, 2], capped) is None


def fake_encoder(vocab=10, max_positions=8, tokenizer=True):
    """What the rule and the loaders read of a LatentEncoder; text: one id per character."""

    def tokenize(prompt, response):
        if not tokenizer and (prompt or response):
            raise AssertionError("tokenize called without a tokenizer")
        return [int(c) for c in prompt], [int(c) for c in response]

    return SimpleNamespace(
        vocab_size=vocab,
        max_positions=max_positions,
        has_tokenizer=tokenizer,
        tokenizer=None,
        tokenize=tokenize,
    )


def test_limits_of_an_encoder():
    enc = fake_encoder(vocab=21, max_positions=128, tokenizer=False)
    assert SampleLimits.of(enc) == SampleLimits(21, 128, False, None)
    assert SampleLimits.of(SimpleNamespace(vocab_size=5)) == SampleLimits(5, None, True, None)
    assert SampleLimits.of(enc, max_tokens=64).max_tokens == 64


def test_service_sample_problem_is_the_rule():
    from service.samples import sample_problem

    enc = fake_encoder(tokenizer=False)
    sample = SimpleNamespace(id="a", prompt_ids=None, response_ids=[3], prompt="hi", response=None)
    assert sample_problem([], [3], enc, sample) == NO_TOKENIZER
    assert sample_problem([1], [3, 10], enc) == check_sample([1], [3, 10], LIMITS)
    assert sample_problem([1], [], enc) == EMPTY_RESPONSE


def test_learner_drops_what_the_rule_refuses():
    from service.updates.learner import Learner
    from service.updates.types import UpdateSample

    def problem(prompt, response, weight=1.0):  # _problem reads only the learner's encoder
        sample = UpdateSample("u:a", prompt, response, 1.0, weight)
        return Learner._problem(SimpleNamespace(encoder=fake_encoder()), sample)

    assert problem([1], [3, 10]) == check_sample([1], [3, 10], LIMITS)
    assert problem([1], []) == EMPTY_RESPONSE
    assert problem([1] * 5, [2] * 4) == "9 tokens, longer than the model's context of 8"
    assert "weight" in problem([1], [2], float("nan"))
    assert problem([1], [2]) is None


def write(tmp_path, rows) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


BAD_ROWS = [
    ({"prompt_ids": [1], "response_ids": []}, EMPTY_RESPONSE),
    ({"prompt_ids": [1], "response_ids": [10]}, "response_ids holds token id 10, outside"),
    ({"prompt_ids": [-1], "response_ids": [2]}, "prompt_ids holds token id -1, outside"),
    ({"response_ids": ["3"]}, "response_ids holds '3', not a token id"),
    ({"prompt_ids": [1] * 5, "response_ids": [2] * 4}, "9 tokens, longer than the model's"),
    ({"prompt": "12345", "response": "6789"}, "9 tokens, longer than the model's"),
    ({"response_ids": 3}, "prompt_ids and response_ids must be lists"),
]


@pytest.mark.parametrize("row,reason", BAD_ROWS)
def test_fit_loader_names_the_line_and_the_rule(tmp_path, row, reason):
    path = write(tmp_path, [{"response_ids": [1]}, row])
    with pytest.raises(ValueError) as e:
        load_jsonl(path, fake_encoder())
    assert str(e.value).startswith(f"{path}:2: {reason}"), e.value


@pytest.mark.parametrize("row,reason", BAD_ROWS)
def test_eval_loader_names_the_line_and_the_rule(tmp_path, row, reason):
    path = write(tmp_path, [{"response_ids": [1], "reward": 1}, {**row, "reward": 0}])
    with pytest.raises(ValueError) as e:
        load_rollouts(path, fake_encoder())
    assert str(e.value).startswith(f"{path}:2: {reason}"), e.value


def test_loaders_without_a_tokenizer(tmp_path):
    enc = fake_encoder(tokenizer=False)
    text = write(tmp_path, [{"prompt": "1", "response": "2", "reward": 1}])
    for load in (load_jsonl, load_rollouts):
        with pytest.raises(ValueError, match=re.escape(f":1: {NO_TOKENIZER}")):
            load(text, enc)
    # ids win over text, so text next to ids needs no tokenizer
    ids = write(
        tmp_path,
        [{"prompt_ids": [1], "response_ids": [2], "prompt": "1", "response": "2", "reward": 1}],
    )
    assert load_jsonl(ids, enc)[0].response_ids == (2,)
    assert load_rollouts(ids, enc)[0].response_ids == [2]


def test_loaders_keep_good_samples(tmp_path):
    path = write(
        tmp_path,
        [
            {"prompt": "12", "response": "34", "reward": 1},
            {"prompt_ids": [5], "response_ids": [6, 7], "reward": 0},
        ],
    )
    assert [(s.prompt_ids, s.response_ids) for s in load_jsonl(path, fake_encoder())] == [
        ((1, 2), (3, 4)),
        ((5,), (6, 7)),
    ]
    got = load_rollouts(path, fake_encoder())
    assert [(r.prompt_ids, r.response_ids) for r in got] == [([1, 2], [3, 4]), ([5], [6, 7])]
    with pytest.raises(ValueError, match="more than the limit 3"):
        load_jsonl(path, fake_encoder(), max_tokens=3)
