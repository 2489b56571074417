"""The data-plane ASGI app: a hand-written raw-ASGI router for the hot inference routes.

`POST /v2/models/{m}[/versions/{v}]/infer` (V2) and `POST /v1/models/{m}:predict` (KServe V1)
are served here, where per-request framework cost shows (docs/design-decisions.md; measured in
bench/RESULTS.md, "Raw ASGI vs FastAPI for the hot routes"). Every other request goes to the
`fallback` app (FastAPI: the other data-plane routes in routes.py, the management API, the
OpenAPI document and docs pages, the WebSocket routes), still counted and logged here, under the
route name the FastAPI app matched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.api.dataplane import Credentials, DataPlane
from inferd.api.http import v1
from inferd.api.http.body import (
    ClientDisconnected,
    HttpLimits,
    compress,
    decode_content,
    read_body,
)
from inferd.api.http.errors import MethodNotAllowed, status_of
from inferd.api.http.openai import REVISION_HEADER
from inferd.api.http.request import ACCESS_STATUS, Request
from inferd.api.http.routes import OPERATION
from inferd.api.http.v2codec import decode_raw, decode_request, encode_response, parse_header_length
from inferd.core.errors import InferdError, InvalidInput, RateLimited
from inferd.observability.logs import ACCESS_LOGGER
from inferd.observability.metrics import ServingMetrics

__all__ = ["DataPlaneApp", "HttpLimits"]

log = logging.getLogger("inferd.http")
T = TypeVar("T")
access = logging.getLogger(ACCESS_LOGGER)

JSON = b"application/json"

Response = tuple[int, bytes, list[tuple[bytes, bytes]]]


def _json(status: int, doc: Any) -> Response:
    return status, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), [(b"content-type", JSON)]


class DataPlaneApp:
    """Raw ASGI router for the hot data-plane routes, in front of the FastAPI app."""

    def __init__(
        self,
        plane: DataPlane,
        metrics: ServingMetrics,
        fallback: ASGIApp,
        limits: HttpLimits,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.plane = plane
        self.metrics = metrics
        self.fallback = fallback
        self.limits = limits
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown
        self._http_counters: dict[tuple[str, int], Any] = {}

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
            resp = await self._route(req, scope)
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

    async def _fallback(
        self, req: Request, scope: Scope, receive: Receive, send: Send, start: int
    ) -> None:
        """Hand the request to the fallback app, still counting and logging it: under the name
        of the data-plane route it matched (`routes.OPERATION`), else as `other`."""
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
            name = getattr(scope.get("route"), "name", None)
            if name in OPERATION:
                params = scope.get("path_params") or {}
                req.route, req.model, req.version = name, params.get("name"), params.get("version")
            self._access(req, scope, scope.get(ACCESS_STATUS, status), start)

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

    async def _route(self, req: Request, scope: Scope) -> Response | None:
        """Serve a hot route; None for any other path (the fallback's). Leading and trailing
        slashes of `/v2/...` and `/v1/...` paths are ignored, on the fallback's routes too."""
        path = scope["path"]
        parts = path.strip("/").split("/")
        head = parts[0]
        if head not in ("v2", "v1"):
            return None
        n = len(parts)
        if head == "v2" and n in (4, 6) and parts[1] == "models" and parts[-1] == "infer":
            if n == 4 or parts[3] == "versions":
                name, version = parts[2], (parts[4] if n == 6 else None)
                req.route, req.model, req.version = "infer", name, version
                self._method(req, "POST")
                await self._allow(req)
                async with self.plane.admit(req.principal):
                    return await self._infer(req, name, version)
        elif head == "v1" and n == 3 and parts[1] == "models":
            name, _, verb = parts[2].partition(":")
            if verb == "predict":
                req.route, req.model = "predict", name
                self._method(req, "POST")
                await self._allow(req)
                async with self.plane.admit(req.principal):
                    return await self._predict(req, name)
        canonical = "/" + "/".join(parts)
        if canonical != path:
            scope["path"] = canonical
        return None

    async def _allow(self, req: Request) -> None:
        """Apply the policy of the route's data-plane operation for the caller; raises when
        not allowed."""
        if req.authorization is not None or req.api_key is not None:
            req.principal = await self.plane.caller(Credentials(req.authorization, req.api_key))
        self.plane.allow(OPERATION[req.route], req.principal, req.model)

    @staticmethod
    def _method(req: Request, *allowed: str) -> None:
        if req.method not in allowed:
            raise MethodNotAllowed(f"method {req.method} not allowed here; use {'/'.join(allowed)}")

    async def _body(self, req: Request) -> bytes:
        limit = self.limits.max_body_bytes
        body = await read_body(req.receive, req.content_length, limit)
        return decode_content(body, req.content_encoding, limit)

    async def _infer(self, req: Request, name: str, version: str | None) -> Response:
        plane = self.plane
        sv = plane.version(name, version, req.header)
        body = await self._body(req)
        prefer = req.header("prefer")
        if prefer is not None and "respond-async" in prefer.lower():
            return await self._infer_async(req, name, version, body)
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
        headers = [(b"content-type", JSON if json_len is None else b"application/octet-stream"),
                   (REVISION_HEADER, response.model_version.encode())]  # fmt: skip
        if json_len is not None:
            headers.append((b"inference-header-content-length", str(json_len).encode()))
        if req.accept_encoding and len(out) >= self.limits.compress_min_bytes:
            out, enc = compress(out, req.accept_encoding)
            if enc:
                headers.append((b"content-encoding", enc.encode()))
        return 200, out, headers

    async def _infer_async(self, req: Request, name: str, version: str | None,
                           body: bytes) -> Response:  # fmt: skip
        """`Prefer: respond-async`: queue the body as an async prediction and answer 202 with
        the job and its `Location` (200 and the first job for an `Idempotency-Key` seen
        before); JSON bodies only."""
        if req.header_length is not None:
            raise InvalidInput("Prefer: respond-async takes a JSON body (no binary tensors)")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise InvalidInput(f"request body is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise InvalidInput("request body must be a JSON object")
        job, created = await self.plane.submit_async(
            req.principal, name, version, doc, req.header("idempotency-key")
        )  # fmt: skip
        status, out, headers = _json(202 if created else 200, job)
        headers.append((b"location", f"/api/v1/predictions/{job['id']}".encode()))
        headers.append((b"preference-applied", b"respond-async"))
        return status, out, headers

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

    async def _predict(self, req: Request, name: str) -> Response:
        plane = self.plane
        sv = plane.version(name, None, req.header)
        body = await self._body(req)
        with plane.decoding(sv) as decoding:
            request = v1.decode_predict(body, sv.inputs)
        request.timeout_s = req.timeout_s
        request.on_queued = req.watch_disconnect
        response = await self._cancellable(req, plane.infer(sv, request, decoding))
        status, out, headers = _json(200, v1.encode_predictions(response))
        headers.append((REVISION_HEADER, response.model_version.encode()))
        return status, out, headers
