"""End to end with a real trainer: TRL's GRPOTrainer on the demo policy, with the flowfield
adapter as one of its reward functions, against the running service.

Runs examples/trainers/trl_grpo_demo.py (the example is the test) in a subprocess and checks
that rewards came from /v1/score, accepted completions went to /v1/update, and the flow
version advanced during the run. TRL is an optional extra: without it the test is skipped
locally, and fails in CI (CI=true), where it must be installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from client_server import CLIENT_SRC

REPO = Path(__file__).resolve().parents[2]

if not os.environ.get("CI"):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")

STEPS = 5


@pytest.mark.slow
def test_trl_grpo_trainer_with_flowfield_rewards(ff_server, tmp_path):
    before = ff_server.wait_quiet()
    scores0 = ff_server.metric("flowfield_requests_total", endpoint="/v1/score", status="200")
    updates0 = ff_server.metric("flowfield_requests_total", endpoint="/v1/update", status="202")
    report = tmp_path / "report.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(CLIENT_SRC), os.environ.get("PYTHONPATH", "")]),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",  # everything is local; never wait on a hub lookup
    }
    proc = subprocess.run(
        [sys.executable, "examples/trainers/trl_grpo_demo.py", "--url", ff_server.url,
         "--max-steps", str(STEPS), "--output-dir", str(tmp_path / "out"),
         "--report", str(report), "--wait", "60"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=540,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    r = json.loads(report.read_text())
    rf = r["reward_function"]

    # bound to the trainer: token ids sent, the trainer's EOS ids stripped
    assert rf["sends_prompt_ids"] and rf["eos_token_ids"] == [r["eos_token_id"]]

    # rewards came back from /score: one call per step, every completion scored
    assert rf["calls"] == STEPS and rf["scored"] == STEPS * 8
    scores = ff_server.metric("flowfield_requests_total", endpoint="/v1/score", status="200")
    assert scores - scores0 >= STEPS
    steps = [h for h in r["log_history"] if "rewards/flowfield/mean" in h]
    assert len(steps) == STEPS and all("rewards/accuracy/mean" in h for h in steps)

    # the verifier-accepted completions went to /update, and were queued
    assert rf["pushed"] > 0 and rf["accepted"] == rf["pushed"] and rf["update_failures"] == 0
    updates = ff_server.metric("flowfield_requests_total", endpoint="/v1/update", status="202")
    assert updates - updates0 == rf["updates"]

    # the learner refined the flow from them while the trainer ran
    start = r["flow_version_start"]
    assert start == before["flow_version"]
    assert max(r["flow_version_per_step"]) > start, r["flow_version_per_step"]
    assert r["flow_version_end"] > start
    after = ff_server.wait_quiet()
    assert after["samples_trained"] == before["samples_trained"] + rf["accepted"]
