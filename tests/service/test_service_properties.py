"""Property tests over the request schemas, sent over HTTP to one real server per module.

Hypothesis builds /v1/score (and /ui/render), /v1/update and /v1/score/graph requests: valid
ones (ids of any Unicode text, token ids, text, options, JSON states) and invalid ones made from
a valid one by one change (a wrong type, a value out of range, NaN or Infinity, a lone UTF-16
surrogate, a missing or an unknown field, a duplicate id). For every request:

- never a 5xx;
- a 4xx is JSON, the documented error object, with a documented code, and it names the field
  that was changed (docs/api.md "Errors");
- a 200/202 validates against the response model (service/schemas.py), and its numbers are
  consistent with the request (one result per sample in order, rewards bounded by beta, the
  flow return is the sum of the token rewards, advantages follow the documented formula, graph
  returns and advantages add up);
- the same request twice gives the same answer.

Failures this fuzz found are kept as regular tests at the end of the file (they were strict
xfails until the service was fixed). The general strategies stay clear of what triggered
those bugs (ints that fit a float, rewards below 1e150, beta below
1e300, /ui/render token ids in [0, 2**32)), so the properties keep checking everything else.

Budget: about 550 requests; the server runs without the learner so the flow version (and so
the numbers) cannot change between two identical requests.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import statistics
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import Server

from flowfield.demo import DEMO_POLICY
from service.schemas import ErrorResponse, GraphResponse, ScoreResponse, UpdateResponse

VOCAB = 21  # the demo policy: <pad> <eos> <unk> 0-9 + = , : . A Q \n
CONTEXT = 128  # its n_positions
DEMO_CHARS = "0123456789+=,:.AQ\n"

JSON = {"content-type": "application/json"}
NAN, INF = float("nan"), float("inf")

CODES_422 = {
    "invalid_json", "invalid_request", "invalid_option", "too_many_samples", "too_many_tokens",
    "request_too_costly", "duplicate_id", "missing_response", "missing_reward", "invalid_sample",
    "invalid_trajectory", "invalid_reward", "length_mismatch", "no_tokenizer",
}

ERROR_KEYS = {"code", "message", "field", "sample_id", "request_id"}  # docs/api.md "Errors"

STATS: Counter = Counter()  # (path, status) -> requests


def fuzz_settings(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        database=None,  # nothing written under the repository
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo service without the in-process learner: /v1/update only queues, so the flow
    version (and every score) stays the same for the whole module."""
    srv = Server(tmp_path_factory.mktemp("props"), env={"FLOWFIELD_LEARNER": "false"})
    yield srv
    total = sum(STATS.values())
    fives = sum(n for (_, s), n in STATS.items() if s >= 500)
    print(f"\nproperty fuzz: {total} requests, 5xx: {fives}, "
          f"by (path, status): {dict(sorted(STATS.items()))}")
    srv.stop()


# ---- sending and checking --------------------------------------------------------------------


def encode(body) -> bytes:
    """JSON text as the wire carries it: a lone surrogate becomes its \\uXXXX escape (what
    httpx's encoder refuses), NaN and Infinity are written as the bare tokens."""
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


def post(client, path: str, body, raw: bytes | None = None, expect: int | None = None):
    """POST `body` (or the bytes `raw`): never a 5xx; with `expect`, exactly that status."""
    content = raw if raw is not None else encode(body)
    r = client.post(path, content=content, headers=JSON)
    STATS[(path, r.status_code)] += 1
    assert r.status_code < 500, (
        f"{path} answered {r.status_code}: {r.text}\nrequest body: {content[:3000]!r}"
    )
    if expect is not None:
        assert r.status_code == expect, r.text
    return r


def draw_optional(draw, body: dict, **strategies) -> dict:
    """Each key of `strategies` set in `body` (to a drawn value) or left out, by a coin."""
    for key, strategy in strategies.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


def printable(text: str) -> str:
    """How the service echoes text that may hold a lone surrogate (service/errors.py)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_error(r, status: int = 422, field: str | tuple[str, ...] | None = None,
                code: str | None = None) -> dict:
    """The documented error object: {"error": {code, message, field, sample_id}}."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    r.content.decode("utf-8")  # strict UTF-8, even when a lone surrogate was echoed
    body = r.json()
    assert set(body) == {"error"}, body
    keys = set(body["error"])
    assert {"code", "message", "field", "sample_id"} <= keys <= ERROR_KEYS, body
    if "request_id" in keys:
        assert body["error"]["request_id"] == r.headers.get("x-request-id"), body
    err = ErrorResponse.model_validate(body).error
    assert err.message
    if status == 422:
        assert err.code in CODES_422, err
        assert err.field, f"a 422 names the field: {body}"
    if field is not None:
        assert err.field.startswith(field), f"expected field {field!r}: {body}"
    if code is not None:
        assert err.code == code, body
    return body["error"]


def same_numbers(a, b, path: str = "") -> None:
    """Equal JSON, floats up to 1e-9 relative (the docs promise the same numbers)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), (path, a, b)
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a, b)
        for k in a:
            same_numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            same_numbers(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


# ---- strategies ------------------------------------------------------------------------------

# any Unicode text (no surrogates: hypothesis' default), NUL and astral characters included
text = st.text(max_size=20)
ident = st.text(min_size=1, max_size=24) | st.text(min_size=250, max_size=256)
# text holding at least one lone surrogate, as it reaches the server (a high surrogate right
# before a low one would be read back as one valid character, so those are filtered out)
lone = st.tuples(text, st.characters(categories=["Cs"]), text).map("".join).filter(
    lambda s: not valid_unicode(json.loads(json.dumps(s)))
)
# numbers a float holds; 1e150 keeps a group's variance finite (see the xfails below)
finite = st.floats(-1e150, 1e150, allow_nan=False) | st.integers(-(2**63), 2**63)
small = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-1000, 1000)
token = st.integers(0, VOCAB - 1)
any_token = token | st.integers() | st.integers(-(2**70), 2**70)  # out of vocab: sample error
json_scalar = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(
    allow_nan=False, allow_infinity=False
) | text
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
extra_keys = st.dictionaries(
    text.filter(lambda k: k not in {"id", "group_id", "prompt_ids", "response_ids", "prompt",
                                    "response", "reward"}),
    json_value, max_size=2,
)


@st.composite
def score_sample(draw, rewarded: bool = False) -> dict:
    """A sample the demo policy can score: token ids in the vocabulary, or demo-alphabet text,
    at most CONTEXT tokens in all."""
    s: dict = {"id": draw(ident)}
    if draw(st.booleans()):
        s["prompt_ids"] = draw(st.lists(token, max_size=40))
    else:
        s["prompt"] = draw(st.text(DEMO_CHARS, max_size=40) | st.none())
    if draw(st.booleans()):
        s["response_ids"] = draw(st.lists(token, min_size=1, max_size=40))
    else:
        s["response"] = draw(st.text(DEMO_CHARS, min_size=1, max_size=40))
    draw_optional(draw, s, group_id=st.sampled_from(["g0", "g1", ""]) | ident | st.none())
    if rewarded or draw(st.booleans()):
        s["reward"] = draw(small if rewarded else finite)
    return s


@st.composite
def score_options(draw, advantages: bool | None = None) -> dict:
    o: dict = {}
    timesteps = draw(st.none() | st.lists(st.floats(0.01, 0.99), min_size=1, max_size=3))
    if timesteps is not None:
        o["timesteps"] = timesteps
    norms = ["bilateral", "unilateral"] + (["expert"] if timesteps in (None, [0.8]) else [])
    draw_optional(
        draw, o,
        normalization=st.sampled_from(norms),
        beta=st.floats(0, 1e6) | st.integers(0, 1000) | st.just(1e300),
        threshold=st.floats(0, 2) | st.integers(0, 3),
        top_k=st.integers(0, 50) | st.just(1_000_000),
        noise_draws=st.integers(1, 3),
        return_deviations=st.booleans(),
    )
    adv = draw(st.booleans()) if advantages is None else advantages
    if adv or draw(st.booleans()):
        o["return_advantages"] = adv
    return o


@st.composite
def score_request(draw) -> dict:
    """A valid /v1/score request: 200, every sample "ok"."""
    adv = draw(st.booleans())
    samples = draw(st.lists(score_sample(rewarded=adv), max_size=4, unique_by=lambda s: s["id"]))
    body: dict = {"samples": samples}
    if draw(st.booleans()) or adv:
        body["options"] = draw(score_options(advantages=adv))
    return body


@functools.cache
def demo_tokenizer():
    """The demo policy's own tokenizer: the one the server encodes text with."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_POLICY)


def tokens_of(sample: dict, part: str) -> list[int]:
    """The token ids the service reads: the ids when given (ids win over text), else the text
    tokenised as the service does it (the demo tokenizer, no special tokens). Not one token
    per character: the demo tokenizer reads a run of newlines, e.g. "\\n\\n", as one token."""
    ids = sample.get(f"{part}_ids")
    if ids is not None:
        return list(ids)
    text = sample.get(part) or ""
    return list(demo_tokenizer()(text, add_special_tokens=False)["input_ids"]) if text else []


def check_score_response(body: dict, out: dict, all_ok: bool) -> None:
    ScoreResponse.model_validate(out)
    opts = body.get("options", {})
    samples = body["samples"]
    assert [r["id"] for r in out["results"]] == [s["id"] for s in samples]
    assert out["normalization"] in {"bilateral", "unilateral", "expert"}
    if opts.get("normalization"):
        assert out["normalization"] == opts["normalization"]
    beta = float(opts.get("beta", 0.01))
    top_k = opts.get("top_k", 15)
    for s, res in zip(samples, out["results"]):
        assert None not in res.values(), f"a field that does not apply is left out: {res}"
        if res["status"] == "error":
            assert not all_ok, res
            assert res["error"] and "token_rewards" not in res
            continue
        assert "error" not in res
        n = res["num_tokens"]
        assert len(res["token_rewards"]) == n == len(tokens_of(s, "response")), (s, res)
        rewards = res["token_rewards"]
        assert all(math.isfinite(x) and abs(x) <= beta * (1 + 1e-9) for x in rewards), rewards
        if out["normalization"] == "unilateral":
            assert all(x <= 0 for x in rewards), rewards
        if top_k:
            assert sum(x != 0 for x in rewards) <= top_k
        if float(opts.get("threshold", 0.6)) >= 1:
            assert not any(rewards), "|s| <= 1 <= threshold zeroes every token"
        assert res["flow_return"] == pytest.approx(math.fsum(rewards), rel=1e-9,
                                                   abs=1e-12 * max(1.0, beta))
        assert ("deviations" in res) == bool(opts.get("return_deviations"))
        if "deviations" in res:
            assert len(res["deviations"]) == n
            assert all(math.isfinite(x) for x in res["deviations"])
        assert ("advantages" in res) == bool(opts.get("return_advantages"))
    if opts.get("return_advantages") and all_ok:
        check_advantages(samples, out["results"])


def check_advantages(samples: list[dict], results: list[dict]) -> None:
    """A_k = (R - mean_g R) / (std_g R + 1e-9) + sum over s >= k of r_s (docs/api.md)."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        key = s.get("group_id") or f"prompt:{tokens_of(s, 'prompt')}"
        groups.setdefault(key, []).append(i)
    outcome = [0.0] * len(samples)
    for idx in groups.values():
        if len(idx) > 1:  # statistics works in exact fractions: no overflow for huge rewards
            r = [float(samples[i]["reward"]) for i in idx]
            mean, std = statistics.mean(r), statistics.stdev(r)
            for i, x in zip(idx, r):
                outcome[i] = (x - mean) / (std + 1e-9)
    for i, res in enumerate(results):
        rw = res["token_rewards"]
        want = [outcome[i] + math.fsum(rw[k:]) for k in range(len(rw))]
        assert res["advantages"] == pytest.approx(want, rel=1e-6, abs=1e-6), (i, samples[i])


# ---- /v1/score -------------------------------------------------------------------------------


@fuzz_settings(40)
@given(body=score_request(), extras=st.lists(extra_keys, min_size=4, max_size=4))
def test_score_valid_requests(client, body, extras):
    """200, schema-valid, numbers consistent; twice the same; unknown sample keys ignored."""
    r = post(client, "/v1/score", body, expect=200)
    out = r.json()
    check_score_response(body, out, all_ok=True)
    assert all(res["status"] == "ok" for res in out["results"]), out
    again = post(client, "/v1/score", body)
    assert again.status_code == 200
    same_numbers(out, again.json())
    if body["samples"] and any(extras):
        decorated = copy.deepcopy(body)
        for s, extra in zip(decorated["samples"], extras):
            s.update(extra)
        r = post(client, "/v1/score", decorated, expect=200)
        same_numbers(out, r.json())


@st.composite
def loose_score_request(draw, ui: bool = False) -> dict:
    """Well-typed but otherwise anything: out-of-vocabulary ids, any text, any group ids.
    (For /ui/render: ids in [0, 2**32) and rewards a float holds, see the xfails below.)"""
    ids = st.integers(0, 2**32 - 1) | token if ui else any_token
    samples = draw(st.lists(st.fixed_dictionaries(
        {"id": ident},
        optional={
            "prompt_ids": st.lists(ids, max_size=8) | st.none(),
            "response_ids": st.lists(ids, max_size=8) | st.none(),
            "prompt": text | st.none(), "response": text | st.none(),
            "group_id": ident | st.none(), "reward": finite | st.none(),
        }), max_size=4))
    body: dict = {"samples": samples}
    if draw(st.booleans()):
        body["options"] = draw(score_options())
    return body


@fuzz_settings(40)
@given(body=loose_score_request())
def test_score_any_well_typed_request(client, body):
    """200 with a result per sample (some may be "error"), or a 422 that names the field."""
    r = post(client, "/v1/score", body)
    if r.status_code == 422:
        err = check_error(r)
        assert err["code"] in {"duplicate_id", "missing_response", "missing_reward"}, err
        assert err["field"].startswith("samples["), err
        return
    assert r.status_code == 200, r.text
    check_score_response(body, r.json(), all_ok=False)
    for s, res in zip(body["samples"], r.json()["results"]):
        ids = (s.get("prompt_ids") or []) + (s.get("response_ids") or [])
        if any(not 0 <= t < VOCAB for t in ids):
            assert res["status"] == "error", res
            if s.get("response_ids"):  # (an empty response is reported first)
                assert "vocabulary" in res["error"], res
    again = post(client, "/v1/score", body)
    same_numbers(r.json(), again.json())


@fuzz_settings(20)
@given(body=loose_score_request(ui=True))
def test_ui_render_any_well_typed_request(client, body):
    """/ui/render takes a /v1/score body: an HTML page, or the same JSON 422 as /v1/score."""
    r = post(client, "/ui/render?fragment=true", body)
    if r.status_code == 422:
        check_error(r)
        return
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html"), r.headers


def _sample_bad_values(i: int) -> list[tuple[str, object, str]]:
    """(key in samples[i], bad value, field the error names)."""
    at = f"samples[{i}]"
    return (
        [("id", v, f"{at}.id") for v in (None, 0, 1.5, True, [], {}, "", "x" * 257)]
        + [("group_id", v, f"{at}.group_id") for v in (0, True, [], {}, "x" * 257)]
        + [(k, v, f"{at}.{k}") for k in ("prompt_ids", "response_ids")
           for v in ("3", 3, {}, [1.5], [3.0], ["3"], [True], [None], [NAN], [2, INF])]
        + [(k, v, f"{at}.{k}") for k in ("prompt", "response") for v in (3, [], True, {})]
        + [("reward", v, f"{at}.reward") for v in ("1", True, [], {}, NAN, INF, -INF)]
    )


OPTION_BAD_VALUES = (
    [("normalization", v) for v in ("sideways", 1, True, "", "Bilateral")]
    + [("beta", v) for v in (-1e-9, -1, "0.1", True, NAN, INF, [])]
    + [("threshold", v) for v in (-0.5, "1", NAN, -INF, False)]
    + [("top_k", v) for v in (-1, 1_000_001, 1.5, 2.0, "3", True)]
    + [("timesteps", v) for v in ([], [0.5] * 17, "0.5", 0.5, [True], [NAN], [None], ["0.5"])]
    + [("noise_draws", v) for v in (0, 65, 1.0, "2", True, -1)]
    + [(k, v) for k in ("return_deviations", "return_advantages") for v in ("true", 1, 0, None)]
)


@st.composite
def broken_score_request(draw) -> tuple[dict, str | tuple[str, ...], str | None]:
    """A valid request with one thing wrong: (body, field the 422 names, code or None)."""
    body = draw(score_request())
    if not body["samples"]:
        body["samples"] = [draw(score_sample())]
    samples = body["samples"]
    opts = body.setdefault("options", {})
    i = draw(st.integers(0, len(samples) - 1))
    kind = draw(st.sampled_from(["sample", "option", "timestep range", "surrogate", "missing",
                                 "extra", "top", "duplicate", "missing reward"]))
    if kind == "sample":
        key, value, field = draw(st.sampled_from(_sample_bad_values(i)))
        samples[i][key] = value
        return body, field, "invalid_request"
    if kind == "option":
        key, value = draw(st.sampled_from(OPTION_BAD_VALUES))
        opts[key] = value
        return body, f"options.{key}", "invalid_request"
    if kind == "timestep range":
        bad = draw(st.sampled_from([0.0, 1.0, -0.1, 1.5, 0, 1, 1e300, -5e-324]))
        good = opts.get("timesteps") or [0.5]
        k = draw(st.integers(0, len(good)))
        opts["timesteps"] = good[:k] + [bad] + good[k:]
        opts.pop("normalization", None)
        return body, f"options.timesteps[{k}]", "invalid_option"
    if kind == "surrogate":
        key = draw(st.sampled_from(["id", "group_id", "prompt", "response"]))
        samples[i][key] = draw(lone)
        if key == "prompt":
            samples[i].pop("prompt_ids", None)
        return body, f"samples[{i}].{key}", "invalid_request"
    if kind == "missing":
        what = draw(st.sampled_from(["samples", "id", "response"]))
        if what == "samples":
            del body["samples"]
            return body, "samples", "invalid_request"
        if what == "id":
            del samples[i]["id"]
            return body, f"samples[{i}].id", "invalid_request"
        samples[i].pop("response_ids", None)
        samples[i].pop("response", None)
        return body, f"samples[{i}].response_ids", "missing_response"
    if kind == "extra":
        where = draw(st.sampled_from(["top", "options"]))
        key = draw(st.text(min_size=1, max_size=10) | lone)
        if where == "top":
            if key in ("samples", "options"):
                key += "_"
            body[key] = draw(json_value)
            if not valid_unicode(key):  # an undecodable key: named, or its container is
                return body, (printable(key), "body"), "invalid_request"
            return body, printable(key), "invalid_request"
        if key in opts or key in dict(OPTION_BAD_VALUES):
            key = "_" + key
        opts[key] = draw(json_value)
        return body, "options", "invalid_request"
    if kind == "top":
        what = draw(st.sampled_from(["samples", "options"]))
        body[what] = draw(st.sampled_from([None, "x", 3, True] + ([{}] if what == "samples"
                                                                  else [[]])))
        return body, what, "invalid_request"
    if kind == "duplicate":
        extra = dict(samples[i])
        samples.append(extra)
        return body, f"samples[{len(samples) - 1}].id", "duplicate_id"
    # missing reward with return_advantages
    opts["return_advantages"] = True
    samples[i].pop("reward", None)
    for j, s in enumerate(samples):
        if j != i:
            s["reward"] = 1.0
    return body, f"samples[{i}].reward", "missing_reward"


@fuzz_settings(80)
@given(case=broken_score_request())
def test_score_invalid_requests_are_422_naming_the_field(client, case):
    body, field, code = case
    r = post(client, "/v1/score", body)
    err = check_error(r, 422, field=field, code=code)
    sid = err["sample_id"]
    if sid is not None:  # the sample concerned, echoed printable
        assert sid in {printable(s["id"]) for s in body.get("samples", [])
                       if isinstance(s, dict) and isinstance(s.get("id"), str)}, err


# ---- /v1/update ------------------------------------------------------------------------------


@st.composite
def update_request(draw) -> dict:
    """A valid update: accepted samples (reward >= 1.0) are trainable."""
    samples = draw(st.lists(score_sample(rewarded=True), max_size=4, unique_by=lambda s: s["id"]))
    for s in samples:
        s.pop("group_id", None)
        if draw(st.booleans()):
            s["reward"] = draw(st.sampled_from([1.0, 1, 2.5, 0.0, 0.999, -3, 1e300]))
    body: dict = {"samples": samples}
    uid = draw(st.none() | st.uuids().map(str) | ident)
    if uid is not None or draw(st.booleans()):
        body["update_id"] = uid
    return body


@fuzz_settings(30)
@given(body=update_request())
def test_update_valid_requests(client, body):
    """202, schema-valid counts; a repeated update_id is a duplicate that queues nothing."""
    r = post(client, "/v1/update", body, expect=202)
    out = UpdateResponse.model_validate(r.json())
    n_ok = sum(float(s["reward"]) >= 1.0 for s in body["samples"])
    if body.get("update_id"):
        assert out.update_id == body["update_id"]
    else:
        assert out.update_id and not out.duplicate
    assert out.skipped == len(body["samples"]) - n_ok
    assert out.accepted == (0 if out.duplicate else n_ok)
    assert out.pending >= out.accepted
    if body.get("update_id"):
        again = UpdateResponse.model_validate(post(client, "/v1/update", body).json())
        assert again.duplicate and again.accepted == 0 and again.update_id == out.update_id


@st.composite
def broken_update_request(draw) -> tuple[dict, str, str | None]:
    body = draw(update_request())
    if not body["samples"]:
        body["samples"] = [draw(score_sample(rewarded=True))]
        body["samples"][0].pop("group_id", None)
    samples = body["samples"]
    i = draw(st.integers(0, len(samples) - 1))
    kind = draw(st.sampled_from(["sample", "update_id", "no reward", "extra", "untrainable",
                                 "surrogate"]))
    if kind == "sample":
        key, value, field = draw(st.sampled_from(
            [c for c in _sample_bad_values(i) if c[0] != "group_id"]
            + [("reward", None, f"samples[{i}].reward")]))
        samples[i][key] = value
        return body, field, "invalid_request"
    if kind == "update_id":
        body["update_id"] = draw(st.sampled_from(["", 0, 1.5, True, [], "x" * 257]) | lone)
        return body, "update_id", "invalid_request"
    if kind == "no reward":
        del samples[i]["reward"]
        return body, f"samples[{i}].reward", "invalid_request"
    if kind == "extra":
        key = draw(st.text(min_size=1, max_size=10))
        if key in ("samples", "update_id"):
            key += "_"
        body[key] = draw(json_value)
        return body, printable(key), "invalid_request"
    if kind == "surrogate":
        key = draw(st.sampled_from(["id", "prompt", "response"]))
        samples[i][key] = draw(lone)
        if key == "prompt":
            samples[i].pop("prompt_ids", None)
        return body, f"samples[{i}].{key}", "invalid_request"
    # an accepted sample that cannot be trained on
    samples[i]["reward"] = 1.0
    samples[i].pop("response", None)
    samples[i]["response_ids"] = draw(st.sampled_from([[], [VOCAB], [-1], [3] * (CONTEXT + 1)]))
    samples[i]["prompt_ids"] = []
    return body, f"samples[{i}]", "invalid_sample"


@fuzz_settings(50)
@given(case=broken_update_request())
def test_update_invalid_requests_are_422_naming_the_field(client, case):
    body, field, code = case
    before = client.get("/v1/flow").json()["pending"]
    check_error(post(client, "/v1/update", body), 422, field=field, code=code)
    assert client.get("/v1/flow").json()["pending"] == before, "a 4xx queues nothing"


# ---- /v1/score/graph -------------------------------------------------------------------------

reward_num = st.floats(-1e12, 1e12, allow_nan=False) | st.integers(-(10**12), 10**12)


@st.composite
def trajectory(draw, tid: str, states: list) -> dict:
    steps = draw(st.lists(st.fixed_dictionaries(
        {"state": st.sampled_from(states)},
        optional={"action": json_value, "reward": reward_num}), max_size=6))
    t: dict = {"id": tid, "steps": steps, "final_state": draw(st.sampled_from(states))}
    draw_optional(draw, t, final_reward=reward_num)
    outcome = draw(st.sampled_from([{}, {"success": True}, {"truncated": True},
                                    {"success": False, "truncated": False}]))
    t.update(outcome)
    return t


@st.composite
def graph_request(draw) -> dict:
    """A valid /v1/score/graph request; states shared so that graphs have joins and loops."""
    states = draw(st.lists(json_value, min_size=1, max_size=5))
    gids = draw(st.lists(ident, max_size=3, unique=True))
    groups = []
    for gid in gids:
        tids = draw(st.lists(ident, min_size=1, max_size=3, unique=True))
        groups.append({"group_id": gid, "trajectories": [draw(trajectory(t, states))
                                                         for t in tids]})
    return draw_optional(
        draw, {"groups": groups},
        gamma=st.floats(0, 1, exclude_max=True) | st.just(0),
        step_weight=st.floats(-1e6, 1e6) | st.integers(-5, 5),
        undirected=st.booleans(),
    )


@fuzz_settings(40)
@given(body=graph_request())
def test_graph_valid_requests(client, body):
    """200, schema-valid; returns and advantages add up as documented; twice the same."""
    r = post(client, "/v1/score/graph", body, expect=200)
    out = r.json()
    GraphResponse.model_validate(out)
    assert out["gamma"] == float(body.get("gamma", 0.9))
    w = float(body.get("step_weight", 1.0))
    assert [g["group_id"] for g in out["groups"]] == [g["group_id"] for g in body["groups"]]
    for g_in, g in zip(body["groups"], out["groups"]):
        trajs = g_in["trajectories"]
        assert [t["id"] for t in g["trajectories"]] == [t["id"] for t in trajs]
        assert g["num_nodes"] >= 1 and g["num_edges"] >= 0
        returns = []
        for t_in, t in zip(trajs, g["trajectories"]):
            assert len(t["steps"]) == len(t_in["steps"]) and t["success"] == t_in.get(
                "success", False)
            ret = math.fsum([float(s.get("reward", 0.0)) for s in t_in["steps"]]
                            + [float(t_in.get("final_reward", 0.0))])
            assert t["episode_return"] == ret
            returns.append(ret)
            for s in t["steps"]:
                assert s["advantage"] == t["episode_advantage"] + w * s["step_advantage"]
            values = [s["value"] for s in t["steps"]] + [t["final_value"]]
            for k, s in enumerate(t["steps"]):
                assert s["step_reward"] == values[k + 1] - values[k]
        mean = math.fsum(returns) / len(returns)
        for ret, t in zip(returns, g["trajectories"]):
            assert t["episode_advantage"] == ret - mean
    same_numbers(out, post(client, "/v1/score/graph", body).json())


@st.composite
def broken_graph_request(draw) -> tuple[dict, str, str | None]:
    body = draw(graph_request())
    if not body["groups"]:
        body["groups"] = [{"group_id": "g", "trajectories": [
            {"id": "t", "steps": [{"state": "s"}], "final_state": "end"}]}]
    groups = body["groups"]
    gi = draw(st.integers(0, len(groups) - 1))
    trajs = groups[gi]["trajectories"]
    ti = draw(st.integers(0, len(trajs) - 1))
    t = trajs[ti]
    at = f"groups[{gi}].trajectories[{ti}]"
    kind = draw(st.sampled_from(["top", "group", "trajectory", "step", "reward", "duplicate",
                                 "both", "missing", "extra"]))
    if kind == "top":
        key, value = draw(st.sampled_from(
            [("gamma", v) for v in (-0.1, 1, 1.0, 2, "0.9", NAN, INF, True, None)]
            + [("step_weight", v) for v in ("1", NAN, -INF, True, None)]
            + [("undirected", v) for v in ("false", 0, 1, None)]
            + [("groups", v) for v in (None, {}, "x", 3)]))
        body[key] = value
        return body, key, "invalid_request"
    if kind == "group":
        key, value = draw(st.sampled_from(
            [("group_id", v) for v in ("", 0, None, "x" * 257, [])]
            + [("trajectories", v) for v in ([], None, {}, "x")]))
        groups[gi][key] = value
        return body, f"groups[{gi}].{key}", "invalid_request"
    if kind == "trajectory":
        key, value = draw(st.sampled_from(
            [("id", v) for v in ("", 0, None, "x" * 257)]
            + [("steps", v) for v in (None, {}, "x", [3])]
            + [("final_reward", v) for v in ("1", NAN, INF, True, None)]
            + [(k, v) for k in ("success", "truncated") for v in ("true", 1, None)]))
        t[key] = value
        return body, f"{at}.{key}", "invalid_request"
    if kind == "step":
        if not t["steps"]:
            t["steps"] = [{"state": "s"}]
        k = draw(st.integers(0, len(t["steps"]) - 1))
        t["steps"][k]["reward"] = draw(st.sampled_from(["1", NAN, -INF, True, None, []]))
        return body, f"{at}.steps[{k}].reward", "invalid_request"
    if kind == "reward":  # finite but beyond the documented magnitude
        big = draw(st.floats(1.0000001e12, 1e308) | st.integers(10**12 + 1, 10**300))
        big = -big if draw(st.booleans()) else big
        if draw(st.booleans()) or not t["steps"]:
            t["final_reward"] = big
            return body, f"{at}.final_reward", "invalid_reward"
        k = draw(st.integers(0, len(t["steps"]) - 1))
        t["steps"][k]["reward"] = big
        for earlier in t["steps"][:k]:
            earlier.pop("reward", None)
        return body, f"{at}.steps[{k}].reward", "invalid_reward"
    if kind == "duplicate":
        if draw(st.booleans()):
            groups.append({**groups[gi]})
            return body, f"groups[{len(groups) - 1}].group_id", "duplicate_id"
        trajs.append({**t})
        return body, f"groups[{gi}].trajectories[{len(trajs) - 1}].id", "duplicate_id"
    if kind == "both":
        t["success"] = t["truncated"] = True
        return body, at, "invalid_trajectory"
    if kind == "missing":
        what = draw(st.sampled_from(["groups", "group_id", "trajectories", "id", "steps",
                                     "final_state", "state"]))
        if what == "groups":
            del body["groups"]
            return body, "groups", "invalid_request"
        if what in ("group_id", "trajectories"):
            del groups[gi][what]
            return body, f"groups[{gi}].{what}", "invalid_request"
        if what == "state":
            t["steps"] = t["steps"] or [{"state": "s"}]
            del t["steps"][0]["state"]
            return body, f"{at}.steps[0].state", "invalid_request"
        del t[what]
        return body, f"{at}.{what}", "invalid_request"
    key = draw(st.text(min_size=1, max_size=10))
    if key in ("gamma", "step_weight", "undirected", "groups"):
        key += "_"
    body[key] = draw(json_value)
    return body, printable(key), "invalid_request"


@fuzz_settings(60)
@given(case=broken_graph_request())
def test_graph_invalid_requests_are_422_naming_the_field(client, case):
    body, field, code = case
    check_error(post(client, "/v1/score/graph", body), 422, field=field, code=code)


@fuzz_settings(20)
@given(body=graph_request(), extra=st.dictionaries(
    text.filter(lambda k: k not in {"group_id", "trajectories", "id", "steps", "final_state",
                                    "final_reward", "success", "truncated", "state", "action",
                                    "reward"}), json_value, min_size=1, max_size=2))
def test_graph_unknown_keys_inside_groups_are_ignored(client, body, extra):
    if not body["groups"]:
        return
    plain = post(client, "/v1/score/graph", body)
    decorated = copy.deepcopy(body)
    for g in decorated["groups"]:
        g.update(extra)
        for t in g["trajectories"]:
            t.update(extra)
    same_numbers(plain.json(), post(client, "/v1/score/graph", decorated).json())


# ---- bodies that are not JSON objects ------------------------------------------------------


@fuzz_settings(25)
@given(path=st.sampled_from(["/v1/score", "/v1/update", "/v1/score/graph", "/get_reward"]),
       body=json_value.filter(lambda v: not isinstance(v, dict))
       | st.text(max_size=30).map(lambda t: "{" + t))
def test_not_an_object_is_a_422(client, path, body):
    """A JSON value that is not an object, or broken JSON text: 422."""
    raw = None
    if isinstance(body, str) and body.startswith("{"):
        raw = body.encode("utf-8")
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return  # "{" + "}" is an object after all
    r = post(client, path, body, raw=raw)
    check_error(r, 422, code="invalid_json" if raw is not None else None)


def test_server_survived(server, client):
    r = client.post("/v1/score", json={"samples": [{"id": "a", "response_ids": [3, 4]}]})
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "ok"
    assert "unhandled error" not in server.log()


# ---- once known failures, fixed (each was a strict xfail) ----------------------------------

BIG_INT = "1" + "0" * 400  # a JSON integer no float holds (Python reads it as an int)

OVERFLOW_CASES = [
    # (name, path, body with a JSON integer beyond float range, field the 422 should name)
    ("score reward with advantages", "/v1/score",
     f'{{"samples": [{{"id": "a", "response_ids": [3, 4], "reward": {BIG_INT}}}], '
     f'"options": {{"return_advantages": true}}}}', "samples[0].reward"),
    ("score options.beta", "/v1/score",
     f'{{"samples": [{{"id": "a", "response_ids": [3, 4]}}], "options": {{"beta": {BIG_INT}}}}}',
     "options.beta"),
    ("score options.threshold", "/v1/score",
     f'{{"samples": [{{"id": "a", "response_ids": [3]}}], "options": {{"threshold": {BIG_INT}}}}}',
     "options.threshold"),
    ("score options.timesteps", "/v1/score",
     f'{{"samples": [{{"id": "a", "response_ids": [3]}}], '
     f'"options": {{"timesteps": [{BIG_INT}]}}}}', "options.timesteps[0]"),
    ("update reward", "/v1/update",
     f'{{"samples": [{{"id": "a", "response_ids": [3, 4], "reward": {BIG_INT}}}]}}',
     "samples[0].reward"),
    ("graph step reward", "/v1/score/graph",
     f'{{"groups": [{{"group_id": "g", "trajectories": [{{"id": "t", '
     f'"steps": [{{"state": 1, "reward": {BIG_INT}}}], "final_state": 2}}]}}]}}',
     "groups[0].trajectories[0].steps[0].reward"),
]


@pytest.mark.parametrize("name,path,body,field", OVERFLOW_CASES,
                         ids=[c[0] for c in OVERFLOW_CASES])
def test_integer_beyond_float_range_is_a_422(client, name, path, body, field):
    r = client.post(path, content=body.encode(), headers=JSON)
    check_error(r, 422, field=field)


@pytest.mark.parametrize("body", [
    {"samples": [{"id": "a", "response_ids": [-1]}]},
    {"samples": [{"id": "a", "prompt_ids": [-5], "response_ids": [3]}]},
    {"samples": [{"id": "a", "response_ids": [2**32]}]},
    f'{{"samples": [{{"id": "a", "response_ids": [3], "reward": {BIG_INT}}}]}}',
], ids=["response id -1", "prompt id -5", "response id 2**32", "reward 1e400 as an integer"])
def test_ui_render_never_fails_on_token_ids(client, body):
    raw = body.encode() if isinstance(body, str) else None
    r = client.post("/ui/render", content=raw or encode(body), headers=JSON)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        check_error(r)


@pytest.mark.parametrize("raw", [
    b'{"samples": [{"id": "\xff", "response_ids": [3]}]}',
    b'{"samples": [], "options": {"beta": ' + b"[" * 2000 + b"]" * 2000 + b"}}",
    b'{"samples": [{"id": "a", "response_ids": [' + b"1" * 5000 + b"]}]}",
], ids=["not UTF-8", "nested 2000 deep", "5000-digit integer"])
def test_unreadable_body_is_a_422_invalid_json(client, raw):
    r = client.post("/v1/score", content=raw, headers=JSON)
    assert r.status_code < 500
    check_error(r, 422, field="body", code="invalid_json")


@pytest.mark.parametrize("body", [
    {"samples": [{"id": "a", "prompt_ids": [3, 4], "response_ids": [5, 6], "reward": 1e308},
                 {"id": "b", "prompt_ids": [3, 4], "response_ids": [5, 7], "reward": 1.5e308}],
     "options": {"return_advantages": True}},
    {"samples": [{"id": "a", "prompt_ids": [3, 4], "response_ids": [5, 6, 7, 8, 9, 10, 11]}],
     "options": {"beta": 1e308, "threshold": 0, "top_k": 0, "normalization": "unilateral"}},
], ids=["rewards near 1e308", "beta 1e308"])
def test_float_overflow_is_never_null(client, body):
    r = post(client, "/v1/score", body)
    if r.status_code == 422:  # refusing such a request is a fix too
        check_error(r, 422)
        return
    check_score_response(body, r.json(), all_ok=True)


def test_advantages_of_huge_rewards_follow_the_formula(client):
    body = {"samples": [
        {"id": "a", "prompt_ids": [3, 4], "response_ids": [5, 6], "reward": 1e300},
        {"id": "b", "prompt_ids": [3, 4], "response_ids": [5, 7], "reward": 0.0}],
        "options": {"return_advantages": True}}
    r = post(client, "/v1/score", body, expect=200)
    check_advantages(body["samples"], r.json()["results"])


# more cases around the fixes above


BIG_NEG = "-" + BIG_INT


@pytest.mark.parametrize("path,body,field", [
    ("/v1/score", f'{{"samples": [{{"id": "a", "response_ids": [3], "reward": {BIG_NEG}}}]}}',
     "samples[0].reward"),
    ("/ui/render", f'{{"samples": [{{"id": "a", "response_ids": [3]}}], '
     f'"options": {{"beta": {BIG_INT}}}}}', "options.beta"),
    ("/v1/score/graph", f'{{"gamma": {BIG_INT}, "groups": []}}', "gamma"),
    ("/v1/score/graph", f'{{"step_weight": {BIG_NEG}, "groups": []}}', "step_weight"),
    ("/v1/score/graph", f'{{"groups": [{{"group_id": "g", "trajectories": [{{"id": "t", '
     f'"steps": [], "final_state": 2, "final_reward": {BIG_INT}}}]}}]}}',
     "groups[0].trajectories[0].final_reward"),
], ids=["score negative reward", "ui beta", "graph gamma", "graph step_weight",
        "graph final_reward"])
def test_integer_beyond_float_range_names_exactly_the_field(client, path, body, field):
    err = check_error(client.post(path, content=body.encode(), headers=JSON), 422, field=field,
                      code="invalid_request")
    assert err["field"] == field, err
    assert "range" in err["message"], err


@pytest.mark.parametrize("path,body,field", [
    ("/v1/score", {"samples": [{"id": "a", "response_ids": [3], "reward": "1"}]},
     "samples[0].reward"),
    ("/v1/score", {"samples": [{"id": "a", "response_ids": [3], "reward": True}]},
     "samples[0].reward"),
    ("/v1/score", {"samples": [{"id": "a", "response_ids": [3]}], "options": {"beta": "0.1"}},
     "options.beta"),
    ("/v1/score", {"samples": [{"id": "a", "response_ids": [3]}],
                   "options": {"timesteps": [0.5, None]}}, "options.timesteps[1]"),
    ("/v1/update", {"samples": [{"id": "a", "response_ids": [3], "reward": NAN}]},
     "samples[0].reward"),
    ("/v1/score/graph", {"groups": [{"group_id": "g", "trajectories": [
        {"id": "t", "steps": [{"state": 1, "reward": []}], "final_state": 2}]}]},
     "groups[0].trajectories[0].steps[0].reward"),
    ("/v1/score/graph", {"step_weight": INF, "groups": []}, "step_weight"),
], ids=["reward string", "reward bool", "beta string", "timestep null", "update reward NaN",
        "graph step reward list", "graph step_weight inf"])
def test_number_type_errors_name_the_field_without_a_type_tag(client, path, body, field):
    """The field is the request's own path ("samples[0].reward"), never with the union member
    pydantic tried appended ("samples[0].reward.float")."""
    err = check_error(post(client, path, body), 422, field=field, code="invalid_request")
    assert err["field"] == field, err


@pytest.mark.parametrize("path", ["/v1/score", "/v1/update", "/v1/score/graph", "/get_reward",
                                  "/ui/render", "/v1/policy"])
@pytest.mark.parametrize("raw", [
    b'{"samples": [{"id": "\xff\xfe", "response_ids": [3]}]}',
    b"\xef\xbb\xbf\xc3\x28{}",
    b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"x": ' + b"9" * 4301 + b"}",
    b'{"x": -' + b"9" * 10_000 + b"}",
], ids=["not UTF-8", "BOM then bad UTF-8", "nested 5000 deep", "4301-digit integer",
        "10000-digit negative integer"])
def test_unreadable_body_is_a_422_invalid_json_on_every_post(client, path, raw):
    r = client.post(path, content=raw, headers=JSON)
    err = check_error(r, 422, field="body", code="invalid_json")
    assert err["field"] == "body" and err["message"].startswith("body is not valid JSON"), err


@pytest.mark.parametrize("beta", [1.0000001e300, 1e308, sys.float_info.max, 10**301])
def test_beta_beyond_its_bound_is_a_422(client, beta):
    body = {"samples": [{"id": "a", "response_ids": [3, 4]}], "options": {"beta": beta}}
    err = check_error(post(client, "/v1/score", body), 422, field="options.beta",
                      code="invalid_request")
    assert err["field"] == "options.beta", err


def test_largest_beta_and_rewards_give_finite_numbers(client):
    """beta at its bound, every token kept, long responses, rewards near the float limit:
    every number in the answer is a finite float (never null)."""
    n = CONTEXT // 2 - 2
    big = sys.float_info.max
    body = {"samples": [
        {"id": "a", "prompt_ids": [3, 4], "response_ids": [(5 + k) % VOCAB for k in range(n)],
         "reward": big},
        {"id": "b", "prompt_ids": [3, 4], "response_ids": [(7 + k) % VOCAB for k in range(n)],
         "reward": -big},
        {"id": "c", "prompt_ids": [3, 4], "response_ids": [(9 + k) % VOCAB for k in range(n)],
         "reward": 0}],
        "options": {"beta": 1e300, "threshold": 0, "top_k": 0, "normalization": "unilateral",
                    "return_advantages": True, "return_deviations": True}}
    r = post(client, "/v1/score", body, expect=200)
    out = r.json()
    check_score_response(body, out, all_ok=True)
    for res in out["results"]:
        assert res["status"] == "ok", res
        for key in ("token_rewards", "deviations", "advantages"):
            assert all(isinstance(x, float) and math.isfinite(x) for x in res[key]), res
        assert math.isfinite(res["flow_return"]) and res["flow_return"] <= 0


def test_ui_render_shows_an_out_of_range_id_as_the_sample_error(client):
    body = {"samples": [{"id": "bad", "prompt_ids": [-7], "response_ids": [2**40, -1]},
                        {"id": "good", "prompt_ids": [3, 4], "response_ids": [5, 6]}]}
    r = post(client, "/ui/render?fragment=true", body, expect=200)
    assert r.headers["content-type"].startswith("text/html")
    assert "outside the vocabulary" in r.text
    same = post(client, "/v1/score", body).json()["results"]
    assert [x["status"] for x in same] == ["error", "ok"]


@pytest.mark.parametrize("loc,error_type,field", [
    (("body", "samples", 0, "reward", "float"), "float_type", "samples[0].reward"),
    (("body", "samples", 0, "reward", "int"), "int_type", "samples[0].reward"),
    (("body", "samples", 1, "id", "function-after[_valid_unicode(), str]"), "value_error",
     "samples[1].id"),
    (("body", "options", "beta", "constrained-float"), "less_than_equal", "options.beta"),
    (("body", "options", "timesteps", "list[float]", 2), "float_type", "options.timesteps[2]"),
    (("body", "float"), "extra_forbidden", "float"),  # a client's unknown key is kept
    (("body", "samples"), "missing", "samples"),
    (("body",), "model_attributes_type", "body"),
])
def test_error_field_leaves_out_pydantic_type_tags(loc, error_type, field):
    from service.errors import _field_path

    assert _field_path(loc, error_type) == field
