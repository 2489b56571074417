"""A generative replica: the LLM engine on its own thread, stepping while it has work.

Requests come in from the event loop through an inbox; the engine thread admits them between
steps (continuous batching), and every step's events are handed back to the event loop, to one
queue per request. Cancelling a request's stream (its client went away) aborts it, which frees
its slot at the next step. It also implements the `Replica` protocol, so V2 `infer` (text in,
text out) works on the same model through the ordinary scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferd.core.errors import InferdError, InvalidInput, ModelLoadError, ReplicaFailed
from inferd.core.generate import GenerateRequest, TokenEvent, parse_sampling
from inferd.core.spec import ModelSpec, TensorSpec
from inferd.workers.inprocess import Loaded, ReplicaResult
from inferd.workers.llm_backend import ChatTemplate

log = logging.getLogger("inferd.generation")

SIGNATURE = (
    (TensorSpec("text", "BYTES", (-1,)),),
    (TensorSpec("text", "BYTES", (-1,)),),
)
_STOP = object()
_LOAD_LOCK = threading.Lock()


def engine_factory(spec: ModelSpec, path: Path) -> Callable[[], Any]:
    """Builds the LLM engine from `model.yaml` parameters (imports torch on the engine thread)."""
    p = spec.parameters

    def make() -> Any:
        from inferd.llm.engine import LLMEngine

        # transformers' loading patches process-wide state (meta-device init): two models
        # loading at once on two threads corrupt each other, so loads take turns
        with _LOAD_LOCK:
            return LLMEngine(
                path,
                max_num_seqs=int(p.get("max_num_seqs", 16)),
                max_model_len=int(p["max_model_len"]) if "max_model_len" in p else None,
                dtype=str(p.get("dtype", "float32")),
                device=str(p.get("device", "cpu")),
            )

    return make


class GeneratorBase(ABC):
    """What every generative replica shares — per-request event queues, the async stream API,
    `abort`, the chat template, and V2 `infer` (text in, text out) on top of them: inferd's
    engine as an `LLMBackend`. Subclasses say how a request reaches the engine (`_submit`,
    `_abort`) and set `_template` once loaded (else `_engine_chat_prompt` renders)."""

    max_model_len: int | None = None

    def __init__(self, label: str) -> None:
        self.label = label
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = {}
        self._alive = False
        self._template: ChatTemplate | None = None

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def inflight(self) -> int:
        return len(self._streams)

    @property
    @abstractmethod
    def stats(self) -> Any:
        """The engine's counters (running, waiting, steps, generated_tokens, kv_cache_usage)."""

    @abstractmethod
    def _submit(self, request: GenerateRequest) -> None:
        """Hand a request to the engine."""

    @abstractmethod
    def _abort(self, request_id: str) -> None:
        """Ask the engine to drop a request (its slot frees at the next step)."""

    async def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The prompt the tokenizer's chat template makes of `messages`, rendered in this
        process (off the event loop: a template is the model's, it may be slow)."""
        if not isinstance(messages, list):
            raise InvalidInput("messages: must be a list")
        if self._template is not None:
            return await asyncio.to_thread(self._template.render, messages)
        return await self._engine_chat_prompt(messages)

    async def _engine_chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The engine's rendering, where this process holds no template."""
        raise InvalidInput("messages: this model has no chat template")

    async def abort(self, request_id: str) -> None:
        """Drop a running request: its stream ends with an "abort" event."""
        if request_id in self._streams:
            self._abort(request_id)

    def _deliver(self, request_id: str, item: Any) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, q = target
            loop.call_soon_threadsafe(q.put_nowait, item)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        """Events of one request as the engine produces them; closing the iterator early
        (the client went away) aborts the request."""
        if not self.alive:
            raise ReplicaFailed(f"generator {self.label} is not running")
        q: asyncio.Queue[Any] = asyncio.Queue()
        rid = request.request_id
        if rid in self._streams:
            raise InvalidInput(f"request id '{rid[:64]}' is already running")
        self._streams[rid] = (asyncio.get_running_loop(), q)
        finished = False
        try:
            self._submit(request)
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(rid, None)
            if not finished:
                self._abort(rid)

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None,
        parameters: dict[str, Any] | None,
    ) -> ReplicaResult:
        """V2 infer: each text of the batch is a request; they run in the same engine batch."""
        start = time.perf_counter_ns()
        texts = inputs["text"].reshape(-1)
        params = parse_sampling(parameters or {})

        async def one(raw: Any) -> str:
            prompt = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            req = GenerateRequest(uuid.uuid4().hex, prompt=prompt, params=params)
            parts = [ev.text async for ev in self.generate(req)]
            return "".join(parts)

        results = await asyncio.gather(*(one(t) for t in texts))
        out = np.array([r.encode() for r in results], dtype=object)
        return ReplicaResult({"text": out}, 0, time.perf_counter_ns() - start)


class ThreadGenerator(GeneratorBase):
    """Continuous-batching generation on a dedicated thread of the server process."""

    def __init__(self, make_engine: Callable[[], Any], label: str) -> None:
        super().__init__(label)
        self._make = make_engine
        self.engine: Any = None
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    async def load(self) -> Loaded:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            try:
                self.engine = self._make()
            except BaseException as e:  # report any load failure with its reason
                msg = e.message if isinstance(e, InferdError) else f"{type(e).__name__}: {e}"
                loop.call_soon_threadsafe(_settle, ready, ModelLoadError(msg))
                return
            loop.call_soon_threadsafe(_settle, ready, None)
            run_engine(self.engine, self._inbox, self._wake, self._deliver, self.label)

        self._thread = threading.Thread(target=run, name=f"llm-{self.label}", daemon=True)
        self._thread.start()
        await ready
        self.max_model_len = getattr(self.engine, "max_model_len", None)
        self._template = ChatTemplate(getattr(self.engine, "tokenizer", None))
        self._alive = True
        return Loaded(*SIGNATURE, "transformers_llm")

    async def unload(self) -> None:
        self._alive = False
        self._inbox.put(_STOP)
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        for loop, q in list(self._streams.values()):
            loop.call_soon_threadsafe(q.put_nowait, ReplicaFailed("the model was unloaded"))
        self._streams.clear()

    async def ping(self, timeout_s: float) -> None:
        if not self._alive or self._thread is None or not self._thread.is_alive():
            raise ReplicaFailed(f"generator {self.label} is not running")

    async def wait_exit(self) -> str:
        await asyncio.Event().wait()  # a thread never exits on its own
        return ""

    def _submit(self, request: GenerateRequest) -> None:
        self._inbox.put(("add", request))
        self._wake.set()

    def _abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wake.set()

    @property
    def stats(self) -> Any:
        return self.engine.stats if self.engine is not None else None


def run_engine(
    engine: Any,
    inbox: queue.SimpleQueue[Any],
    wake: threading.Event,
    deliver: Callable[[str, Any], None],
    label: str,
) -> None:
    """Step `engine` while it has work, admitting requests from `inbox` between steps (the
    continuous-batching loop of a generator thread or worker process). `deliver(request_id,
    item)` receives each TokenEvent, or an exception for a request that could not run."""
    running: set[str] = set()
    while True:
        if not engine.has_work():
            wake.wait(1.0)
        wake.clear()
        while True:
            try:
                cmd = inbox.get_nowait()
            except queue.Empty:
                break
            if cmd is _STOP:
                return
            op, arg = cmd
            if op == "add":
                try:
                    engine.add_request(arg)
                    running.add(arg.request_id)
                except Exception as e:
                    err = e if isinstance(e, InferdError) else InvalidInput(str(e))
                    deliver(arg.request_id, err)
            elif op == "abort":
                engine.abort(arg)
        if not engine.has_work():
            continue
        try:
            events = engine.step()
        except Exception as e:  # the engine should not raise; never let the loop die
            log.exception("generator %s: step failed", label)
            reason = f"generation failed: {type(e).__name__}: {e}"
            for rid in list(running):
                deliver(rid, ReplicaFailed(reason))
                engine.abort(rid)
            running.clear()
            continue
        for event in events:
            if event.finished:
                running.discard(event.request_id)
            deliver(event.request_id, event)


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
