"""The standard `grpc.health.v1.Health` service (Check and Watch), without grpcio-health-checking.

Its two messages are built from a descriptor in a private pool, so they never clash with
`grpc_health` if that package is installed too. SERVING means the server is ready (the same
condition as `/v2/health/ready`); NOT_SERVING while loading or shutting down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from inferd.api.grpc.access import log_rpc
from inferd.api.grpc.calls import Context, Method

SERVICE = "grpc.health.v1.Health"
#: Services Check/Watch answer for: the whole server ("") and the inference service.
SERVICES = frozenset({"", "inference.GRPCInferenceService"})
UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN = 0, 1, 2, 3


def _message_classes() -> tuple[Any, Any]:
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="grpc/health/v1/health.proto", package="grpc.health.v1", syntax="proto3"
    )
    req = proto.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    resp = proto.message_type.add(name="HealthCheckResponse")
    status = resp.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    resp.field.add(
        name="status",
        number=1,
        type=f.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=f.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{proto.package}.{req.name}")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{proto.package}.{resp.name}")),
    )


HealthCheckRequest, HealthCheckResponse = _message_classes()


class HealthService:
    """Check answers at once; Watch sends the status now and again whenever it changes."""

    def __init__(self, ready: Callable[[], bool], poll_s: float = 0.5) -> None:
        self._ready = ready
        self._poll_s = poll_s
        self._stopping = asyncio.Event()

    def _status(self, service: str) -> int:
        if service not in SERVICES:
            return SERVICE_UNKNOWN
        if self._stopping.is_set() or not self._ready():
            return NOT_SERVING
        return SERVING

    def shutdown(self) -> None:
        """Report NOT_SERVING from now on and end every Watch."""
        self._stopping.set()

    async def check(self, request: Any, context: Context) -> Any:
        start = time.perf_counter_ns()
        status = self._status(request.service)
        if status == SERVICE_UNKNOWN:
            log_rpc("Health/Check", request, grpc.StatusCode.NOT_FOUND, start)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        log_rpc("Health/Check", request, grpc.StatusCode.OK, start)
        return HealthCheckResponse(status=status)

    async def watch(self, request: Any, context: Context) -> AsyncIterator[Any]:
        start = time.perf_counter_ns()
        last = None
        try:
            while True:
                status = self._status(request.service)
                if status != last:
                    yield HealthCheckResponse(status=status)
                    last = status
                if self._stopping.is_set():
                    return
                try:
                    await asyncio.wait_for(self._stopping.wait(), self._poll_s)
                except TimeoutError:
                    pass
        finally:
            log_rpc("Health/Watch", request, grpc.StatusCode.OK, start)

    def methods(self) -> list[Method]:
        """Check and Watch, as the native transport's method table takes them."""
        parse = HealthCheckRequest.FromString
        return [
            Method(f"/{SERVICE}/Check", self.check, parse),
            Method(f"/{SERVICE}/Watch", self.watch, parse, server_streaming=True),
        ]

    def handler(self) -> grpc.GenericRpcHandler:
        """The same methods for grpcio's server."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                m.path.rsplit("/", 1)[1]: (
                    grpc.unary_stream_rpc_method_handler
                    if m.server_streaming
                    else grpc.unary_unary_rpc_method_handler
                )(
                    m.handler,
                    request_deserializer=m.deserialize,
                    response_serializer=HealthCheckResponse.SerializeToString,
                )
                for m in self.methods()
            },
        )


__all__ = ["HealthCheckRequest", "HealthCheckResponse", "HealthService"]
