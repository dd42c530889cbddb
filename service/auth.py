"""Optional API keys with two scopes: "score" (read/score) and "update" (/update, /v1/policy).

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. The update key also
grants the score scope. With no key configured for a scope, that scope is open.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

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


def require_score(request: Request, settings: Settings = Depends(get_settings_dep)) -> None:
    score = settings.score_api_key.get_secret_value() if settings.score_api_key else None
    update = settings.update_api_key.get_secret_value() if settings.update_api_key else None
    if not score:
        return
    key = _presented(request)
    if key is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if _eq(key, score) or (update and _eq(key, update)):
        return
    raise ApiError(401, "unauthorized", "wrong API key", headers={"WWW-Authenticate": "Bearer"})


def require_update(request: Request, settings: Settings = Depends(get_settings_dep)) -> None:
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
