"""A /healthz probe timed while something else is in flight (issue: the event loop must never
stall), shared by the event-loop, limits and cancellation tests."""

from __future__ import annotations

import threading
import time

import httpx

# /healthz must answer within this whatever else is in flight. The service's goal is 100 ms
# (measured: ~10-60 ms); the bound leaves room for a loaded 2-core CI machine, and every stall
# these tests reproduce was 5-47 s before the fix.
HEALTHZ_BOUND_S = 0.5


class HealthProbe:
    """GET /healthz every `interval` seconds on a connection of its own, in a thread, until
    stopped; `worst` is the slowest answer (a request that fails counts as infinitely slow)."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        self.url = url
        self.interval = interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    ok = c.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - t0 if ok else float("inf"))
                time.sleep(self.interval)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        deadline = time.monotonic() + 5
        while len(self.latencies) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # a few answers before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(70)

    @property
    def worst(self) -> float:
        return max(self.latencies) if self.latencies else float("inf")

    def check(self, what: str) -> None:
        assert len(self.latencies) >= 3, f"too few /healthz probes during {what}"
        assert self.worst < HEALTHZ_BOUND_S, (
            f"/healthz took {self.worst:.3f} s during {what} (bound {HEALTHZ_BOUND_S} s; "
            f"{len(self.latencies)} probes)"
        )
