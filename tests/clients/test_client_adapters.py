"""The trainer adapters against the real service: OpenRLHF (remote URL shape and reward_func
file) and TRL (the reward function, called as GRPOTrainer calls it). verl and OpenRLHF's own
client code: test_client_verl.py, test_client_openrlhf.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
from pathlib import Path

import httpx
import pytest
import torch
from client_server import DEMO_POLICY, REPO, wrong_answer
from flowfield_client import FlowfieldClient, Sample
from flowfield_client.adapters import openrlhf as orl
from flowfield_client.adapters.openrlhf import FlowfieldOpenRLHFReward
from flowfield_client.adapters.trl import flowfield_reward_func
from transformers import AutoTokenizer

from flowfield.demo.task import Problem, expert_solution, parse_answer

# slow lane: the TRL and OpenRLHF reward functions against live servers
pytestmark = pytest.mark.slow


def problem(i: int) -> Problem:
    return Problem(3000 + 17 * i, 4000 + 29 * i)


def answer_of(prompt: str) -> int:
    a, b = prompt.strip()[2:].split("+")
    return int(a) + int(b)


# ---- OpenRLHF --------------------------------------------------------------------------------


def test_openrlhf_remote_url_shape(ff_server):
    """`--reward.remote_url http://.../get_reward`: OpenRLHF's request and response shape."""
    ps = [problem(i) for i in range(3)]
    queries = [p.prompt + expert_solution(p) for p in ps]
    body = {"query": queries, "prompts": [p.prompt for p in ps], "labels": ["", "", ""]}
    out = httpx.post(ff_server.url + "/get_reward", json=body, timeout=60).json()
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert len(out["rewards"]) == len(out["scores"]) == 3
    assert all(len(v) == 3 for v in out["extra_logs"].values())
    empty = httpx.post(ff_server.url + "/get_reward",
                       json={"query": [], "prompts": [], "labels": []}, timeout=60).json()
    assert empty == {"rewards": [], "scores": [], "extra_logs": {}}


def test_openrlhf_reward_func_adds_verifier_and_pushes_accepted(ff_server):
    ff_server.wait_quiet()
    ps = [problem(i) for i in range(4)]
    resp = [expert_solution(p) if i % 2 == 0 else wrong_answer(expert_solution(p))
            for i, p in enumerate(ps)]
    queries = [p.prompt + r for p, r in zip(ps, resp)]
    prompts = [p.prompt for p in ps]
    labels = [str(p.answer) for p in ps]

    def verify(prompt: str, response: str, label: str) -> float:
        return 1.0 if parse_answer(response) == int(label) else 0.0

    rf = FlowfieldOpenRLHFReward(ff_server.url, verifier=verify)
    out = rf(queries, prompts, labels)
    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].shape == (4,)
    assert out["scores"].tolist() == [1.0, 0.0, 1.0, 0.0]
    remote = httpx.post(ff_server.url + "/get_reward",
                        json={"query": queries, "prompts": prompts, "labels": labels},
                        timeout=60).json()
    # the flow part is what the remote URL returns for the same queries
    assert out["extra_logs"]["flow_return"].tolist() == pytest.approx(remote["rewards"], abs=1e-6)
    assert out["rewards"].tolist() == pytest.approx(
        [v + f for v, f in zip([1.0, 0.0, 1.0, 0.0], remote["rewards"])], abs=1e-6
    )
    assert [u.accepted for u in rf.update_results] == [2]
    assert rf([], [], [])["rewards"].shape == (0,)
    ff_server.wait_quiet()


def test_openrlhf_module_reward_func_from_environment(ff_server, monkeypatch):
    monkeypatch.setenv("FLOWFIELD_URL", ff_server.url)
    monkeypatch.setenv("FLOWFIELD_VERIFIER", "flowfield_client.adapters.openrlhf:split_query")
    monkeypatch.setattr(orl, "_default", None)
    with pytest.raises(TypeError):  # loaded and called as f(prompt, response, label)
        orl.reward_func(["Q:1+1\n2"], ["Q:1+1\n"], ["2"])
    monkeypatch.delenv("FLOWFIELD_VERIFIER")
    monkeypatch.setattr(orl, "_default", None)
    p = problem(0)
    out = orl.reward_func([p.prompt + expert_solution(p)], [p.prompt], [""])
    assert out["rewards"].tolist() == out["scores"].tolist() == out["extra_logs"][
        "flow_return"].tolist()
    assert orl.split_query("Q:1\nabc<eos>", "Q:1\n", strip=["<eos>"]) == ("Q:1\n", "abc")


# ---- TRL reward function (called the way GRPOTrainer calls it) -------------------------------


def test_trl_reward_function_scores_and_pushes(ff_server, tok):
    ff_server.wait_quiet()
    ps = [problem(10 + i) for i in range(4)]
    comps = [expert_solution(p) if i < 3 else wrong_answer(expert_solution(p))
             for i, p in enumerate(ps)]
    ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in comps]

    def accuracy(prompts, completions, **kw):
        assert "trainer_state" in kw
        return [float(parse_answer(c) == answer_of(p)) for p, c in zip(prompts, completions)]

    fn = flowfield_reward_func(ff_server.url, verifier=accuracy,
                               eos_token_ids=[tok.eos_token_id])
    assert inspect.iscoroutinefunction(fn) and fn.__name__ == "flowfield"
    logged = {}
    out = asyncio.run(fn(prompts=[p.prompt for p in ps], completions=comps, completion_ids=ids,
                         trainer_state=None, log_metric=logged.__setitem__))
    with FlowfieldClient(ff_server.url) as ff:
        ref = ff.score([Sample(prompt=p.prompt, response=c) for p, c in zip(ps, comps)])
    assert out == pytest.approx(ref.flow_returns, abs=1e-6)
    st = fn.adapter.stats
    assert (st.calls, st.scored, st.pushed, st.accepted, st.updates) == (1, 4, 3, 3, 1)
    assert "flowfield/flow_version" in logged
    ff_server.wait_quiet()  # the pushed completions may have made a new flow version
    with FlowfieldClient(ff_server.url) as ff:
        ref = ff.score([Sample(prompt=p.prompt, response=c) for p, c in zip(ps, comps)])
    both = flowfield_reward_func(ff_server.url, verifier=accuracy, add_verifier=True,
                                 push_accepted=False, flow_weight=10.0)
    out2 = asyncio.run(both(prompts=[p.prompt for p in ps], completions=comps,
                            trainer_state=None))
    assert out2 == pytest.approx([v + 10 * f for v, f in zip([1, 1, 1, 0], ref.flow_returns)],
                                 abs=1e-5)
    with pytest.raises(ValueError):
        flowfield_reward_func(ff_server.url, add_verifier=True)
    ff_server.wait_quiet()


def trl_call(fn, prompts, comps, ids=None, **kw):
    return asyncio.run(fn(prompts=prompts, completions=comps, completion_ids=ids,
                          trainer_state=None, **kw))


def test_trl_sends_the_trainers_prompt_ids_and_strips_eos(ff_server, proxy_factory, tok):
    """With the tokenizer the adapter sends what GRPOTrainer generated from: the prompt ids
    as the trainer tokenises them and the completion ids without EOS (the default)."""
    proxy = proxy_factory()
    ps = [problem(40 + i) for i in range(2)]
    prompts = [p.prompt for p in ps for _ in range(2)]  # TRL repeats a prompt per generation
    comps = [expert_solution(p) for p in ps for _ in range(2)]
    ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in comps]
    out = trl_call(flowfield_reward_func(proxy.url, tokenizer=tok), prompts, comps, ids)
    sent = proxy.requests("/v1/score")[-1].body["samples"]
    assert [s["prompt_ids"] for s in sent] == [tok(text=p)["input_ids"] for p in prompts]
    assert [s["response_ids"] for s in sent] == [i[:-1] for i in ids]  # EOS stripped
    assert all("prompt" not in s and "response" not in s for s in sent)
    with FlowfieldClient(ff_server.url) as ff:
        ref = ff.score([Sample(prompt=p, response=c) for p, c in zip(prompts, comps)])
    assert out == pytest.approx(ref.flow_returns, abs=1e-6)

    # a prompt_ids column (dataset or rollout_func) is used as it is
    given = [[7] + tok(text=p)["input_ids"] for p in prompts]
    trl_call(flowfield_reward_func(proxy.url), prompts, comps, ids, prompt_ids=given)
    sent = proxy.requests("/v1/score")[-1].body["samples"]
    assert [s["prompt_ids"] for s in sent] == given

    # neither tokenizer nor eos_token_ids: text, which TRL decoded without the EOS
    trl_call(flowfield_reward_func(proxy.url), prompts, comps, ids)
    sent = proxy.requests("/v1/score")[-1].body["samples"]
    assert [(s["prompt"], s["response"]) for s in sent] == list(zip(prompts, comps))
    assert all("response_ids" not in s for s in sent)

    # eos_token_ids=() explicitly: the ids go as TRL gave them
    trl_call(flowfield_reward_func(proxy.url, tokenizer=tok, eos_token_ids=()), prompts, comps,
             ids)
    assert [s["response_ids"] for s in proxy.requests("/v1/score")[-1].body["samples"]] == ids


def test_trl_conversational_prompts_use_the_chat_template(proxy_factory, tok):
    chat_tok = AutoTokenizer.from_pretrained(DEMO_POLICY)
    chat_tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                              "{% if add_generation_prompt %}{{ '\n' }}{% endif %}")
    proxy = proxy_factory()
    p = problem(50)
    convo = [{"role": "user", "content": p.prompt.strip()}]
    comp = [{"role": "assistant", "content": expert_solution(p)}]
    ids = [tok(expert_solution(p), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    fn = flowfield_reward_func(proxy.url, tokenizer=chat_tok)
    out = trl_call(fn, [convo], [comp], ids)
    sent = proxy.requests("/v1/score")[-1].body["samples"][0]
    want = chat_tok.apply_chat_template([convo], add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"][0]
    assert sent["prompt_ids"] == list(want) and out[0] is not None
    with pytest.raises(TypeError):  # no tokenizer, no way to render the conversation
        trl_call(flowfield_reward_func(proxy.url), [convo], [comp])


# ---- the example files, loaded the way the trainers load them --------------------------------


def load_file(path: str):
    spec = importlib.util.spec_from_file_location(f"example_{Path(path).stem}", REPO / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_openrlhf_example_file(ff_server, monkeypatch):
    monkeypatch.setenv("FLOWFIELD_URL", ff_server.url)
    mod = load_file("examples/trainers/openrlhf_reward_func.py")  # as OpenRLHF imports it
    ps = [problem(20), problem(21)]
    queries = [ps[0].prompt + expert_solution(ps[0]) + "<eos>",
               ps[1].prompt + wrong_answer(expert_solution(ps[1]))]
    out = mod.reward_func(queries, [p.prompt for p in ps], [str(p.answer) for p in ps])
    assert out["scores"].tolist() == [1.0, 0.0]
    assert [u.accepted for u in mod.reward_func.update_results] == [1]
    ff_server.wait_quiet()
