"""The gRPC listener: Triton's `inference.GRPCInferenceService` and `grpc.health.v1.Health`.

Two transports serve the same servicers on the app's event loop, started and stopped by the
app's lifespan hooks: `native` (default; inferd's own HTTP/2 in `http2.py` + `calls.py`, no
thread hop per call) and `grpcio` (a `grpc.aio` server). See docs/design-decisions.md.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Literal

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd.api.dataplane import DataPlane
from inferd.api.grpc.calls import NativeServer, Router
from inferd.api.grpc.health import HealthService
from inferd.api.grpc.limits import DEFAULT_MAX_MESSAGE, Limits
from inferd.api.grpc.servicer import InferenceServicer

log = logging.getLogger("inferd.grpc")

#: grpcio takes message limits as C ints.
_MAX_LIMIT = 2**31 - 1


def address(host: str, port: int) -> str:
    """host:port, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer:
    """Owns the grpc.aio server; `port` is the bound port once started (useful with port 0)."""

    def __init__(
        self,
        plane: DataPlane,
        host: str = "127.0.0.1",
        port: int = 8001,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        server_name: str = "inferd",
        server_version: str = "0",
        transport: Literal["native", "grpcio"] = "native",
        limits: Limits | None = None,
    ) -> None:
        self.host = host
        self.transport = transport
        self.requested_port = port
        self.max_message_bytes = max_message_bytes
        self.limits = replace(limits or Limits(), max_message_bytes=max_message_bytes)
        self.servicer = InferenceServicer(plane, server_name, server_version)
        self.health = HealthService(lambda: plane.not_ready_reason() is None)
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._native: NativeServer | None = None

    def router(self) -> Router:
        """The native transport's method table: both services."""
        router = Router()
        router.add_service(
            service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], self.servicer
        )
        for method in self.health.methods():
            router.add(method)
        return router

    async def start(self) -> None:
        """Bind and start serving (on the running event loop); a busy port is an error."""
        if self.transport == "native":
            native = NativeServer(self.router(), self.limits)
            where = address(self.host, self.requested_port)
            try:
                port = await native.start(self.host, self.requested_port)
            except OSError as e:
                raise RuntimeError(f"gRPC cannot listen on {where}: {e.strerror or e}") from None
            self._native, self.port = native, port
            self._started(port)
            return
        server = grpc.aio.server(options=self._grpcio_options())
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        server.add_generic_rpc_handlers((self.health.handler(),))
        where = address(self.host, self.requested_port)
        try:
            port = server.add_insecure_port(where)
        except RuntimeError as e:
            await server.stop(None)
            raise RuntimeError(f"gRPC cannot listen on {where}: {e}") from None
        if not port:
            await server.stop(None)
            raise RuntimeError(f"gRPC cannot listen on {where}")
        await server.start()
        self._server, self.port = server, port
        self._started(port)

    def _grpcio_options(self) -> list[tuple[str, Any]]:
        """The limits grpcio has too (it bounds buffered bytes and read times its own way)."""
        limit = min(self.max_message_bytes, _MAX_LIMIT)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # grpcio sets SO_REUSEPORT by default: two servers would share a port silently.
            ("grpc.so_reuseport", 0),
        ]
        limits = self.limits
        if limits.idle_timeout_s:
            options.append(("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)))
        if limits.keepalive_interval_s:
            options.append(("grpc.keepalive_time_ms", int(limits.keepalive_interval_s * 1000)))
            options.append(("grpc.keepalive_timeout_ms", int(limits.keepalive_timeout_s * 1000)))
        return options

    def _started(self, port: int) -> None:
        log.info(
            "gRPC listening on %s",
            address(self.host, port),
            extra={"fields": {"host": self.host, "port": port, "transport": self.transport}},
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new RPCs, let running ones finish within `grace_s`, then cancel the rest."""
        server, self._server = self._server, None
        native, self._native = self._native, None
        if server is None and native is None:
            return
        self.health.shutdown()
        self.servicer.drain()
        if native is not None:
            await native.stop(grace_s)
        if server is not None:
            await server.stop(grace_s)
        log.info("gRPC stopped")
