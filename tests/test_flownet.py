import dataclasses

import pytest
import torch

from flowfield.checkpoint import FlowMismatchError, check_compatible, load_flow, save_flow
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowConfig, FlowMetadata, FlowNet, flow_for_encoder


def test_untrained_field_is_exactly_zero():
    net = FlowNet(FlowConfig(hidden_size=16, width=16, depth=2))
    x = torch.randn(5, 16)
    assert torch.equal(net(x, torch.rand(5), torch.randn(5, 16), torch.rand(5)), torch.zeros(5, 16))


def test_parameter_count_is_about_7_plus_5n_d_squared():
    d, n = 768, 4  # the time/layer embeddings' first layers (freq_dim x W) are extra
    net = FlowNet(FlowConfig(hidden_size=d, width=d, depth=n, freq_dim=256))
    assert abs(net.num_parameters() / ((7 + 5 * n) * d * d) - 1) < 0.05


def test_config_rejects_unknown_context():
    with pytest.raises(ValueError, match="context"):
        FlowConfig(hidden_size=8, width=8, context="sideways")


def test_checkpoint_roundtrip_keeps_weights_and_metadata(tmp_path, llama_dir):
    enc = LatentEncoder(llama_dir)
    net = FlowNet(
        flow_for_encoder(enc.hidden_size, enc.layer_fractions, width=24, depth=2, context="prev")
    )
    torch.nn.init.normal_(net.final.out.weight)  # make the output non-trivial
    meta = FlowMetadata(
        config=net.config, encoder=dataclasses.asdict(enc.identity), version=3, samples_trained=11
    )
    save_flow(tmp_path / "ck", net, meta)
    assert (tmp_path / "ck" / "flow.json").is_file()
    net2, meta2 = load_flow(tmp_path / "ck", enc.identity, enc.layer_fractions)
    assert meta2.version == 3 and meta2.samples_trained == 11 and meta2.config == net.config
    x = torch.randn(4, enc.hidden_size)
    t = torch.rand(4)
    assert torch.equal(net.eval()(x, t, x, t), net2(x, t, x, t))
    # no temporary files left behind by the atomic writes
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["flow.json", "flow.safetensors"]


def test_loading_against_a_different_encoder_names_the_mismatch(tmp_path, model_dirs):
    llama = LatentEncoder(model_dirs["llama"])
    gpt2 = LatentEncoder(model_dirs["gpt2"])
    net = FlowNet(flow_for_encoder(llama.hidden_size, llama.layer_fractions, depth=1))
    save_flow(tmp_path / "ck", net, FlowMetadata(net.config, dataclasses.asdict(llama.identity)))
    with pytest.raises(FlowMismatchError, match="model_type: flow trained on llama"):
        load_flow(tmp_path / "ck", gpt2.identity)
    with pytest.raises(FlowMismatchError, match="context direction"):
        load_flow(tmp_path / "ck", llama.identity, context="prev")
    with pytest.raises(FlowMismatchError, match="layer fractions"):
        check_compatible(
            FlowMetadata(net.config, dataclasses.asdict(llama.identity)),
            llama.identity,
            (0.25, 0.5, 0.625),
        )
    bigger = dataclasses.replace(llama.identity, hidden_size=64)
    with pytest.raises(FlowMismatchError, match="hidden size: flow 32, encoder 64"):
        load_flow(tmp_path / "ck", bigger)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no flow checkpoint"):
        load_flow(tmp_path)
