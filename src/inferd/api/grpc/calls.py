"""gRPC calls over `inferd.api.grpc.http2`: the method table, the servicer context, the server.

A `Router` maps `/package.Service/Method` paths to handlers written as for `grpc.aio` (a unary
handler is `async def (request, context) -> response`, a streaming one an async generator, a
client-streaming one takes an async iterator of requests). Each call runs as one task on the
loop; the context (`ServerCall`) offers what the servicers use: `invocation_metadata()`,
`time_remaining()`, `abort()`, `peer()`, `cancelled()`.

Deadlines (`grpc-timeout`) end the call with DEADLINE_EXCEEDED and cancel its handler; a client
reset (RST_STREAM) or a closed connection cancels it too. Requests may arrive compressed with
gzip or deflate: a message is decompressed when its handler takes it (`Stream.inflate`, bounded,
large ones off the loop); answers are sent uncompressed (always allowed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn, Protocol

import grpc
from google.protobuf import message_factory

from inferd.api.client_slots import ClientSlots
from inferd.api.grpc import http2
from inferd.api.grpc.errors import INTERNAL_MESSAGE
from inferd.api.grpc.frames import StreamError
from inferd.api.grpc.limits import Budget, Limits
from inferd.api.grpc.stream import Stream

log = logging.getLogger("inferd.grpc")

#: Headers that are transport, not call metadata.
_NOT_METADATA = frozenset(
    {"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"}
)
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_ENCODINGS = frozenset({"identity", "gzip", "deflate"})
#: Answers of a server stream queued behind flow control before its handler waits.
MAX_PENDING = 4 << 20


class Context(Protocol):
    """What the servicers use of a call's context: `ServerCall` on the native transport,
    `grpc.aio.ServicerContext` on grpcio."""

    def invocation_metadata(self) -> Any: ...
    def time_remaining(self) -> float | None: ...
    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn: ...


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC: its handler and how its messages are (de)serialised."""

    path: str
    handler: Callable[..., Any]
    deserialize: Callable[[bytes], Any]
    client_streaming: bool = False
    server_streaming: bool = False


class Abort(Exception):
    """Raised by `ServerCall.abort`: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def parse_timeout(value: str) -> float | None:
    """`grpc-timeout` (1-8 digits and a unit) in seconds; None when malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class Head(NamedTuple):
    """A request's header fields as the router reads them."""

    path: str
    method: str
    content_type: str
    timeout: str | None
    encoding: str | None
    metadata: tuple[tuple[str, str | bytes], ...]


class Router:
    """The method table and the calls in flight (the `Dispatcher` of every connection)."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}
        self.calls: set[ServerCall] = set()
        self.stopping = False

    def add(self, method: Method) -> None:
        self.methods[method.path] = method

    def add_service(self, service: Any, servicer: object) -> None:
        """Every method of a protobuf `ServiceDescriptor`, handled by `servicer.<Method>`."""
        for m in service.methods:
            self.add(
                Method(
                    path=f"/{service.full_name}/{m.name}",
                    handler=getattr(servicer, m.name),
                    deserialize=message_factory.GetMessageClass(m.input_type).FromString,
                    client_streaming=m.client_streaming,
                    server_streaming=m.server_streaming,
                )
            )

    def head(self, headers: list[tuple[str, str]]) -> Head:
        """What a request's header fields say (the transport keeps it with a header block it
        sees again, so a client repeating its block is parsed once)."""
        path = method_name = content_type = ""
        timeout = encoding = None
        metadata: list[tuple[str, str | bytes]] = []
        for key, value in headers:
            if key.startswith(":"):
                if key == ":path":
                    path = value
                elif key == ":method":
                    method_name = value
            elif key in _NOT_METADATA:
                if key == "content-type":
                    content_type = value
                elif key == "grpc-timeout":
                    timeout = value
                elif key == "grpc-encoding":
                    encoding = value
            elif key.endswith("-bin"):
                metadata.append((key, _unbase64(value)))
            else:
                metadata.append((key, value))
        return Head(path, method_name, content_type, timeout, encoding, tuple(metadata))

    def open(self, stream: Stream, head: Head) -> ServerCall | None:
        """The call of a new stream; None when the stream was answered at once."""
        if head.method != "POST":
            stream.reply_http(405)
            return None
        if not head.content_type.startswith("application/grpc"):
            stream.reply_http(415)
            return None
        if self.stopping:
            stream.finish(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            return None
        method = self.methods.get(head.path)
        if method is None:
            stream.finish(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {head.path[:200]}")
            return None
        encoding, timeout = head.encoding, head.timeout
        if encoding is not None and encoding != "identity":
            if encoding not in _ENCODINGS:
                stream.finish(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"Compression algorithm '{encoding[:32]}' not supported",
                )
                return None
            stream.encoding = encoding
        deadline = None
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is None:
                stream.finish(grpc.StatusCode.INTERNAL, f"malformed grpc-timeout {timeout[:16]!r}")
                return None
            deadline = asyncio.get_running_loop().time() + seconds
        call = ServerCall(self, stream, method, head.metadata, deadline)
        if method.client_streaming:
            call.start()
        return call


def _unbase64(value: str) -> bytes:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return value.encode("latin-1", "replace")


class ServerCall:
    """One call: fed by its stream (`stream.Call`), seen by the handler as its context."""

    __slots__ = (
        "_cancelled",
        "_compressed",
        "_deadline",
        "_expired",
        "_metadata",
        "_payload",
        "_queue",
        "_task",
        "_timer",
        "method",
        "router",
        "stream",
    )

    def __init__(
        self,
        router: Router,
        stream: Stream,
        method: Method,
        metadata: tuple[tuple[str, str | bytes], ...],
        deadline: float | None,
    ) -> None:
        self.router = router
        self.stream = stream
        self.method = method
        self._metadata = metadata
        self._deadline = deadline
        self._payload: bytes | None = None
        self._compressed = 0
        self._queue: asyncio.Queue[tuple[bytes, int] | None] | None = (
            asyncio.Queue() if method.client_streaming else None
        )
        self._task: asyncio.Task[None] | None = None
        self._expired = False
        self._cancelled = False
        self._timer = (
            None if deadline is None else asyncio.get_running_loop().call_at(deadline, self._expire)
        )

    # ---- stream.Call --------------------------------------------------------------------

    def message(self, payload: bytes, compressed: int) -> None:
        if self._queue is not None:
            self.stream.backlog += len(payload)
            self.stream.hold(len(payload))
            self._queue.put_nowait((payload, compressed))
        elif self._payload is not None:
            raise StreamError(
                grpc.StatusCode.UNIMPLEMENTED, "more than one request message in a unary call"
            )
        else:
            self.stream.hold(len(payload))  # until the handler takes it
            self._payload = payload
            self._compressed = compressed

    def end(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(None)
        elif self._payload is None:
            raise StreamError(grpc.StatusCode.UNIMPLEMENTED, "no request message in a unary call")
        else:
            self.start()

    def reset(self) -> None:
        """The client reset the stream or the connection closed: stop the handler and drop
        the requests it has not taken."""
        self._cancelled = True
        self._payload = None
        queue = self._queue
        while queue is not None and not queue.empty():
            queue.get_nowait()
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    # ---- the servicer's context --------------------------------------------------------

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Abort(code, details)

    def peer(self) -> str:
        return self.stream.conn.peer()

    def cancelled(self) -> bool:
        """Whether the client reset the call or its connection is gone."""
        return self._cancelled

    # ---- running -----------------------------------------------------------------------

    def start(self) -> None:
        self.router.calls.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _expire(self) -> None:
        self._expired = True
        self.stream.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if self._task is not None:
            self._task.cancel()

    def _serialize(self, response: Any) -> bytes:
        payload: bytes = response.SerializeToString()
        limit = self.stream.max_message
        if len(payload) > limit:
            raise Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(payload)} vs. {limit})",
            )
        return payload

    async def _requests(self) -> AsyncIterator[Any]:
        queue, stream = self._queue, self.stream
        assert queue is not None
        while (item := await queue.get()) is not None:
            payload, compressed = item
            try:
                message = await stream.inflate(payload) if compressed else payload
                stream.consumed(len(payload))
                request = self.method.deserialize(message)
            except Exception as e:  # answered here, as a unary call's: the handler may catch it
                error = (
                    e
                    if isinstance(e, StreamError)
                    else StreamError(grpc.StatusCode.INTERNAL, "cannot parse the request message")
                )
                stream.finish(error.code, error.message)
                raise error from None
            yield request

    async def _run(self) -> None:
        method, stream = self.method, self.stream
        try:
            if method.client_streaming:
                request: Any = self._requests()
            else:
                payload = message = self._payload
                self._payload = None
                if payload is not None:
                    if self._compressed:
                        message = await stream.inflate(payload)
                    stream.release(len(payload))
                try:
                    request = method.deserialize(message or b"")
                except Exception:
                    stream.finish(grpc.StatusCode.INTERNAL, "cannot parse the request message")
                    return
            if method.server_streaming:
                async for response in method.handler(request, self):
                    stream.send_message(self._serialize(response))
                    while stream.pending() > MAX_PENDING and not stream.local_closed:
                        await asyncio.sleep(0.005)
                stream.finish(grpc.StatusCode.OK, "")
            else:
                response = await method.handler(request, self)
                stream.respond(self._serialize(response))
        except Abort as a:
            stream.finish(a.code, a.details)
        except StreamError as e:
            stream.finish(e.code, e.message)
        except asyncio.CancelledError:
            if not self._expired:
                if self.router.stopping:
                    stream.finish(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
                else:
                    stream.finish(grpc.StatusCode.CANCELLED, "Cancelled")
        except Exception:
            log.exception("unhandled error in gRPC %s", method.path)
            stream.finish(grpc.StatusCode.UNKNOWN, INTERNAL_MESSAGE)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self.router.calls.discard(self)


class _CountedConnection(http2.Connection):
    """A connection that holds one of its client address's slots while it is open; over the
    cap it is closed before a byte is sent (as the REST listener does)."""

    slots: ClientSlots
    _host: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None
        if host is not None:
            if not self.slots.acquire(str(host)):
                log.debug("closed a connection from %s: over max_connections_per_client", host)
                self.closed = True
                transport.close()
                return
            self._host = str(host)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._host is not None:
            self.slots.release(self._host)
            self._host = None
        super().connection_lost(exc)


class NativeServer:
    """A listening socket whose connections speak HTTP/2 to the router."""

    def __init__(self, router: Router, limits: Limits) -> None:
        self.router = router
        self.limits = limits
        self.budget = Budget(limits.max_buffered_bytes_total)
        self.slots = ClientSlots(limits.max_connections_per_client)
        self.connections: set[http2.Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port; the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, host, port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    def _connection(self) -> http2.Connection:
        conn = _CountedConnection(self.router, self.limits, self.connections.discard, self.budget)
        conn.slots = self.slots
        self.connections.add(conn)
        return conn

    async def stop(self, grace_s: float | None) -> None:
        """Stop listening, send GOAWAY, let calls finish within `grace_s`, cancel the rest."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        conns = list(self.connections)
        for conn in conns:
            conn.goaway()
        waits = [asyncio.ensure_future(c.wait_idle()) for c in conns if c.streams]
        if waits and grace_s:
            await asyncio.wait(waits, timeout=grace_s)
        for w in waits:
            w.cancel()
        self.router.stopping = True
        for call in list(self.router.calls):
            call.reset()
        await asyncio.sleep(0)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
