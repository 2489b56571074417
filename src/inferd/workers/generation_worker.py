"""The worker-process side of a generative replica: after `load_llm`, the socket carries
multiplexed frames — `generate` / `abort` / `chat` / `ping` / `unload` in, `event` and `reply`
out — while the engine steps on this process's main thread (continuous batching).

Frames are the worker protocol's typed JSON headers (no pickle). Every `event` frame carries the
engine's stats so the server's gauges need no extra round trip.
"""

from __future__ import annotations

import dataclasses
import queue
import socket
import threading
from typing import Any, BinaryIO

from inferd.core.errors import InferdError
from inferd.core.generate import GenerateRequest, SamplingParams, TokenEvent
from inferd.workers.generation import _STOP, run_engine
from inferd.workers.protocol import read_frame_sync, write_frame_sync


def request_to_wire(r: GenerateRequest) -> dict[str, Any]:
    return {"op": "generate", "id": r.request_id, "prompt": r.prompt,
            "prompt_token_ids": r.prompt_token_ids,
            "params": dataclasses.asdict(r.params)}  # fmt: skip


def request_from_wire(h: dict[str, Any]) -> GenerateRequest:
    p = dict(h.get("params") or {})
    for key in ("stop", "stop_token_ids"):
        p[key] = tuple(p.get(key) or ())
    return GenerateRequest(str(h["id"]), h.get("prompt"), h.get("prompt_token_ids"),
                           SamplingParams(**p))  # fmt: skip


def event_to_wire(ev: TokenEvent, stats: dict[str, Any]) -> dict[str, Any]:
    return {"op": "event", **dataclasses.asdict(ev), "stats": stats}


def event_from_wire(h: dict[str, Any]) -> TokenEvent:
    return TokenEvent(
        request_id=h["request_id"], token_ids=tuple(h["token_ids"]), text=h["text"],
        prompt_tokens=h["prompt_tokens"], completion_tokens=h["completion_tokens"],
        finished=h["finished"], finish_reason=h["finish_reason"],
        stop_reason=h["stop_reason"], error=h["error"],
    )  # fmt: skip


def error_to_wire(e: BaseException) -> dict[str, Any]:
    if isinstance(e, InferdError):
        return {"ok": False, "kind": type(e).__name__, "message": e.message}
    return {"ok": False, "kind": "ModelExecutionError", "message": f"{type(e).__name__}: {e}"}


def _stats(engine: Any) -> dict[str, Any]:
    s = engine.stats
    keys = ("running", "waiting", "steps", "generated_tokens", "prompt_tokens", "kv_cache_usage")
    return {k: getattr(s, k) for k in keys if hasattr(s, k)}


def serve_generation(sock: socket.socket, stream: BinaryIO, engine: Any) -> None:
    """Run until `unload` or the server goes away."""
    lock = threading.Lock()
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    wake = threading.Event()

    def send(header: dict[str, Any]) -> None:
        with lock:
            write_frame_sync(sock, header)

    def reader() -> None:
        while True:
            try:
                header, _ = read_frame_sync(stream)
            except (EOFError, ConnectionError, OSError):
                inbox.put(_STOP)
                wake.set()
                return
            op = header.get("op")
            if op == "generate":
                inbox.put(("add", request_from_wire(header)))
            elif op == "abort":
                inbox.put(("abort", str(header.get("id"))))
            elif op == "unload":
                inbox.put(_STOP)
                wake.set()
                return
            else:  # chat / ping: request-reply, answered from this thread
                reply: dict[str, Any]
                try:
                    if op == "chat":
                        reply = {"ok": True, "text": engine.chat_prompt(header["messages"])}
                    elif op == "ping":
                        reply = {"ok": True, "stats": _stats(engine)}
                    else:
                        reply = {"ok": False, "kind": "InvalidInput", "message": f"bad op {op!r}"}
                except Exception as e:
                    reply = error_to_wire(e)
                send({"op": "reply", "rid": header.get("rid"), **reply})
                continue
            wake.set()

    def deliver(request_id: str, item: Any) -> None:
        if isinstance(item, TokenEvent):
            send(event_to_wire(item, _stats(engine)))
        else:
            send({"op": "event", "request_id": request_id, **error_to_wire(item)})

    threading.Thread(target=reader, name="llm-reader", daemon=True).start()
    run_engine(engine, inbox, wake, deliver, "worker")
    try:
        send({"op": "reply", "rid": "unload", "ok": True})
    except OSError:
        pass  # the server is gone already
