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

from inferd.api.grpc.access import log_rpc
from inferd.api.grpc.calls import Context
from inferd.api.grpc.codec import from_core, to_core
from inferd.api.grpc.errors import INTERNAL_MESSAGE, GrpcStatus, code_of
from inferd.api.grpc.generate import TokenStreams
from inferd.api.model_config import EXTENSIONS, load_from_repository, metadata, model_config
from inferd.auth.principal import ANONYMOUS, Principal
from inferd.control.gate import Gate
from inferd.core.errors import (
    InferdError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
)
from inferd.serving.engine import InferenceEngine
from inferd.serving.generation import Generation

log = logging.getLogger("inferd.grpc")

OK = grpc.StatusCode.OK
#: Requests of one ModelStreamInfer stream running at once; more wait (flow control).
MAX_STREAM_INFLIGHT = 128

Handler = Callable[[Any, Any, Context], Awaitable[Any]]

#: The access policy of every RPC (tests check each method of the service has one); meanings as
#: the REST table in `inferd.api.http.server.POLICY`.
POLICY: dict[str, str] = {
    "ServerLive": "public", "ServerReady": "public", "ServerMetadata": "public",
    "ModelReady": "view", "ModelMetadata": "view", "ModelConfig": "view",
    "ModelStatistics": "view", "ModelInfer": "infer", "ModelStreamInfer": "infer",
    "RepositoryIndex": "list", "RepositoryModelLoad": "admin", "RepositoryModelUnload": "admin",
    "SystemSharedMemoryStatus": "public", "SystemSharedMemoryRegister": "public",
    "SystemSharedMemoryUnregister": "public", "CudaSharedMemoryStatus": "public",
    "CudaSharedMemoryRegister": "public", "CudaSharedMemoryUnregister": "public",
    "TraceSetting": "public", "LogSettings": "public",
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
        self,
        engine: InferenceEngine,
        server_name: str = "inferd",
        server_version: str = "0",
        gate: Gate | None = None,
        generation: Generation | None = None,
    ) -> None:
        self.engine = engine
        self.gate = gate
        #: `runtime: llm` models stream one response per token event in ModelStreamInfer.
        self.tokens = TokenStreams(engine, generation, gate) if generation is not None else None
        self.server_name = server_name
        self.server_version = server_version
        self._streams: set[_Stream] = set()

    # ---- access ------------------------------------------------------------------------

    async def caller(self, context: Context) -> Principal:
        """The principal behind the call's `authorization` / `x-api-key` metadata."""
        if self.gate is None:
            return ANONYMOUS
        authorization = api_key = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode("latin-1")
            elif key == "x-api-key":
                api_key = value if isinstance(value, str) else value.decode("latin-1")
        if authorization is None and api_key is None:
            return ANONYMOUS
        return await self.gate.principal(authorization, api_key)

    async def allow(self, context: Context, method: str, model: str | None = None) -> Principal:
        """Apply `POLICY[method]`; raises when the caller may not do this."""
        gate = self.gate
        p = await self.caller(context)
        if gate is None:
            return p
        policy = POLICY[method]
        if policy in ("view", "infer") and model:
            gate.model(p, model, policy == "infer")
        elif policy == "admin":
            gate.admin(p)
        elif policy == "list" or (policy == "view" and not model):
            gate.visible(p, ())
        return p

    def _visible_names(self, p: Principal) -> set[str]:
        names = [m.name for m in self.engine.models()]
        return set(names if self.gate is None else self.gate.visible(p, names))

    # ---- health and metadata -----------------------------------------------------------

    @rpc
    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=self.engine.live())

    @rpc
    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.engine.not_ready_reason() is None)

    @rpc
    async def ModelReady(self, request: Any, context: Context) -> Any:
        # As Triton: an unknown or unready model is `ready: false` with status OK.
        try:
            await self.allow(context, "ModelReady", request.name)
            self.engine.version(request.name, request.version or None)
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
        model = self.engine.model(request.name)
        sv = self.engine.version(request.name, request.version or None)
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
        model = self.engine.model(request.name)
        doc = model_config(model, self.engine.version(request.name, request.version or None))
        config = json_format.ParseDict(
            doc, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )
        return pb.ModelConfigResponse(config=config)

    @rpc
    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        p = await self.allow(context, "ModelStatistics", request.name or None)
        stats = self.engine.stats(request.name or None, request.version or None)
        if not request.name and self.gate is not None:
            names = self._visible_names(p)
            stats = [s for s in stats if s["name"] in names]
        return json_format.ParseDict(
            {"model_stats": stats}, pb.ModelStatisticsResponse(), ignore_unknown_fields=True
        )

    # ---- inference -----------------------------------------------------------------------

    async def infer(
        self, request: Any, timeout_s: float | None = None, principal: Principal = ANONYMOUS
    ) -> Any:
        """One ModelInferRequest -> ModelInferResponse (raises InferdError)."""
        engine = self.engine
        engine.admit()
        gate = self.gate
        if gate is not None:
            gate.model(principal, request.model_name, True)
            if not principal.anonymous:
                async with gate.admit(principal):
                    sv = engine.version(request.model_name, request.model_version or None)
                    return from_core(
                        await engine.infer_decoded(sv, lambda: to_core(request, timeout_s))
                    )
        sv = engine.version(request.model_name, request.model_version or None)
        return from_core(await engine.infer_decoded(sv, lambda: to_core(request, timeout_s)))

    @rpc
    async def ModelInfer(self, request: Any, context: Context) -> Any:
        return await self.infer(request, context.time_remaining(), await self.caller(context))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        """Answer each request as it completes; errors travel in-band, the stream stays open."""
        try:
            principal = await self.caller(context)
        except InferdError as e:
            await context.abort(code_of(e), e.message)
        stream = _Stream(self, requests, principal)
        self._streams.add(stream)
        try:
            while (response := await stream.out.get()) is not None:
                yield response
        finally:
            self._streams.discard(stream)
            stream.close()

    async def stream_request(
        self, request: Any, principal: Principal, put: Callable[[Any], None]
    ) -> None:
        """Answer one request of a stream: a generative model puts one response per token
        event, any other model one response."""
        tokens = self.tokens
        if tokens is not None and tokens.handles(request, principal):
            await tokens.run(request, principal, put)
        else:
            put(await self.stream_one(request, principal))

    async def stream_one(self, request: Any, principal: Principal = ANONYMOUS) -> Any:
        """One request of a stream -> ModelStreamInferResponse (never raises InferdError)."""
        start = time.perf_counter_ns()
        try:
            response = pb.ModelStreamInferResponse(
                infer_response=await self.infer(request, None, principal)
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
        names = self._visible_names(p)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(name=m["name"], version=m["version"], state=m["state"], reason=m["reason"])
                for m in self.engine.index(ready_only=request.ready)
                if m["name"] in names
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
        await load_from_repository(self.engine, name, list(request.parameters), raw_config)
        return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        await self.allow(context, "RepositoryModelUnload", request.model_name)
        await self.engine.unload(request.model_name)
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


class _Stream:
    """One ModelStreamInfer call: a reader task spawns a task per request; responses are
    queued as they complete (a generation's token events one by one) and `None` marks the end
    (input closed and nothing in flight)."""

    def __init__(
        self,
        servicer: InferenceServicer,
        requests: AsyncIterator[Any],
        principal: Principal = ANONYMOUS,
    ) -> None:
        self.servicer = servicer
        self.principal = principal
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
            await self.servicer.stream_request(request, self.principal, self.out.put_nowait)
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
