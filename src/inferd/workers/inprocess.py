"""In-process replica: the runtime runs on a dedicated thread, never on the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from inferd.core.errors import InferdError, ModelExecutionError, ModelLoadError
from inferd.core.spec import TensorSpec
from inferd.runtimes.base import Runtime

Signature = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]


@dataclass(slots=True)
class ReplicaResult:
    """Outputs of one execution with the time it waited and the time it computed (ns)."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
    compute_ns: int


class Replica(Protocol):
    """One running copy of a model version."""

    async def load(self) -> Signature: ...

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None,
        parameters: dict[str, Any] | None,
    ) -> ReplicaResult: ...

    async def unload(self) -> None: ...


class InProcessReplica:
    """Runs a `Runtime` on its own single thread: calls are serialised per replica."""

    def __init__(self, runtime: Runtime, label: str) -> None:
        self.runtime = runtime
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replica-{label}")

    async def load(self) -> Signature:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._load)
        except InferdError:
            raise
        except Exception as e:  # a framework's own error: keep its message, not its trace
            raise ModelLoadError(f"{type(e).__name__}: {e}") from e

    def _load(self) -> Signature:
        self.runtime.load()
        return self.runtime.signature()

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None,
        parameters: dict[str, Any] | None,
    ) -> ReplicaResult:
        submitted = time.perf_counter_ns()
        loop = asyncio.get_running_loop()
        result: ReplicaResult = await loop.run_in_executor(
            self._pool, self._infer, inputs, outputs, parameters, submitted
        )
        return result

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

    async def unload(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self.runtime.unload)
        finally:
            self._pool.shutdown(wait=False)
