"""The HTTP server's own limits: what a client controls before the app sees a request.

`flowfield serve` runs uvicorn with its h11 protocol (pure Python), not httptools: h11 bounds
the request line + headers (`h11_max_incomplete_event_size`, FLOWFIELD_MAX_HEADER_BYTES),
where uvicorn's httptools protocol accepts headers of any size (a 256 MiB header held the
event loop for 47 s). `GuardedH11Protocol` adds what uvicorn has no option for:

- a deadline for the request line and headers (FLOWFIELD_HEADER_READ_TIMEOUT_S), from the
  moment a connection opens or its previous response ends: a client that sends nothing, or
  drips its headers a byte at a time, is closed when it passes (uvicorn's keep-alive timer
  restarts with every byte received, and does not run before the first request);
- 431 (not uvicorn's generic 400) for headers over the size limit.

The header count (FLOWFIELD_MAX_HEADER_COUNT) is checked by the app (service/app.py, a JSON
431), the number of connections by uvicorn's limit_concurrency (FLOWFIELD_MAX_CONNECTIONS:
beyond it, requests get 503), and the body by service/app.py's BodyLimit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings


def _plain(status: int, reason: str, text: str) -> bytes:
    body = text.encode("ascii")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-header deadline and a 431 for large headers."""

    header_timeout: float = 10.0
    max_header_bytes: int = 16384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._error_hint: int | None = None
        next_event = self.conn.next_event

        def checked_next_event() -> Any:  # remember why h11 refused the request
            try:
                return next_event()
            except h11.RemoteProtocolError as e:
                self._error_hint = e.error_status_hint
                raise

        self.conn.next_event = checked_next_event  # type: ignore[method-assign]

    # ---- the header deadline ------------------------------------------------------------------

    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _update_timer(self) -> None:
        """Armed while the connection waits for a request's headers, from the moment it
        started waiting (never restarted by the bytes that trickle in)."""
        if self._waiting_for_headers():
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout, self._expired)
        elif self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self._waiting_for_headers():
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it is closed
            self.transport.write(
                _plain(408, "Request Timeout", "request headers not received in time")
            )
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._update_timer()

    def handle_events(self) -> None:
        super().handle_events()
        self._update_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    # ---- 431 ----------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        if self._error_hint != 431:
            super().send_400_response(msg)
            return
        self.logger.warning("Request headers too large.")
        self.transport.write(
            _plain(
                431,
                "Request Header Fields Too Large",
                f"request line and headers over the {self.max_header_bytes}-byte limit",
            )
        )
        self.transport.close()


def protocol_class(settings: Settings) -> type[GuardedH11Protocol]:
    """GuardedH11Protocol with this service's limits."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": settings.header_read_timeout_s,
            "max_header_bytes": settings.max_header_bytes,
        },
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config options that enforce the settings' HTTP limits."""
    return {
        "http": protocol_class(settings),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_s,
    }
