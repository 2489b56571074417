"""Token streaming over `ModelStreamInfer` for `runtime: llm` models, as Triton's decoupled
models do it (the vLLM backend's wire shape).

A request carries the prompt in a BYTES input `text_input` (or `text`) and sampling fields as
request parameters; it is answered with one stream response per token event, each holding the new
text in a BYTES output `text_output`, the request `id`, and the parameter
`triton_final_response` (true on the last one, which also carries `finish_reason` and the token
counts). Errors travel in-band in `error_message`; the stream stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import orjson
from tritonclient.grpc import service_pb2 as pb

from inferd.api.dataplane import DataPlane, Header
from inferd.api.grpc.access import log_rpc
from inferd.api.grpc.codec import from_core, to_core
from inferd.api.grpc.errors import INTERNAL_MESSAGE, code_of
from inferd.auth.principal import Principal
from inferd.core.errors import InferdError, InvalidInput, ModelExecutionError
from inferd.core.generate import GenerateRequest, TokenEvent, parse_sampling
from inferd.core.tensors import InferenceResponse, Tensor

log = logging.getLogger("inferd.grpc")

TEXT_INPUTS = ("text_input", "text")
TEXT_OUTPUT = "text_output"
#: Triton's flag on the last response of a request to a decoupled model.
FINAL = "triton_final_response"
#: tritonclient's `enable_empty_final_response=True`: the flag travels on an extra empty response.
EMPTY_FINAL = "triton_enable_empty_final_response"


@dataclass(slots=True)
class GenerateCall:
    """A decoded stream request: the generation, and how to answer it."""

    request: GenerateRequest
    #: False (a BOOL input `stream` = false): one response with the whole text.
    stream: bool = True
    empty_final: bool = False


def _one(t: Tensor, datatype: str) -> Any:
    if t.datatype != datatype or t.data.size != 1:
        raise InvalidInput(f"input '{t.name}': must be one {datatype} element")
    return t.data.reshape(-1)[0]


def _text(t: Tensor) -> str:
    raw = _one(t, "BYTES")
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{t.name}': the prompt is not valid UTF-8") from None


def to_generate(request: Any) -> GenerateCall:
    """`ModelInferRequest` -> GenerateCall. Inputs: `text_input` / `text` (the prompt), optional
    `stream` (BOOL) and `sampling_parameters` (BYTES, a JSON object; request parameters win)."""
    core = to_core(request)
    params: dict[str, Any] = {}
    prompt: str | None = None
    stream = True
    for t in core.inputs:
        if t.name in TEXT_INPUTS:
            if prompt is not None:
                raise InvalidInput("send the prompt once, in 'text_input' or 'text'")
            prompt = _text(t)
        elif t.name == "stream":
            stream = bool(_one(t, "BOOL"))
        elif t.name == "sampling_parameters":
            try:
                doc = orjson.loads(_one(t, "BYTES"))
            except orjson.JSONDecodeError:
                doc = None
            if not isinstance(doc, dict):
                raise InvalidInput("input 'sampling_parameters': must be a JSON object")
            params.update(doc)
        else:
            raise InvalidInput(
                f"input '{t.name[:64]}': a generative model takes 'text_input' (BYTES), "
                "'stream' (BOOL) and 'sampling_parameters' (BYTES, JSON)"
            )
    if prompt is None:
        raise InvalidInput("input 'text_input' (BYTES, the prompt) is required")
    params.update(core.parameters or {})
    empty_final = bool(params.pop(EMPTY_FINAL, False))
    generate = GenerateRequest(uuid.uuid4().hex, prompt=prompt, params=parse_sampling(params))
    return GenerateCall(generate, stream, empty_final)


def token_response(
    request: Any, name: str, version: str, text: str | None, last: TokenEvent | None
) -> Any:
    """One stream response: `text_output` (omitted when `text` is None, the empty final
    response) and the final flag; the final one (`last` given) carries finish reason and counts."""
    params: dict[str, Any] = {FINAL: last is not None}
    if last is not None:
        params["finish_reason"] = last.finish_reason or "stop"
        params["prompt_tokens"] = last.prompt_tokens
        params["completion_tokens"] = last.completion_tokens
    outputs = []
    if text is not None:
        outputs.append(Tensor(TEXT_OUTPUT, "BYTES", np.array([text.encode()], dtype=object)))
    response = InferenceResponse(name, version, outputs, request.id or None, params)
    return pb.ModelStreamInferResponse(infer_response=from_core(response))


def error_response(request: Any, message: str) -> Any:
    """An in-band error for one generation; it is the request's last response."""
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    response.parameters[FINAL].bool_param = True
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)


class TokenStreams:
    """The generative side of `ModelStreamInfer`: one generation per request, its events
    answered as they come (put on the stream's queue)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def handles(self, request: Any, principal: Principal) -> bool:
        """Whether this request goes to a text generator. Anything the caller may not use, or
        that does not exist, is left to the ordinary path, so its error is the ordinary one."""
        try:
            self.plane.allow("generate", principal, request.model_name)
            sv = self.plane.version(request.model_name, request.model_version or None)
        except InferdError:
            return False
        return sv.runtime_name == "llm"

    async def run(
        self, request: Any, principal: Principal, put: Callable[[Any], None],
        header: Header | None = None,
    ) -> None:  # fmt: skip
        """Answer one request to the end (never raises InferdError); cancelling the task aborts
        the generation, which frees its slot at the engine's next step. `header` reads the
        call's metadata (the deployment's routing rules)."""
        start = time.perf_counter_ns()
        code = grpc.StatusCode.OK
        try:
            await self._generate(request, principal, put, header)
        except InferdError as e:
            code = code_of(e)
            put(error_response(request, e.message))
        except asyncio.CancelledError:
            log_rpc("ModelStreamInfer", request, grpc.StatusCode.CANCELLED, start)
            raise
        except Exception:
            log.exception("unhandled error in gRPC ModelStreamInfer (generation)")
            code = grpc.StatusCode.INTERNAL
            put(error_response(request, INTERNAL_MESSAGE))
        log_rpc("ModelStreamInfer", request, code, start)

    async def _generate(
        self, request: Any, principal: Principal, put: Callable[[Any], None],
        header: Header | None,
    ) -> None:  # fmt: skip
        plane = self.plane
        call = to_generate(request)
        name, version = request.model_name, request.model_version or None
        async with plane.admit(principal):
            sv = plane.generator(name, version, header)
            events = plane.generate(sv, call.request)
            assert isinstance(events, AsyncGenerator)
            parts: list[str] = []
            async with contextlib.aclosing(events):  # an early exit aborts the generation
                async for ev in events:
                    if not call.stream:
                        parts.append(ev.text)
                        if ev.finished:
                            put(token_response(request, sv.name, sv.version, "".join(parts), ev))
                    elif ev.finished and call.empty_final:
                        put(token_response(request, sv.name, sv.version, ev.text, None))
                        put(token_response(request, sv.name, sv.version, None, ev))
                    else:
                        last = ev if ev.finished else None
                        put(token_response(request, sv.name, sv.version, ev.text, last))
                    if ev.finished:
                        return
        raise ModelExecutionError("generation ended without a final event")
