"""Which floating-point type the encoder and the flow run in: float32, bfloat16, or `auto`.

bfloat16 halves memory traffic and, on CPUs with native bf16 dot products (AVX512-BF16,
AMX), runs matrix products 2-3x faster than float32; on CPUs without them PyTorch emulates
bf16 and it is slower. `auto` therefore decides by hardware and by measurement:

- cuda: bfloat16 (every GPU this service targets has bf16 tensor cores);
- cpu: bfloat16 only if the CPU has native bf16 instructions AND a matrix product of the
  model's own shape measures at least AUTO_MIN_SPEEDUP faster in bf16 than in float32 on
  this machine, now, with the current thread count; float32 otherwise.

The margin keeps the choice stable across replicas on the same hardware (a choice that
flipped with timing noise would give replicas different numbers for the same request).
Deviations are always accumulated in float32 (see objective.py); bf16 changes the latents
and the network's arithmetic, not the reduction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a dtype is resolved: the CLI's options import this module
    import torch

DTYPE_NAMES = ("float32", "bfloat16", "auto")
AUTO_MIN_SPEEDUP = 1.3


@dataclass(frozen=True)
class Precision:
    """The resolved dtype and why (for the start-up log and the bench report)."""

    dtype: torch.dtype
    requested: str
    reason: str
    gemm_gflops: dict[str, float] | None = None  # measured rates behind an `auto` decision

    @property
    def name(self) -> str:
        return dtype_name(self.dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "float32"."""
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    """"float32" / "bfloat16" -> the torch dtype."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def check_dtype_name(name: str) -> str:
    """`name` if it is one of DTYPE_NAMES, else ValueError naming the choices."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return name


def cpu_has_native_bf16() -> bool:
    """True if the CPU computes bf16 dot products natively (Linux: AVX512-BF16 or AMX-BF16).

    oneDNN's own check is used where the /proc flags are unavailable.
    """
    import torch

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def gemm_gflops(
    dtype: torch.dtype,
    m: int,
    k: int,
    n: int,
    device: str | torch.device = "cpu",
    min_seconds: float = 0.2,
) -> float:
    """Achieved GFLOP/s of an [m, k] x [k, n] matrix product (best of repeated timings)."""
    import torch

    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=g).to(device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        for _ in range(3):  # warm-up: allocator, kernel selection, oneDNN primitive cache
            a @ b
        sync()
        best, spent, reps = float("inf"), 0.0, 0
        while spent < min_seconds or reps < 5:
            start = time.perf_counter()
            a @ b
            sync()
            dt = time.perf_counter() - start
            best, spent, reps = min(best, dt), spent + dt, reps + 1
    return 2.0 * m * k * n / best / 1e9


def resolve_dtype(
    requested: str, device: str | torch.device, shape: tuple[int, int] = (512, 2048)
) -> Precision:
    """The dtype to run in. shape: (k, n) of the model's typical matrix product (hidden size,
    MLP size), timed on 512 rows when `auto` has to measure on a CPU."""
    import torch

    requested = check_dtype_name(requested)
    device = torch.device(device)
    if requested != "auto":
        return Precision(torch_dtype(requested), requested, "requested")
    if device.type == "cuda":
        return Precision(torch.bfloat16, requested, "cuda: bf16 tensor cores")
    if device.type != "cpu":
        return Precision(torch.float32, requested, f"{device.type}: float32")
    if not cpu_has_native_bf16():
        return Precision(torch.float32, requested, "cpu without native bf16 instructions")
    k, n = shape
    # the two dtypes take turns, best of three each: a busy neighbour slows both alike
    rates = {"float32": 0.0, "bfloat16": 0.0}
    for _ in range(3):
        for name in rates:
            rate = gemm_gflops(torch_dtype(name), 512, k, n, min_seconds=0.1)
            rates[name] = max(rates[name], rate)
    speedup = rates["bfloat16"] / rates["float32"]
    rates = {name: round(r, 1) for name, r in rates.items()}
    gemm = f"a [512, {k}] x [{k}, {n}] GEMM"
    if speedup >= AUTO_MIN_SPEEDUP:
        reason = f"cpu with native bf16: {gemm} ran {speedup:.2f}x faster in bf16"
        return Precision(torch.bfloat16, requested, reason, rates)
    reason = (
        f"cpu with native bf16, but {gemm} ran only {speedup:.2f}x as fast in bf16 "
        f"(< {AUTO_MIN_SPEEDUP}x)"
    )
    return Precision(torch.float32, requested, reason, rates)
