"""Optional API keys with two scopes: "score" (read/score) and "update" (/update, /v1/policy).

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Routes depend on
`require("score")` or `require("update")`.

- score scope: open without FLOWFIELD_SCORE_API_KEY; with it, the score key or the update key.
- update scope: with FLOWFIELD_UPDATE_API_KEY, that key only (the score key gets 403). Without
  it, the score key when one is set: a service whose reads are protected never leaves its
  writes open by omission. FLOWFIELD_OPEN_UPDATE_ENDPOINTS=true is the explicit opt-in that
  leaves them open then (the service logs a warning at start-up). No key at all: open.

`POST /get_reward` also takes the key in its URL (`/get_reward?api_key=<key>`, through
`require("score", url_key=True)`): OpenRLHF's remote reward client cannot send headers. Every
authenticated route removes an `api_key` query parameter from the request before anything else
(accepted or not), so that a key in a URL reaches nothing downstream; the access log
(service/app.py) writes the path without its query string anyway.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends, Query, Request

from service.errors import ApiError
from service.settings import Settings
from service.state import get_settings_dep

Scope = Literal["score", "update"]
UPDATE_ENDPOINTS = ("/v1/update", "/update", "/v1/policy")


def _secret(value) -> str | None:
    return (value.get_secret_value() or None) if value is not None else None


def scope_keys(scope: Scope, settings: Settings) -> tuple[list[str], str | None]:
    """(keys that grant `scope`, a known key that lacks it), with no keys = the scope is open."""
    score, update = _secret(settings.score_api_key), _secret(settings.update_api_key)
    if scope == "score":
        return ([k for k in (score, update) if k] if score else []), None
    if update:
        return [update], score
    if score and not settings.open_update_endpoints:
        return [score], None
    return [], None


def open_update_warning(settings: Settings) -> str | None:
    """The start-up warning when only the score key is set and the writes are left open."""
    if (
        _secret(settings.score_api_key)
        and not _secret(settings.update_api_key)
        and settings.open_update_endpoints
    ):
        return (
            "FLOWFIELD_OPEN_UPDATE_ENDPOINTS is set: the update endpoints need no key while "
            "the score endpoints need FLOWFIELD_SCORE_API_KEY; anyone who can reach the "
            "service can queue training samples and reload the policy"
        )
    return None


def _presented(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _redact_url_key(request: Request) -> None:
    """Remove `api_key` from the query string of the request scope (shared with the server)."""
    if b"api_key" not in request.scope.get("query_string", b""):
        return
    pairs = parse_qsl(request.scope.get("query_string", b"").decode("latin-1"),
                      keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k != "api_key"]
    request.scope["query_string"] = urlencode(kept).encode("latin-1")


def _check(scope: Scope, key: str | None, settings: Settings, how: str) -> None:
    accepted, lacking = scope_keys(scope, settings)
    if not accepted:
        return
    if key is None:
        raise ApiError(
            401, "unauthorized", f"missing API key ({how})", headers={"WWW-Authenticate": "Bearer"}
        )
    if any(_eq(key, k) for k in accepted):
        return
    if lacking and _eq(key, lacking):
        raise ApiError(
            403,
            "forbidden",
            "this key has the score scope only; /update and /v1/policy need the update key",
        )
    raise ApiError(401, "unauthorized", "wrong API key", headers={"WWW-Authenticate": "Bearer"})


@lru_cache
def require(scope: Scope, url_key: bool = False) -> Callable[..., None]:
    """The dependency that checks the `scope` key: `Depends(require("score"))`.

    With `url_key`, the key may also come as `?api_key=` (used by /get_reward only)."""
    if scope not in ("score", "update"):
        raise ValueError(f"unknown scope {scope!r}")

    if url_key:

        def check_header_or_url(
            request: Request,
            settings: Settings = Depends(get_settings_dep),
            api_key: str | None = Query(
                None,
                description="the score key, for clients that cannot send headers (OpenRLHF's "
                "--reward.remote_url); removed from the URL before anything is logged",
            ),
        ) -> None:
            _redact_url_key(request)
            _check(
                scope,
                _presented(request) or api_key,
                settings,
                "Authorization: Bearer <key>, or ?api_key=<key> in the URL",
            )

        return check_header_or_url

    def check(request: Request, settings: Settings = Depends(get_settings_dep)) -> None:
        _redact_url_key(request)  # not accepted here, and not passed on either
        _check(scope, _presented(request), settings, "Authorization: Bearer <key>")

    return check
