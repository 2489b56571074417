"""The OpenAPI pages: Swagger UI at `/docs`, ReDoc at `/redoc`.

Their scripts, stylesheet and icon are served by this server from the installed
`fastapi-offline` package (builds of Swagger UI 5 and ReDoc 2), not fetched from a CDN, so the
pages work on hosts without internet access. Like `/openapi.json` they need no credentials.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"
#: Where the assets are served: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js,
#: favicon.png.
ASSETS_URL = "/docs/assets"


def assets_dir() -> Path:
    """The folder of the installed package that holds the assets."""
    return Path(str(resources.files("fastapi_offline").joinpath("static")))


def add_docs(app: FastAPI) -> None:
    """Swagger UI, its OAuth2 redirect page, ReDoc and their assets on `app`, which must be
    built with `docs_url=None` and `redoc_url=None` (FastAPI's own pages load from a CDN)."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("the API docs need the OpenAPI document (openapi_url)")
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    # no online validator badge: it would be an image from another host
    parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=parameters,
        )

    async def oauth2_redirect(_: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT_URL, oauth2_redirect, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)


def _root_path(request: Request) -> str:
    """The prefix a reverse proxy serves the app under (ASGI `root_path`), as FastAPI's own
    pages use it."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")
