"""The OpenAI-compatible API (as vLLM serves it): models, completions, chat completions (plain
and Server-Sent Events), embeddings. Errors use OpenAI's `{"error": {message, type, param,
code}}`; an error after a stream started travels in-band as a `data: {"error": ...}` event
followed by `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import orjson
from starlette.types import Receive, Send

from inferd.api.dataplane import DataPlane, Header
from inferd.api.http.errors import status_of
from inferd.api.http.request import until_disconnect
from inferd.auth.principal import Principal
from inferd.core.errors import InferdError, InvalidField, InvalidInput, ModelNotFound, RateLimited
from inferd.core.generate import GenerateRequest, TokenEvent, parse_sampling
from inferd.core.tensors import InferenceRequest, Tensor
from inferd.serving.engine import ServedVersion

log = logging.getLogger("inferd.openai")
#: Which revision (model version) served a request, on every routed HTTP answer.
REVISION_HEADER = b"x-inferd-model-version"
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable"}  # fmt: skip


#: A bad request field; `param` names it (OpenAI's error `param`).
ParamError = InvalidField


def error_body(exc: InferdError, status: int) -> dict[str, Any]:
    param = getattr(exc, "param", None)
    message = exc.message
    if isinstance(exc, ModelNotFound):
        message, param = f"The model `{exc.name}` does not exist.", "model"
    return {"error": {"message": message, "type": _TYPES.get(status, "internal_error"),
                      "param": param, "code": status}}  # fmt: skip


def _get(doc: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    value = doc.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ParamError(key, f"must be {names}")
    return value


def _unsupported(doc: dict[str, Any]) -> None:
    n = _get(doc, "n", (int,), 1)
    if n != 1:
        raise ParamError("n", "only n=1 is supported")
    if doc.get("logprobs") not in (None, False) or doc.get("top_logprobs") not in (None, 0):
        raise ParamError("logprobs", "log probabilities are not supported")
    if doc.get("echo"):
        raise ParamError("echo", "echo is not supported")
    if doc.get("tools"):
        raise ParamError("tools", "tool calls are not supported")
    fmt = doc.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise ParamError("response_format", "only {'type': 'text'} is supported")


def _stream_options(doc: dict[str, Any]) -> bool:
    opts = doc.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise ParamError("stream_options", "must be an object")
    if not doc.get("stream"):
        raise ParamError("stream_options", "only allowed when stream is true")
    return bool(opts.get("include_usage"))


class OpenAIRoutes:
    """Handlers for the OpenAI routes: each checks the model, makes one data-plane call."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def allow(self, p: Principal, model: Any, operation: str = "generate") -> str:
        if not isinstance(model, str) or not model:
            raise ParamError("model", "is required")
        self.plane.allow(operation, p, model)
        return model

    def models(self, p: Principal, created: int) -> dict[str, Any]:
        """GET /v1/models: OpenAI's list, plus KServe V1's `models` (both clients read it)."""
        names = self.plane.visible(p)
        data = []
        for name in names:
            entry: dict[str, Any] = {
                "id": name, "object": "model", "created": created, "owned_by": "inferd",
                "root": name, "parent": None,
            }  # fmt: skip
            m = self.plane.model(name)
            if m.default is not None and m.default.runtime_name == "llm":
                live = m.default.scheduler.live()
                replica = live[0].replica if live else None
                entry["max_model_len"] = getattr(replica, "max_model_len", None)
            data.append(entry)
        return {"object": "list", "data": data, "models": names}

    # ---- completions and chat ------------------------------------------------------------

    async def _prepare(
        self, kind: str, doc: dict[str, Any], sv: ServedVersion
    ) -> tuple[list[GenerateRequest], bool, bool]:
        _unsupported(doc)
        stream = _get(doc, "stream", (bool,), False)
        usage_chunk = _stream_options(doc)
        if kind == "chat":
            messages = doc.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ParamError("messages", "must be a non-empty list of messages")
            for i, msg in enumerate(messages):
                if not isinstance(msg, dict) or msg.get("role") not in (
                    "system", "user", "assistant", "developer", "tool"):  # fmt: skip
                    raise ParamError(f"messages[{i}]", "needs a role: system, user or assistant")
                content = msg.get("content")
                if isinstance(content, list):  # [{type: text, text}] parts → plain text
                    texts = [c.get("text", "") for c in content
                             if isinstance(c, dict) and c.get("type") == "text"]  # fmt: skip
                    msg = dict(msg, content="".join(texts))
                    messages[i] = msg
                elif not isinstance(content, str):
                    raise ParamError(f"messages[{i}].content", "must be a string or text parts")
            limit = doc.get("max_completion_tokens")
            if limit is None:
                limit = doc.get("max_tokens")
            params = parse_sampling({**doc, "max_tokens": limit}, max_tokens=None)
            prompts: list[Any] = [await self.plane.chat_prompt(sv, messages)]
        else:
            params = parse_sampling(doc, max_tokens=16)
            prompt = doc.get("prompt")
            if isinstance(prompt, str) or _token_ids(prompt):
                prompts = [prompt]
            elif (
                isinstance(prompt, list)
                and prompt
                and all(isinstance(p, str) or _token_ids(p) for p in prompt)
            ):
                prompts = list(prompt)
            else:
                raise ParamError("prompt", "must be a string, a list of strings or token ids")
            if len(prompts) > 64:
                raise ParamError("prompt", "at most 64 prompts per request")
        requests = []
        for p in prompts:
            rid = uuid.uuid4().hex
            if isinstance(p, str):
                requests.append(GenerateRequest(rid, prompt=p, params=params))
            else:
                requests.append(GenerateRequest(rid, prompt_token_ids=list(p), params=params))
        return requests, stream, usage_chunk

    async def complete(
        self, kind: str, doc: dict[str, Any], p: Principal, header: Header | None = None,
        tokens: Callable[[int], None] | None = None,
    ) -> tuple[dict[str, Any], ServedVersion]:  # fmt: skip
        """A non-streamed completion or chat completion, and the revision that made it.
        `tokens(n)`: told the number of tokens generated so far, as they come."""
        model = self.allow(p, doc.get("model"))
        sv = self.plane.generator(model, None, header)  # routed once: every prompt goes there
        requests, _, _ = await self._prepare(kind, doc, sv)
        counts = [0] * len(requests)

        async def run(i: int, r: GenerateRequest) -> TokenEvent:
            text, last = [], None
            async for ev in self.plane.generate(sv, r):
                text.append(ev.text)
                last = ev
                if tokens is not None:
                    counts[i] = ev.completion_tokens
                    tokens(sum(counts))
            assert last is not None
            return TokenEvent(r.request_id, (), "".join(text), last.prompt_tokens,
                              last.completion_tokens, True, last.finish_reason,
                              last.stop_reason)  # fmt: skip

        results = await asyncio.gather(*(run(i, r) for i, r in enumerate(requests)))
        usage = _usage(sum(r.prompt_tokens for r in results),
                       sum(r.completion_tokens for r in results))  # fmt: skip
        created = int(time.time())
        if kind == "chat":
            r = results[0]
            return {"id": f"chatcmpl-{requests[0].request_id}", "object": "chat.completion",
                    "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                                 "logprobs": None, "finish_reason": r.finish_reason,
                                 "stop_reason": r.stop_reason}],
                    "usage": usage}, sv  # fmt: skip
        return {"id": f"cmpl-{requests[0].request_id}", "object": "text_completion",
                "created": created, "model": model,
                "choices": [{"index": i, "text": r.text, "logprobs": None,
                             "finish_reason": r.finish_reason, "stop_reason": r.stop_reason}
                            for i, r in enumerate(results)],
                "usage": usage}, sv  # fmt: skip

    async def stream(
        self, kind: str, doc: dict[str, Any], p: Principal, header: Header | None = None
    ) -> tuple[AsyncGenerator[bytes, None], ServedVersion]:
        """Validate and start a streamed completion: SSE chunks as an iterator, and the
        revision that makes them."""
        model = self.allow(p, doc.get("model"))
        sv = self.plane.generator(model, None, header)  # not an LLM: refused before the 200
        requests, _, usage_chunk = await self._prepare(kind, doc, sv)
        if len(requests) != 1:
            raise ParamError("prompt", "streaming takes one prompt")
        req = requests[0]
        chat = kind == "chat"
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{req.request_id}"
        obj = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())
        events = self.plane.generate(sv, req)
        assert isinstance(events, AsyncGenerator)

        def chunk(choice: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> bytes:
            body: dict[str, Any] = {"id": cid, "object": obj, "created": created, "model": model,
                                    "choices": [choice] if choice is not None else []}  # fmt: skip
            if usage is not None:
                body["usage"] = usage
            return b"data: " + orjson.dumps(body) + b"\n\n"

        async def sse() -> AsyncGenerator[bytes, None]:
            last: TokenEvent | None = None
            try:
                if chat:
                    yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None})  # fmt: skip
                async for ev in events:
                    last = ev
                    if ev.text or ev.finished:
                        piece = {"content": ev.text} if ev.text else {}
                        choice: dict[str, Any] = {"index": 0, "logprobs": None,
                                                  "finish_reason": ev.finish_reason}  # fmt: skip
                        if chat:
                            choice["delta"] = piece
                        else:
                            choice["text"] = ev.text
                        if ev.finished:
                            choice["stop_reason"] = ev.stop_reason
                        yield chunk(choice)
                if usage_chunk and last is not None:
                    yield chunk(None, _usage(last.prompt_tokens, last.completion_tokens))
            except InferdError as e:
                yield b"data: " + orjson.dumps(error_body(e, status_of(e))) + b"\n\n"
            finally:
                await events.aclose()  # aborts the request if it is still running
            yield b"data: [DONE]\n\n"

        return sse(), sv

    # ---- images --------------------------------------------------------------------------

    async def images(
        self, doc: dict[str, Any], p: Principal, header: Header | None = None
    ) -> tuple[dict[str, Any], ServedVersion]:
        """POST /v1/images/generations on a `runtime: diffusers` model (b64_json answers)."""
        model = self.allow(p, doc.get("model"), "infer")
        prompt = doc.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ParamError("prompt", "must be a non-empty string")
        n = _get(doc, "n", (int,), 1)
        if not 1 <= n <= 4:
            raise ParamError("n", "must be from 1 to 4")
        if (doc.get("response_format") or "b64_json") != "b64_json":
            raise ParamError("response_format", "only b64_json is supported")
        params: dict[str, Any] = {}
        size = doc.get("size")
        if size is not None:
            w, _, h = str(size).partition("x")
            if not (w.isdigit() and h.isdigit()):
                raise ParamError("size", "must look like 512x512")
            params["width"], params["height"] = int(w), int(h)
        steps = doc.get("num_inference_steps", doc.get("steps"))
        for key, value in (("num_inference_steps", steps), ("guidance_scale",
                           doc.get("guidance_scale")), ("seed", doc.get("seed"))):  # fmt: skip
            if value is not None:
                params[key] = value
        sv = self.plane.version(model, None, header)
        if "image" not in sv.output_map:
            raise ParamError("model", f"`{model}` is not an image generation model")
        inputs = [Tensor("prompt", "BYTES", np.array([prompt.encode()] * n, dtype=object))]
        negative = doc.get("negative_prompt")
        if isinstance(negative, str) and negative:
            inputs.append(Tensor("negative_prompt", "BYTES",
                                 np.array([negative.encode()] * n, dtype=object)))  # fmt: skip
        try:
            response = await self.plane.infer(sv, InferenceRequest(inputs, parameters=params))
        except InvalidInput as e:  # the runtime names the parameter first
            raise ParamError(e.message.split(" ", 1)[0].strip("'"), e.message) from None
        images = next(t.data for t in response.outputs if t.name == "image")
        return {"created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(bytes(img)).decode(),
                          "revised_prompt": None} for img in images.reshape(-1)]}, sv  # fmt: skip

    # ---- embeddings ----------------------------------------------------------------------

    async def embeddings(
        self, doc: dict[str, Any], p: Principal, header: Header | None = None
    ) -> tuple[dict[str, Any], ServedVersion]:
        model = self.allow(p, doc.get("model"), "infer")
        raw = doc.get("input")
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
            texts = list(raw)
        else:
            raise ParamError("input", "must be a string or a list of strings")
        if len(texts) > 2048 or any(not t for t in texts):
            raise ParamError("input", "1-2048 non-empty strings")
        fmt = doc.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ParamError("encoding_format", "must be 'float' or 'base64'")
        sv = self.plane.version(model, None, header)
        if "embedding" not in sv.output_map:
            raise ParamError("model", f"`{model}` is not an embedding model")
        request = InferenceRequest(
            [Tensor("text", "BYTES", np.array([t.encode() for t in texts], dtype=object))]
        )
        response = await self.plane.infer(sv, request)
        outs = {t.name: t.data for t in response.outputs}
        vectors: np.ndarray = np.asarray(outs["embedding"], dtype=np.float32)
        dims = doc.get("dimensions")
        if dims is not None:
            if (
                not isinstance(dims, int)
                or isinstance(dims, bool)
                or not 0 < dims <= vectors.shape[1]
            ):
                raise ParamError("dimensions", f"must be an integer from 1 to {vectors.shape[1]}")
            vectors = vectors[:, :dims]
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms == 0, 1, norms)
        tokens = int(np.asarray(outs.get("tokens", [0])).sum())
        data = []
        for i, v in enumerate(vectors):
            emb: Any = (base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64"
                        else v.tolist())  # fmt: skip
            data.append({"index": i, "object": "embedding", "embedding": emb})
        return {"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                "model": model, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens,
                          "completion_tokens": 0}}, sv  # fmt: skip


def _token_ids(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value))  # fmt: skip


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


async def send_json(send: Send, status: int, doc: Any, extra: list[tuple[bytes, bytes]]) -> None:
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_headers(e: InferdError, status: int) -> list[tuple[bytes, bytes]]:
    if isinstance(e, RateLimited):
        return [(b"retry-after", str(max(1, round(e.retry_after_s))).encode())]
    if status == 401:
        return [(b"www-authenticate", b"Bearer")]
    return []


def revision_header(sv: ServedVersion) -> list[tuple[bytes, bytes]]:
    """The header that says which revision (model version) served a routed request."""
    return [(REVISION_HEADER, sv.version.encode())]


async def send_sse(
    receive: Receive,
    send: Send,
    chunks: AsyncGenerator[bytes, None],
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> int:
    """Send a 200 `text/event-stream` of `chunks`; 499 when the client left first (the stream
    is closed, which aborts its generation: the slot frees at the next engine step)."""
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
        *extra]})  # fmt: skip
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.create_task(until_disconnect(receive, task))
    try:
        async for piece in chunks:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        if watcher.done() and task.cancelling():
            task.uncancel()
            await chunks.aclose()
            return 499
        raise
    finally:
        watcher.cancel()
    return 200


async def serve_openai(
    api: OpenAIRoutes,
    route: str,
    prepare: Callable[[], Awaitable[tuple[Principal, Any]]],
    header: Header | None,
    receive: Receive,
    send: Send,
) -> int:
    """Run one OpenAI route to the end; returns the status for the access log (499 when the
    client went away mid-stream, which aborted its generation). `header` reads a request
    header (the deployment's routing rules)."""
    status = 200
    started = False
    try:
        p, doc = await prepare()
        if not isinstance(doc, dict):
            raise ParamError("body", "must be a JSON object")
        async with api.plane.admit(p):
            if route == "openai_embeddings":
                answer, sv = await api.embeddings(doc, p, header)
            elif route == "openai_images":
                answer, sv = await api.images(doc, p, header)
            else:
                kind = "chat" if route == "openai_chat" else "completion"
                if doc.get("stream"):
                    chunks, sv = await api.stream(kind, doc, p, header)  # bad fields: before 200
                    started = True
                    return await send_sse(receive, send, chunks, revision_header(sv))
                answer, sv = await api.complete(kind, doc, p, header)
            await send_json(send, 200, answer, revision_header(sv))
            return status
    except InferdError as e:
        status = status_of(e)
        if not started:
            await send_json(send, status, error_body(e, status), error_headers(e, status))
    except OSError:  # the connection broke while sending
        status = 499
    except Exception:
        log.exception("unhandled error on an OpenAI route")
        status = 500
        if not started:
            await send_json(send, 500, error_body(InferdError("internal server error"), 500), [])
    return status
