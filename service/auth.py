"""Optional API keys with two scopes: "score" (read/score) and "update" (/update, /v1/policy).

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. The update key also
grants the score scope. With no key configured for a scope, that scope is open.

`POST /get_reward` also takes the key in its URL (`/get_reward?api_key=<key>`): OpenRLHF's
remote reward client cannot send headers. Every authenticated route removes an `api_key`
query parameter from the request before anything else (accepted or not), so that a key in a
URL reaches no log line: uvicorn's access log reads the query string from the same request
scope after the route ran.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends, Query, Request

from service.errors import ApiError
from service.settings import Settings
from service.state import get_settings_dep


def _presented(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _check_score(key: str | None, settings: Settings, how: str) -> None:
    score = settings.score_api_key.get_secret_value() if settings.score_api_key else None
    update = settings.update_api_key.get_secret_value() if settings.update_api_key else None
    if not score:
        return
    if key is None:
        raise ApiError(
            401, "unauthorized", f"missing API key ({how})", headers={"WWW-Authenticate": "Bearer"}
        )
    if _eq(key, score) or (update and _eq(key, update)):
        return
    raise ApiError(401, "unauthorized", "wrong API key", headers={"WWW-Authenticate": "Bearer"})


def require_score(request: Request, settings: Settings = Depends(get_settings_dep)) -> None:
    _redact_url_key(request)  # not accepted here, and not logged either
    _check_score(_presented(request), settings, "Authorization: Bearer <key>")


def _redact_url_key(request: Request) -> None:
    """Remove `api_key` from the query string of the request scope (shared with the server)."""
    if b"api_key" not in request.scope.get("query_string", b""):
        return
    pairs = parse_qsl(request.scope.get("query_string", b"").decode("latin-1"),
                      keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k != "api_key"]
    request.scope["query_string"] = urlencode(kept).encode("latin-1")


def require_score_header_or_url(
    request: Request,
    settings: Settings = Depends(get_settings_dep),
    api_key: str | None = Query(
        None,
        description="the score key, for clients that cannot send headers (OpenRLHF's "
        "--reward.remote_url); removed from the URL before anything is logged",
    ),
) -> None:
    """`require_score`, also accepting the key as `?api_key=` (used by /get_reward only)."""
    _redact_url_key(request)
    _check_score(
        _presented(request) or api_key,
        settings,
        "Authorization: Bearer <key>, or ?api_key=<key> in the URL",
    )


def require_update(request: Request, settings: Settings = Depends(get_settings_dep)) -> None:
    _redact_url_key(request)
    update = settings.update_api_key.get_secret_value() if settings.update_api_key else None
    score = settings.score_api_key.get_secret_value() if settings.score_api_key else None
    if not update:
        return
    key = _presented(request)
    if key is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if _eq(key, update):
        return
    if score and _eq(key, score):
        raise ApiError(
            403,
            "forbidden",
            "this key has the score scope only; /update and /v1/policy need the update key",
        )
    raise ApiError(401, "unauthorized", "wrong API key", headers={"WWW-Authenticate": "Bearer"})
