"""The worker's one loop, for every kind of replica.

Until a generation engine is loaded the main thread reads each frame and answers it in order
(LOAD, INFER, PING, UNLOAD): a request costs no hand-off between threads.
Once a generation engine is loaded, frames are read on a reader thread that answers what needs
no engine step at once (PING, CHAT_PROMPT) and puts GENERATE and ABORT in the engine's inbox,
while `run_engine` steps on the main thread (continuous batching). Every answer goes out on the
id of the frame it answers; PROGRESS frames of a long infer go out on its id before its RESULT.
Imported only after the worker isolated itself (`worker_main`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from inferd.core.errors import InferdError, InvalidInput, ModelLoadError
from inferd.core.generate import TokenEvent
from inferd.core.spec import parse_model_config
from inferd.runtimes import runtime_class
from inferd.runtimes.base import Runtime
from inferd.workers.generation import _STOP, engine_factory, run_engine
from inferd.workers.llm_backend import ChatTemplate
from inferd.workers.protocol import (
    BadFrame,
    Buffer,
    Frame,
    Kind,
    error_body,
    event_body,
    pack_tensors,
    read_frame_sync,
    request_of,
    shm_available,
    unpack_tensors,
    write_frame_sync,
)


def _stats(engine: Any) -> dict[str, Any]:
    s = engine.stats
    keys = ("running", "waiting", "steps", "generated_tokens", "prompt_tokens", "kv_cache_usage")
    return {k: getattr(s, k) for k in keys if hasattr(s, k)}


def _signature(runtime: Runtime) -> dict[str, Any]:
    inputs, outputs = runtime.signature()
    return {
        "platform": runtime.platform,
        "inputs": [t.to_dict() | {"optional": t.optional} for t in inputs],
        "outputs": [t.to_dict() | {"optional": t.optional} for t in outputs],
    }


class WorkerLoop:
    """The worker's end of the connection: one model (a runtime or a generation engine)."""

    def __init__(self, sock: socket.socket, shm: Path | None, refused: str | None,
                 notes: list[str]) -> None:  # fmt: skip
        self.sock = sock
        self.shm = shm if shm_available(shm) else None
        self.refused, self.notes = refused, notes
        self._send_lock = threading.Lock()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake = threading.Event()
        self.runtime: Runtime | None = None
        self.engine: Any = None
        self._template: ChatTemplate | None = None
        self._unload_id: str | None = None
        self._current = ""  # the id of the LOAD or INFER the main thread runs

    def send(self, kind: Kind, rid: str, body: dict[str, Any] | None = None,
             buffers: list[Buffer] | None = None) -> None:  # fmt: skip
        with self._send_lock:
            write_frame_sync(self.sock, kind, rid, body, buffers or ())

    def _error(self, rid: str, e: BaseException, fallback: str = "ModelExecutionError",
               prefix: str = "") -> None:  # fmt: skip
        self.send(Kind.ERROR, rid, error_body(e, fallback, prefix))

    def serve(self) -> None:
        """Answer frames until UNLOAD or the server goes away."""
        stream: BinaryIO = self.sock.makefile("rb", buffering=1 << 16)  # type: ignore[assignment]
        try:
            if self._direct(stream):  # a generation engine: frames on a thread of their own
                threading.Thread(target=self._read, args=(stream,), name="frames",
                                 daemon=True).start()  # fmt: skip
                run_engine(self.engine, self._inbox, self._wake, self._deliver, "worker")
        finally:
            if self.runtime is not None:
                with contextlib.suppress(Exception):  # the process is about to exit anyway
                    self.runtime.unload()
        if self._unload_id is not None:
            with contextlib.suppress(OSError):  # the server may be gone already
                self.send(Kind.UNLOADED, self._unload_id)

    # ---- main thread, until a generation engine is loaded ----------------------------------

    def _direct(self, stream: BinaryIO) -> bool:
        """Read and answer frames in order; True once a generation engine was loaded (the
        caller then runs it), False when the server unloads or goes away."""
        while (frame := self._next_frame(stream)) is not None:
            kind, rid = frame.kind, frame.id
            if kind is Kind.INFER:
                self._current = rid
                self._infer(frame)
            elif kind is Kind.PING:
                self.send(Kind.PONG, rid, {"pid": os.getpid(), "stats": {}})
            elif kind is Kind.UNLOAD:
                self._unload_id = rid
                return False
            elif kind is Kind.LOAD:
                self._current = rid
                if self.refused is not None:
                    self._error(rid, ModelLoadError(self.refused))
                elif self.runtime is not None:
                    self._error(rid, InvalidInput("a model is loaded already"))
                elif frame.body.get("runtime") == "llm":
                    if self._load_engine(frame):
                        return True
                else:
                    self._load(frame)
            elif kind in (Kind.GENERATE, Kind.ABORT, Kind.CHAT_PROMPT):
                self._error(rid, InvalidInput("no generation engine is loaded"))
            else:
                self._error(rid, InvalidInput(f"a worker takes no {kind} frame"))
        return False

    def _next_frame(self, stream: BinaryIO) -> Frame | None:
        """The next well-formed frame (a malformed one is answered with an error on its id);
        None once the server is gone."""
        while True:
            try:
                return read_frame_sync(stream)
            except BadFrame as e:
                self._error(e.id, InvalidInput(str(e)))
            except (EOFError, ValueError, OSError):
                return None

    # ---- reader thread, once a generation engine runs --------------------------------------

    def _read(self, stream: BinaryIO) -> None:
        while True:
            frame = self._next_frame(stream)
            if frame is None:
                self._stop(None)
                return
            try:
                if self._route(frame):
                    return
            except OSError:
                self._stop(None)
                return

    def _route(self, frame: Frame) -> bool:
        """Answer or hand on one frame; True once nothing more is to be read."""
        kind, rid = frame.kind, frame.id
        if kind is Kind.PING:
            engine = self.engine
            stats = _stats(engine) if engine is not None else {}
            self.send(Kind.PONG, rid, {"pid": os.getpid(), "stats": stats})
        elif kind is Kind.UNLOAD:
            self._stop(rid)
            return True
        elif kind in (Kind.LOAD, Kind.INFER):
            self._error(rid, InvalidInput(f"a generation worker takes no {kind} frame"))
        elif kind in (Kind.GENERATE, Kind.ABORT, Kind.CHAT_PROMPT):
            self._generation(frame)
        else:
            self._error(rid, InvalidInput(f"a worker takes no {kind} frame"))
        return False

    def _generation(self, frame: Frame) -> None:
        try:
            if frame.kind is Kind.GENERATE:
                self._inbox.put(("add", request_of(frame.id, frame.body)))
                self._wake.set()
            elif frame.kind is Kind.ABORT:
                self._inbox.put(("abort", frame.id))
                self._wake.set()
            else:
                assert self._template is not None
                text = self._template.render(frame.body.get("messages"))  # type: ignore[arg-type]
                self.send(Kind.PROMPT, frame.id, {"text": text})
        except OSError:
            raise
        except Exception as e:
            self._error(frame.id, e if isinstance(e, InferdError) else InvalidInput(str(e)))

    def _stop(self, unload_id: str | None) -> None:
        """The server asked to unload (`unload_id`) or went away (None): stop the engine."""
        self._unload_id = unload_id
        self._inbox.put(_STOP)
        self._wake.set()

    # ---- loading ---------------------------------------------------------------------------

    def _load(self, frame: Frame) -> None:
        try:
            b = frame.body
            spec = parse_model_config(b["name"], b["config"])
            runtime = runtime_class(b["runtime"])(spec, b["version"], Path(b["path"]))
            # progress frames go out on the id of the request running, before its answer
            runtime.progress_hook = lambda done, total: self.send(
                Kind.PROGRESS, self._current, {"done": done, "total": total}
            )
            runtime.load()
            body = _signature(runtime) | {"notes": self.notes}
        except BaseException as e:  # reported to the server; the worker keeps serving
            if isinstance(e, KeyboardInterrupt | SystemExit):
                raise
            self._error(frame.id, e, "ModelLoadError")
            return
        self.runtime = runtime
        self.send(Kind.LOADED, frame.id, body)

    def _load_engine(self, frame: Frame) -> bool:
        try:
            b = frame.body
            spec = parse_model_config(b["name"], b["config"])
            engine = engine_factory(spec, Path(b["path"]))()
        except Exception as e:
            self._error(frame.id, e, "ModelLoadError")
            return False
        self.engine = engine  # frames that came while it loaded are read after this
        self._template = ChatTemplate(getattr(engine, "tokenizer", None))
        self.send(Kind.LOADED, frame.id, {"platform": "transformers_llm", "notes": self.notes,
                                          "max_model_len": engine.max_model_len})  # fmt: skip
        return True

    def _infer(self, frame: Frame) -> None:
        runtime = self.runtime
        if runtime is None:
            self._error(frame.id, InvalidInput("no model is loaded"))
            return
        out: list[Buffer] = []
        try:
            b = frame.body
            inputs = unpack_tensors(b["inputs"], frame.buffers, self.shm)
            start = time.perf_counter_ns()
            outputs = runtime.infer(inputs, b.get("outputs"), b.get("parameters"))
            compute = time.perf_counter_ns() - start
            metas = pack_tensors(outputs, self.shm, out)
        except BaseException as e:  # reported to the server; the worker keeps serving
            if isinstance(e, KeyboardInterrupt | SystemExit):
                raise
            self._error(frame.id, e, "ModelExecutionError", "model raised ")
            return
        self.send(Kind.RESULT, frame.id, {"outputs": metas, "compute_ns": compute}, out)

    def _deliver(self, request_id: str, item: Any) -> None:
        if isinstance(item, TokenEvent):
            self.send(Kind.EVENT, request_id, event_body(item, _stats(self.engine)))
        else:
            self._error(request_id, item)
