"""The one composition root: builds every object from `Settings` and wires them together."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException

from inferd._version import __version__
from inferd.api.grpc import GrpcServer
from inferd.api.http.server import DataPlaneApp, HttpLimits
from inferd.observability.metrics import ServingMetrics
from inferd.serving.engine import InferenceEngine
from inferd.serving.objects import add_objects
from inferd.serving.repository import ModelRepository
from inferd.settings import Settings


@dataclass
class Server:
    """Everything a running inferd process is made of."""

    settings: Settings
    engine: InferenceEngine
    metrics: ServingMetrics
    asgi: DataPlaneApp
    grpc: GrpcServer | None = None


def _docs_app() -> FastAPI:
    app = FastAPI(
        title="inferd",
        version=__version__,
        description="Model serving: Open Inference Protocol V2, KServe V1. "
        "The data-plane routes are described in docs/http-api.md.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
    )

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    app.add_exception_handler(HTTPException, http_error)
    return app


def build(settings: Settings, models: Mapping[str, Any] | None = None) -> Server:
    """Build the engine, metrics and HTTP app from settings (no I/O until startup).

    `models` maps names to in-memory model objects to serve besides the repository's.
    """
    metrics = ServingMetrics(CollectorRegistry(auto_describe=True))
    repository = ModelRepository(settings.model_repository) if settings.model_repository else None
    engine = InferenceEngine(metrics, repository, drain_timeout_s=settings.shutdown_grace_s)
    http = settings.http
    g = settings.grpc
    grpc = (
        GrpcServer(engine, g.host, g.port, g.max_message_bytes, http.server_name, __version__)
        if g.enabled
        else None
    )
    asgi = DataPlaneApp(
        engine,
        metrics,
        fallback=_docs_app(),
        limits=HttpLimits(max_body_bytes=http.max_body_bytes, max_chunks=http.max_chunks),
        server_name=http.server_name,
        server_version=__version__,
        on_startup=partial(_start, engine, models or {}, grpc),
        on_shutdown=partial(_stop, engine, grpc, settings.shutdown_grace_s),
    )
    return Server(settings, engine, metrics, asgi, grpc)


async def _start(
    engine: InferenceEngine, models: Mapping[str, Any], grpc: GrpcServer | None
) -> None:
    # gRPC binds first: a busy port fails fast, and probes see NOT_SERVING while models load.
    if grpc is not None:
        await grpc.start()
    try:
        await engine.start()
        await add_objects(engine, models)
    except BaseException:
        if grpc is not None:
            await grpc.stop(0)
        raise


async def _stop(engine: InferenceEngine, grpc: GrpcServer | None, grace_s: float) -> None:
    if grpc is not None:
        await grpc.stop(grace_s)
    await engine.stop()
