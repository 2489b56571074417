"""A generative replica in a worker process: the LLM engine runs (and may crash) there; the
server multiplexes requests over the socket pair and routes event frames back by request id.
The default for `runtime: llm`; `instance_kind: thread` keeps the engine in the server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from types import SimpleNamespace
from typing import Any

from inferd.core import errors
from inferd.core.errors import InferdError, InvalidInput, ModelLoadError, ReplicaFailed
from inferd.core.generate import GenerateRequest
from inferd.core.spec import ModelSpec, spec_to_config
from inferd.workers.generation import SIGNATURE, GeneratorBase
from inferd.workers.generation_worker import event_from_wire, request_to_wire
from inferd.workers.inprocess import Loaded
from inferd.workers.isolation import WorkerIsolation
from inferd.workers.process import exit_reason, kill_worker, spawn_worker, watch_liveness
from inferd.workers.protocol import encode_frame, read_frame

log = logging.getLogger("inferd.generation")


def _error(h: dict[str, Any]) -> InferdError:
    cls = getattr(errors, str(h.get("kind")), errors.ModelExecutionError)
    if not (isinstance(cls, type) and issubclass(cls, InferdError)) or cls is errors.ModelNotFound:
        cls = errors.ModelExecutionError
    return cls(str(h.get("message", "worker error")))


class ProcessGenerator(GeneratorBase):
    """Continuous-batching generation in a worker process."""

    def __init__(self, spec: ModelSpec, version: str, path: Any, label: str, index: int = 0,
                 load_timeout_s: float = 600.0,
                 isolation: WorkerIsolation | None = None) -> None:  # fmt: skip
        super().__init__(label)
        self.spec, self.version, self.path, self.index = spec, version, path, index
        self.isolation = isolation or WorkerIsolation()
        self._load_timeout = load_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._rids = itertools.count()
        self._stats: Any = None
        self._dead: asyncio.Event = asyncio.Event()
        self._reason = ""
        #: Set when the worker was killed for staying stopped: reported instead of SIGKILL.
        self._death: str | None = None
        self._liveness: asyncio.Task[None] | None = None
        self.max_model_len: int | None = None

    @property
    def alive(self) -> bool:
        return self._alive and self._proc is not None and self._proc.returncode is None

    @property
    def stats(self) -> Any:
        return self._stats

    async def load(self) -> Loaded:
        worker = await spawn_worker(self.spec, self.index, self.path, self.isolation)
        self._proc, reader, self._writer = worker.proc, worker.reader, worker.writer
        self._liveness = watch_liveness(
            self._proc, self.spec.liveness_timeout_s, self.label, self._hung
        )
        header = {"op": "load_llm", "name": self.spec.name, "config": spec_to_config(self.spec),
                  "version": self.version, "path": str(self.path)}  # fmt: skip
        self._writer.writelines(encode_frame(header))
        try:
            async with asyncio.timeout(self._load_timeout):
                reply, _ = await read_frame(reader)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            await self._kill()
            code = self._proc.returncode if self._proc else None
            why = self._death or exit_reason(code)
            raise ModelLoadError(f"the generator worker did not load: {why}") from None
        if not reply.get("ok"):
            await self._kill()
            raise ModelLoadError(str(reply.get("message", "load failed")))
        self.isolation.note(reply.get("notes") or ())
        self.max_model_len = reply.get("max_model_len")
        self._stats = SimpleNamespace(running=0, waiting=0, steps=0, generated_tokens=0,
                                      prompt_tokens=0, kv_cache_usage=0.0)  # fmt: skip
        self._alive = True
        self._reader_task = asyncio.create_task(self._read(reader), name=f"{self.label}-reader")
        return Loaded(*SIGNATURE, "transformers_llm")

    def _hung(self, reason: str) -> None:
        self._death = reason

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                h, _ = await read_frame(reader)
                op = h.get("op")
                if op == "event":
                    if "stats" in h:
                        self._stats = SimpleNamespace(**h["stats"])
                    item: Any = _error(h) if h.get("ok") is False else event_from_wire(h)
                    self._deliver(str(h.get("request_id")), item)
                elif op == "reply":
                    fut = self._replies.pop(str(h.get("rid")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(h)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            pass
        await self._died()

    async def _died(self) -> None:
        code = None
        if self._proc is not None:
            with contextlib.suppress(TimeoutError):
                code = await asyncio.wait_for(self._proc.wait(), 2)
        self._reason = self._death or (exit_reason(code) if self._alive else "unloaded")
        was_alive, self._alive = self._alive, False
        failure = ReplicaFailed(f"generator {self.label} failed: {self._reason}")
        for rid in list(self._streams):
            self._deliver(rid, failure)
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(failure)
        self._replies.clear()
        if was_alive:
            log.warning("generator %s: %s", self.label, self._reason)
        self._dead.set()

    def _send(self, header: dict[str, Any]) -> None:
        if self._writer is None or not self.alive:
            raise ReplicaFailed(f"generator {self.label} is not running")
        self._writer.writelines(encode_frame(header))

    async def _rpc(self, header: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        rid = str(next(self._rids))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        self._send({**header, "rid": rid})
        try:
            async with asyncio.timeout(timeout_s):
                reply = await fut
        except TimeoutError:
            self._replies.pop(rid, None)
            raise ReplicaFailed(
                f"generator {self.label} did not answer within {timeout_s:g} s"
            ) from None
        if not reply.get("ok"):
            raise _error(reply)
        return reply

    # ---- GeneratorBase hooks -------------------------------------------------------------

    def _submit(self, request: GenerateRequest) -> None:
        self._send(request_to_wire(request))

    def _abort(self, request_id: str) -> None:
        with contextlib.suppress(ReplicaFailed):
            self._send({"op": "abort", "id": request_id})

    async def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        if not isinstance(messages, list):
            raise InvalidInput("messages: must be a list")
        reply = await self._rpc({"op": "chat", "messages": messages}, 30.0)
        return str(reply["text"])

    async def ping(self, timeout_s: float) -> None:
        reply = await self._rpc({"op": "ping"}, timeout_s)
        self._stats = SimpleNamespace(**reply.get("stats", {}))

    async def wait_exit(self) -> str:
        await self._dead.wait()
        return self._reason

    def _release(self) -> None:
        if self._proc is not None and self._proc.returncode is not None:
            self.isolation.release(self._proc.pid)  # its scratch and shm folders

    async def _kill(self) -> None:
        await kill_worker(self._proc)
        self._release()
        if self._liveness is not None:
            self._liveness.cancel()
        if self._writer is not None:
            self._writer.close()

    async def unload(self) -> None:
        if self._proc is None:
            return
        if self.alive:
            with contextlib.suppress(ReplicaFailed):
                self._send({"op": "unload"})
        self._alive = False
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            await self._kill()
        self._release()
        if self._reader_task is not None:
            await asyncio.gather(self._reader_task, return_exceptions=True)
        if self._liveness is not None:
            self._liveness.cancel()
        if self._writer is not None:
            self._writer.close()
