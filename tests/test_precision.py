"""FLOWFIELD_DTYPE / --dtype: float32, bfloat16, auto (bf16 where it measures faster)."""

from __future__ import annotations

import pytest
import torch

from flowfield import precision
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder
from flowfield.precision import AUTO_MIN_SPEEDUP, check_dtype_name, resolve_dtype
from flowfield.scorer import FlowScorer


def test_explicit_names_resolve_without_measuring(monkeypatch):
    monkeypatch.setattr(precision, "gemm_gflops", lambda *a, **k: pytest.fail("measured"))
    assert resolve_dtype("float32", "cpu").dtype == torch.float32
    assert resolve_dtype("bfloat16", "cpu").dtype == torch.bfloat16
    assert resolve_dtype("auto", "cuda").dtype == torch.bfloat16  # no GPU needed to decide
    with pytest.raises(ValueError, match="float32, bfloat16, auto"):
        check_dtype_name("fp16")


@pytest.mark.parametrize(
    "native, rates, expected",
    [
        (False, None, torch.float32),  # emulated bf16 is slower: never picked
        (True, {"float32": 100.0, "bfloat16": 100.0 * AUTO_MIN_SPEEDUP}, torch.bfloat16),
        (True, {"float32": 100.0, "bfloat16": 120.0}, torch.float32),  # within the margin
        (True, {"float32": 100.0, "bfloat16": 40.0}, torch.float32),
    ],
)
def test_auto_on_cpu_decides_by_instructions_and_measurement(monkeypatch, native, rates, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    by_dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
    monkeypatch.setattr(precision, "gemm_gflops", lambda dtype, *a, **k: rates[by_dtype[dtype]])
    p = resolve_dtype("auto", "cpu", (64, 128))
    assert p.dtype == expected and p.requested == "auto" and p.reason
    assert (p.gemm_gflops is None) == (not native)


def test_gemm_rate_is_measured():
    assert precision.gemm_gflops(torch.float32, 64, 64, 64, min_seconds=0.01) > 0


def test_settings_reject_an_unknown_dtype(monkeypatch):
    from service.settings import Settings

    monkeypatch.setenv("FLOWFIELD_DTYPE", "half")
    with pytest.raises(ValueError, match="dtype must be one of"):
        Settings()
    monkeypatch.setenv("FLOWFIELD_DTYPE", "bfloat16")
    assert Settings().dtype == "bfloat16"


def test_bf16_scoring_is_close_to_float32(llama_dir):
    """The same flow scored by a bf16 and a float32 encoder: deviations within 5% (bf16 keeps
    8 mantissa bits of the latents; the path, target and reduction stay float32)."""
    enc32 = LatentEncoder(llama_dir, dtype="float32")
    enc16 = LatentEncoder(llama_dir, dtype="bfloat16")
    assert enc16.model.dtype == torch.bfloat16 and enc16.precision.name == "bfloat16"
    torch.manual_seed(0)
    net = FlowNet(flow_for_encoder(enc32.hidden_size, enc32.layer_fractions, depth=2))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(std=0.05)
    meta = FlowMetadata(net.config, enc32.identity.__dict__)
    prompts, responses = [[3, 4, 5], [6, 7]], [[8, 9, 10, 11], [12, 13, 14]]
    d32 = FlowScorer(enc32, net, meta).deviations(prompts, responses)
    d16 = FlowScorer(enc16, net, meta).deviations(prompts, responses)
    assert next(net.parameters()).dtype == torch.float32  # the caller's flow is untouched
    for a, b in zip(d32, d16):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=5e-2, atol=0)
