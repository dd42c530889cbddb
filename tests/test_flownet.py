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


def _random_flow(width: int = 32, depth: int = 3, seed: int = 0) -> FlowNet:
    torch.manual_seed(seed)
    net = FlowNet(FlowConfig(hidden_size=16, width=width, depth=depth, context="prev"))
    with torch.no_grad():
        for p in net.parameters():  # the zero-initialised adaLN and output layers too
            p.normal_(std=0.1)
    return net


def _inputs(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, c = torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g)
    t = torch.tensor([0.5, 0.8])[torch.randint(0, 2, (n,), generator=g)]
    lf = torch.tensor([0.25, 0.75])[torch.randint(0, 2, (n,), generator=g)]
    return x, t, c, lf


def _per_block_forward(net: FlowNet, x, t, c, lf):
    """The network written the plain way: each block's own adaLN Linear, embeddings per row."""
    y = net.c_in(c) + net.t_embed(t) + net.l_embed(lf)
    h = net.x_in(x)
    for block in net.blocks:
        h = block(h, block.ada(y))
    return net.final(h, net.final.ada(y))


def test_fused_adaln_and_per_value_embeddings_compute_the_same_field():
    net = _random_flow().eval()
    x, t, c, lf = _inputs(64)
    with torch.no_grad():
        plain = _per_block_forward(net, x, t, c, lf)
        cached = net(x, t, c, lf)  # fused GEMM, embeddings once per (t, layer) value
    with torch.enable_grad():
        trained = net(x, t, c, lf)  # the training path: fused, embeddings per row
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trained.detach(), plain, rtol=1e-5, atol=1e-6)
    assert len(net._embeddings) == 4  # 2 timesteps x 2 layers, embedded once each


def test_inference_caches_follow_parameter_updates():
    net = _random_flow()
    x, t, c, lf = _inputs(32)
    with torch.no_grad():
        before = net(x, t, c, lf)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = net(x, t, c, lf).pow(2).mean()
    loss.backward()
    opt.step()  # in-place updates: the cached stacked weight and embeddings are stale now
    with torch.no_grad():
        after = net(x, t, c, lf)
        expected = _per_block_forward(net, x, t, c, lf)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)
    fresh = _random_flow(seed=5)
    net.load_state_dict(fresh.state_dict())  # copy_ into the same tensors
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, c, lf), fresh(x, t, c, lf), rtol=0, atol=0)


def test_a_rows_velocity_does_not_depend_on_its_batch_mates():
    """The per-value embeddings are computed on one-row inputs: a row's bits are the same
    whatever other (t, layer) values share its call (batch invariance, fixed call shape)."""
    net = _random_flow().eval()
    x, t, c, lf = _inputs(16)
    t2, lf2 = t.clone(), lf.clone()
    t2[8:], lf2[8:] = 0.3, 0.5  # other rows bring other distinct values
    with torch.inference_mode():
        a = net(x, t, c, lf)
        b = net(x, t2, c, lf2)
    assert torch.equal(a[:8], b[:8])


def test_many_distinct_timesteps_fall_back_to_per_row_embeddings():
    net = _random_flow().eval()
    x, _, c, lf = _inputs(200)
    t = torch.linspace(0.01, 0.99, 200)  # e.g. a held-out loss at random t
    with torch.no_grad():
        out = net(x, t, c, lf)
        plain = _per_block_forward(net, x, t, c, lf)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)
    assert len(net._embeddings) == 0  # nothing cached for a continuous t
