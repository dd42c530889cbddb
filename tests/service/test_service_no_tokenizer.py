"""A policy directory without tokenizer files: it loads with a warning, token ids are scored,
and text gets a clear per-sample error instead of a silent "empty response". The same
server's flow has no calibration, so the "expert" normalisation is refused with a 422."""

from __future__ import annotations

from dataclasses import asdict

import torch
from helpers import tiny_config
from live_server import Server
from transformers import AutoModelForCausalLM

from flowfield.checkpoint import save_flow
from flowfield.encoder import NO_TOKENIZER, LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder


def test_text_without_a_tokenizer_is_a_per_sample_error(tmp_path, caplog):
    policy = tmp_path / "policy"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("gpt2", layers=4)).save_pretrained(policy)
    with caplog.at_level("WARNING", logger="flowfield.encoder"):
        enc = LatentEncoder(policy)
    assert not enc.has_tokenizer
    assert "no tokenizer files" in caplog.text
    net = FlowNet(flow_for_encoder(enc.hidden_size, enc.layer_fractions, depth=1))
    save_flow(tmp_path / "flow", net, FlowMetadata(net.config, asdict(enc.identity)))

    srv = Server(
        tmp_path,
        env={"FLOWFIELD_MODEL_PATH": str(policy), "FLOWFIELD_FLOW_PATH": str(tmp_path / "flow")},
    )
    try:
        with srv.client() as c:
            samples = [
                {"id": "ids", "prompt_ids": [3, 4], "response_ids": [5, 6, 7]},
                {"id": "text", "prompt": "Q:1+2", "response": "A:3."},
            ]
            r = c.post("/v1/score", json={"samples": samples})
            assert r.status_code == 200, r.text
            # no calibration: the default "expert" normalisation falls back to bilateral
            assert r.json()["normalization"] == "bilateral"
            ok, text = r.json()["results"]
            assert ok["status"] == "ok" and len(ok["token_rewards"]) == 3
            assert text["status"] == "error" and text["error"] == NO_TOKENIZER
            r = c.post("/v1/update", json={"samples": [{**samples[1], "reward": 1.0}]})
            assert r.status_code == 422 and NO_TOKENIZER in r.text
            # this flow was saved without a calibration: "expert" normalisation is a 422
            r = c.post(
                "/v1/score",
                json={"samples": samples[:1], "options": {"normalization": "expert"}},
            )
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["field"] == "options.normalization" and "calibration" in err["message"]
    finally:
        srv.stop()
    assert "no tokenizer files" in srv.log_path.read_text()
