"""The server's end of one worker process: its spawn, the one multiplexed connection to it, its
liveness, its death and the reason for it. `ProcessReplica` (V2 infer) and `ProcessGenerator`
(LLM token streams) are both built on `WorkerConnection`.

Every frame carries an id the connection chose (`protocol.py`): a call (`call`) waits for the
reply on its id, a generation (`open_stream`) receives every frame on its id, so any number of
requests are in flight on one socket. What the worker sends is parsed where it arrives (the
socket's `asyncio.Protocol`) and routed there: a reply completes its call's future with no task
in between (bench/RESULTS.md, "Worker round trip"). When the
worker dies, every call and stream still open fails with the reason: the signal that killed it,
its memory limit, `liveness_timeout_s`, or a call that got no answer in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from inferd.core.errors import InferdError, ReplicaFailed
from inferd.core.spec import ModelSpec
from inferd.workers import limits
from inferd.workers.isolation import WorkerIsolation
from inferd.workers.protocol import (
    REPLIES,
    Buffer,
    Frame,
    FrameParser,
    Kind,
    discard_shm,
    encode_frame,
    error_of,
)

log = logging.getLogger("inferd.workers")

#: What a stream receives: each frame on its id, or the error that ended the connection.
Sink = Callable[[Frame | InferdError], None]


async def kill_worker(proc: asyncio.subprocess.Process | None) -> None:
    """SIGKILL a worker process (if it still runs) and reap it."""
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class FrameStream(asyncio.Protocol):
    """The server's end of a worker's socket: each frame is parsed as its last byte arrives and
    handed to `on_frame` right there; `on_lost` is called once when the socket closes (also
    after a frame that is not one: the connection is then cut). Writes wait in `drain` while
    the socket's buffer is full."""

    def __init__(self, on_frame: Callable[[Frame], None], on_lost: Callable[[], None]) -> None:
        self._parser = FrameParser()
        self._on_frame, self._on_lost = on_frame, on_lost
        self.transport: asyncio.Transport | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for frame in self._parser.feed(data):
            self._on_frame(frame)
        if self._parser.error is not None and self.transport is not None:
            log.warning("a worker sent a frame that is not one (%s): its connection is cut",
                        self._parser.error)  # fmt: skip
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._wake()
        self._on_lost()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def drain(self) -> None:
        """Return once the socket takes more (at once unless its buffer is full)."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the worker's connection is closed")
        if self._paused:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained


@dataclass
class Worker:
    """A started worker process, the server's end of its socket, its shared-memory folder."""

    proc: asyncio.subprocess.Process
    stream: FrameStream
    shm: Path | None


async def spawn_worker(
    spec: ModelSpec,
    index: int,
    version_path: Path,
    isolation: WorkerIsolation,
    on_frame: Callable[[Frame], None],
    on_lost: Callable[[], None],
) -> Worker:
    """Start `python -m inferd.workers.worker_main` on one end of a socket pair, with the
    version's resource limits (CPU pinning, thread pools, GPU visibility) and its isolation
    (user, environment, scratch dir, network): the worker applies the plan to itself before it
    reads the first frame. The model folder (the version folder's parent: `model.py` may live
    there) is what it may read. What the worker sends goes to `on_frame`; `on_lost` is called
    once its socket closed."""
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
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_unix_connection(
        lambda: FrameStream(on_frame, on_lost), sock=parent
    )
    return Worker(proc, stream, sandbox.shm)


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


@dataclass(slots=True)
class _Call:
    reply: asyncio.Future[Frame]
    what: str
    on_progress: Callable[[int, int], None] | None


class WorkerConnection:
    """One worker process and the multiplexed connection to it. `noun` names it in errors
    ("replica", "generator")."""

    def __init__(self, spec: ModelSpec, index: int, path: Path, isolation: WorkerIsolation,
                 label: str, noun: str = "replica") -> None:  # fmt: skip
        self.spec, self.index, self.path, self.isolation = spec, index, path, isolation
        self.label, self.noun = label, noun
        self.proc: asyncio.subprocess.Process | None = None
        #: The worker's shared-memory folder (large tensors), None where there is none.
        self.shm: Path | None = None
        #: Set once the owner asked the worker to go: its exit is then not a failure.
        self.closing = False
        #: Why the worker died, once it did.
        self.reason = ""
        self._stream: FrameStream | None = None
        self._calls: dict[str, _Call] = {}
        self._streams: dict[str, Sink] = {}
        self._ids = itertools.count(1)
        self._tail: asyncio.Future[Frame] | None = None
        self._death: str | None = None
        self._dead = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Set once the socket closed; `_report` then tells every waiter why (`_died`).
        self._socket_closed = asyncio.Event()
        self._report: asyncio.Task[None] | None = None
        self._liveness: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return (self.proc is not None and self.proc.returncode is None and not self.closing
                and not self._dead.is_set())  # fmt: skip

    async def start(self) -> None:
        """Spawn the worker and start reading what it sends, and watching its liveness."""
        worker = await spawn_worker(
            self.spec, self.index, self.path, self.isolation, self._route, self._lost
        )
        self.proc, self.shm, self._stream = worker.proc, worker.shm, worker.stream
        self._liveness = watch_liveness(
            worker.proc, self.spec.liveness_timeout_s, self.label, self.died_because
        )
        self._spawn(self._watch_exit(worker.proc))

    def died_because(self, reason: str) -> None:
        """Report `reason` as the cause of the worker's death (it is being killed)."""
        self._death = reason

    def fail(self, reason: str) -> None:
        """Kill the worker now, reporting `reason` as why (it is replaced)."""
        self._death = reason
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def over_memory(self) -> str | None:
        """Why the worker is over its memory limit, or None (also None without a limit)."""
        limit = self.spec.resources.memory_bytes
        if limit is None or self.proc is None:
            return None
        rss = limits.resident_bytes(self.proc.pid)
        if rss is None or rss <= limit:
            return None
        return f"the worker uses {rss >> 20} MiB, over its memory limit of {limit >> 20} MiB"

    # ---- sending -------------------------------------------------------------------------

    def next_id(self) -> str:
        return str(next(self._ids))

    def send(self, kind: Kind, rid: str, body: dict[str, Any] | None = None,
             buffers: Sequence[Buffer] = ()) -> None:  # fmt: skip
        if self._stream is None or self._stream.transport is None or not self.alive:
            raise ReplicaFailed(f"{self.noun} {self.label} is not running")
        self._stream.transport.writelines(encode_frame(kind, rid, body, buffers))

    async def call(
        self,
        kind: Kind,
        body: dict[str, Any] | None = None,
        buffers: Sequence[Buffer] = (),
        *,
        timeout: float,
        what: str,
        serial: bool = False,
        kill_on_timeout: bool = True,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Frame:
        """Send a frame on a new id and return the worker's reply (an ERROR reply raises its
        error). `serial`: the worker runs these one after another, so this call's `timeout`
        starts once the previous serial call was answered. Past `timeout` the worker is
        killed (`kill_on_timeout`) or the call alone gives up. A caller that is cancelled
        leaves the answer to be read and dropped (its shared-memory files removed)."""
        rid = self.next_id()
        reply: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._calls[rid] = _Call(reply, what, on_progress)
        try:
            self.send(kind, rid, body, buffers)
        except ReplicaFailed:
            del self._calls[rid]
            raise
        before = None
        if serial:
            before, self._tail = self._tail, reply
        loop = asyncio.get_running_loop()
        try:
            if before is not None and not before.done():
                await asyncio.wait([before])  # bounded: that call has its own deadline
            # a timer rather than `asyncio.timeout` + `shield`: they cost about 14 µs of a
            # 90 µs round trip (bench/RESULTS.md, "Worker round trip")
            timer = loop.call_later(timeout, _expire, reply)
            try:
                stream = self._stream
                assert stream is not None and stream.transport is not None
                if stream.transport.get_write_buffer_size():  # a large frame not yet written
                    async with asyncio.timeout(timeout):
                        await stream.drain()
                frame = await reply
            finally:
                timer.cancel()
        except TimeoutError:
            self._calls.pop(rid, None)
            if not kill_on_timeout:
                raise ReplicaFailed(
                    f"{self.noun} {self.label} did not answer within {timeout:g} s while {what}"
                ) from None
            await self.kill()
            raise ReplicaFailed(
                f"{self.noun} {self.label} did not answer within {timeout:g} s while {what}; "
                "it was killed and is being replaced"
            ) from None
        except (ConnectionError, OSError):  # the socket broke while sending
            self._calls.pop(rid, None)
            raise ReplicaFailed(
                f"{self.noun} {self.label} failed while {what}: {await self._reason()}"
            ) from None
        except asyncio.CancelledError:
            if reply.done() and not reply.cancelled():  # the answer came as the caller left
                if reply.exception() is None:
                    discard_shm(reply.result().body.get("outputs") or [], self.shm)
            else:  # the worker still runs it: its answer is read and dropped when it comes
                late: asyncio.Future[Frame] = loop.create_future()
                self._calls[rid] = _Call(late, what, None)
                if self._tail is reply:
                    self._tail = late
                self._spawn(self._drop_reply(rid, late, timeout))
            raise
        if frame.kind is Kind.ERROR:
            raise error_of(frame.body)
        return frame

    async def _drop_reply(self, rid: str, reply: asyncio.Future[Frame], timeout: float) -> None:
        """The answer to a call whose caller gave up: read it and drop it (within `timeout`,
        else the worker is killed: it is stuck)."""
        try:
            async with asyncio.timeout(timeout):
                frame = await reply
            discard_shm(frame.body.get("outputs") or [], self.shm)
        except TimeoutError:
            self._calls.pop(rid, None)
            await self.kill()
        except InferdError:
            pass  # the worker died meanwhile

    def open_stream(self, rid: str, sink: Sink) -> None:
        """Route every frame the worker sends on `rid` to `sink` (until `close_stream`)."""
        self._streams[rid] = sink

    def close_stream(self, rid: str) -> None:
        self._streams.pop(rid, None)

    # ---- receiving -----------------------------------------------------------------------

    def _lost(self) -> None:
        if self._report is None:
            self._socket_closed.set()
            self._report = asyncio.create_task(self._died(), name=f"{self.label}-died")

    def _route(self, frame: Frame) -> None:
        call = self._calls.get(frame.id)
        if call is not None:
            if frame.kind is Kind.PROGRESS:
                if call.on_progress is not None:
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        call.on_progress(int(frame.body["done"]), int(frame.body["total"]))
            elif frame.kind in REPLIES:
                del self._calls[frame.id]
                if not call.reply.done():
                    call.reply.set_result(frame)
            return
        sink = self._streams.get(frame.id)
        if sink is None:  # the answer to a call nobody waits for any more
            discard_shm(frame.body.get("outputs") or [], self.shm)
            return
        try:
            sink(frame)
        except Exception:  # a frame the stream cannot read: that stream's problem alone
            log.exception("%s %s: unreadable %s frame", self.noun, self.label, frame.kind)

    async def _reason(self) -> str:
        if self.proc is None:
            return "not started"
        if self._death is not None:
            return self._death
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 2)
        if self.closing:
            return "unloaded"
        return exit_reason(self.proc.returncode)

    async def _died(self) -> None:
        self.reason = await self._reason()
        calls, self._calls = self._calls, {}
        streams, self._streams = self._streams, {}
        for call in calls.values():
            if not call.reply.done():
                call.reply.set_exception(ReplicaFailed(
                    f"{self.noun} {self.label} failed while {call.what}: {self.reason}"
                ))  # fmt: skip
        failure = ReplicaFailed(f"{self.noun} {self.label} failed: {self.reason}")
        for sink in streams.values():
            with contextlib.suppress(Exception):
                sink(failure)
        if not self.closing:
            log.warning("%s %s: %s", self.noun, self.label, self.reason)
        self._dead.set()

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        """Once the worker exited, its socket closes: unless something it started holds on to
        it (a child it forked). The connection is closed here then, so nothing waits on it."""
        await proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._socket_closed.wait(), 2)
        if self._stream is not None and self._stream.transport is not None:
            self._stream.transport.abort()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- ending --------------------------------------------------------------------------

    async def wait_exit(self) -> str:
        """Return, with the reason, once the worker died (or was closed)."""
        await self._dead.wait()
        return self.reason

    async def kill(self) -> None:
        await kill_worker(self.proc)
        self._close()

    def _close(self) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
        if self._stream is not None and self._stream.transport is not None:
            self._stream.transport.close()
        if self.proc is not None and self.proc.returncode is not None:
            self.isolation.release(self.proc.pid)  # its scratch and shm folders

    async def close(self, timeout_s: float = 5.0, serial: bool = False) -> None:
        """Ask the worker to unload and exit; kill it if it does not within `timeout_s`."""
        if self.proc is None:
            return
        if self.alive:
            with contextlib.suppress(InferdError):
                await self.call(Kind.UNLOAD, timeout=timeout_s, what="unloading", serial=serial,
                                kill_on_timeout=False)  # fmt: skip
        self.closing = True
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            await self.kill()
        self._close()
        if self._stream is not None:
            await self._socket_closed.wait()  # the transport closes on the loop's next turn
        if self._report is not None:
            await asyncio.gather(self._report, return_exceptions=True)


def _expire(reply: asyncio.Future[Frame]) -> None:
    """A call's deadline: its caller gets TimeoutError (unless the answer came first)."""
    if not reply.done():
        reply.set_exception(TimeoutError())
