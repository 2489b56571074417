"""Process replica: the model runs in a worker process, reached over its `WorkerConnection`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferd.core import errors
from inferd.core.errors import InferdError, ModelLoadError, ReplicaFailed
from inferd.core.spec import ModelSpec, TensorSpec, spec_to_config
from inferd.workers.connection import (
    WorkerConnection,
    exit_reason,
    kill_worker,
    spawn_worker,
    watch_liveness,
)
from inferd.workers.inprocess import Loaded, ReplicaResult
from inferd.workers.isolation import WorkerIsolation
from inferd.workers.protocol import Buffer, Kind, discard_shm, pack_tensors, unpack_tensors

__all__ = ["ProcessReplica", "exit_reason", "kill_worker", "spawn_worker", "watch_liveness"]


def _specs(raw: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(t["name"], t["datatype"], tuple(t["shape"]), bool(t.get("optional")))
        for t in raw
    )


class ProcessReplica:
    """One worker process. Typed frames and raw buffers, no pickle. Requests are multiplexed on
    the connection; the worker runs one at a time, in order, and each request's
    `execution_timeout_s` starts when the one before it was answered."""

    def __init__(
        self,
        spec: ModelSpec,
        version: str,
        path: Path,
        runtime: str,
        label: str,
        load_timeout_s: float = 300.0,
        index: int = 0,
        isolation: WorkerIsolation | None = None,
    ) -> None:
        self.spec = spec
        self.isolation = isolation or WorkerIsolation()
        self.index = index
        #: Called with (done, total) when the model reports progress during a request.
        self.on_progress: Callable[[int, int], None] | None = None
        self.version = version
        self.path = path
        self.runtime = runtime
        self.label = label
        self._load_timeout = load_timeout_s
        self._conn = WorkerConnection(spec, index, path, self.isolation, label, "replica")

    @property
    def pid(self) -> int | None:
        return self._conn.pid

    @property
    def alive(self) -> bool:
        return self._conn.alive

    async def load(self) -> Loaded:
        await self._conn.start()
        body = {
            "name": self.spec.name,
            "config": spec_to_config(self.spec),
            "version": self.version,
            "path": str(self.path),
            "runtime": self.runtime,
        }
        try:
            reply = await self._call(Kind.LOAD, body, (), self._load_timeout, "loading")
        except ReplicaFailed as e:
            raise ModelLoadError(e.message) from None
        except InferdError:
            await self.kill()
            raise
        except asyncio.CancelledError:  # the server stops while loading: leave no worker behind
            await self.kill()
            raise
        self.isolation.note(reply.body.get("notes") or ())
        over = self._conn.over_memory()
        if over is not None:
            await self.kill()
            raise ModelLoadError(f"out of memory: {over} after loading")
        b = reply.body
        return Loaded(_specs(b["inputs"]), _specs(b["outputs"]), b["platform"])

    def _progress(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    async def _call(
        self, kind: Kind, body: dict[str, Any], buffers: Sequence[Buffer], timeout: float, what: str
    ) -> Any:
        # a replica that is not running: `send` raises ReplicaFailed ("... is not running")
        return await self._conn.call(kind, body, buffers, timeout=timeout, what=what, serial=True,
                                     on_progress=self._progress)  # fmt: skip

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None,
        parameters: dict[str, Any] | None,
    ) -> ReplicaResult:
        submitted = time.perf_counter_ns()
        buffers: list[Buffer] = []
        shm = self._conn.shm
        metas = pack_tensors(inputs, shm, buffers)
        body = {"inputs": metas, "outputs": outputs, "parameters": parameters}
        try:
            reply = await self._call(
                Kind.INFER, body, buffers, self.spec.execution_timeout_s, "running a request"
            )
        except ReplicaFailed:
            discard_shm(metas, shm)
            raise
        try:
            result = unpack_tensors(reply.body["outputs"], reply.buffers, shm)
        except (KeyError, TypeError, ValueError, OSError) as e:
            discard_shm(reply.body.get("outputs") or [], shm)
            raise errors.ModelExecutionError(f"the worker sent unreadable outputs: {e}") from None
        if self.spec.resources.memory_bytes is not None:
            over = self._conn.over_memory()
            if over is not None:  # this answer stands; the replica is replaced after it
                self._conn.fail(over)
        compute = int(reply.body.get("compute_ns", 0))
        total = time.perf_counter_ns() - submitted
        return ReplicaResult(result, max(total - compute, 0), compute)

    async def ping(self, timeout_s: float) -> None:
        await self._call(Kind.PING, {}, (), timeout_s, "answering a health check")
        over = self._conn.over_memory()
        if over is not None:
            self._conn.died_because(over)
            await self.kill()
            raise ReplicaFailed(f"replica {self.label}: {over}")

    async def wait_exit(self) -> str:
        return await self._conn.wait_exit()

    async def kill(self) -> None:
        await self._conn.kill()

    async def unload(self) -> None:
        """Ask the worker to unload and exit; kill it if it does not within 5 s."""
        await self._conn.close(5.0, serial=True)
