"""The FastAPI app behind the data-plane router: the management API and its OpenAPI docs."""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from inferd.api.admin.batches import openai_router
from inferd.api.admin.batches import router as batch_router
from inferd.api.admin.console import add_console
from inferd.api.admin.docs import add_docs
from inferd.api.admin.predictions import router as predictions_router
from inferd.api.admin.routes import router
from inferd.api.dataplane import DataPlane
from inferd.api.http.errors import status_of
from inferd.api.http.routes import add_openapi, method_not_allowed
from inferd.api.http.websocket import TokenSocket, socket_router
from inferd.control.plane import ControlPlane
from inferd.core.errors import InferdError, RateLimited, Unavailable

log = logging.getLogger("inferd.api")


def management_app(
    control: ControlPlane,
    version: str,
    plane: DataPlane | None = None,
    data_plane: APIRouter | None = None,
) -> FastAPI:
    """The management API and its docs pages (assets served locally: `docs.add_docs`); with
    `plane`, also the token-stream WebSocket routes (every non-HTTP scope reaches this app,
    so `/v2/...` WebSocket paths are served here); with `data_plane`
    (`api/http/routes.data_plane_router`), the data-plane routes the raw router hands on, and
    the OpenAPI document describes the whole API, the raw router's own routes included. The
    web console's files are served at `/console/` (`console.add_console`)."""
    app = FastAPI(
        title="inferd",
        version=version,
        description="Model serving platform: the Open Inference Protocol V2 (with Triton's "
        "extensions), KServe V1, the OpenAI-compatible API, health and metrics, and the "
        "management API under /api/v1 (users, API keys, models, versions, deployments, "
        "audit). WebSocket token streams are described in docs/http-api.md. Authenticate "
        "with `Authorization: Bearer <access token or API key>` or `X-API-Key`.",
        docs_url=None,  # FastAPI's pages load Swagger UI from a CDN: add_docs serves our own
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    add_docs(app)
    add_console(app)
    app.state.control = control
    # FastAPI tries routes in order: the one called at rate (job submissions) first
    app.include_router(predictions_router)
    app.include_router(router)
    app.include_router(batch_router)
    app.include_router(openai_router)  # /v1/files, /v1/batches: the raw router hands them on
    if plane is not None:
        app.include_router(socket_router(TokenSocket(plane)))
    if data_plane is not None:
        app.include_router(data_plane)
        add_openapi(app)

    async def inferd_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InferdError)
        status = status_of(exc)
        headers = {}
        if isinstance(exc, RateLimited | Unavailable):
            headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
        if status == 401:
            headers["www-authenticate"] = "Bearer"
        return JSONResponse({"error": exc.message}, status_code=status, headers=headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return method_not_allowed(request)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        return JSONResponse({"error": f"{field}: {first.get('msg', 'invalid value')}"},
                            status_code=400)  # fmt: skip

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in the management API", exc_info=exc)
        return JSONResponse({"error": "internal server error"}, status_code=500)

    app.add_exception_handler(InferdError, inferd_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
    return app
