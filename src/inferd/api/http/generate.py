"""Triton's generate extension on `runtime: llm` models: `POST /v2/models/{m}[/versions/{v}]/
generate` answers once, `.../generate_stream` streams one Server-Sent Event per token event.

Body: `{"text_input": "...", "parameters": {...sampling...}}` (sampling fields may also sit at
the top level, as Triton allows). Answer: `{"model_name", "model_version", "text_output",
"finish_reason", "usage"}`; stream events carry the new text in `text_output`, the last one the
finish reason and usage; an error after the stream started is `data: {"error": "..."}`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Receive, Send

from inferd.api.dataplane import DataPlane, Header
from inferd.api.http.errors import status_of
from inferd.api.http.openai import revision_header, send_json, send_sse
from inferd.core.errors import InferdError, InvalidInput
from inferd.core.generate import GenerateRequest, parse_sampling
from inferd.serving.engine import ServedVersion

_RESERVED = {"text_input", "parameters", "id", "stream"}


def _request(doc: Any) -> GenerateRequest:
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    text = doc.get("text_input")
    if not isinstance(text, str) or not text:
        raise InvalidInput("text_input: must be a non-empty string")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("parameters: must be an object")
    merged = {**{k: v for k, v in doc.items() if k not in _RESERVED}, **params}
    rid = doc.get("id") if isinstance(doc.get("id"), str) else None
    return GenerateRequest(rid or uuid.uuid4().hex, prompt=text, params=parse_sampling(merged))


async def serve_generate(
    plane: DataPlane,
    name: str,
    version: str | None,
    stream: bool,
    prepare: Callable[[], Awaitable[Any]],
    receive: Receive,
    send: Send,
    admit: Callable[[], contextlib.AbstractAsyncContextManager[None]],
    header: Header | None = None,
) -> int:
    """Run one generate / generate_stream call; returns the status for the access log.
    `header` reads a request header (the deployment's routing rules)."""
    try:
        request = _request(await prepare())
        async with admit():
            sv = plane.generator(name, version, header)  # routed; not an LLM: 501 at once
            return await _run(plane, sv, stream, request, receive, send)
    except InferdError as e:  # raised before any byte of the answer was sent
        status = status_of(e)
        await send_json(send, status, {"error": e.message}, [])
        return status
    except OSError:
        return 499


async def _run(
    plane: DataPlane,
    sv: ServedVersion,
    stream: bool,
    request: GenerateRequest,
    receive: Receive,
    send: Send,
) -> int:
    head = {"model_name": sv.name, "model_version": sv.version}
    events = plane.generate(sv, request)
    if not stream:
        text, last = [], None
        async for ev in events:
            text.append(ev.text)
            last = ev
        assert last is not None
        await send_json(send, 200, {**head, "text_output": "".join(text),
                                    "finish_reason": last.finish_reason,
                                    "usage": _usage(last)}, revision_header(sv))  # fmt: skip
        return 200

    async def chunks() -> AsyncGenerator[bytes, None]:
        try:
            async for ev in events:
                if not ev.text and not ev.finished:
                    continue
                doc: dict[str, Any] = {**head, "text_output": ev.text}
                if ev.finished:
                    doc["finish_reason"] = ev.finish_reason
                    doc["usage"] = _usage(ev)
                yield b"data: " + orjson.dumps(doc) + b"\n\n"
        except InferdError as e:
            yield b"data: " + orjson.dumps({"error": e.message}) + b"\n\n"
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return await send_sse(receive, send, chunks(), revision_header(sv))


def _usage(ev: Any) -> dict[str, int]:
    return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens}
