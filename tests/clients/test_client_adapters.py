"""The trainer adapters against the real service: OpenRLHF (remote URL and reward_func file),
verl (reward manager on a DataProto-like batch), TRL (the reward function, called as TRL does).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from flowfield_client import FlowfieldClient, Sample
from flowfield_client.adapters import openrlhf as orl
from flowfield_client.adapters.openrlhf import FlowfieldOpenRLHFReward
from flowfield_client.adapters.trl import flowfield_reward_func
from flowfield_client.adapters.verl import FlowfieldRewardManager, register_with_verl
from transformers import AutoTokenizer

from flowfield.demo.task import Problem, expert_solution, parse_answer

REPO = Path(__file__).resolve().parents[2]
POLICY = str(REPO / "flowfield" / "demo" / "assets" / "policy")


def problem(i: int) -> Problem:
    return Problem(3000 + 17 * i, 4000 + 29 * i)


def wrong(text: str) -> str:
    head, _, ans = text.rpartition("A:")
    return f"{head}A:{(int(ans[0]) + 1) % 10}{ans[1:]}"


def answer_of(prompt: str) -> int:
    a, b = prompt.strip()[2:].split("+")
    return int(a) + int(b)


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(POLICY)


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
    resp = [expert_solution(p) if i % 2 == 0 else wrong(expert_solution(p))
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


# ---- verl ------------------------------------------------------------------------------------


class FakeDataProto:
    """What verl's reward managers read from a DataProto: `batch` (tensors, with keys()) and
    `non_tensor_batch` (numpy object arrays)."""

    def __init__(self, batch: dict, non_tensor_batch: dict) -> None:
        self.batch = batch
        self.non_tensor_batch = non_tensor_batch

    def __len__(self) -> int:
        return self.batch["responses"].shape[0]


def verl_batch(tok, texts: list[tuple[Problem, str]], p_len: int = 16, r_len: int = 56):
    pad, eos = tok.pad_token_id, tok.eos_token_id
    prompts = torch.full((len(texts), p_len), pad)
    responses = torch.full((len(texts), r_len), pad)
    mask = torch.zeros((len(texts), p_len + r_len), dtype=torch.long)
    for i, (p, r) in enumerate(texts):
        pi = tok(p.prompt, add_special_tokens=False)["input_ids"]
        ri = tok(r, add_special_tokens=False)["input_ids"] + [eos]
        prompts[i, p_len - len(pi):] = torch.tensor(pi)  # left-padded
        responses[i, : len(ri)] = torch.tensor(ri)  # right-padded
        mask[i, p_len - len(pi): p_len] = 1
        mask[i, p_len: p_len + len(ri)] = 1
    rm = np.array([{"ground_truth": str(p.answer)} for p, _ in texts], dtype=object)
    src = np.array(["demo-arith"] * len(texts), dtype=object)
    return FakeDataProto(
        {"prompts": prompts, "responses": responses, "attention_mask": mask},
        {"reward_model": rm, "data_source": src},
    )


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": 1.0 if parse_answer(solution_str) == int(ground_truth) else 0.0}


def test_verl_manager_fills_dense_token_rewards(ff_server, tok):
    ff_server.wait_quiet()
    texts = [(problem(i), expert_solution(problem(i)) if i != 1 else
              wrong(expert_solution(problem(i)))) for i in range(3)]
    data = verl_batch(tok, texts)
    mgr = FlowfieldRewardManager(tok, 0, compute_score, "data_source",
                                 flowfield_url=ff_server.url)
    out = mgr(data, return_dict=True)
    rt = out["reward_tensor"]
    assert rt.shape == data.batch["responses"].shape and rt.dtype == torch.float32
    with FlowfieldClient(ff_server.url) as ff:
        ref = ff.score([Sample(prompt=p.prompt, response=r) for p, r in texts])
    for i, ((_, r), res) in enumerate(zip(texts, ref)):
        n = len(r)  # one token per character; the EOS follows at position n
        assert rt[i, :n].tolist() == pytest.approx(res.token_rewards, abs=1e-6)
        assert rt[i, n].item() == compute_score(None, r, str(texts[i][0].answer))["score"]
        assert not rt[i, n + 1:].any()
    assert out["reward_extra_info"]["verifier"] == [1.0, 0.0, 1.0]
    assert out["reward_extra_info"]["flow_return"] == pytest.approx(ref.flow_returns, abs=1e-6)
    assert [u.accepted for u in mgr.update_results] == [2]
    # scalar mode: the flow return (+ verifier) at the last valid token only
    scalar = FlowfieldRewardManager(tok, compute_score=compute_score, flowfield_url=ff_server.url,
                                    dense=False, push_accepted=False)(data)
    for i, ((_, r), res) in enumerate(zip(texts, ref)):
        n = len(r)
        assert scalar[i, n].item() == pytest.approx(res.flow_return + out["reward_extra_info"][
            "verifier"][i], abs=1e-6)
        assert scalar[i].count_nonzero() <= 1
    ff_server.wait_quiet()


def test_verl_manager_imports_without_verl():
    with pytest.raises(ImportError):
        register_with_verl()


# ---- TRL reward function (called the way GRPOTrainer calls it) -------------------------------


def test_trl_reward_function_scores_and_pushes(ff_server, tok):
    ff_server.wait_quiet()
    ps = [problem(10 + i) for i in range(4)]
    comps = [expert_solution(p) if i < 3 else wrong(expert_solution(p)) for i, p in enumerate(ps)]
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
    both = flowfield_reward_func(ff_server.url, verifier=accuracy, add_verifier=True,
                                 push_accepted=False, flow_weight=10.0)
    out2 = asyncio.run(both(prompts=[p.prompt for p in ps], completions=comps,
                            trainer_state=None))
    assert out2 == pytest.approx([v + 10 * f for v, f in zip([1, 1, 1, 0], ref.flow_returns)],
                                 abs=1e-5)
    with pytest.raises(ValueError):
        flowfield_reward_func(ff_server.url, add_verifier=True)
    ff_server.wait_quiet()


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
               ps[1].prompt + wrong(expert_solution(ps[1]))]
    out = mod.reward_func(queries, [p.prompt for p in ps], [str(p.answer) for p in ps])
    assert out["scores"].tolist() == [1.0, 0.0]
    assert [u.accepted for u in mod.reward_func.update_results] == [1]
    ff_server.wait_quiet()


def test_verl_example_file(ff_server, tok):
    mod = load_file("examples/trainers/verl_flowfield_reward.py")  # as load_extern_object does
    texts = [(problem(30), expert_solution(problem(30))),
             (problem(31), wrong(expert_solution(problem(31))))]
    mgr = mod.FlowfieldRewardManager(tokenizer=tok, num_examine=1,
                                     compute_score=mod.compute_score,
                                     reward_fn_key="data_source", flowfield_url=ff_server.url,
                                     dense=True)
    out = mgr(verl_batch(tok, texts), return_dict=True)
    assert out["reward_extra_info"]["verifier"] == [1.0, 0.0]
    ff_server.wait_quiet()
