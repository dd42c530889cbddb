"""`Timing`: one path's measured rounds, shared by the driver (which fills it) and the report
(which summarises it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)  # wall clock, per measured round
    cpu_seconds: list[float] = field(default_factory=list)  # CPU time of every process involved
    tokens: list[int] = field(default_factory=list)  # response tokens per measured round
    flops: list[int] = field(default_factory=list)  # work performed per measured round

    def rates(self) -> list[float]:
        return [n / s for n, s in zip(self.tokens, self.seconds)]

    def gflops(self) -> list[float]:
        return [f / s / 1e9 for f, s in zip(self.flops, self.seconds)]

    def cpu_rates(self) -> list[float]:
        return [n / s for n, s in zip(self.tokens, self.cpu_seconds)]
