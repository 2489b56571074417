"""`inference.GRPCInferenceService` (Triton's layout) over the one inference engine.

Every RPC decodes, makes one engine call and encodes; errors become status codes through
`errors.code_of`, and each RPC writes one access-log line. The infer path builds protobuf
messages directly (no json_format) and moves tensor data as raw bytes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from inferd.api.dataplane import NO_CREDENTIALS, Credentials, DataPlane, Header
from inferd.api.grpc.access import log_rpc
from inferd.api.grpc.calls import Context
from inferd.api.grpc.codec import from_core, to_core
from inferd.api.grpc.errors import INTERNAL_MESSAGE, GrpcStatus, code_of
from inferd.api.grpc.generate import TokenStreams
from inferd.api.model_config import EXTENSIONS, metadata, model_config
from inferd.auth.principal import ANONYMOUS, Principal
from inferd.core.errors import InferdError, InvalidInput, ModelNotFound, ModelNotReady

log = logging.getLogger("inferd.grpc")

OK = grpc.StatusCode.OK
#: Requests of one ModelStreamInfer stream running at once; more wait (flow control).
MAX_STREAM_INFLIGHT = 128

Handler = Callable[[Any, Any, Context], Awaitable[Any]]

#: The data-plane operation behind every RPC (its access policy is the operation's, in
#: `inferd.api.dataplane.POLICY`; tests check each method of the service has one).
OPERATION: dict[str, str] = {
    "ServerLive": "server_live", "ServerReady": "server_ready",
    "ServerMetadata": "server_metadata", "ModelReady": "model_ready",
    "ModelMetadata": "model_metadata", "ModelConfig": "model_config",
    "ModelStatistics": "model_stats", "ModelInfer": "infer", "ModelStreamInfer": "infer",
    "RepositoryIndex": "repository_index", "RepositoryModelLoad": "repository_load",
    "RepositoryModelUnload": "repository_unload",
    "SystemSharedMemoryStatus": "unimplemented", "SystemSharedMemoryRegister": "unimplemented",
    "SystemSharedMemoryUnregister": "unimplemented", "CudaSharedMemoryStatus": "unimplemented",
    "CudaSharedMemoryRegister": "unimplemented", "CudaSharedMemoryUnregister": "unimplemented",
    "TraceSetting": "unimplemented", "LogSettings": "unimplemented",
}  # fmt: skip


def rpc(fn: Handler) -> Handler:
    """Run a unary RPC: map errors to status codes (never a traceback) and log access."""
    method = fn.__name__

    @functools.wraps(fn)
    async def handle(self: Any, request: Any, context: Context) -> Any:
        start = time.perf_counter_ns()
        try:
            response = await fn(self, request, context)
        except InferdError as e:
            code, message = code_of(e), e.message
        except asyncio.CancelledError:
            log_rpc(method, request, grpc.StatusCode.CANCELLED, start)
            raise
        except Exception:
            log.exception("unhandled error in gRPC %s", method)
            code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
        else:
            log_rpc(method, request, OK, start)
            return response
        log_rpc(method, request, code, start)
        await context.abort(code, message)

    return handle


def _unimplemented(method: str, what: str) -> Handler:
    async def handle(self: Any, request: Any, context: Context) -> Any:
        raise GrpcStatus(
            grpc.StatusCode.UNIMPLEMENTED, f"inferd does not implement {method} ({what})"
        )

    handle.__name__ = method
    return rpc(handle)


_SHM = "shared-memory tensors; send tensor data in the request"


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's GRPCInferenceService: health, metadata, infer (unary and stream), config,
    statistics and repository control."""

    def __init__(
        self, plane: DataPlane, server_name: str = "inferd", server_version: str = "0"
    ) -> None:
        self.plane = plane
        #: `runtime: llm` models stream one response per token event in ModelStreamInfer.
        self.tokens = TokenStreams(plane)
        self.server_name = server_name
        self.server_version = server_version
        self._streams: set[_Stream] = set()

    # ---- access ------------------------------------------------------------------------

    async def caller(self, context: Context) -> Principal:
        """The principal behind the call's `authorization` / `x-api-key` metadata."""
        return await self.plane.caller(credentials(context))

    async def allow(self, context: Context, method: str, model: str | None = None) -> Principal:
        """Apply the policy of the RPC's data-plane operation; raises when not allowed."""
        p = await self.caller(context)
        self.plane.allow(OPERATION[method], p, model or None)
        return p

    # ---- health and metadata -----------------------------------------------------------

    @rpc
    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=self.plane.live())

    @rpc
    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.not_ready_reason() is None)

    @rpc
    async def ModelReady(self, request: Any, context: Context) -> Any:
        # As Triton: an unknown or unready model is `ready: false` with status OK.
        try:
            await self.allow(context, "ModelReady", request.name)
            self.plane.version(request.name, request.version or None)
        except (ModelNotFound, ModelNotReady):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @rpc
    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return pb.ServerMetadataResponse(
            name=self.server_name, version=self.server_version, extensions=EXTENSIONS
        )

    @rpc
    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        await self.allow(context, "ModelMetadata", request.name)
        model = self.plane.model(request.name)
        sv = self.plane.version(request.name, request.version or None)
        doc = metadata(model, sv)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=doc["name"],
            versions=doc["versions"],
            platform=doc["platform"],
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in sv.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in sv.outputs],
        )

    @rpc
    async def ModelConfig(self, request: Any, context: Context) -> Any:
        await self.allow(context, "ModelConfig", request.name)
        model = self.plane.model(request.name)
        doc = model_config(model, self.plane.version(request.name, request.version or None))
        config = json_format.ParseDict(
            doc, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )
        return pb.ModelConfigResponse(config=config)

    @rpc
    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        p = await self.allow(context, "ModelStatistics", request.name or None)
        stats = self.plane.stats(p, request.name or None, request.version or None)
        return json_format.ParseDict(
            {"model_stats": stats}, pb.ModelStatisticsResponse(), ignore_unknown_fields=True
        )

    # ---- inference -----------------------------------------------------------------------

    async def infer(
        self, request: Any, timeout_s: float | None = None, principal: Principal = ANONYMOUS,
        header: Header | None = None,
    ) -> Any:  # fmt: skip
        """One ModelInferRequest -> ModelInferResponse (raises InferdError). `header` reads
        the call's metadata (for the deployment's routing rules)."""
        plane = self.plane
        plane.allow("infer", principal, request.model_name)
        async with plane.admit(principal):
            sv = plane.version(request.model_name, request.model_version or None, header)
            with plane.decoding(sv) as decoding:
                core = to_core(request, timeout_s)
            return from_core(await plane.infer(sv, core, decoding))

    @rpc
    async def ModelInfer(self, request: Any, context: Context) -> Any:
        return await self.infer(request, context.time_remaining(), await self.caller(context),
                                functools.partial(metadata_value, context))  # fmt: skip

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        """Answer each request as it completes; errors travel in-band, the stream stays open."""
        try:
            principal = await self.caller(context)
        except InferdError as e:
            await context.abort(code_of(e), e.message)
        stream = _Stream(self, requests, principal, functools.partial(metadata_value, context))
        self._streams.add(stream)
        try:
            while (response := await stream.out.get()) is not None:
                yield response
        finally:
            self._streams.discard(stream)
            stream.close()

    async def stream_request(
        self, request: Any, principal: Principal, put: Callable[[Any], None],
        header: Header | None = None,
    ) -> None:  # fmt: skip
        """Answer one request of a stream: a generative model puts one response per token
        event, any other model one response. `header` reads the call's metadata."""
        tokens = self.tokens
        if tokens.handles(request, principal):
            await tokens.run(request, principal, put, header)
        else:
            put(await self.stream_one(request, principal, header))

    async def stream_one(
        self, request: Any, principal: Principal = ANONYMOUS,
        header: Header | None = None,
    ) -> Any:  # fmt: skip
        """One request of a stream -> ModelStreamInferResponse (never raises InferdError)."""
        start = time.perf_counter_ns()
        try:
            response = pb.ModelStreamInferResponse(
                infer_response=await self.infer(request, None, principal, header)
            )
            code = OK
        except InferdError as e:
            code, message = code_of(e), e.message
        except Exception:
            log.exception("unhandled error in gRPC ModelStreamInfer")
            code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
        if code != OK:
            response = pb.ModelStreamInferResponse(
                error_message=message,
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                ),
            )
        log_rpc("ModelStreamInfer", request, code, start)
        return response

    def drain(self) -> None:
        """Stop reading new stream requests; open streams end once their requests are done."""
        for stream in list(self._streams):
            stream.stop_reading()

    # ---- repository ----------------------------------------------------------------------

    @rpc
    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        p = await self.allow(context, "RepositoryIndex")
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(name=m["name"], version=m["version"], state=m["state"], reason=m["reason"])
                for m in self.plane.index(p, ready_only=request.ready)
            ]
        )

    @rpc
    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        name = request.model_name
        await self.allow(context, "RepositoryModelLoad", name)
        raw_config = None
        config_param = request.parameters.get("config")
        if config_param is not None:
            if config_param.WhichOneof("parameter_choice") != "string_param":
                raise InvalidInput(
                    f"failed to load '{name}': 'config' must be a JSON string (string_param)"
                )
            raw_config = config_param.string_param
        await self.plane.load(name, list(request.parameters), raw_config)
        return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        await self.allow(context, "RepositoryModelUnload", request.model_name)
        await self.plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ---- not offered ---------------------------------------------------------------------

    SystemSharedMemoryStatus = _unimplemented("SystemSharedMemoryStatus", _SHM)
    SystemSharedMemoryRegister = _unimplemented("SystemSharedMemoryRegister", _SHM)
    SystemSharedMemoryUnregister = _unimplemented("SystemSharedMemoryUnregister", _SHM)
    CudaSharedMemoryStatus = _unimplemented("CudaSharedMemoryStatus", _SHM)
    CudaSharedMemoryRegister = _unimplemented("CudaSharedMemoryRegister", _SHM)
    CudaSharedMemoryUnregister = _unimplemented("CudaSharedMemoryUnregister", _SHM)
    TraceSetting = _unimplemented("TraceSetting", "tracing")
    LogSettings = _unimplemented("LogSettings", "log settings; use --log-level")


def metadata_value(context: Context, name: str) -> str | None:
    """The value of the call's metadata key `name` (lower case), None when absent."""
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def credentials(context: Context) -> Credentials:
    """The call's credentials: `authorization` and `x-api-key` metadata."""
    authorization = api_key = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = value if isinstance(value, str) else value.decode("latin-1")
        elif key == "x-api-key":
            api_key = value if isinstance(value, str) else value.decode("latin-1")
    if authorization is None and api_key is None:
        return NO_CREDENTIALS
    return Credentials(authorization, api_key)


class _Stream:
    """One ModelStreamInfer call: a reader task spawns a task per request; responses are
    queued as they complete (a generation's token events one by one) and `None` marks the end
    (input closed and nothing in flight)."""

    def __init__(
        self,
        servicer: InferenceServicer,
        requests: AsyncIterator[Any],
        principal: Principal = ANONYMOUS,
        header: Header | None = None,
    ) -> None:
        self.servicer = servicer
        self.principal = principal
        self.header = header
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self._slots = asyncio.Semaphore(MAX_STREAM_INFLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = 0
        self._reading = True
        self._reader = asyncio.create_task(self._read(requests))
        self._reader.add_done_callback(_retrieve)

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for request in requests:
                await self._slots.acquire()
                self._inflight += 1
                task = asyncio.create_task(self._one(request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self._reading = False
            if self._inflight == 0:
                self.out.put_nowait(None)

    async def _one(self, request: Any) -> None:
        try:
            await self.servicer.stream_request(request, self.principal, self.out.put_nowait,
                                               self.header)  # fmt: skip
        finally:
            self._slots.release()
            self._inflight -= 1
            if not self._reading and self._inflight == 0:
                self.out.put_nowait(None)

    def stop_reading(self) -> None:
        self._reader.cancel()

    def close(self) -> None:
        """The call is over (finished or cancelled by the client): drop what is left."""
        self._reader.cancel()
        for task in list(self._tasks):
            task.cancel()


def _retrieve(task: asyncio.Task[None]) -> None:
    """Consume a reader's exception (a client gone mid-read) so asyncio does not warn."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("stream reader ended: %r", task.exception())
