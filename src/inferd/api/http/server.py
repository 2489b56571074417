"""The data-plane ASGI app: V2 (Open Inference Protocol), KServe V1, health and metrics.

A hand-written router on raw ASGI keeps per-request framework cost off the inference path
(see DESIGN.md, "Measured facts"); anything it does not route goes to the `fallback` app
(FastAPI: OpenAPI docs now, the control plane later).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.api.dataplane import Credentials, DataPlane
from inferd.api.http import generate, v1
from inferd.api.http.body import ClientDisconnected, compress, decode_content, read_body
from inferd.api.http.errors import MethodNotAllowed, status_of
from inferd.api.http.openai import OpenAIRoutes, serve_openai
from inferd.api.http.request import Request
from inferd.api.http.v2codec import (
    decode_raw,
    decode_request,
    encode_response,
    loads,
    parse_header_length,
)
from inferd.api.model_config import EXTENSIONS, metadata, model_config
from inferd.auth.principal import Principal
from inferd.core.errors import InferdError, InvalidInput, RateLimited
from inferd.observability.logs import ACCESS_LOGGER
from inferd.observability.metrics import CONTENT_TYPE, ServingMetrics

log = logging.getLogger("inferd.http")
T = TypeVar("T")
access = logging.getLogger(ACCESS_LOGGER)

JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Caps applied to every request before decoding."""

    max_body_bytes: int = 64 * 1024 * 1024
    compress_min_bytes: int = 4096


Response = tuple[int, bytes, list[tuple[bytes, bytes]]]

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
OPENAI_ROUTES = {"/v1/completions": "openai_completions", "/v1/chat/completions": "openai_chat",
                 "/v1/embeddings": "openai_embeddings",
                 "/v1/images/generations": "openai_images"}  # fmt: skip


def _json(status: int, doc: Any) -> Response:
    return status, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), [(b"content-type", JSON)]


class DataPlaneApp:
    """Raw ASGI router for the data plane."""

    def __init__(
        self,
        plane: DataPlane,
        metrics: ServingMetrics,
        fallback: ASGIApp,
        limits: HttpLimits,
        server_name: str = "inferd",
        server_version: str = "0",
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.plane = plane
        self.openai = OpenAIRoutes(plane)
        self.metrics = metrics
        self.fallback = fallback
        self.limits = limits
        self.server_name = server_name
        self.server_version = server_version
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown
        self._http_counters: dict[tuple[str, int], Any] = {}
        self._created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.fallback(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self._on_startup:
                        await self._on_startup()
                except Exception as e:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._on_shutdown:
                    await self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter_ns()
        req: Request | None = None
        error: InferdError | None = None
        try:
            req = Request(scope, receive)
            route = OPENAI_ROUTES.get(scope["path"])
            if route is not None:
                req.route = route
                await self._openai(req, scope, send, start)
                return
            gen = generate.parse_path(scope["path"])
            if gen is not None:
                await self._generate(req, scope, send, start, *gen)
                return
            resp = await self._route(req, scope["path"])
            if resp is None:
                await self._fallback(req, scope, receive, send, start)
                return
        except InferdError as e:
            error = e
            resp = _json(status_of(e), {"error": e.message})
        except ClientDisconnected:
            self._access(req, scope, 499, start)
            return
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            resp = _json(500, {"error": "internal server error"})
        status, body, headers = resp
        if status == 503 and req is not None and req.route in ("infer", "predict"):
            headers.append((b"retry-after", b"1"))
        elif status == 429 and isinstance(error, RateLimited):
            headers.append((b"retry-after", str(max(1, round(error.retry_after_s))).encode()))
        elif status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._access(req, scope, status, start)

    async def _openai(self, req: Request, scope: Scope, send: Send, start: int) -> None:
        """An OpenAI route: JSON answers or an SSE stream, errors in OpenAI's dialect."""
        api = self.openai

        async def prepare() -> tuple[Principal, Any]:
            self._method(req, "POST")
            p = await self.plane.caller(Credentials(req.authorization, req.api_key))
            return p, loads(await self._body(req))

        status = await serve_openai(api, req.route, prepare, req.receive, send)
        self._access(req, scope, status, start)

    async def _generate(self, req: Request, scope: Scope, send: Send, start: int, name: str,
                        version: str | None, stream: bool) -> None:  # fmt: skip
        """V2 generate / generate_stream on an LLM (Triton's generate extension)."""
        req.route = "generate_stream" if stream else "generate"
        req.model, req.version = name, version

        async def prepare() -> Any:
            self._method(req, "POST")
            await self._allow(req)
            return loads(await self._body(req))

        status = await generate.serve_generate(
            self.plane, name, version, stream, prepare, req.receive, send,
            lambda: self.plane.admit(req.principal),
        )  # fmt: skip
        self._access(req, scope, status, start)

    async def _fallback(
        self, req: Request, scope: Scope, receive: Receive, send: Send, start: int
    ) -> None:
        """Hand the request to the fallback app, still counting and logging it."""
        status = 500
        started = False

        async def send_and_watch(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.fallback(scope, receive, send_and_watch)
        except Exception:
            if not started:
                raise
            # the app already answered (its 500 handler ran) and re-raised: logged there
        finally:
            self._access(req, scope, status, start)

    def _access(self, req: Request | None, scope: Scope, status: int, start: int) -> None:
        route = req.route if req else "other"
        key = (route, status)
        counter = self._http_counters.get(key)
        if counter is None:
            counter = self._http_counters[key] = self.metrics.http_requests.labels(
                route, str(status)
            )
        counter.inc()
        if access.disabled or not access.isEnabledFor(logging.INFO):
            return
        fields = {
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": status,
            "latency_ms": round((time.perf_counter_ns() - start) / 1e6, 3),
            "model": req.model if req else None,
            "version": req.version if req else None,
            "request_id": req.request_id if req else None,
            "client": scope["client"][0] if scope.get("client") else None,
        }
        access.info("request", extra={"fields": fields})

    # ---- routing ---------------------------------------------------------------------------

    async def _route(self, req: Request, path: str) -> Response | None:
        parts = path.strip("/").split("/")
        head = parts[0]
        if head == "v2":
            return await self._v2(req, parts)
        if head == "v1" and len(parts) >= 2 and parts[1] == "models":
            return await self._v1(req, parts)
        if path == "/metrics":
            req.route = "metrics"
            self._method(req, "GET")
            shown = await self._metrics_shown(req)
            return 200, self.metrics.render(shown), [(b"content-type", CONTENT_TYPE.encode())]
        if path == "/":
            req.route = "root"
            return _json(200, {"status": "alive"})
        return None

    async def _allow(self, req: Request) -> None:
        """Apply the policy of the route's data-plane operation for the caller; raises when
        not allowed."""
        if req.authorization is not None or req.api_key is not None:
            req.principal = await self.plane.caller(Credentials(req.authorization, req.api_key))
        self.plane.allow(OPERATION[req.route], req.principal, req.model)

    async def _metrics_shown(self, req: Request) -> Callable[[str], bool] | None:
        """Whose series /metrics shows the caller (`DataPlane.metrics_shown`)."""
        return await self.plane.metrics_shown(Credentials(req.authorization, req.api_key))

    async def _names(self, req: Request) -> list[str]:
        """Model names for a listing route, filtered to what the caller may see."""
        await self._allow(req)
        return self.plane.visible(req.principal)

    @staticmethod
    def _method(req: Request, *allowed: str) -> None:
        if req.method not in allowed:
            raise MethodNotAllowed(f"method {req.method} not allowed here; use {'/'.join(allowed)}")

    async def _v2(self, req: Request, parts: list[str]) -> Response | None:
        n = len(parts)
        if n == 1:
            req.route = "server_metadata"
            self._method(req, "GET")
            return _json(200, {"name": self.server_name, "version": self.server_version,
                               "extensions": EXTENSIONS})  # fmt: skip
        kind = parts[1]
        if kind == "health" and n == 3:
            return self._health(req, parts[2])
        if kind == "repository":
            return await self._repository(req, parts)
        if kind != "models":
            return None
        if n == 2:
            req.route = "models"
            self._method(req, "GET")
            return _json(200, {"models": await self._names(req)})
        if n == 3 and parts[2] == "stats":
            req.route = "stats"
            self._method(req, "GET")
            await self._allow(req)
            return _json(200, {"model_stats": self.plane.stats(req.principal)})
        name = parts[2]
        rest = parts[3:]
        version = None
        if rest and rest[0] == "versions":
            if len(rest) < 2:
                return None
            version = rest[1]
            rest = rest[2:]
        if len(rest) > 1:
            return None
        action = rest[0] if rest else ""
        req.model, req.version = name, version
        if action == "infer":
            req.route = "infer"
            self._method(req, "POST")
            await self._allow(req)
            async with self.plane.admit(req.principal):
                return await self._infer(req, name, version)
        if action == "":
            req.route = "model_metadata"
            self._method(req, "GET")
            await self._allow(req)
            model = self.plane.model(name)
            return _json(200, metadata(model, self.plane.version(name, version)))
        if action == "ready":
            req.route = "model_ready"
            self._method(req, "GET")
            await self._allow(req)
            return self._model_ready(name, version)
        if action == "config":
            req.route = "model_config"
            self._method(req, "GET")
            await self._allow(req)
            model = self.plane.model(name)
            return _json(200, model_config(model, self.plane.version(name, version)))
        if action == "stats":
            req.route = "model_stats"
            self._method(req, "GET")
            await self._allow(req)
            return _json(200, {"model_stats": self.plane.stats(req.principal, name, version)})
        return None

    def _health(self, req: Request, which: str) -> Response | None:
        self._method(req, "GET")
        if which == "live":
            req.route = "live"
            if self.plane.live():
                return _json(200, {"live": True})
            return _json(503, {"live": False, "error": "server is shutting down"})
        if which == "ready":
            req.route = "ready"
            reason = self.plane.not_ready_reason()
            if reason is None:
                return _json(200, {"ready": True})
            return _json(503, {"ready": False, "error": reason})
        return None

    def _model_ready(self, name: str, version: str | None) -> Response:
        model = self.plane.model(name)  # unknown -> 404
        try:
            sv = self.plane.version(name, version)
        except InferdError as e:
            if status_of(e) == 404:
                raise
            return _json(503, {"name": name, "ready": False, "error": e.message})
        return _json(200, {"name": model.name, "version": sv.version, "ready": True})

    async def _body(self, req: Request) -> bytes:
        limit = self.limits.max_body_bytes
        body = await read_body(req.receive, req.content_length, limit)
        return decode_content(body, req.content_encoding, limit)

    async def _infer(self, req: Request, name: str, version: str | None) -> Response:
        plane = self.plane
        sv = plane.version(name, version)
        body = await self._body(req)
        with plane.decoding(sv) as decoding:
            header_length = parse_header_length(req.header_length, len(body))
            if header_length == 0:
                request = decode_raw(body, sv.inputs)
            else:
                request = decode_request(body, header_length)
        if request.id is not None:
            req.request_id = request.id
        if req.timeout_s is not None:
            request.timeout_s = req.timeout_s
        request.on_queued = req.watch_disconnect
        response = await self._cancellable(req, plane.infer(sv, request, decoding))
        out, json_len = encode_response(response, request)
        headers = [(b"content-type", JSON if json_len is None else b"application/octet-stream")]
        if json_len is not None:
            headers.append((b"inference-header-content-length", str(json_len).encode()))
        if req.accept_encoding and len(out) >= self.limits.compress_min_bytes:
            out, enc = compress(out, req.accept_encoding)
            if enc:
                headers.append((b"content-encoding", enc.encode()))
        return 200, out, headers

    async def _cancellable(self, req: Request, call: Awaitable[T]) -> T:
        """Await an engine call; a client that disconnects while its request waits in a queue
        cancels it. The watcher starts only when the request is queued (`req.watch_disconnect`,
        called by the scheduler), so requests that run at once pay nothing for it."""
        try:
            return await call
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if req.watcher is not None and req.watcher.done() and me and me.cancelling():
                me.uncancel()
                raise ClientDisconnected() from None
            raise
        finally:
            if req.watcher is not None:
                req.watcher.cancel()

    async def _repository(self, req: Request, parts: list[str]) -> Response | None:
        n = len(parts)
        if n == 3 and parts[2] == "index":
            req.route = "repository_index"
            self._method(req, "POST", "GET")
            await self._allow(req)
            body = await self._body(req) if req.method == "POST" else b""
            doc = loads(body) if body.strip() else {}
            if not isinstance(doc, dict):
                raise InvalidInput("request body must be a JSON object")
            ready = doc.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidInput("'ready' must be true or false")
            return _json(200, self.plane.index(req.principal, ready_only=ready))
        if n == 5 and parts[2] == "models" and parts[4] in ("load", "unload"):
            name, op = parts[3], parts[4]
            req.route, req.model = f"repository_{op}", name
            self._method(req, "POST")
            await self._allow(req)
            body = await self._body(req)
            doc = loads(body) if body.strip() else {}
            params = doc.get("parameters") if isinstance(doc, dict) else None
            if params is not None and not isinstance(params, dict):
                raise InvalidInput("'parameters' must be an object")
            if op == "load":
                params = params or {}
                await self.plane.load(name, list(params), params.get("config"))
                return _json(200, {"name": name, "load": True})
            await self.plane.unload(name)
            return _json(200, {"name": name, "unload": True})
        return None

    async def _v1(self, req: Request, parts: list[str]) -> Response | None:
        n = len(parts)
        if n == 2:
            req.route = "v1_models"
            self._method(req, "GET")
            await self._allow(req)  # one answer both KServe V1 and OpenAI clients read
            return _json(200, self.openai.models(req.principal, self._created))
        if n != 3:
            return None
        name, _, verb = parts[2].partition(":")
        req.model = name
        if not verb:
            # KServe V1 readiness and OpenAI's model object claim the same path: one document
            # both clients read (`name`/`ready` and `id`/`object`), as GET /v1/models does
            req.route = "v1_model"
            self._method(req, "GET")
            await self._allow(req)
            status, body, headers = self._model_ready(name, None)
            if status == 200:
                openai = {"id": name, "object": "model", "created": self._created,
                          "owned_by": "inferd"}  # fmt: skip
                return _json(200, orjson.loads(body) | openai)
            return status, body, headers
        if verb != "predict":
            return None
        req.route = "predict"
        self._method(req, "POST")
        await self._allow(req)
        async with self.plane.admit(req.principal):
            return await self._predict(req, name)

    async def _predict(self, req: Request, name: str) -> Response:
        plane = self.plane
        sv = plane.version(name)
        body = await self._body(req)
        with plane.decoding(sv) as decoding:
            request = v1.decode_predict(body, sv.inputs)
        request.timeout_s = req.timeout_s
        request.on_queued = req.watch_disconnect
        response = await self._cancellable(req, plane.infer(sv, request, decoding))
        return _json(200, v1.encode_predictions(response))
