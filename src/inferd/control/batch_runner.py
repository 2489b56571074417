"""This server's batch job runner: claims jobs under a lease, runs their rows chunk by chunk
through the data plane, stores each chunk's output, then records it; ends jobs.

Resume: a chunk's output lines are stored as one artifact object (`batches/<id>/out/<i>`), and
only then is the chunk recorded as done in the database (`BatchStore.commit_chunk`, refused to a
node that lost the job). A node that dies loses its lease after `batches.lease_s`; whichever
node claims the job next (the restarted one, or another) starts at the first chunk not
recorded, overwriting any output the dead node stored for it. So the final output, the chunk
objects in order, holds every row exactly once, in input order. A node stopping gracefully lets
its jobs go at once.

Throughput: up to `batches.max_in_flight` requests of one job are in flight at once (what the
model's dynamic batching merges), across two chunks, so one chunk's tail does not leave the
model idle; table rows share requests (`batches.rows_per_request`). A row refused for a
passing reason (503, 429) is tried again, `batches.row_attempts` times in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import numpy as np

from inferd.auth.principal import Principal, for_user
from inferd.control import batch_rows as rows_
from inferd.control.batch_input import TABULAR, read_table_chunk
from inferd.control.batch_rows import RowError
from inferd.core.bodies import V2
from inferd.core.errors import (
    InferdError,
    ModelNotFound,
    ModelNotReady,
    NotFound,
    Overloaded,
    Unavailable,
)
from inferd.core.records import BatchJob, BatchStatus, StoredFile
from inferd.core.spec import TensorSpec
from inferd.observability.batches import BatchMetrics
from inferd.registry.artifacts import ArtifactStore
from inferd.registry.repository import utc_now
from inferd.registry.store import RegistryStore
from inferd.settings import BatchSettings

log = logging.getLogger("inferd.batches")

#: The purpose of the files a batch job writes (OpenAI's name).
OUTPUT_PURPOSE = "batch_output"


class RowPlane(Protocol):
    """How rows reach the models (wired by the composition root to the data plane)."""

    async def run(self, api: str, p: Principal, model: str, version: str | None,
                  body: dict[str, Any], request_id: str,
                  ) -> tuple[int, dict[str, Any], str | None]:  # fmt: skip
        """Sends one request body as `p`: (status, the response or error body the route
        would have answered, the error message when it failed)."""
        ...

    def signature(self, model: str, version: str | None) -> tuple[tuple[TensorSpec, ...], int]:
        """The inputs and max_batch_size of the version a request for `model` goes to."""
        ...


def default_node() -> str:
    """This process's name in batch job leases: the host, and a part unique to the process."""
    return f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:12]}"


def input_key(batch_id: str, index: int) -> str:
    return f"batches/{batch_id}/in/{index:06d}.jsonl"


def part_key(prefix: str, index: int) -> str:
    """The object holding part `index` of a file stored in parts under `prefix`."""
    return f"{prefix}/{index:06d}.jsonl"


def output_prefixes(batch_id: str) -> tuple[str, str, str]:
    """Where a job's output is stored chunk by chunk: every line (inferd's batch jobs), the
    successes and the failures (OpenAI's)."""
    root = f"batches/{batch_id}"
    return f"{root}/out", f"{root}/ok", f"{root}/err"


@dataclass
class ChunkOutput:
    """A chunk's output lines in row order, and which rows failed; `live` counts the rows
    done (and failed) as they end, before the chunk is stored."""

    lines: list[bytes] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)
    live: list[int] = field(default_factory=lambda: [0, 0])

    @classmethod
    def of(cls, n: int, live: list[int]) -> ChunkOutput:
        return cls([b""] * n, [False] * n, live)

    def set(self, j: int, line: bytes, failed: bool) -> None:
        self.lines[j] = line
        self.failed[j] = failed
        self.live[0] += 1
        self.live[1] += failed


class BatchRunner:
    """Runs up to `batches.concurrency` batch jobs at once on this server."""

    def __init__(self, store: RegistryStore, artifacts: ArtifactStore, settings: BatchSettings,
                 metrics: BatchMetrics, node: str | None = None) -> None:  # fmt: skip
        self.store = store
        self.artifacts = artifacts
        self.settings = settings
        self.metrics = metrics
        self.node = node or default_node()
        #: Set by the composition root: how rows reach the models.
        self.rows: RowPlane | None = None
        self._lease = timedelta(seconds=settings.lease_s)
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._why: dict[str, str] = {}  # why a running job's task was cancelled
        self._tasks: list[asyncio.Task[None]] = []
        #: Rows done and failed in the chunks running here and not recorded yet, by job.
        self._live: dict[str, list[int]] = {}

    def live(self, batch_id: str) -> tuple[int, int]:
        """Rows of a job running here done (and failed) since its last recorded chunk."""
        done, failed = self._live.get(batch_id, (0, 0))
        return done, failed

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, batch_id: str) -> None:
        """Stops the job now if it runs here (its output so far is kept; it ends cancelled)."""
        task = self._running.get(batch_id)
        if task is not None:
            self._why[batch_id] = "cancelled"
            task.cancel()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop())]
        if self.settings.concurrency > 0:
            self._tasks.append(asyncio.create_task(self._renew()))

    async def stop(self) -> None:
        """Stops running jobs and lets them go (another node, or this one restarted, goes on
        from their last stored chunk at once)."""
        ids = list(self._running)
        for batch_id in ids:
            self._why.setdefault(batch_id, "stopping")
        tasks = [*self._tasks, *self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if ids:
            with contextlib.suppress(InferdError):  # else their leases run out
                await self.store.release_batches(self.node, ids)

    # ---- loops -----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                while len(self._running) < self.settings.concurrency:
                    batch = await self.store.claim_batch(self.node, self._lease)
                    if batch is None:
                        break
                    self._running[batch.id] = asyncio.create_task(self._run(batch))
                counts = await self.store.count_batches()
                for status in BatchStatus:
                    self.metrics.by_status.labels(status.value).set(counts.get(status.value, 0))
            except InferdError as e:  # the database is down: try again at the next tick
                log.warning("claiming batch jobs failed: %s", e.message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval_s):
                    await self._wake.wait()

    async def _renew(self) -> None:
        """Renews this node's leases; stops jobs cancelled on any node, and jobs another node
        took over (after a long pause of this one)."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            ids = list(self._running)
            try:
                held = await self.store.renew_batches(self.node, ids, self._lease)
            except InferdError as e:
                log.warning("renewing batch job leases failed: %s", e.message)
                continue
            for batch_id in ids:
                job = held.get(batch_id)
                task = self._running.get(batch_id)
                if task is None:
                    continue
                if job is None:
                    self._why[batch_id] = "lost"
                    task.cancel()
                elif job.status == BatchStatus.CANCELLING:
                    self._why[batch_id] = "cancelled"
                    task.cancel()

    # ---- one job ---------------------------------------------------------------------------

    async def _run(self, batch: BatchJob) -> None:
        self.metrics.running.inc()
        try:
            if batch.status == BatchStatus.CANCELLING:
                await self._end(batch, BatchStatus.CANCELLED)
            elif batch.status == BatchStatus.FINALIZING:
                await self._end(batch, BatchStatus.COMPLETED)
            elif self._expired(batch):
                await self._end(batch, BatchStatus.EXPIRED)
            else:
                p = await self._principal(batch)
                if p is not None:
                    outcome = await self._chunks(batch, p)
                    if outcome is not None:
                        await self._end(batch, outcome)
        except asyncio.CancelledError:
            why = self._why.get(batch.id)
            if why == "cancelled":
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                await self._end(batch, BatchStatus.CANCELLED)
                return
            if why == "lost":
                log.warning("batch %s: another node holds it now; left to it", batch.id)
                return
            raise  # the server stops: `stop` lets the job go
        except NotFound as e:  # its stored input is gone: it cannot go on
            await self._end(batch, BatchStatus.FAILED, f"input: {e.message}")
        except InferdError as e:  # the database or the store is down: tried after its lease
            log.warning("batch %s stopped: %s (tried again after its lease)", batch.id, e.message)
        except Exception as e:
            log.exception("batch %s failed", batch.id)
            await self._end(batch, BatchStatus.FAILED, f"{type(e).__name__}: {e}")
        finally:
            self.metrics.running.dec()
            self._running.pop(batch.id, None)
            self._live.pop(batch.id, None)
            self._why.pop(batch.id, None)
            self._wake.set()

    def _expired(self, batch: BatchJob) -> bool:
        return batch.expires_at is not None and utc_now() >= batch.expires_at

    async def _principal(self, batch: BatchJob) -> Principal | None:
        """Rows run as the job's owner; a job whose owner is gone or disabled fails."""
        try:
            user = await self.store.get_user(batch.owner_id)
        except NotFound:
            user = None
        if user is None or user.disabled:
            await self._end(batch, BatchStatus.FAILED, "the owner's account is disabled or gone")
            return None
        return for_user(user)

    async def _chunks(self, batch: BatchJob, p: Principal) -> BatchStatus | None:
        """Runs the chunks not yet recorded, two at a time, recording them in order; the
        status to end with (None: another node holds the job now)."""
        limit = asyncio.Semaphore(self.settings.max_in_flight)
        window: deque[tuple[int, asyncio.Task[ChunkOutput]]] = deque()
        following = batch.committed
        try:
            while following < batch.chunks or window:
                while following < batch.chunks and len(window) < 2:
                    blob = await self.artifacts.get_bytes(input_key(batch.id, following))
                    run = self._chunk(batch, p, following, blob, limit)
                    window.append((following, asyncio.create_task(run)))
                    following += 1
                index, task = window[0]
                out = await task
                window.popleft()
                state = await self._commit(batch, index, out)
                if state is None:
                    log.warning("batch %s: another node holds it now; left to it", batch.id)
                    return None
                if state.status == BatchStatus.CANCELLING:
                    return BatchStatus.CANCELLED
                if self._expired(state):
                    return BatchStatus.EXPIRED
            return BatchStatus.COMPLETED
        finally:
            for _, task in window:
                task.cancel()
            await asyncio.gather(*(t for _, t in window), return_exceptions=True)

    async def _commit(self, batch: BatchJob, index: int, out: ChunkOutput) -> BatchJob | None:
        """Stores a chunk's output, then records it (in that order: see the module's doc)."""
        every, ok, err = output_prefixes(batch.id)
        if batch.openai:
            good = _jsonl([line for line, bad in zip(out.lines, out.failed, strict=True)
                           if not bad])  # fmt: skip
            bad = _jsonl([line for line, bad in zip(out.lines, out.failed, strict=True) if bad])
            await self.artifacts.put_bytes(part_key(ok, index), good)
            await self.artifacts.put_bytes(part_key(err, index), bad)
        else:
            good, bad = _jsonl(out.lines), b""
            await self.artifacts.put_bytes(part_key(every, index), good)
        failed = sum(out.failed)
        state = await self.store.commit_chunk(batch.id, self.node, index, len(out.lines), failed,
                                              self._lease, len(good), len(bad))  # fmt: skip
        if state is not None:
            self.metrics.rows.labels("succeeded").inc(len(out.lines) - failed)
            self.metrics.rows.labels("failed").inc(failed)
            out.live[0] -= len(out.lines)  # counted in the job's row from now on
            out.live[1] -= failed
        return state

    async def _end(self, batch: BatchJob, status: BatchStatus, error: str = "") -> None:
        """Ends the job with the chunks recorded so far as its output (all of them, when it
        completed), and drops its stored input."""
        job = await self.store.get_batch(batch.id)
        node = self.node if job.node == self.node else None
        if job.node not in (None, self.node):
            return  # another node holds it
        if status == BatchStatus.COMPLETED:
            await self.store.set_batch_status(job.id, node, BatchStatus.FINALIZING)
        output, errors = await self._outputs(job)
        ended = await self.store.set_batch_status(job.id, node, status, error, output, errors)
        if ended is None:
            return
        with contextlib.suppress(InferdError):  # left behind, it costs space only
            await self.artifacts.delete_prefix(f"batches/{job.id}/in")
            for kept, prefix in ((output, output_prefixes(job.id)[1]),
                                 (errors, output_prefixes(job.id)[2])):  # fmt: skip
                if job.openai and kept is None:
                    await self.artifacts.delete_prefix(prefix)
        self.metrics.finished.labels(ended.status.value).inc()

    async def _outputs(self, job: BatchJob) -> tuple[StoredFile | None, StoredFile | None]:
        """The files of a job's recorded chunks: one (every line) for inferd's jobs; the
        successes and the failures for OpenAI's, each only when it has a line."""
        n = job.committed
        if n == 0:
            return None, None
        every, ok, err = output_prefixes(job.id)
        now = utc_now()

        def stored(prefix: str, name: str, size: int) -> StoredFile:
            return StoredFile(id=f"file-{uuid.uuid4().hex}", owner_id=job.owner_id,
                              purpose=OUTPUT_PURPOSE, filename=f"{job.id}_{name}.jsonl",
                              bytes=size, key=prefix, created_at=now, parts=n,
                              batch_id=job.id)  # fmt: skip

        if not job.openai:
            return stored(every, "output", job.output_bytes), None
        succeeded = job.done - job.failed
        output = stored(ok, "output", job.output_bytes) if succeeded > 0 else None
        errors = stored(err, "error", job.error_bytes) if job.failed > 0 else None
        return output, errors

    # ---- rows ------------------------------------------------------------------------------

    async def _chunk(self, batch: BatchJob, p: Principal, index: int, blob: bytes,
                     limit: asyncio.Semaphore) -> ChunkOutput:  # fmt: skip
        first = index * batch.chunk_rows
        live = self._live.setdefault(batch.id, [0, 0])
        if batch.format in TABULAR:
            return await self._table_chunk(batch, p, first, blob, limit, live)
        raw = blob.split(b"\n")
        out = ChunkOutput.of(len(raw), live)

        async def one(j: int, custom_id: str | None, row: rows_.Row) -> None:
            i = first + j
            status, body, error = await self._send(batch, p, row.api, row.body, i, limit)
            line = rows_.output_line(batch.id, i, custom_id, status, body, error)
            out.set(j, line, error is not None)

        sends = []
        for j, line in enumerate(raw):
            custom_id, parsed = rows_.parse_line(line, batch.api or None, batch.model)
            if isinstance(parsed, RowError):
                out.set(j, rows_.failed_line(batch.id, first + j, custom_id, parsed), True)
            else:
                sends.append(one(j, custom_id, parsed))
        await _all(sends)
        return out

    async def _table_chunk(self, batch: BatchJob, p: Principal, first: int, blob: bytes,
                           limit: asyncio.Semaphore, live: list[int]) -> ChunkOutput:  # fmt: skip
        columns, table = read_table_chunk(blob)
        n = len(table)
        out = ChunkOutput.of(n, live)
        lay_or_error = await self._layout(batch, columns)
        cids = [None] * n if isinstance(lay_or_error, RowError) else [
            rows_.custom_id_of(lay_or_error, row) for row in table]  # fmt: skip

        def fail(j: int, e: RowError) -> None:
            out.set(j, rows_.failed_line(batch.id, first + j, cids[j], e), True)

        if isinstance(lay_or_error, RowError):
            for j in range(n):
                fail(j, lay_or_error)
            return out
        lay = lay_or_error
        arrays: dict[int, list[np.ndarray]] = {}
        for j, row in enumerate(table):
            try:
                arrays[j] = rows_.convert(lay, row, columns)
            except RowError as e:
                fail(j, e)
        size = self._rows_per_request(batch)

        async def group(js: list[int]) -> None:
            body = rows_.request(lay, [arrays[j] for j in js])
            status, answer, error = await self._send(batch, p, V2, body, first + js[0], limit)
            if error is not None:
                for j in js:
                    line = rows_.output_line(batch.id, first + j, cids[j], status, answer, error)
                    out.set(j, line, True)
                return
            try:
                each = rows_.split(lay, answer, len(js))
            except RowError as e:
                for j in js:
                    fail(j, e)
                return
            for j, body_j in zip(js, each, strict=True):
                out.set(j, rows_.output_line(batch.id, first + j, cids[j], status, body_j), False)

        await _all([group(js) for js in rows_.groups(lay, arrays, size)])
        return out

    async def _layout(self, batch: BatchJob, columns: tuple[str, ...]) -> rows_.Layout | RowError:
        """How this chunk's columns feed the model, or the error every row of it gets."""
        assert self.rows is not None
        plane = self.rows
        for attempt in range(self.settings.row_attempts):
            try:
                inputs, mbs = plane.signature(batch.model, batch.version)
                return rows_.layout(columns, inputs, mbs)
            except InferdError as e:
                passing = isinstance(e, ModelNotReady | Overloaded | Unavailable)
                if not passing or attempt == self.settings.row_attempts - 1:
                    status = 404 if isinstance(e, ModelNotFound | NotFound) else 400
                    return RowError(e.message, status=503 if passing else status)
            await asyncio.sleep(_backoff(attempt))
        return RowError("the model is not ready", status=503)  # pragma: no cover

    def _rows_per_request(self, batch: BatchJob) -> int:
        size = self.settings.rows_per_request
        assert self.rows is not None
        with contextlib.suppress(InferdError):
            _, mbs = self.rows.signature(batch.model, batch.version)
            if mbs > 0:
                size = min(size, mbs)
        return size

    async def _send(self, batch: BatchJob, p: Principal, api: str, body: dict[str, Any],
                    index: int, limit: asyncio.Semaphore,
                    ) -> tuple[int, dict[str, Any], str | None]:  # fmt: skip
        """One request, tried again while it is refused for a passing reason."""
        if self.rows is None:
            return 503, {"error": "this server runs no batch jobs"}, "this server runs no rows"
        request_id = f"{batch.id}-{index}"
        for attempt in range(self.settings.row_attempts):
            async with limit:
                status, answer, error = await self.rows.run(api, p, batch.model, batch.version,
                                                            body, request_id)  # fmt: skip
            if status not in rows_.PASSING or attempt == self.settings.row_attempts - 1:
                break
            await asyncio.sleep(_backoff(attempt))
        return status, answer, error


def _backoff(attempt: int) -> float:
    return min(0.25 * 2**attempt, 5.0)


def _jsonl(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


async def _all(calls: Sequence[Awaitable[None]]) -> None:
    """Runs `calls` at once; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
