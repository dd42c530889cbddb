"""When and how long to wait before trying a request again.

Retried: connection errors (refused, reset, dropped before the response, timeouts) and the
statuses in `retry_statuses` (429 and 503 from the service, 502/504 from a proxy in front of
it). Never retried: any other 4xx (the same request would fail the same way) and other 5xx.
The wait before retry n (1-based) is `min(backoff_max, backoff_base * 2**(n-1))`, of which a
random fraction up to `jitter` is taken off so that many clients do not retry in step; a
server's `Retry-After` is a floor on the wait (capped at `max_retry_after`).
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field

import httpx

# httpx errors that mean "no usable response": safe to retry because /score is read-only and
# /update carries an update_id that the service deduplicates
RETRYABLE_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5  # tries in all, the first included; 1 = no retries
    backoff_base: float = 0.25  # seconds before the first retry
    backoff_max: float = 10.0
    jitter: float = 0.5  # take up to this fraction off each wait, at random
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 502, 503, 504}))
    respect_retry_after: bool = True
    max_retry_after: float = 60.0  # never wait longer than this for one Retry-After

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must lie in [0, 1]")
        if any(400 <= s < 500 and s != 429 for s in self.retry_statuses):
            # the contract: a 4xx other than 429 is the client's mistake and is never retried
            raise ValueError("only 429 among the 4xx statuses may be retried")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Exponential wait with jitter before retry number `retry` (1-based)."""
        base = min(self.backoff_max, self.backoff_base * (2 ** max(0, retry - 1)))
        u = (rng or random).random()
        return base * (1.0 - self.jitter * u)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        d = self.backoff(retry)
        if retry_after is not None and self.respect_retry_after:
            d = max(d, min(retry_after, self.max_retry_after))
        return d

    def should_retry_status(self, status: int) -> bool:
        return status in self.retry_statuses


NO_RETRY = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryEvent:
    """Passed to a client's `on_retry` hook before each wait."""

    method: str
    url: str
    attempt: int  # the attempt that failed (1-based)
    delay: float  # seconds the client will wait now
    status: int | None  # HTTP status, or None for a connection error
    error: str
