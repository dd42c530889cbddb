"""The interactive API docs (/docs, Swagger UI), served with its JavaScript and CSS from this
process instead of a CDN, so that it renders on a machine with no internet access (FastAPI's
"Self-hosting JavaScript and CSS for docs"). The assets are the ones the `fastapi-offline`
package ships (Swagger UI 5, which reads the OpenAPI 3.1 spec FastAPI writes). There is no
/redoc: one docs page, and the spec itself at /openapi.json.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")  # behind a proxy that strips a path prefix
    assets = f"{root}{ASSETS_URL}"
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - API docs",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


def install_docs(app: FastAPI) -> None:
    """Add the docs page and its static assets to an app built with docs_url=None and
    redoc_url=None."""
    static = files("fastapi_offline") / "static"
    app.mount(ASSETS_URL, StaticFiles(directory=str(static)), name="docs-assets")
    app.include_router(router)
