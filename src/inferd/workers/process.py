"""Process replica: the model runs in a worker process, reached over a Unix socket pair."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from inferd.core import errors
from inferd.core.errors import InferdError, ModelLoadError, ReplicaFailed
from inferd.core.spec import ModelSpec, TensorSpec, spec_to_config
from inferd.workers import limits
from inferd.workers.inprocess import Loaded, ReplicaResult
from inferd.workers.isolation import WorkerIsolation
from inferd.workers.protocol import (
    Buffer,
    discard_shm,
    encode_frame,
    pack_tensors,
    read_frame,
    unpack_tensors,
)

log = logging.getLogger("inferd.workers")

#: Errors a worker may report by name; anything else becomes ModelExecutionError.
_KINDS: dict[str, type[InferdError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, InferdError) and cls is not errors.ModelNotFound
}


async def kill_worker(proc: asyncio.subprocess.Process | None) -> None:
    """SIGKILL a worker process (if it still runs) and reap it."""
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@dataclass
class Worker:
    """A started worker process, the server's end of its socket, its shared-memory folder."""

    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    shm: Path | None


async def spawn_worker(
    spec: ModelSpec, index: int, version_path: Path, isolation: WorkerIsolation
) -> Worker:
    """Start `python -m inferd.workers.worker_main` on one end of a socket pair, with the
    version's resource limits (CPU pinning, thread pools, GPU visibility) and its isolation
    (user, environment, scratch dir, network): the worker applies the plan to itself before it
    reads the first frame. The model folder (the version folder's parent: `model.py` may live
    there) is what it may read."""
    cpus = limits.cpu_set(spec.resources, index)
    sandbox = isolation.prepare(Path(version_path).parent, spec.network, spec.resources, cpus)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "inferd.workers.worker_main", str(child.fileno()),
            orjson.dumps(sandbox.plan).decode(),
            pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL,
            env=sandbox.env, cwd=sandbox.scratch,
        )  # fmt: skip
    except BaseException:
        parent.close()
        isolation.discard(sandbox)
        raise
    finally:
        child.close()
    isolation.started(proc, sandbox)
    if cpus is not None:
        limits.pin(proc.pid, cpus)
    reader, writer = await asyncio.open_unix_connection(sock=parent)
    return Worker(proc, reader, writer, sandbox.shm)


#: Process states in which a worker cannot run at all: "T" stopped by a signal (SIGSTOP,
#: SIGTSTP, ...), "t" held stopped by a tracer (a debugger).
STOPPED_STATES = frozenset("Tt")


async def stopped_too_long(proc: asyncio.subprocess.Process, timeout_s: float) -> str | None:
    """Wait until the kernel has reported `proc` stopped for `timeout_s` in a row, and say so;
    None once it exits (or where the state cannot be read: no /proc).

    Liveness is read from the kernel, not asked of the worker: a model call may hold the GIL in
    a C extension for seconds, which would starve a heartbeat thread inside the worker and get a
    healthy worker killed, while the process state stays R or S however busy the model is. So a
    slow model that still runs is left to `execution_timeout_s`; only a worker that cannot run
    at all is cut off early. Sampled a few times per timeout, off the request path."""
    period = max(timeout_s / 5, 0.05)
    since: float | None = None
    while proc.returncode is None:
        await asyncio.sleep(period)
        state = limits.process_state(proc.pid)
        if state is None:
            return None
        if state not in STOPPED_STATES:
            since = None
            continue
        now = time.monotonic()
        if since is None:
            since = now
        elif now - since >= timeout_s:
            how = "by a signal" if state == "T" else "by a debugger"
            return (
                f"stopped responding (worker process {proc.pid} was stopped {how} for over "
                f"{timeout_s:g} s, its liveness_timeout_s); it was killed"
            )
    return None


def watch_liveness(
    proc: asyncio.subprocess.Process, timeout_s: float, label: str, on_hung: Callable[[str], None]
) -> asyncio.Task[None]:
    """A task that SIGKILLs `proc` once it stayed stopped for `timeout_s`, after telling
    `on_hung` why: the owner's reader then sees the socket close and reports that reason."""

    async def watch() -> None:
        reason = await stopped_too_long(proc, timeout_s)
        if reason is not None and proc.returncode is None:
            log.warning("replica %s %s", label, reason)
            on_hung(reason)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    return asyncio.create_task(watch(), name=f"{label}-liveness")


def exit_reason(code: int | None) -> str:
    if code is None:
        return "connection lost"
    if code < 0:
        try:
            return f"worker killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with code {code}"


def _specs(raw: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(t["name"], t["datatype"], tuple(t["shape"]), bool(t.get("optional")))
        for t in raw
    )


class ProcessReplica:
    """One worker process. One execution at a time; typed frames and raw buffers, no pickle."""

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
        self._death: str | None = None
        self.version = version
        self.path = path
        self.runtime = runtime
        self.label = label
        self._load_timeout = load_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._shm: Path | None = None
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self._liveness: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and not self._closing

    async def load(self) -> Loaded:
        worker = await spawn_worker(self.spec, self.index, self.path, self.isolation)
        self._proc, self._reader, self._writer = worker.proc, worker.reader, worker.writer
        self._shm = worker.shm
        self._liveness = watch_liveness(
            self._proc, self.spec.liveness_timeout_s, self.label, self._hung
        )
        header = {
            "op": "load",
            "name": self.spec.name,
            "config": spec_to_config(self.spec),
            "version": self.version,
            "path": str(self.path),
            "runtime": self.runtime,
        }
        try:
            reply, _ = await self._call(header, [], self._load_timeout, "loading")
        except ReplicaFailed as e:
            raise ModelLoadError(e.message) from None
        except InferdError:
            await self.kill()
            raise
        self.isolation.note(reply.get("notes") or ())
        over = self._over_memory()
        if over is not None:
            await self.kill()
            raise ModelLoadError(f"out of memory: {over} after loading")
        return Loaded(_specs(reply["inputs"]), _specs(reply["outputs"]), reply["platform"])

    def _hung(self, reason: str) -> None:
        self._death = reason

    def _over_memory(self) -> str | None:
        """Why the worker is over its memory limit, or None (also None without a limit)."""
        limit = self.spec.resources.memory_bytes
        if limit is None or self._proc is None:
            return None
        rss = limits.resident_bytes(self._proc.pid)
        if rss is None or rss <= limit:
            return None
        return f"the worker uses {rss >> 20} MiB, over its memory limit of {limit >> 20} MiB"

    def _check_memory(self) -> None:
        """Over the limit: kill the worker (it is replaced) and say why when it is reported."""
        over = self._over_memory()
        if over is not None:
            self._death = over
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def _call(
        self, header: dict[str, Any], buffers: list[Buffer], timeout: float, what: str
    ) -> tuple[dict[str, Any], list[bytes]]:
        assert self._reader is not None and self._writer is not None
        await self._lock.acquire()
        handed_off = False
        try:
            if not self.alive:
                raise ReplicaFailed(f"replica {self.label} is not running")
            self._writer.writelines(encode_frame(header, buffers))
            try:
                async with asyncio.timeout(timeout):
                    await self._writer.drain()
                    reply, out = await read_frame(self._reader)
                    while reply.get("op") == "progress":  # sent while a long request runs
                        if self.on_progress is not None:
                            self.on_progress(int(reply["done"]), int(reply["total"]))
                        reply, out = await read_frame(self._reader)
            except TimeoutError:
                await self.kill()
                raise ReplicaFailed(
                    f"replica {self.label} did not answer within {timeout:g} s while {what}; "
                    "it was killed and is being replaced"
                ) from None
            except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
                reason = await self._exit_reason()
                raise ReplicaFailed(f"replica {self.label} failed while {what}: {reason}") from None
            except asyncio.CancelledError:
                # The caller gave up (deadline, disconnect) after the request was sent: read and
                # drop the reply in the background so the next frame pairs with its request.
                handed_off = True
                task = asyncio.create_task(self._discard_reply(timeout))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                raise
        finally:
            if not handed_off:
                self._lock.release()
        if not reply.get("ok"):
            cls = _KINDS.get(reply.get("kind", ""), errors.ModelExecutionError)
            raise cls(str(reply.get("message", "worker error")))
        return reply, out

    async def _discard_reply(self, timeout: float) -> None:
        assert self._reader is not None
        try:
            async with asyncio.timeout(timeout):
                reply, _ = await read_frame(self._reader)
                while reply.get("op") == "progress":
                    reply, _ = await read_frame(self._reader)
            discard_shm(reply.get("outputs") or [], self._shm)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            await self.kill()
        finally:
            self._lock.release()

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None,
        parameters: dict[str, Any] | None,
    ) -> ReplicaResult:
        submitted = time.perf_counter_ns()
        buffers: list[Buffer] = []
        metas = pack_tensors(inputs, self._shm, buffers)
        header = {"op": "infer", "inputs": metas, "outputs": outputs, "parameters": parameters}
        try:
            reply, out = await self._call(
                header, buffers, self.spec.execution_timeout_s, "running a request"
            )
        except ReplicaFailed:
            discard_shm(metas, self._shm)
            raise
        try:
            result = unpack_tensors(reply["outputs"], out, self._shm)
        except (KeyError, TypeError, ValueError, OSError) as e:
            discard_shm(reply.get("outputs") or [], self._shm)
            raise errors.ModelExecutionError(f"the worker sent unreadable outputs: {e}") from None
        if self.spec.resources.memory_bytes is not None:
            self._check_memory()  # this answer stands; the replica is replaced after it
        compute = int(reply.get("compute_ns", 0))
        total = time.perf_counter_ns() - submitted
        return ReplicaResult(result, max(total - compute, 0), compute)

    async def ping(self, timeout_s: float) -> None:
        await self._call({"op": "ping"}, [], timeout_s, "answering a health check")
        over = self._over_memory()
        if over is not None:
            self._death = over
            await self.kill()
            raise ReplicaFailed(f"replica {self.label}: {over}")

    async def _exit_reason(self) -> str:
        if self._proc is None:
            return "not started"
        if self._death is not None:
            return self._death
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 2)
        return exit_reason(self._proc.returncode)

    async def wait_exit(self) -> str:
        assert self._proc is not None
        await self._proc.wait()
        return await self._exit_reason()

    async def kill(self) -> None:
        await kill_worker(self._proc)
        self._close_socket()

    def _close_socket(self) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._proc is not None and self._proc.returncode is not None:
            self.isolation.release(self._proc.pid)  # its scratch and shm folders

    async def unload(self) -> None:
        """Ask the worker to unload and exit; kill it if it does not within 5 s."""
        if self._proc is None:
            return
        if self.alive:
            with contextlib.suppress(InferdError):
                await self._call({"op": "unload"}, [], 5.0, "unloading")
        self._closing = True
        try:
            await asyncio.wait_for(self._proc.wait(), 5)
        except TimeoutError:
            await self.kill()
        self._close_socket()
