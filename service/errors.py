"""Every client mistake becomes a 4xx JSON error naming the field and sample; never a 500.

Body: {"error": {"code", "message", "field", "sample_id"}} (docs/api.md "Errors").
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("flowfield.service")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        sample_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.sample_id = sample_id
        self.headers = headers


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
    }
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _printable(text: str | None) -> str | None:
    """Text that encodes as UTF-8: an echoed lone surrogate ("\\ud800" sent as a JSON
    escape) is written out as that escape instead of failing the response."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _field_path(loc: tuple[Any, ...]) -> str:
    """("body", "samples", 3, "response_ids", 2) -> "samples[3].response_ids[2]"."""
    out = ""
    for part in loc:
        if part == "body" and not out:
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
    field = _field_path(loc)
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
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug on our side: log it with the traceback, answer without leaking internals
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the service log")
