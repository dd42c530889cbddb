"""Hardening found by a fuzz, over HTTP against the real server: lone surrogates, overflowing
graph rewards, unloadable policies, negative beta, and the per-request cost budget."""

from __future__ import annotations

import json
import shutil

import pytest
from live_server import Server
from service_helpers import demo_sample

from flowfield.rewards import RewardOptions
from service.settings import DEMO_ASSETS, Settings

JSON = {"content-type": "application/json"}
SURROGATE = "\\ud800"  # the JSON escape of a lone UTF-16 surrogate, as sent on the wire


def raw(body: str) -> dict:
    """Send the JSON text as written (httpx's encoder would refuse a lone surrogate)."""
    return {"content": body.encode(), "headers": JSON}


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    r.content.decode("utf-8")  # the body is valid UTF-8 (strict)
    return r.json()["error"]


SCORE_OK = {"id": "ok", "prompt_ids": [3, 4], "response_ids": [5, 6, 7]}

SURROGATE_CASES = [
    # (name, path, body, field the error names)
    ("score sample id", "/v1/score",
     f'{{"samples": [{{"id": "{SURROGATE}", "response_ids": [3, 4]}}]}}', "samples[0].id"),
    ("score id, bad ids too", "/v1/score",
     f'{{"samples": [{{"id": "a{SURROGATE}", "response_ids": ["x"]}}]}}', "samples[0]"),
    ("score response text", "/v1/score",
     f'{{"samples": [{{"id": "a", "response": "x{SURROGATE}y"}}]}}', "samples[0].response"),
    ("score prompt text", "/v1/score",
     f'{{"samples": [{{"id": "a", "prompt": "{SURROGATE}", "response_ids": [3]}}]}}',
     "samples[0].prompt"),
    ("score group id", "/v1/score",
     f'{{"samples": [{{"id": "a", "group_id": "{SURROGATE}", "response_ids": [3]}}]}}',
     "samples[0].group_id"),
    ("score unknown option", "/v1/score",
     f'{{"samples": [], "options": {{"{SURROGATE}": 1}}}}', "options"),
    ("get_reward query", "/get_reward", f'{{"query": ["1+1={SURROGATE}"]}}', "query[0]"),
    ("get_reward prompt", "/get_reward",
     f'{{"query": ["1+1=2"], "prompts": ["{SURROGATE}"]}}', "prompts[0]"),
    ("update sample id", "/v1/update",
     f'{{"samples": [{{"id": "{SURROGATE}", "response_ids": [3], "reward": 1.0}}]}}',
     "samples[0].id"),
    ("graph trajectory id", "/v1/score/graph",
     f'{{"groups": [{{"group_id": "g", "trajectories": [{{"id": "{SURROGATE}", "steps": [], '
     f'"final_state": "end"}}]}}]}}', "groups[0].trajectories[0].id"),
]


@pytest.mark.parametrize(
    "name,path,body,field", SURROGATE_CASES, ids=[c[0] for c in SURROGATE_CASES]
)
def test_lone_surrogate_is_a_422_naming_the_field(client, name, path, body, field):
    json.loads(body)  # the test sends valid JSON
    err = error_of(client.post(path, **raw(body)), 422)
    assert err["field"].startswith(field), err
    if name == "score sample id":
        assert err["sample_id"] == "\\ud800"  # echoed as the escape, not a broken character


def test_service_scores_after_the_surrogates(client):
    r = client.post("/v1/score", json={"samples": [SCORE_OK, demo_sample(0)]})
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["ok", "ok"]
    r = client.post("/get_reward", json={"query": ["1+1=2"]})
    assert r.status_code == 200, r.text


def graph_body(rewards: list[float], final: float = 1.0, step_weight: float = 1.0) -> dict:
    steps = [{"state": f"s{i}", "action": "a", "reward": x} for i, x in enumerate(rewards)]
    traj = {"id": "t-0", "steps": steps, "final_state": "end", "final_reward": final}
    other = {"id": "t-1", "steps": steps[:1], "final_state": "end2", "final_reward": 0.0}
    return {"step_weight": step_weight,
            "groups": [{"group_id": "g", "trajectories": [traj, other]}]}


@pytest.mark.parametrize(
    "body,field",
    [
        (graph_body([1e308, 1e308]), "groups[0].trajectories[0].steps[0].reward"),
        (graph_body([0.0, -1e308]), "groups[0].trajectories[0].steps[1].reward"),
        (graph_body([0.0], final=1e308), "groups[0].trajectories[0].final_reward"),
        (graph_body([0.0, 1.0], step_weight=1e308), "step_weight"),
    ],
    ids=["steps 1e308", "step -1e308", "final 1e308", "step_weight 1e308"],
)
def test_graph_reward_too_large_is_a_422_naming_the_field(client, body, field):
    err = error_of(client.post("/v1/score/graph", json=body), 422)
    assert err["field"] == field, err
    assert "at most" in err["message"]
    if field != "step_weight":
        assert err["sample_id"] == "t-0"


def test_graph_largest_allowed_rewards_give_finite_numbers(client):
    r = client.post("/v1/score/graph", json=graph_body([1e12, -1e12] * 50, final=1e12,
                                                        step_weight=1e6))
    assert r.status_code == 200, r.text
    out = r.json()["groups"][0]["trajectories"][0]
    assert out["episode_return"] == pytest.approx(1e12)
    assert len(out["steps"]) == 100  # every number was JSON-encodable (finite)


@pytest.fixture(scope="module")
def baseline(client):
    """What the service answers before any policy reload attempt."""
    flow = client.get("/v1/flow").json()
    r = client.post("/v1/score", json={"samples": [demo_sample(3), SCORE_OK]})
    assert r.status_code == 200, r.text
    return flow["encoder"], r.json()["results"]


def broken_policy(tmp_path, what: str):
    d = tmp_path / what
    shutil.copytree(DEMO_ASSETS / "policy", d)
    if what == "weights":
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[:100] + b"\xff" * 64)
    else:
        (d / "tokenizer.json").write_text('{"version": "1.0", "model": {')
    return str(d)


@pytest.mark.parametrize("what", ["long path", "long name", "weights", "tokenizer"])
def test_unloadable_policy_is_a_422_and_the_old_one_stays(client, baseline, tmp_path, what):
    encoder, results = baseline
    if what == "long path":
        path, needle = "/" + "a" * 1_000_000, "at most 4096"
    elif what == "long name":  # one component over NAME_MAX: ENAMETOOLONG from the filesystem
        path, needle = str(tmp_path / ("b" * 300)), "cannot be read"
    elif what == "weights":
        path, needle = broken_policy(tmp_path, what), "SafetensorError"
    else:
        path, needle = broken_policy(tmp_path, what), "tokenizer"
    err = error_of(client.post("/v1/policy", json={"path": path}), 422)
    assert err["field"] == "path"
    assert needle in err["message"], err
    assert len(err["message"]) < 2000
    # still serving the old policy, text included, with the same numbers
    assert client.get("/v1/flow").json()["encoder"] == encoder
    r = client.post("/v1/score", json={"samples": [demo_sample(3), SCORE_OK]})
    assert r.status_code == 200, r.text
    assert r.json()["results"] == results


@pytest.mark.parametrize(
    "options,field",
    [({"beta": -0.01}, "options.beta"), ({"beta": -1e-300}, "options.beta"),
     ({"threshold": -0.1}, "options.threshold")],
)
def test_negative_beta_or_threshold_is_a_422(client, options, field):
    err = error_of(client.post("/v1/score", json={"samples": [SCORE_OK], "options": options}),
                   422)
    assert err["field"] == field
    assert "greater than or equal to 0" in err["message"]


def test_beta_zero_gives_zero_rewards(client):
    r = client.post("/v1/score", json={"samples": [SCORE_OK],
                                       "options": {"beta": 0, "threshold": 0, "top_k": 0}})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["token_rewards"] == [0.0, 0.0, 0.0]


def test_library_refuses_negative_beta_like_the_schema():
    RewardOptions(beta=0.0)
    for beta in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta"):
            RewardOptions(beta=beta)
    with pytest.raises(ValueError, match="threshold"):
        RewardOptions(threshold=-0.1)


def test_default_cost_budget_fits_default_options_at_the_service_limits():
    s = Settings(_env_file=None)
    at_limits = (s.max_samples * s.max_tokens_per_sample * len(s.layer_fractions)
                 * len(s.timesteps) * s.noise_draws)
    assert at_limits * 2 <= s.max_request_cost  # comfortably: twice over


def ids_sample(i: int, n_tokens: int) -> dict:
    half = n_tokens // 2
    return {"id": f"c-{i}", "prompt_ids": [3 + (k % 17) for k in range(half)],
            "response_ids": [4 + (k % 16) for k in range(n_tokens - half)]}


TS16 = [round(0.05 + 0.05 * k, 2) for k in range(16)]


def test_cost_budget_on_the_default_server(client):
    # 100 samples of 110 tokens (within the demo model's context) x 3 layers x 16 x 64
    body = {"samples": [ids_sample(i, 110) for i in range(100)],
            "options": {"timesteps": TS16, "noise_draws": 64}}
    err = error_of(client.post("/v1/score", json=body), 422)
    assert err["code"] == "request_too_costly"
    assert err["field"] == "options.noise_draws"
    assert "max_request_cost 33554432" in err["message"]
    # the same samples at the default options are scored
    r = client.post("/v1/score", json={"samples": body["samples"][:10]})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("tight"), name="tight",
                 env={"FLOWFIELD_MAX_REQUEST_COST": "2000", "FLOWFIELD_LEARNER": "false"})
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    "samples,options,status,field",
    [
        ([ids_sample(0, 40)], {"timesteps": TS16}, 200, None),  # 40 x 3 x 16 = 1920
        ([ids_sample(0, 40)], {"timesteps": TS16, "noise_draws": 2}, 422, "options.noise_draws"),
        ([ids_sample(0, 50)], {"timesteps": TS16}, 422, "options.timesteps"),  # 2400
        ([ids_sample(i, 40) for i in range(20)], {}, 422, "samples"),  # 2400 at defaults
    ],
    ids=["within", "draws", "timesteps", "samples"],
)
def test_cost_budget_setting(tight_server, samples, options, status, field):
    with tight_server.client() as c:
        r = c.post("/v1/score", json={"samples": samples, "options": options})
    if status == 200:
        assert r.status_code == 200, r.text
        return
    err = error_of(r, status)
    assert err["field"] == field
    assert "exceeds max_request_cost 2000" in err["message"]
