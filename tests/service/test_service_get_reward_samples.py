"""POST /get_reward applies the sample rule of /v1/score (flowfield.samples), over HTTP
against the real server: a query longer than the model's context or holding a token id
outside the model's vocabulary is a 422 `invalid_sample` naming the query, the server keeps
serving, and an empty response still gets 0.0.

The policy is the demo one (a context of 128 positions, 21 ids) with one token added to its
tokenizer, "@", whose id (21) the model has no embedding for: text can then tokenise to an
id outside the vocabulary, as with a tokenizer that has more added tokens than the model.
"""

from __future__ import annotations

import shutil

import pytest
from live_server import Server
from transformers import AutoTokenizer

from service.settings import DEMO_ASSETS

PROMPT = "Q:1234+5678\n"
GOOD = PROMPT + "4+8+0=12,3+7+1=11,2+6+1=9,1+5+0=6,A:6912."


@pytest.fixture(scope="module")
def extra_token_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("get-reward-samples")
    policy = tmp / "policy"
    shutil.copytree(DEMO_ASSETS / "policy", policy)
    tok = AutoTokenizer.from_pretrained(policy)
    tok.add_tokens(["@"])
    tok.save_pretrained(policy)
    assert tok.convert_tokens_to_ids("@") == 21
    srv = Server(
        tmp,
        name="extra-token",
        env={"FLOWFIELD_MODEL_PATH": str(policy), "FLOWFIELD_LEARNER": "false"},
    )
    yield srv
    srv.stop()


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


@pytest.mark.parametrize(
    "prompt,response,reason",
    [
        (PROMPT, "1" * 200, "212 tokens, longer than the model's context of 128"),
        (PROMPT, "12@3", "response_ids holds token id 21, outside the vocabulary [0, 21)"),
        ("Q:1@2\n", "3", "prompt_ids holds token id 21, outside the vocabulary [0, 21)"),
    ],
    ids=["too-long", "oov-response", "oov-prompt"],
)
def test_get_reward_refuses_a_query_it_cannot_score(extra_token_server, prompt, response, reason):
    with extra_token_server.client() as c:
        # the bad query second, among good ones: the whole request is refused, naming it
        body = {"query": [GOOD, prompt + response, GOOD], "prompts": [PROMPT, prompt, PROMPT]}
        err = error_of(c.post("/get_reward", json=body), 422)
        assert err["code"] == "invalid_sample" and err["field"] == "query[1]", err
        assert err["message"] == f"query[1]: {reason}", err
        # /v1/score reports the same sample with the same reason, per sample
        sample = {"id": "x", "prompt": prompt, "response": response}
        r = c.post("/v1/score", json={"samples": [sample]})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["error"] == reason
        # the server still scores good queries; an empty response is still 0.0
        r = c.post("/get_reward", json={"query": [GOOD, PROMPT], "prompts": [PROMPT, PROMPT]})
        assert r.status_code == 200, r.text
        rewards = r.json()["rewards"]
        assert rewards[1] == 0.0 and rewards[0] != 0.0


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    srv = Server(
        tmp_path_factory.mktemp("get-reward-cost"),
        name="get-reward-cost",
        env={"FLOWFIELD_MAX_REQUEST_COST": "2000", "FLOWFIELD_LEARNER": "false"},
    )
    yield srv
    srv.stop()


def test_get_reward_has_the_request_cost_check_of_v1_score(tight_server):
    """/get_reward resolves its options as /v1/score does (service/options.py) and applies the
    same max_request_cost: the same queries are the same 422 `request_too_costly` on both
    routes, naming each route's samples field."""
    resp = GOOD[len(PROMPT) :]
    n = 13  # 13 x 53 tokens x 3 hooked layers x 1 timestep x 1 draw = 2067 > 2000
    with tight_server.client() as c:
        err = error_of(c.post("/get_reward", json={"query": [GOOD] * n, "prompts": [PROMPT] * n}),
                       422)
        samples = [{"id": str(i), "prompt": PROMPT, "response": resp} for i in range(n)]
        same = error_of(c.post("/v1/score", json={"samples": samples}), 422)
        assert err["code"] == same["code"] == "request_too_costly", (err, same)
        assert err["message"] == same["message"], (err, same)
        assert err["message"].startswith(
            "request cost 2067 (689 tokens x 3 hooked layers x 1 timesteps x 1 noise draws) "
            "exceeds max_request_cost 2000"
        ), err
        assert (err["field"], same["field"]) == ("query", "samples")
        # within the budget both routes score, with the same default options and numbers
        r = c.post("/get_reward", json={"query": [GOOD] * 2, "prompts": [PROMPT] * 2})
        assert r.status_code == 200, r.text
        s = c.post("/v1/score", json={"samples": samples[:2]})
        assert s.status_code == 200, s.text
        assert s.json()["normalization"] == "expert"  # the default: the demo flow is calibrated
        assert r.json()["rewards"] == [x["flow_return"] for x in s.json()["results"]]
