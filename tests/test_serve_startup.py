"""`flowfield serve` on a model the flow does not fit, or without a flow: one clear line and
exit code 2 before anything loads (no traceback from the app's start-up); and the encoder's
name, from --encoder-name or the model directory's flowfield.json."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

from live_server import REPO

from flowfield.checkpoint import save_flow
from flowfield.demo import ASSETS
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder
from service.preflight import startup_problem

FRACTIONS = (0.25, 0.5, 0.75)


def _serve(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_serve_without_a_flow_on_another_model_is_one_line_and_exit_2(llama_dir):
    out = _serve("--model", str(llama_dir))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("error: no --flow given, and the default (the bundled demo flow)")
    assert "hidden size: flow 128, encoder 32" in lines[0] and "flowfield fit --model" in lines[0]
    out = _serve("--model", str(llama_dir), "--flow", str(llama_dir / "nowhere"))
    assert out.returncode == 2 and "no flow checkpoint at" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_startup_check_names_the_mismatch(tmp_path, llama_dir, model_dirs):
    assert startup_problem(ASSETS / "policy", ASSETS / "flow", FRACTIONS) is None
    enc = LatentEncoder(llama_dir)
    net = FlowNet(flow_for_encoder(enc.hidden_size, enc.layer_fractions, depth=1))
    save_flow(tmp_path / "flow", net, FlowMetadata(net.config, asdict(enc.identity)))
    assert startup_problem(llama_dir, tmp_path / "flow", FRACTIONS) is None
    other = startup_problem(model_dirs["gpt2"], tmp_path / "flow", FRACTIONS)
    assert other.startswith(f"the flow at {tmp_path / 'flow'} does not fit the model at")
    assert "model_type: flow trained on llama, encoder has gpt2" in other
    assert "layer fractions" in startup_problem(llama_dir, tmp_path / "flow", (0.5,))
    assert "not a Hugging Face model directory" in startup_problem(tmp_path, tmp_path, FRACTIONS)


def test_the_encoder_is_named_by_option_or_by_the_model_dirs_flowfield_json(tmp_path, llama_dir):
    assert LatentEncoder(llama_dir).identity.name == "llama"  # the folder
    assert LatentEncoder(llama_dir, name="smol").identity.label().startswith("smol@")
    named = tmp_path / "hf"
    named.mkdir()
    for f in llama_dir.iterdir():
        (named / f.name).symlink_to(f)
    (named / "flowfield.json").write_text(json.dumps({"name": "tiny-llama"}))
    assert LatentEncoder(named).identity.name == "tiny-llama"
