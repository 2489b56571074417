"""Replica interface, and the in-process replica (the runtime on a dedicated thread)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from inferd.core.errors import InferdError, ModelExecutionError, ModelLoadError, ReplicaFailed
from inferd.core.spec import TensorSpec
from inferd.runtimes.base import Runtime


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a replica reports once its model is loaded: signature (full shapes) and platform."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str


@dataclass(slots=True)
class ReplicaResult:
    """Outputs of one execution with the time it waited and the time it computed (ns)."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
    compute_ns: int


class Replica(Protocol):
    """One running copy of a model version; runs one execution at a time."""

    label: str

    @property
    def alive(self) -> bool: ...

    async def load(self) -> Loaded: ...

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None,
        parameters: dict[str, Any] | None,
    ) -> ReplicaResult: ...

    async def ping(self, timeout_s: float) -> None: ...

    async def wait_exit(self) -> str:
        """Return (with a reason) when the replica died on its own; never for threads."""
        ...

    async def unload(self) -> None: ...


class InProcessReplica:
    """Runs a `Runtime` on its own single thread: lowest latency, no isolation.

    A hung model cannot be killed: after `execution_timeout_s` the call fails with
    ReplicaFailed and the replica is replaced (the stuck thread is abandoned).
    """

    def __init__(self, runtime: Runtime, label: str, execution_timeout_s: float = 60.0) -> None:
        self.runtime = runtime
        self.label = label
        self._timeout = execution_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replica-{label}")
        self._alive = True

    @property
    def alive(self) -> bool:
        return self._alive

    async def load(self) -> Loaded:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._load)
        except InferdError:
            raise
        except Exception as e:  # a framework's own error: keep its message, not its trace
            raise ModelLoadError(f"{type(e).__name__}: {e}") from e

    def _load(self) -> Loaded:
        self.runtime.load()
        inputs, outputs = self.runtime.signature()
        return Loaded(inputs, outputs, self.runtime.platform)

    #: Called on the event loop with (done, total) when the model reports progress.
    on_progress: Callable[[int, int], None] | None = None

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None,
        parameters: dict[str, Any] | None,
    ) -> ReplicaResult:
        submitted = time.perf_counter_ns()
        loop = asyncio.get_running_loop()
        if self.on_progress is not None and self.runtime.progress_hook is None:
            report = self.on_progress

            def hook(done: int, total: int) -> None:  # runs on the runtime's thread
                loop.call_soon_threadsafe(report, done, total)

            self.runtime.progress_hook = hook
        fut = loop.run_in_executor(self._pool, self._infer, inputs, outputs, parameters, submitted)
        try:
            async with asyncio.timeout(self._timeout):
                return await fut
        except TimeoutError:
            self._alive = False
            raise ReplicaFailed(
                f"replica {self.label} did not finish within {self._timeout:g} s; replacing it"
            ) from None

    def _infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None,
        parameters: dict[str, Any] | None,
        submitted: int,
    ) -> ReplicaResult:
        start = time.perf_counter_ns()
        try:
            out = self.runtime.infer(inputs, outputs, parameters)
        except InferdError:
            raise
        except Exception as e:
            raise ModelExecutionError(f"model raised {type(e).__name__}: {e}") from e
        return ReplicaResult(out, start - submitted, time.perf_counter_ns() - start)

    async def ping(self, timeout_s: float) -> None:
        if not self._alive:
            raise ReplicaFailed(f"replica {self.label} is not healthy")

    async def wait_exit(self) -> str:
        await asyncio.Event().wait()  # a thread replica never dies on its own
        return ""

    async def unload(self) -> None:
        self._alive = False
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._pool, self.runtime.unload), 5)
        except TimeoutError:
            pass
        finally:
            self._pool.shutdown(wait=False)
