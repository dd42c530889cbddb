"""Every client mistake becomes a 4xx JSON error naming the field and sample; never a 500.

Body: {"error": {"code", "message", "field", "sample_id", "request_id"}} (docs/api.md
"Errors"); `request_id` is the one the response's X-Request-ID header carries.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.logs import REQUEST_ID

log = logging.getLogger("flowfield.service")


@dataclass(eq=False)
class ApiError(Exception):
    """A client mistake raised anywhere in a request; the handler below answers it with
    `error_response` of its fields."""

    status: int
    code: str
    message: str
    field: str | None = None
    sample_id: str | None = None
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)


class Overloaded(Exception):
    """The scoring queue is full; retry after a short wait (raised by the scheduler, answered
    429 + Retry-After here)."""


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    sample_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "code": code,
        "message": _printable(message),
        "field": _printable(field),
        "sample_id": _printable(sample_id),
        "request_id": REQUEST_ID.get(),
    }
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _printable(text: str | None) -> str | None:
    """Text that encodes as UTF-8: an echoed lone surrogate ("\\ud800" sent as a JSON
    escape) is written out as that escape instead of failing the response."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# the parts pydantic adds to an error's location for the member of a union (or a wrapped
# schema) that failed: "float", "int", "str", "function-after[_valid_unicode(), str]",
# "list[int]", "constrained-float", ... They are not fields of the request.
_TYPE_TAG = re.compile(
    r"(?:int|float|str|bool|bytes|none|decimal|date|datetime|dict|list|tuple|set|literal|"
    r"any|json|callable)"
    r"|[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*\[.*\]"
    r"|(?:constrained|function|lax|strict|is|json|tagged|nullable|default|lax-or-strict|"
    r"json-or-python)-[a-z0-9_-]+(?:\[.*\])?",
    re.S,
)


def _field_path(loc: tuple[Any, ...], error_type: str = "") -> str:
    """("body", "samples", 3, "response_ids", 2) -> "samples[3].response_ids[2]".

    Type tags of union members ("body", "samples", 0, "reward", "float") are left out; the
    last part of an extra_forbidden location is the client's own key and always kept."""
    out = ""
    last = len(loc) - 1
    for n, part in enumerate(loc):
        if part == "body" and not out:
            continue
        if (
            isinstance(part, str)
            and _TYPE_TAG.fullmatch(part)
            and not (n == last and error_type == "extra_forbidden")
        ):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _sample_id(body: Any, loc: tuple[Any, ...]) -> str | None:
    """The id of the sample a validation error is inside, when the body has one."""
    parts = [p for p in loc if p != "body"]
    if len(parts) >= 2 and parts[0] == "samples" and isinstance(parts[1], int):
        try:
            sid = body["samples"][parts[1]].get("id")
            return sid if isinstance(sid, str) else None
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
    return None


def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    loc = tuple(first.get("loc", ("body",)))
    if first.get("type") == "json_invalid":
        return error_response(
            422, "invalid_json", f"body is not valid JSON: {first.get('msg')}", "body"
        )
    field = _field_path(loc, first.get("type", ""))
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = f"unknown field {loc[-1]!r}"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return error_response(
        422,
        "invalid_request",
        f"{field}: {msg}{more}",
        field,
        _sample_id(getattr(exc, "body", None), loc),
    )


# FastAPI reads a JSON body with json.loads: a syntax error becomes a RequestValidationError
# (json_invalid, above), but anything else json.loads raises becomes this 400, with the reason
# only in __cause__: bytes that are not UTF-8 (UnicodeDecodeError), nesting deeper than the
# parser's recursion limit (RecursionError), an integer over sys.get_int_max_str_digits()
# digits (ValueError). The body is as unreadable as broken JSON: the documented 422.
_PARSE_ERROR_DETAIL = "There was an error parsing the body"


def _is_body_parse_error(exc: StarletteHTTPException) -> bool:
    return exc.status_code == 400 and exc.detail == _PARSE_ERROR_DETAIL


def _parse_problem(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 text (byte {cause.start} cannot be decoded: {cause.reason})"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if isinstance(cause, json.JSONDecodeError):
        return cause.msg
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "an integer with too many digits (" + str(cause).split(";")[0] + ")"
    if cause is not None:
        return f"{type(cause).__name__}: {str(cause)[:200]}"
    return "it could not be read"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status, exc.code, exc.message, exc.field, exc.sample_id, exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_handler(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if _is_body_parse_error(exc):
            return error_response(
                422, "invalid_json", f"body is not valid JSON: {_parse_problem(exc)}", "body"
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    # domain errors, mapped here once rather than in each router (the queue's error imported
    # here: loading service.updates at import time would load the learner with this module)
    from service.updates.queue import QueueUnavailable

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return error_response(
            429, "overloaded", f"scoring queue is full ({exc}); retry shortly",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(QueueUnavailable)
    async def _queue_unavailable(request: Request, exc: QueueUnavailable) -> JSONResponse:
        return error_response(
            503, "queue_unavailable", f"update queue unavailable: {exc}",
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug on our side: log it with the traceback, answer without leaking internals
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the service log")
