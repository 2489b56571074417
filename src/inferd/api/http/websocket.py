"""Token streams over a WebSocket: `/v2/models/{name}[/versions/{version}]/generate_stream/ws`.

One socket carries any number of generations at once. The client sends JSON messages
`{"id", "text_input", "parameters"}` (start) or `{"id", "cancel": true}` (abort); the server
answers each token event with `{"id", "model_name", "model_version", "text_output"}` and ends a
generation with `{"id", ..., "text_output": "", "finish_reason", "usage", "final": true}`.
Errors are `{"id", "error": {"message", "code"}}` with the HTTP status of `errors.STATUS` as
`code`. Credentials come from the handshake headers; closing the socket aborts its generations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from inferd.api.dataplane import Credentials, DataPlane
from inferd.api.http.errors import status_of
from inferd.auth.principal import Principal
from inferd.core.errors import InferdError, InvalidInput, ModelExecutionError, Overloaded
from inferd.core.generate import GenerateRequest, TokenEvent, parse_sampling

log = logging.getLogger("inferd.websocket")

PATH = "/v2/models/{name}/generate_stream/ws"
VERSION_PATH = "/v2/models/{name}/versions/{version}/generate_stream/ws"
#: The data-plane operation behind every WebSocket route (its policy is `dataplane.POLICY`'s;
#: tests check each route has one): credentials from the handshake, the model checked per
#: generation.
OPERATION: dict[str, str] = {PATH: "generate", VERSION_PATH: "generate"}
#: Generations running at once on one socket; more are refused (error 503).
MAX_SOCKET_INFLIGHT = 64
#: Close codes (4000-4999 are the application's): bad or missing credentials.
CLOSE_UNAUTHENTICATED = 4401
_MAX_ID = 256


class _Socket:
    """One connection: its generations by id, and a lock so their messages do not interleave
    mid-frame."""

    def __init__(self, ws: WebSocket, principal: Principal) -> None:
        self.ws = ws
        self.principal = principal
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.cancelled: set[str] = set()
        self.closing = False
        self._lock = asyncio.Lock()

    async def send(self, doc: dict[str, Any]) -> None:
        async with self._lock:
            await self.ws.send_text(orjson.dumps(doc).decode())

    async def error(self, rid: Any, exc: InferdError) -> None:
        await self.send({"id": rid, "error": {"message": exc.message, "code": status_of(exc)}})


class TokenSocket:
    """The WebSocket adapter over `DataPlane.generate`: decode a message, make one call,
    encode each token event."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def principal(self, ws: WebSocket) -> Principal:
        """The caller behind the handshake's `Authorization` / `x-api-key` headers; raises
        Unauthenticated for bad credentials, or none where anonymous inference is off."""
        credentials = Credentials(ws.headers.get("authorization"), ws.headers.get("x-api-key"))
        return await self.plane.authorize(OPERATION[PATH], credentials)

    async def serve(self, ws: WebSocket, name: str, version: str | None) -> None:
        """Run one socket until the client closes it."""
        await ws.accept()
        try:
            principal = await self.principal(ws)
        except InferdError as e:
            # accepted first so that the client sees the close code and reason
            await ws.close(CLOSE_UNAUTHENTICATED, e.message[:120])
            return
        sock = _Socket(ws, principal)
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                if raw is None:
                    raw = message.get("bytes") or b""
                await self._message(sock, name, version, raw)
        finally:
            sock.closing = True
            tasks = list(sock.tasks.values())
            for task in tasks:
                task.cancel()  # each aborts its generation: the slot frees at the next step
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _message(self, sock: _Socket, name: str, version: str | None, raw: Any) -> None:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            await sock.error(None, InvalidInput("message: must be a JSON object"))
            return
        rid = doc.get("id")
        if rid is None:
            rid = uuid.uuid4().hex
        elif not isinstance(rid, str) or not rid or len(rid) > _MAX_ID:
            await sock.error(None, InvalidInput(f"id: must be a string of 1-{_MAX_ID} characters"))
            return
        if doc.get("cancel") is True:
            task = sock.tasks.get(rid)
            if task is not None:  # an id already finished (or never started) is a no-op
                sock.cancelled.add(rid)
                task.cancel()
            return
        if rid in sock.tasks:
            await sock.error(rid, InvalidInput(f"id: '{rid}' is already running on this socket"))
            return
        if len(sock.tasks) >= MAX_SOCKET_INFLIGHT:
            await sock.error(
                rid, Overloaded(f"at most {MAX_SOCKET_INFLIGHT} generations per socket at once")
            )
            return
        task = asyncio.create_task(self._generation(sock, name, version, rid, doc))
        sock.tasks[rid] = task
        task.add_done_callback(lambda _: sock.tasks.pop(rid, None))

    async def _generation(
        self, sock: _Socket, name: str, version: str | None, rid: str, doc: dict[str, Any]
    ) -> None:
        """Stream one generation to the socket; errors become error messages."""
        run = _Run(rid, name, version)
        try:
            await self._stream(sock, run, doc)
        except InferdError as e:
            with contextlib.suppress(Exception):
                await sock.error(rid, e)
        except asyncio.CancelledError:
            if sock.closing or rid not in sock.cancelled:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            # the client asked: tell it this generation is over
            with contextlib.suppress(Exception):
                await sock.send(run.final(run.last, "abort"))
        except (OSError, WebSocketDisconnect):
            pass  # the socket is gone; leaving the stream aborted the generation
        except Exception:
            log.exception("unhandled error in a WebSocket generation")
            with contextlib.suppress(Exception):
                await sock.error(rid, InferdError("internal server error"))
        finally:
            sock.cancelled.discard(rid)

    async def _stream(self, sock: _Socket, run: _Run, doc: dict[str, Any]) -> None:
        plane, p = self.plane, sock.principal
        plane.allow(OPERATION[PATH], p, run.model_name)  # another's private model: "not found"
        prompt = doc.get("text_input")
        if not isinstance(prompt, str):
            raise InvalidInput("text_input: must be a string (the prompt)")
        parameters = doc.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("parameters: must be an object")
        params = parse_sampling(parameters)
        request = GenerateRequest(uuid.uuid4().hex, prompt=prompt, params=params)
        async with plane.admit(p):
            # routed by the handshake's headers (the deployment's routing rules)
            sv = plane.generator(run.model_name, run.model_version, sock.ws.headers.get)
            run.model_version = sv.version
            events = plane.generate(sv, request)
            assert isinstance(events, AsyncGenerator)
            async with contextlib.aclosing(events):  # an early exit aborts the generation
                async for ev in events:
                    run.last = ev
                    if ev.text or not ev.finished:
                        await sock.send(run.delta(ev.text))
                    if ev.finished:
                        await sock.send(run.final(ev, ev.finish_reason))
                        return
        raise ModelExecutionError("generation ended without a final event")


class _Run:
    """One generation on a socket: what its messages say about it."""

    __slots__ = ("id", "last", "model_name", "model_version")

    def __init__(self, rid: str, name: str, version: str | None) -> None:
        self.id = rid
        self.model_name = name
        self.model_version = version
        self.last: TokenEvent | None = None

    def delta(self, text: str) -> dict[str, Any]:
        return {"id": self.id, "model_name": self.model_name,
                "model_version": self.model_version, "text_output": text}  # fmt: skip

    def final(self, ev: TokenEvent | None, reason: str | None) -> dict[str, Any]:
        prompt, completion = (ev.prompt_tokens, ev.completion_tokens) if ev else (0, 0)
        return {**self.delta(""), "finish_reason": reason or "stop",
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
                "final": True}  # fmt: skip


def socket_router(sockets: TokenSocket) -> APIRouter:
    """The WebSocket routes (mounted on the management app, which gets every non-HTTP scope)."""
    router = APIRouter()

    @router.websocket(PATH)
    async def generate_stream_ws(ws: WebSocket, name: str) -> None:
        await sockets.serve(ws, name, None)

    @router.websocket(VERSION_PATH)
    async def generate_stream_version_ws(ws: WebSocket, name: str, version: str) -> None:
        await sockets.serve(ws, name, version)

    return router
