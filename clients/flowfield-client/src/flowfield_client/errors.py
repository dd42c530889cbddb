"""Exceptions. A server error carries the service's code, message, field and sample id.

The service answers every error with {"error": {"code", "message", "field", "sample_id"}}
(docs/api.md "Errors"); `error_from_response` turns that body into the matching subclass of
`APIStatusError`. Errors with no response at all (refused connection, reset, timeout) are
`FlowfieldConnectionError` once the retries are spent.
"""

from __future__ import annotations

from typing import Any

import httpx


class FlowfieldError(Exception):
    """Base class of everything the client raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
        sample_id: str | None = None,
        retry_after: float | None = None,
        url: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field
        self.sample_id = sample_id
        self.retry_after = retry_after
        self.url = url
        self.body = body
        # set by update() so a caller can retry the same update idempotently
        self.update_id: str | None = None

    def __str__(self) -> str:
        head = f"HTTP {self.status}" if self.status is not None else "flowfield"
        if self.code:
            head += f" {self.code}"
        out = f"{head}: {self.message}"
        extra = []
        if self.field:
            extra.append(f"field {self.field}")
        if self.sample_id:
            extra.append(f"sample {self.sample_id}")
        if self.url:
            extra.append(self.url)
        return out + (f" ({', '.join(extra)})" if extra else "")


class FlowfieldConnectionError(FlowfieldError):
    """No HTTP response: connection refused or reset, or the retries ran out on such errors."""


class FlowfieldTimeoutError(FlowfieldConnectionError):
    """The request timed out (connect, read, write or pool) on its last attempt."""


class APIStatusError(FlowfieldError):
    """The service answered with an HTTP error status."""


class BadRequestError(APIStatusError):
    """400, or any other 4xx without a more specific class."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403: the key lacks the scope (e.g. a score key on /update)."""


class NotFoundError(APIStatusError):
    """404."""


class PayloadTooLargeError(APIStatusError):
    """413: the body exceeds FLOWFIELD_MAX_BODY_BYTES; use a smaller chunk_size."""


class InvalidRequestError(APIStatusError):
    """422: malformed body, wrong types, unknown options, limits, duplicate ids."""


class RateLimitError(APIStatusError):
    """429: the scoring queue is full (retried, honouring Retry-After, until attempts run out)."""


class ServiceUnavailableError(APIStatusError):
    """503: not ready or the update queue is unreachable (retried like 429)."""


class InternalServerError(APIStatusError):
    """5xx other than 503."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class(status: int) -> type[APIStatusError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InternalServerError if status >= 500 else BadRequestError


def _request_url(response: httpx.Response) -> str | None:
    try:
        return str(response.request.url)
    except RuntimeError:  # a Response built by hand has no request
        return None


def error_from_response(
    response: httpx.Response, retry_after: float | None = None
) -> APIStatusError:
    """The exception for an error response, with the service's error body when it sent one."""
    body: Any = None
    code = field = sample_id = None
    try:
        body = response.json()
    except ValueError:
        body = response.text
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or response.reason_phrase)
        code, field, sample_id = err.get("code"), err.get("field"), err.get("sample_id")
    elif isinstance(body, dict) and "detail" in body:  # a plain FastAPI/Starlette error
        message = str(body["detail"])
    else:  # e.g. an HTML page from a proxy
        text = body if isinstance(body, str) else ""
        message = text.strip()[:500] or response.reason_phrase or "error"
    return error_class(response.status_code)(
        message,
        status=response.status_code,
        code=code,
        field=field,
        sample_id=sample_id,
        retry_after=retry_after,
        url=_request_url(response),
        body=body,
    )
