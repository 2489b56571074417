"""The data-plane HTTP routes on FastAPI: every route but the two hot inference routes.

`DataPlaneApp` (server.py, raw ASGI) serves `POST /v2/models/{m}[/versions/{v}]/infer` and
`POST /v1/models/{m}:predict` itself, where framework cost per request shows (bench/RESULTS.md,
"Raw ASGI vs FastAPI for the hot routes"), and hands everything else to the FastAPI app, which
serves the routes below and describes all of them, the hot two included (`add_openapi`), in
`/openapi.json`. Each route makes its data-plane calls (`DataPlane`), applies the policy of its
operation (`OPERATION` → `dataplane.POLICY`), and answers errors in its protocol's dialect:
`{"error": msg}` here, OpenAI's in openai.py. The route name labels the access log line and the
`inferd_http_requests_total` series (the raw router reads it from the ASGI scope).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, and the
# `Caller` dependency is local to `data_plane_router`.
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from inferd.api.dataplane import POLICY, PUBLIC, Credentials, DataPlane, Header
from inferd.api.http import generate as v2generate
from inferd.api.http import schemas as s
from inferd.api.http.body import ClientDisconnected, HttpLimits, decode_content, read_body
from inferd.api.http.errors import MethodNotAllowed, status_of
from inferd.api.http.openai import OpenAIRoutes, error_body, serve_openai
from inferd.api.http.request import ACCESS_STATUS
from inferd.api.http.v2codec import loads
from inferd.api.model_config import EXTENSIONS, metadata, model_config
from inferd.auth.principal import ANONYMOUS, Principal
from inferd.core.errors import InferdError, InvalidInput, RateLimited
from inferd.observability.metrics import CONTENT_TYPE, ServingMetrics

log = logging.getLogger("inferd.http")

#: The data-plane operation behind every route (its access policy is the operation's, in
#: `inferd.api.dataplane.POLICY`; tests/integration/test_access.py checks each route has one).
#: Route names label the `inferd_http_requests_total` series and the access log.
OPERATION: dict[str, str] = {
    "root": "server_live", "live": "server_live", "ready": "server_ready",
    "server_metadata": "server_metadata", "metrics": "metrics", "models": "model_list",
    "stats": "server_stats", "model_stats": "model_stats", "model_metadata": "model_metadata",
    "model_ready": "model_ready", "model_config": "model_config", "infer": "infer",
    "v1_models": "model_list", "v1_model": "model_ready", "predict": "infer",
    "repository_index": "repository_index", "repository_load": "repository_load",
    "repository_unload": "repository_unload", "openai_completions": "generate",
    "openai_chat": "generate", "openai_embeddings": "infer", "openai_images": "infer",
    "generate": "generate", "generate_stream": "generate",
}  # fmt: skip
#: The routes the raw-ASGI router serves itself; every other route in `OPERATION` is here.
HOT_ROUTES = frozenset({"infer", "predict"})
OPENAI_ROUTES = frozenset({"openai_completions", "openai_chat", "openai_embeddings",
                           "openai_images"})  # fmt: skip

JSON = "application/json"
#: Where the web console is served (api/admin/console.py); `/` sends browsers there.
CONSOLE_PATH = "/console/"
Model = Annotated[str, Path(description="The model's name")]
Version = Annotated[str, Path(description="One of the model's versions")]


def json(doc: Any, status: int = 200) -> Response:
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status, media_type=JSON)


def error_response(e: InferdError) -> Response:
    """An error in the V2 dialect, with `Retry-After` on 429 and `WWW-Authenticate` on 401."""
    status = status_of(e)
    response = json({"error": e.message}, status)
    if isinstance(e, RateLimited):
        response.headers["retry-after"] = str(max(1, round(e.retry_after_s)))
    elif status == 401:
        response.headers["www-authenticate"] = "Bearer"
    return response


def method_not_allowed(request: Request) -> Response:
    """405 for a known path called with another method, in the route's dialect."""
    route = request.scope.get("route")
    methods = sorted(m for m in getattr(route, "methods", None) or () if m != "HEAD")
    e = MethodNotAllowed(f"method {request.method} not allowed here; use {'/'.join(methods)}")
    if getattr(route, "name", None) in OPENAI_ROUTES:
        return json(error_body(e, 405), 405)
    return json({"error": e.message}, 405)


class Served(Response):
    """An answer written on the ASGI channel by `serve(receive, send) -> status` (an SSE stream,
    or one that holds admission while it runs); the status it returns is the access log's
    (499: the client left, and its generation was aborted)."""

    def __init__(self, serve: Callable[[Receive, Send], Awaitable[int]]) -> None:
        super().__init__()
        self._serve = serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[ACCESS_STATUS] = await self._serve(receive, send)


async def _gone(receive: Receive, send: Send) -> int:
    return 499  # the client left before its body arrived: nothing to answer


class DataPlaneRoute(APIRoute):
    """A data-plane route: inferd errors become V2 error answers (the OpenAI routes answer
    their own), a client gone before its body arrived is logged as 499, and an unexpected error
    is a logged 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except InferdError as e:
                return error_response(e)
            except ClientDisconnected:
                return Served(_gone)
            except HTTPException:
                raise
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return json({"error": "internal server error"}, 500)

        return run


def header(request: Request) -> Header:
    """Reads one of the request's headers by its lower-case name (the deployment's routing
    rules)."""
    return request.headers.get


def credentials(request: Request) -> Credentials:
    h = request.headers
    return Credentials(h.get("authorization"), h.get("x-api-key"))


async def read_json(request: Request, limits: HttpLimits, optional: bool = False) -> Any:
    """The request body (under `max_body_bytes`, before and after decompression) as JSON;
    None for an empty `optional` one."""
    h = request.headers
    length = h.get("content-length")
    limit = limits.max_body_bytes
    declared = int(length) if length is not None and length.isdigit() else None
    body = await read_body(request.receive, declared, limit)
    body = decode_content(body, h.get("content-encoding"), limit)
    return None if optional and not body.strip() else loads(body)


def _answers(ok: type[BaseModel] | None, *errors: int, error: type[BaseModel] = s.Error,
             media: str | None = None) -> dict[int | str, dict[str, Any]]:  # fmt: skip
    """The documented answers of a route: `ok` for 200 (or `media` content), errors in the
    route's dialect."""
    out: dict[int | str, dict[str, Any]] = {}
    if ok is not None:
        out[200] = {"model": ok}
    if media is not None:
        out[200] = {**out.get(200, {}), "content": {media: {"schema": {"type": "string"}}}}
    for status in errors:
        out[status] = {"model": error}
    return out


def _body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route whose body is `model` (JSON, read by the route)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": required, "content": {JSON: {"schema": schema}}}}


def _version(version: Version) -> str:
    """Declares the `{version}` path parameter of a route's versioned form."""
    return version


def data_plane_router(
    plane: DataPlane, metrics: ServingMetrics, limits: HttpLimits, server_name: str,
    server_version: str,
) -> APIRouter:  # fmt: skip
    """The FastAPI routes of the data plane (all but the hot ones)."""
    router = APIRouter(route_class=DataPlaneRoute)
    openai = OpenAIRoutes(plane)
    created = int(time.time())

    async def allowed(request: Request) -> Principal:
        """The caller, allowed by the policy of the route's operation."""
        operation = OPERATION[request.scope["route"].name]
        if POLICY[operation] == PUBLIC:
            return ANONYMOUS
        model = request.path_params.get("name")
        return await plane.authorize(operation, credentials(request), model)

    Caller = Annotated[Principal, Depends(allowed)]

    def per_model(suffix: str, name: str, ok: type[BaseModel] | None, summary: str,
                  method: str = "GET", **kw: Any) -> Callable[[Any], Any]:  # fmt: skip
        """Register an endpoint at `/v2/models/{name}{suffix}` and at its versioned form."""

        def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
            answers = _answers(ok, 400, 401, 403, 404, 503) | kw.pop("answers", {})
            for path, deps in (("/v2/models/{name}", []), ("/v2/models/{name}/versions/{version}",
                               [Depends(_version)])):  # fmt: skip
                router.add_api_route(path + suffix, endpoint, methods=[method], name=name,
                                     summary=summary + (" (a version)" if deps else ""),
                                     responses=answers, dependencies=deps, **kw)  # fmt: skip
            return endpoint

        return register

    # ---- server and health -----------------------------------------------------------------

    to_console: dict[int | str, dict[str, Any]] = {
        307: {"description": "A browser (Accept: text/html): to the web console"}
    }

    @router.get("/", name="root", summary="Liveness (KServe V1)",
                responses=_answers(s.Alive) | to_console)  # fmt: skip
    async def root(request: Request) -> Response:
        """`{"status":"alive"}` for any method: the kserve SDK's V1 liveness check. A browser's
        GET (one that accepts `text/html`) is redirected to the web console, `/console/`."""
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            prefix = str(request.scope.get("root_path", "")).rstrip("/")
            return RedirectResponse(prefix + CONSOLE_PATH, status_code=307)
        return json({"status": "alive"})

    router.add_api_route("/", root, name="root", include_in_schema=False,
                         methods=["HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])  # fmt: skip

    @router.get("/v2", name="server_metadata", summary="Server metadata",
                responses=_answers(s.ServerMetadata))  # fmt: skip
    async def server_metadata() -> Response:
        """The server's name (`server_name` setting), version and protocol extensions."""
        return json({"name": server_name, "version": server_version, "extensions": EXTENSIONS})

    @router.get("/v2/health/live", name="live", summary="Server liveness",
                responses={200: {"model": s.Live}, 503: {"model": s.Live}})  # fmt: skip
    async def live() -> Response:
        """200 while the server runs; 503 once it is shutting down."""
        if plane.live():
            return json({"live": True})
        return json({"live": False, "error": "server is shutting down"}, 503)

    @router.get("/v2/health/ready", name="ready", summary="Server readiness",
                responses={200: {"model": s.Ready}, 503: {"model": s.Ready}})  # fmt: skip
    async def ready() -> Response:
        """200 when every `required` model is ready; 503 with the reason otherwise, and from
        the moment the server starts draining."""
        reason = plane.not_ready_reason()
        if reason is None:
            return json({"ready": True})
        return json({"ready": False, "error": reason}, 503)

    @router.get("/metrics", name="metrics", summary="Prometheus metrics",
                responses=_answers(None, 401, 403, media="text/plain"))  # fmt: skip
    async def prometheus(request: Request) -> Response:
        """Prometheus text format. Series with a `model` label are shown to callers who may see
        that model; the operator's scrape token (`auth.metrics_token`) or an admin sees all."""
        shown = await plane.metrics_shown(credentials(request))
        return Response(metrics.render(shown), headers={"content-type": CONTENT_TYPE})

    # ---- V2 models ---------------------------------------------------------------------------

    @router.get("/v2/models", name="models", summary="List models",
                responses=_answers(s.ModelList, 401))  # fmt: skip
    async def models(p: Caller) -> Response:
        """Every known model the caller may see, in any state."""
        return json({"models": plane.visible(p)})

    @router.get("/v2/models/stats", name="stats", summary="Statistics of every model",
                responses=_answers(s.ModelStats, 401))  # fmt: skip
    async def stats(p: Caller) -> Response:
        """One Triton-style statistics entry per served version of the models the caller may
        see."""
        return json({"model_stats": plane.stats(p)})

    @per_model("", "model_metadata", s.ModelMetadata, "Model metadata")
    async def model_metadata(request: Request, name: Model, p: Caller) -> Response:
        """Name, served versions, platform, inputs and outputs (full shapes, -1 variable)."""
        version = request.path_params.get("version")
        return json(metadata(plane.model(name), plane.version(name, version)))

    @per_model("/ready", "model_ready", s.ModelReady, "Model readiness",
               answers={503: {"model": s.ModelReady}})  # fmt: skip
    async def model_ready(request: Request, name: Model, p: Caller) -> Response:
        """200 when the model (version) is served; 503 with the reason when it is not."""
        status, doc = _model_ready(plane, name, request.path_params.get("version"))
        return json(doc, status)

    @per_model("/config", "model_config", None, "Model configuration",
               answers={200: {"content": {JSON: {"schema": {"type": "object"}}},
                              "description": "Triton's ModelConfig as JSON"}})  # fmt: skip
    async def configuration(request: Request, name: Model, p: Caller) -> Response:
        """Triton's `ModelConfig` as JSON (what perf_analyzer and tritonclient read)."""
        version = request.path_params.get("version")
        return json(model_config(plane.model(name), plane.version(name, version)))

    @per_model("/stats", "model_stats", s.ModelStats, "Model statistics")
    async def model_stats(request: Request, name: Model, p: Caller) -> Response:
        """Triton-style statistics of the model's served versions (or of one)."""
        version = request.path_params.get("version")
        return json({"model_stats": plane.stats(p, name, version)})

    # ---- V2 generate -------------------------------------------------------------------------

    def generation(stream: bool) -> Callable[..., Awaitable[Response]]:
        async def endpoint(request: Request, name: Model, p: Caller) -> Response:
            version = request.path_params.get("version")

            async def prepare() -> Any:
                return await read_json(request, limits)

            def admit() -> Any:
                return plane.admit(p)

            serve = partial(v2generate.serve_generate, plane, name, version, stream, prepare)
            return Served(lambda receive, send: serve(receive, send, admit, header(request)))

        endpoint.__doc__ = (
            "Server-Sent Events, one `data: {model_name, model_version, text_output}` per "
            "piece of new text, the last with `finish_reason` and `usage`; an error after the "
            'stream started is `data: {"error"}`. A client that disconnects aborts the '
            "generation." if stream else "Triton's generate extension on a `runtime: llm` "
            "model: the whole text in one answer. 501 for a model that does not generate text."
        )  # fmt: skip
        return endpoint

    for stream, route in ((False, "generate"), (True, "generate_stream")):
        ok: type[BaseModel] | None = None if stream else s.GenerateResponse
        media = {"text/event-stream": {"schema": {"type": "string"}}} if stream else None
        answers: dict[int | str, Any] = {429: {"model": s.Error}, 501: {"model": s.Error}}
        if media is not None:
            answers[200] = {"content": media, "description": "Server-Sent Events"}
        per_model(f"/{route}", route, ok, "Generate text" + (" (stream)" if stream else ""),
                  "POST", answers=answers, openapi_extra=_body(s.GenerateRequest))(
            generation(stream))  # fmt: skip

    # ---- V2 repository -----------------------------------------------------------------------

    index = {200: {"model": list[s.RepositoryModel]}} | _answers(None, 400, 401)

    async def repository_index(request: Request, p: Caller) -> Response:
        """The models the caller may see with their versions and states; `{"ready": true}`
        (POST) lists only the ready ones."""
        doc = await read_json(request, limits, True) if request.method == "POST" else None
        doc = {} if doc is None else doc
        if not isinstance(doc, dict):
            raise InvalidInput("request body must be a JSON object")
        ready_only = doc.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidInput("'ready' must be true or false")
        return json(plane.index(p, ready_only=ready_only))

    for method, extra in (("GET", None), ("POST", _body(s.RepositoryIndexRequest, False))):
        router.add_api_route("/v2/repository/index", repository_index, methods=[method],
                             name="repository_index", summary="Repository index",
                             responses=index, openapi_extra=extra)  # fmt: skip

    async def repository_parameters(request: Request) -> dict[str, Any] | None:
        doc = await read_json(request, limits, True)
        params = doc.get("parameters") if isinstance(doc, dict) else None
        if params is not None and not isinstance(params, dict):
            raise InvalidInput("'parameters' must be an object")
        return params

    @router.post("/v2/repository/models/{name}/load", name="repository_load",
                 summary="Load a repository model",
                 responses=_answers(s.Loaded, 400, 401, 403, 404),
                 openapi_extra=_body(s.RepositoryLoadRequest, required=False))  # fmt: skip
    async def repository_load(request: Request, name: Model, p: Caller) -> Response:
        """(Re)load a model from the model repository folder, optionally with a `config`
        parameter (admins only). File overrides are refused."""
        params = await repository_parameters(request) or {}
        await plane.load(name, list(params), params.get("config"))
        return json({"name": name, "load": True})

    @router.post("/v2/repository/models/{name}/unload", name="repository_unload",
                 summary="Unload a model", responses=_answers(s.Unloaded, 401, 403, 404),
                 openapi_extra=_body(s.RepositoryLoadRequest, required=False))  # fmt: skip
    async def repository_unload(request: Request, name: Model, p: Caller) -> Response:
        """Stop serving a model (admins only)."""
        await repository_parameters(request)
        await plane.unload(name)
        return json({"name": name, "unload": True})

    # ---- KServe V1 and OpenAI model objects ------------------------------------------------

    @router.get("/v1/models", name="v1_models", summary="List models (KServe V1, OpenAI)",
                responses=_answers(s.V1Models, 401))  # fmt: skip
    async def v1_models(p: Caller) -> Response:
        """One document both KServe V1 (`models`) and OpenAI (`data`) clients read."""
        return json(openai.models(p, created))

    @router.api_route("/v1/models/{name}:{verb}", include_in_schema=False, name="v1_verb",
                      methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])  # fmt: skip
    async def v1_verb(name: str, verb: str) -> Response:
        raise HTTPException(404)  # `:predict` is the raw router's; `:explain` is not served

    @router.get(
        "/v1/models/{name}",
        name="v1_model",
        summary="Model readiness (KServe V1, OpenAI)",
        responses=_answers(s.V1Model, 401, 403, 404) | {503: {"model": s.ModelReady}},
    )
    async def v1_model(name: Model, p: Caller) -> Response:
        """KServe V1 readiness and OpenAI's `Model` object in one document."""
        status, doc = _model_ready(plane, name, None)
        if status == 200:
            doc |= {"id": name, "object": "model", "created": created, "owned_by": "inferd"}
        return json(doc, status)

    # ---- OpenAI ------------------------------------------------------------------------------

    def openai_route(route: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            async def prepare() -> tuple[Principal, Any]:
                p = await plane.caller(credentials(request))
                return p, await read_json(request, limits)

            return Served(partial(serve_openai, openai, route, prepare, header(request)))

        return endpoint

    for path, route, body, ok, summary, doc in (
        ("/v1/completions", "openai_completions", s.CompletionRequest, s.Completion,
         "Completions (OpenAI)", "A `text_completion`; with `stream: true` Server-Sent Events "
         "of chunks, then `data: [DONE]`. 501 for a model that does not generate text."),
        ("/v1/chat/completions", "openai_chat", s.ChatCompletionRequest, s.Completion,
         "Chat completions (OpenAI)", "A `chat.completion` (the model's chat template); with "
         "`stream: true` Server-Sent Events of `chat.completion.chunk`s, then `data: [DONE]`."),
        ("/v1/embeddings", "openai_embeddings", s.EmbeddingsRequest, s.Embeddings,
         "Embeddings (OpenAI)", "Vectors from an embedding model (`float` or `base64`), "
         "optionally cut to `dimensions` and renormalised."),
        ("/v1/images/generations", "openai_images", s.ImagesRequest, s.Images,
         "Images (OpenAI)", "Images from a `runtime: diffusers` model, as `b64_json`."),
    ):  # fmt: skip
        answers = _answers(ok, 400, 401, 403, 404, 429, 500, 503, error=s.OpenAIError)
        if route in ("openai_completions", "openai_chat"):
            answers[200]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
            answers[501] = {"model": s.OpenAIError}
        router.add_api_route(path, openai_route(route), methods=["POST"], name=route,
                             summary=summary, description=doc, responses=answers,
                             openapi_extra=_body(body))  # fmt: skip
    return router


def _model_ready(plane: DataPlane, name: str, version: str | None) -> tuple[int, dict[str, Any]]:
    model = plane.model(name)  # unknown -> 404
    try:
        sv = plane.version(name, version)
    except InferdError as e:
        if status_of(e) == 404:
            raise
        return 503, {"name": name, "ready": False, "error": e.message}
    return 200, {"name": model.name, "version": sv.version, "ready": True}


# ---- the hot routes, as the OpenAPI document shows them ---------------------------------------


def _hot_routes() -> list[BaseRoute]:
    """The routes `DataPlaneApp` serves itself, for the document only (never mounted)."""
    docs = APIRouter()
    errors = _answers(s.InferResponse, 400, 401, 403, 404, 413, 415, 429, 500, 503, 504)
    errors[200]["content"] = {"application/octet-stream": {"schema": {"type": "string"}}}
    infer_doc = (
        "Open Inference Protocol V2 inference: JSON, or the binary tensor extension (the JSON "
        "header's length in `Inference-Header-Content-Length`, raw tensor bytes after it; "
        "binary outputs answer `application/octet-stream` with the same header). "
        "`X-Request-Timeout-Ms` bounds the request (504). 503 carries `Retry-After`. Served "
        "by the raw-ASGI router."
    )

    async def infer(name: Model) -> None:
        raise NotImplementedError  # pragma: no cover - served by DataPlaneApp

    async def infer_version(name: Model, version: Version) -> None:
        raise NotImplementedError  # pragma: no cover - served by DataPlaneApp

    async def predict(name: Model) -> None:
        raise NotImplementedError  # pragma: no cover - served by DataPlaneApp

    versioned = "/v2/models/{name}/versions/{version}/infer"
    for path, endpoint in (("/v2/models/{name}/infer", infer), (versioned, infer_version)):
        docs.add_api_route(path, endpoint, methods=["POST"], name="infer", summary="Infer",
                           description=infer_doc, responses=errors,
                           openapi_extra=_body(s.InferRequest))  # fmt: skip
    docs.add_api_route(
        "/v1/models/{name}:predict", predict, methods=["POST"], name="predict",
        summary="Predict (KServe V1)", openapi_extra=_body(s.PredictRequest),
        responses=_answers(s.Predictions, 400, 401, 403, 404, 429, 500, 503, 504),
        description="`instances` (rows) or `inputs` (columns) in, `predictions` out. Served "
        "by the raw-ASGI router.",
    )  # fmt: skip
    return list(docs.routes)


def add_openapi(app: FastAPI) -> None:
    """`/openapi.json` describes the whole API: the app's routes, the hot routes the raw router
    serves, and the request bodies the data-plane routes read themselves."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=[*_hot_routes(),
                              *app.routes], description=app.description)  # fmt: skip
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in s.REQUEST_BODIES:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in schema.pop("$defs", {}).items():
                    schemas.setdefault(name, sub)
                schemas.setdefault(model.__name__, schema)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
