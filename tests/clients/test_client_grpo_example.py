"""The plain PyTorch GRPO example with the service's token-level advantages runs end to end,
and the advantages it trains on are what RLFR defines."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from client_server import CLIENT_SRC
from flowfield_client import FlowfieldClient, Sample

from flowfield.demo.task import Problem, expert_solution

REPO = Path(__file__).resolve().parents[2]
DEMO_POLICY = REPO / "flowfield" / "demo" / "assets" / "policy"


def test_token_advantages_are_outcome_plus_reward_to_go(ff_server):
    p = Problem(1234, 5678)
    good = expert_solution(p)
    bad = good.replace("A:6912", "A:7912")
    samples = [Sample(prompt=p.prompt, response=good, reward=1.0, group_id="g"),
               Sample(prompt=p.prompt, response=bad, reward=0.0, group_id="g")]
    with FlowfieldClient(ff_server.url) as ff:
        res = ff.score(samples, return_advantages=True)
    z = 0.5 / statistics.stdev([1.0, 0.0])  # (R - mean) / sample std within the group
    for r, outcome in zip(res, [z, -z]):
        assert len(r.advantages) == len(r.token_rewards) == r.num_tokens
        togo = [sum(r.token_rewards[t:]) for t in range(r.num_tokens)]
        assert r.advantages == pytest.approx([outcome + g for g in togo], abs=1e-4)


@pytest.mark.slow
def test_grpo_token_advantages_example_runs(ff_server, tmp_path):
    ff_server.wait_quiet()
    report = tmp_path / "report.json"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(CLIENT_SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "examples/trainers/grpo_token_advantages.py", "--url", ff_server.url,
         "--steps", "2", "--groups", "2", "--group-size", "4", "--sync-policy-every", "2",
         "--output-dir", str(tmp_path / "out"), "--report", str(report)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads(report.read_text())
    assert [h["step"] for h in r["history"]] == [1, 2]
    for h in r["history"]:
        assert h["pushed"] == h["accepted"] and h["loss"] == h["loss"]  # not NaN
    assert r["encoder"].endswith("-step-2")  # the service now encodes with the trained policy
    with FlowfieldClient(ff_server.url) as ff:  # put the demo policy back for the other tests
        ff.reload_policy(str(DEMO_POLICY))
    ff_server.wait_quiet()
