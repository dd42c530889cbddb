"""One-off studies behind BENCHMARKS.md sections: bench_flow.py (the flow network's cost),
batch_invariance.py (batch-invariant scoring), dtype_quality.py (bf16 reward quality)."""
