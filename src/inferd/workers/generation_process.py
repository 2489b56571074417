"""A generative replica in a worker process: the LLM engine runs (and may crash) there; the
server multiplexes requests over the worker's `WorkerConnection`, one id per generation, and
routes its event frames back. The chat template renders here, in the server. The default for
`runtime: llm`; `instance_kind: thread` keeps the engine in the server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from inferd.core.errors import InferdError, ModelLoadError, ReplicaFailed
from inferd.core.generate import GenerateRequest
from inferd.core.spec import ModelSpec, spec_to_config
from inferd.workers.connection import WorkerConnection
from inferd.workers.generation import SIGNATURE, GeneratorBase
from inferd.workers.inprocess import Loaded
from inferd.workers.isolation import WorkerIsolation
from inferd.workers.llm_backend import ChatTemplate
from inferd.workers.protocol import Frame, Kind, error_of, event_of, request_body

log = logging.getLogger("inferd.generation")

_IDLE = {"running": 0, "waiting": 0, "steps": 0, "generated_tokens": 0, "prompt_tokens": 0,
         "kv_cache_usage": 0.0}  # fmt: skip


class ProcessGenerator(GeneratorBase):
    """Continuous-batching generation in a worker process."""

    def __init__(self, spec: ModelSpec, version: str, path: Any, label: str, index: int = 0,
                 load_timeout_s: float = 600.0,
                 isolation: WorkerIsolation | None = None) -> None:  # fmt: skip
        super().__init__(label)
        self.spec, self.version, self.path, self.index = spec, version, path, index
        self.isolation = isolation or WorkerIsolation()
        self._load_timeout = load_timeout_s
        self._conn = WorkerConnection(spec, index, Path(path), self.isolation, label, "generator")
        #: Running requests: the caller's request id → its id on the connection.
        self._wire: dict[str, str] = {}
        self._stats: Any = None
        self.max_model_len: int | None = None

    @property
    def _proc(self) -> asyncio.subprocess.Process | None:
        return self._conn.proc

    @property
    def pid(self) -> int | None:
        return self._conn.pid

    @property
    def alive(self) -> bool:
        return self._alive and self._conn.alive

    @property
    def stats(self) -> Any:
        return self._stats

    async def load(self) -> Loaded:
        await self._conn.start()
        # the tokenizer files are read here while the worker loads the engine, unless they are
        # an untrusted member's: then only the sandboxed worker parses them (and renders)
        template = asyncio.ensure_future(
            asyncio.to_thread(ChatTemplate.load, Path(self.path))
            if not self.spec.untrusted_files
            else asyncio.sleep(0, None)
        )
        body = {"name": self.spec.name, "config": spec_to_config(self.spec),
                "version": self.version, "path": str(self.path), "runtime": "llm"}  # fmt: skip
        try:
            reply = await self._conn.call(Kind.LOAD, body, timeout=self._load_timeout,
                                          what="loading")  # fmt: skip
        except InferdError as e:
            await self._conn.kill()
            await asyncio.gather(template, return_exceptions=True)
            raise ModelLoadError(e.message) from None
        except asyncio.CancelledError:  # the server stops while loading: leave no worker behind
            await self._conn.kill()
            await asyncio.gather(template, return_exceptions=True)
            raise
        self._template = await template
        self.isolation.note(reply.body.get("notes") or ())
        self.max_model_len = reply.body.get("max_model_len")
        self._stats = SimpleNamespace(**_IDLE)
        self._alive = True
        return Loaded(*SIGNATURE, "transformers_llm")

    def _update_stats(self, body: dict[str, Any]) -> None:
        stats = body.get("stats")
        if isinstance(stats, dict):
            self._stats = SimpleNamespace(**stats)

    # ---- GeneratorBase hooks -------------------------------------------------------------

    def _submit(self, request: GenerateRequest) -> None:
        rid, wire = request.request_id, self._conn.next_id()

        def sink(item: Frame | InferdError) -> None:
            mine = self._wire.get(rid) == wire  # else the id was taken again: dropped
            out: Any
            if isinstance(item, Frame):
                self._update_stats(item.body)
                if item.kind is Kind.EVENT:
                    out = event_of(rid, item.body)
                    last = out.finished
                elif item.kind is Kind.ERROR:
                    out, last = error_of(item.body), True
                else:
                    return
            else:
                out, last = item, True
            if last:
                self._conn.close_stream(wire)
                if mine:
                    del self._wire[rid]
            if mine:
                self._deliver(rid, out)

        self._wire[rid] = wire
        self._conn.open_stream(wire, sink)
        try:
            self._conn.send(Kind.GENERATE, wire, request_body(request))
        except ReplicaFailed:
            self._conn.close_stream(wire)
            self._wire.pop(rid, None)
            raise

    def _abort(self, request_id: str) -> None:
        wire = self._wire.get(request_id)
        if wire is not None:
            try:
                self._conn.send(Kind.ABORT, wire)  # its stream ends with its last event
            except ReplicaFailed:
                self._conn.close_stream(wire)
                del self._wire[request_id]

    async def _engine_chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        reply = await self._conn.call(Kind.CHAT_PROMPT, {"messages": messages}, timeout=30.0,
                                      what="rendering a chat prompt",
                                      kill_on_timeout=False)  # fmt: skip
        return str(reply.body["text"])

    async def ping(self, timeout_s: float) -> None:
        reply = await self._conn.call(Kind.PING, timeout=timeout_s,
                                      what="answering a health check",
                                      kill_on_timeout=False)  # fmt: skip
        self._update_stats(reply.body)

    async def wait_exit(self) -> str:
        return await self._conn.wait_exit()

    async def kill(self) -> None:
        await self._conn.kill()

    async def unload(self) -> None:
        self._alive = False
        await self._conn.close(10.0)
