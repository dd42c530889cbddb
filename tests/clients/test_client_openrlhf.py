"""OpenRLHF 0.11, for real: its own reward client (`openrlhf.utils.agent.SingleTurnAgentExecutor`:
the query decoded with special tokens, one sample per call, `n` samples of a prompt at once,
aiohttp without headers, 5 tries, failures only logged) against the service, both ways it is
used: `--reward.remote_url http://.../get_reward` and `--reward.remote_url reward_func.py`.

vLLM cannot run here; the engine below replays known completions of the demo task (right and
wrong ones) as token ids, which is all the executor reads from it. `rollouts` dispatches them
the way OpenRLHF's `RolloutRayActor.generate_responses` does (`asyncio.gather` of `n`
executions per prompt), for several prompts at once.

OpenRLHF is optional: without it these tests are skipped locally and fail in CI (CI=true),
where scripts/test.sh installs it (`pip install --no-deps openrlhf` and its import deps).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
from client_server import REPO, free_port, wrong_answer
from flowfield_client import FlowfieldClient, Sample
from flowfield_client.adapters.openrlhf import FlowfieldOpenRLHFReward

from flowfield.demo.task import Problem, expert_solution, parse_answer

if not os.environ.get("CI"):
    pytest.importorskip("openrlhf")

from openrlhf.utils.agent import SingleTurnAgentExecutor  # noqa: E402

# slow lane: OpenRLHF's own code against a live server
pytestmark = pytest.mark.slow

EXAMPLE = str(REPO / "examples" / "trainers" / "openrlhf_reward_func.py")
KEY = "s3cr3t-score-key-in-the-url"


def problem(i: int) -> Problem:
    return Problem(6000 + 41 * i, 1000 + 67 * i)


class ReplayEngine:
    """Stands in for vLLM's engine: the k-th generation for a prompt is its k-th completion
    (token ids ending in EOS, as vLLM returns them)."""

    def __init__(self, tok, completions: dict[str, list[str]]) -> None:
        self.tok = tok
        self.completions = completions
        self.served: dict[str, int] = {}

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        prompt = self.tok.decode(prompt_token_ids)
        k = self.served.get(prompt, 0)
        self.served[prompt] = k + 1
        text = self.completions[prompt][k % len(self.completions[prompt])]
        ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        await asyncio.sleep(0)  # let the other executions interleave, as with a real engine
        out = SimpleNamespace(token_ids=ids, text=text, finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[out])


def rollouts(executor, tok, problems, labels, n: int) -> list[dict]:
    """OpenRLHF's generate_responses for every prompt at once: n executions per prompt."""
    completions = {p.prompt: [expert_solution(p) if k % 2 == 0 else wrong_answer(expert_solution(p))
                              for k in range(n)] for p in problems}
    engine = ReplayEngine(tok, completions)
    params = SimpleNamespace(max_tokens=64, logprobs=None)

    async def generate_responses(prompt, label):
        return await asyncio.gather(*[
            executor.execute(prompt=prompt, label=label, sampling_params=params, max_length=128,
                             hf_tokenizer=tok, llm_engine=engine)
            for _ in range(n)])

    async def everything():
        groups = await asyncio.gather(*[generate_responses(p.prompt, lab)
                                        for p, lab in zip(problems, labels)])
        return [o for g in groups for o in g]

    return asyncio.run(everything())


def response_of(out: dict, tok) -> str:
    start, end = out["action_ranges"][0]
    return tok.decode(out["observation_tokens"][start:end], skip_special_tokens=True)


# ---- --reward.remote_url http://.../get_reward ---------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """The service with a score key, under plain uvicorn with its access log on (every
    request's path and query string logged), to show the key in the URL never reaches it."""
    tmp = tmp_path_factory.mktemp("keyed")
    port = free_port()
    log_path = tmp / "uvicorn.log"
    env = {**os.environ, "FLOWFIELD_SCORE_API_KEY": KEY, "FLOWFIELD_UPDATE_API_KEY": KEY + "-u",
           "FLOWFIELD_CHECKPOINT_DIR": str(tmp / "ckpt"), "FLOWFIELD_THREADS": "1",
           "FLOWFIELD_LEARNER": "false", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:app_factory", "--factory",
             "--port", str(port), "--log-level", "info"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, log_path.read_text()
        time.sleep(0.2)
    yield SimpleNamespace(url=url, log=log_path)
    proc.terminate()
    proc.wait(30)


def test_remote_url_with_key_in_url_and_any_labels(keyed_server, tok):
    problems = [problem(i) for i in range(3)]
    labels = [problems[0].answer, {"answer": problems[1].answer}, [str(problems[2].answer)]]
    executor = SingleTurnAgentExecutor(f"{keyed_server.url}/get_reward?api_key={KEY}")
    outs = rollouts(executor, tok, problems, labels, n=2)
    assert len(outs) == 6 and all(o["reward"] is not None for o in outs), outs

    # each reward is the flow return of the response without the EOS text OpenRLHF decoded
    # into the query, as scored directly
    with FlowfieldClient(keyed_server.url, api_key=KEY) as ff:
        ref = ff.score([Sample(prompt=o["prompt"], response=response_of(o, tok)) for o in outs])
    assert [o["reward"][0] for o in outs] == pytest.approx(ref.flow_returns, abs=1e-6)
    assert [o["extra_logs"]["flow_return"][0] for o in outs] == pytest.approx(
        ref.flow_returns, abs=1e-6)

    # the key was used, and logged nowhere: the access log shows the path, not the key
    log = keyed_server.log.read_text()
    assert '"POST /get_reward HTTP/1.1" 200' in log
    assert KEY not in log


def test_get_reward_auth_and_eos_option(keyed_server, tok):
    p = problem(7)
    body = {"query": [p.prompt + expert_solution(p) + "<eos>"], "prompts": [p.prompt],
            "labels": [None]}
    url = keyed_server.url + "/get_reward"
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url + "?api_key=wrong", json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"authorization": f"Bearer {KEY}"}).status_code \
        == 200
    # the URL key is for /get_reward only
    score = {"samples": [{"prompt": p.prompt, "response": expert_solution(p)}]}
    assert httpx.post(keyed_server.url + f"/v1/score?api_key={KEY}", json=score).status_code \
        == 401
    stripped = httpx.post(url + f"?api_key={KEY}", json=body).json()["rewards"][0]
    kept = httpx.post(url + f"?strip_eos=false&api_key={KEY}", json=body).json()["rewards"][0]
    with FlowfieldClient(keyed_server.url, api_key=KEY) as ff:
        ids = tok(expert_solution(p), add_special_tokens=False)["input_ids"]
        prompt_ids = tok(p.prompt, add_special_tokens=False)["input_ids"]
        ref = ff.score([Sample(prompt_ids=prompt_ids, response_ids=ids),
                        Sample(prompt_ids=prompt_ids, response_ids=ids + [tok.eos_token_id])])
    assert stripped == pytest.approx(ref[0].flow_return, abs=1e-6)
    # /v1/score never scores a trailing end-of-turn/EOS id (it is cut, with a warning, and its
    # reward is 0); /get_reward?strip_eos=false scores the query's EOS text as sent
    assert ref[1].flow_return == pytest.approx(ref[0].flow_return, abs=1e-6)
    assert ref[1].token_rewards[-1] == 0.0
    assert kept != pytest.approx(stripped, abs=1e-6)
    assert KEY not in keyed_server.log.read_text()


# ---- --reward.remote_url reward_func.py ------------------------------------------------------


def test_reward_func_file_under_openrlhf_concurrency(ff_server, tok, monkeypatch):
    ff_server.wait_quiet()
    trained0 = ff_server.flow()["samples_trained"]
    monkeypatch.setenv("FLOWFIELD_URL", ff_server.url)
    executor = SingleTurnAgentExecutor(EXAMPLE)  # loads reward_func from the file, as OpenRLHF
    problems = [problem(10 + i) for i in range(4)]
    outs = rollouts(executor, tok, problems, [p.answer for p in problems], n=4)  # int labels
    assert len(outs) == 16 and all(o["reward"] is not None for o in outs), outs
    right = [float(parse_answer(response_of(o, tok)) == o["label"]) for o in outs]
    assert [o["scores"][0].item() for o in outs] == right
    rf = executor.reward_func
    assert rf.calls == 16
    # 16 concurrent calls, 8 accepted: 8 updates under 8 ids, each sample queued and trained once
    assert len(rf.update_results) == 8
    assert len({u.update_id for u in rf.update_results}) == 8
    assert sum(u.accepted for u in rf.update_results) == 8
    assert not any(u.duplicate for u in rf.update_results)
    assert ff_server.wait_quiet()["samples_trained"] == trained0 + 8


def test_many_threads_never_share_an_update_id(ff_server):
    ff_server.wait_quiet()
    trained0 = ff_server.flow()["samples_trained"]
    rf = FlowfieldOpenRLHFReward(ff_server.url, verifier=lambda p, r, lab: 1.0,
                                 return_tensors=False)
    p = problem(20)
    query = p.prompt + expert_solution(p)
    with ThreadPoolExecutor(max_workers=32) as pool:
        outs = list(pool.map(lambda i: rf([query], [p.prompt], [{"i": i}]), range(32)))
    assert all(o["scores"] == [1.0] for o in outs)
    ids = [u.update_id for u in rf.update_results]
    assert len(ids) == 32 and len(set(ids)) == 32 and rf.calls == 32
    assert all(u.accepted == 1 and not u.duplicate for u in rf.update_results)
    assert ff_server.wait_quiet(timeout=120)["samples_trained"] == trained0 + 32

