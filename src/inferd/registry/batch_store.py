"""Batch jobs and the files they read and write: created, claimed by one node at a time under a
lease, advanced chunk by chunk, ended.

Claiming is one write transaction: on PostgreSQL the next claimable row is locked with
`FOR UPDATE SKIP LOCKED` (nodes sharing the database never claim the same job, and never wait on
each other's claims); on SQLite the write transaction itself is exclusive (BEGIN IMMEDIATE). A
chunk is recorded only by the node holding the job's lease, and only once (`committed` must be
the chunk's index), so a node that lost its lease cannot count a chunk twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update

from inferd.core.errors import NotFound
from inferd.core.records import BATCH_DONE, BatchJob, BatchStatus, StoredFile
from inferd.registry.db import guarded
from inferd.registry.repository import Repository, get_row
from inferd.registry.tables import BatchJobRow, FileRow

#: Statuses a runner works on: rows to run, a cancel or an end to write down.
_ACTIVE = (BatchStatus.IN_PROGRESS.value, BatchStatus.FINALIZING.value,
           BatchStatus.CANCELLING.value)  # fmt: skip
#: The timestamp column each status sets when a job enters it.
_STAMPS = {
    BatchStatus.FINALIZING: "finalizing_at", BatchStatus.COMPLETED: "completed_at",
    BatchStatus.FAILED: "failed_at", BatchStatus.CANCELLED: "cancelled_at",
    BatchStatus.EXPIRED: "expired_at",
}  # fmt: skip


class BatchStore(Repository):
    """Batch jobs and files."""

    # ---- files -----------------------------------------------------------------------------

    @guarded
    async def create_file(self, f: StoredFile) -> StoredFile:
        async with self._db.write_session() as s:
            s.add(_file_row(f))
        return f

    @guarded
    async def get_file(self, file_id: str) -> StoredFile:
        async with self._sessions() as s:
            row = await s.get(FileRow, file_id)
            if row is None:
                raise NotFound(f"file '{file_id[:64]}' not found")
            return row.to_core()

    @guarded
    async def list_files(
        self, owner_id: str | None, purpose: str | None = None, limit: int = 100,
        after: str | None = None,
    ) -> list[StoredFile]:  # fmt: skip
        """Newest first; `owner_id` None: everyone's; `after`: those listed after that file."""
        q = select(FileRow)
        if owner_id is not None:
            q = q.where(FileRow.owner_id == owner_id)
        if purpose is not None:
            q = q.where(FileRow.purpose == purpose)
        async with self._sessions() as s:
            if after is not None:
                mark = await s.get(FileRow, after)
                if mark is not None:
                    q = q.where(or_(FileRow.created_at < mark.created_at,
                                    (FileRow.created_at == mark.created_at)
                                    & (FileRow.id > mark.id)))  # fmt: skip
            q = q.order_by(FileRow.created_at.desc(), FileRow.id).limit(limit)
            return [r.to_core() for r in await s.scalars(q)]

    @guarded
    async def delete_file(self, file_id: str) -> StoredFile:
        async with self._db.write_session() as s:
            row = await s.get(FileRow, file_id)
            if row is None:
                raise NotFound(f"file '{file_id[:64]}' not found")
            await s.delete(row)
            return row.to_core()

    # ---- batch jobs ------------------------------------------------------------------------

    @guarded
    async def create_batch(self, b: BatchJob) -> BatchJob:
        async with self._db.write_session() as s:
            s.add(_batch_row(b))
        return b

    @guarded
    async def get_batch(self, batch_id: str) -> BatchJob:
        async with self._sessions() as s:
            row = await s.get(BatchJobRow, batch_id)
            if row is None:
                raise NotFound(f"batch '{batch_id[:64]}' not found")
            return row.to_core()

    @guarded
    async def list_batches(
        self, owner_id: str | None, status: BatchStatus | None = None, limit: int = 50,
        offset: int = 0, after: str | None = None, openai: bool | None = None,
    ) -> list[BatchJob]:  # fmt: skip
        """Newest first; `owner_id` None: everyone's; `after`: those listed after that job;
        `openai`: only those made through `/v1/batches` (True) or not (False)."""
        q = select(BatchJobRow)
        if owner_id is not None:
            q = q.where(BatchJobRow.owner_id == owner_id)
        if status is not None:
            q = q.where(BatchJobRow.status == status.value)
        if openai is not None:
            q = q.where(BatchJobRow.openai == openai)
        async with self._sessions() as s:
            if after is not None:
                mark = await s.get(BatchJobRow, after)
                if mark is not None:
                    q = q.where(or_(BatchJobRow.created_at < mark.created_at,
                                    (BatchJobRow.created_at == mark.created_at)
                                    & (BatchJobRow.id > mark.id)))  # fmt: skip
            q = q.order_by(BatchJobRow.created_at.desc(), BatchJobRow.id)
            q = q.limit(limit).offset(offset)
            return [r.to_core() for r in await s.scalars(q)]

    @guarded
    async def claim_batch(self, node: str, lease: timedelta) -> BatchJob | None:
        """The oldest unfinished job no node holds (none ever did, its node let it go, or its
        lease ran out: the node died), now held by `node` until now + `lease`."""
        now = self._now()
        q = (select(BatchJobRow)
             .where(BatchJobRow.status.in_(_ACTIVE),
                    or_(BatchJobRow.lease_until.is_(None), BatchJobRow.lease_until < now))
             .order_by(BatchJobRow.created_at, BatchJobRow.id).limit(1))  # fmt: skip
        if self._db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        async with self._db.write_session() as s:
            row = await s.scalar(q)
            if row is None:
                return None
            row.node = node
            row.lease_until = now + lease
            row.run_started_at = now
            row.run_start_done = row.done
            if row.in_progress_at is None:
                row.in_progress_at = now
            return row.to_core()

    @guarded
    async def commit_chunk(
        self, batch_id: str, node: str, index: int, done: int, failed: int, lease: timedelta,
        output_bytes: int = 0, error_bytes: int = 0,
    ) -> BatchJob | None:  # fmt: skip
        """Records chunk `index` as stored (`done` rows, `failed` of them failed; the bytes
        of its output objects) and renews the lease; None when `node` no longer holds the
        job, or the chunk was recorded already (then nothing changes)."""
        async with self._db.write_session() as s:
            row = await s.get(BatchJobRow, batch_id)
            if row is None or row.node != node or row.committed != index:
                return None
            if BatchStatus(row.status) in BATCH_DONE:
                return None
            row.committed = index + 1
            row.done += done
            row.failed += failed
            row.output_bytes += output_bytes
            row.error_bytes += error_bytes
            row.lease_until = self._now() + lease
            return row.to_core()

    @guarded
    async def renew_batches(self, node: str, batch_ids: Sequence[str],
                            lease: timedelta) -> dict[str, BatchJob]:  # fmt: skip
        """Extends `node`'s leases on `batch_ids`; returns the jobs it still holds (a job
        missing from the answer went to another node)."""
        if not batch_ids:
            return {}
        mine = (BatchJobRow.id.in_(list(batch_ids)), BatchJobRow.node == node,
                BatchJobRow.status.in_(_ACTIVE))  # fmt: skip
        async with self._db.write_session() as s:
            await s.execute(update(BatchJobRow).where(*mine)
                            .values(lease_until=self._now() + lease))  # fmt: skip
            rows = await s.scalars(select(BatchJobRow).where(*mine))
            return {r.id: r.to_core() for r in rows}

    @guarded
    async def set_batch_status(
        self, batch_id: str, node: str | None, status: BatchStatus, error: str = "",
        output: StoredFile | None = None, errors: StoredFile | None = None,
    ) -> BatchJob | None:  # fmt: skip
        """Moves a job held by `node` (None: whoever holds it) to `status`, creating its
        `output` and `errors` files in the same transaction; an ended job keeps its first
        end, and a node that lost the job changes nothing (None)."""
        async with self._db.write_session() as s:
            row = await s.get(BatchJobRow, batch_id)
            if row is None or (node is not None and row.node != node):
                return None
            if BatchStatus(row.status) in BATCH_DONE:
                return row.to_core()
            now = self._now()
            row.status = status.value
            stamp = _STAMPS.get(status)
            if stamp is not None:
                setattr(row, stamp, now)
            if error:
                row.error = error
            if output is not None:
                s.add(_file_row(output))
                row.output_file_id = output.id
            if errors is not None:
                s.add(_file_row(errors))
                row.error_file_id = errors.id
            if status in BATCH_DONE:
                row.node = row.lease_until = None
            return row.to_core()

    @guarded
    async def cancel_batch(self, batch_id: str) -> BatchJob:
        """An unfinished job is `cancelling` (its runner stores what it has and ends it
        `cancelled`); one that no node runs and that ran nothing yet is `cancelled` at once;
        an ended one stays as it is."""
        async with self._db.write_session() as s:
            row = await get_row(s, BatchJobRow, batch_id, "batch")
            status = BatchStatus(row.status)
            if status in BATCH_DONE or status == BatchStatus.CANCELLING:
                return row.to_core()
            now = self._now()
            if row.node is None and row.committed == 0:
                row.status = BatchStatus.CANCELLED.value
                row.cancelling_at = row.cancelled_at = now
            else:
                row.status = BatchStatus.CANCELLING.value
                row.cancelling_at = now
            return row.to_core()

    @guarded
    async def release_batches(self, node: str, batch_ids: Sequence[str]) -> int:
        """`node` stops (gracefully) while these run: free for any node to go on at once."""
        if not batch_ids:
            return 0
        async with self._db.write_session() as s:
            result = await s.execute(
                update(BatchJobRow)
                .where(BatchJobRow.id.in_(list(batch_ids)), BatchJobRow.node == node)
                .values(node=None, lease_until=None)
            )
        return result.rowcount or 0  # type: ignore[attr-defined]

    @guarded
    async def count_batches(self) -> dict[str, int]:
        """Batch jobs by status (every owner's)."""
        q = select(BatchJobRow.status, func.count()).group_by(BatchJobRow.status)
        async with self._sessions() as s:
            return {str(status): int(n) for status, n in (await s.execute(q)).all()}


def _file_row(f: StoredFile) -> FileRow:
    return FileRow(id=f.id, owner_id=f.owner_id, purpose=f.purpose, filename=f.filename,
                   bytes=f.bytes, key=f.key, parts=f.parts, batch_id=f.batch_id,
                   created_at=f.created_at)  # fmt: skip


def _batch_row(b: BatchJob) -> BatchJobRow:
    fields: dict[str, Any] = {
        "id": b.id, "owner_id": b.owner_id, "model": b.model, "version": b.version,
        "api": b.api, "endpoint": b.endpoint, "input_file_id": b.input_file_id,
        "format": b.format, "status": b.status.value, "openai": b.openai,
        "completion_window": b.completion_window, "total": b.total, "done": b.done,
        "failed": b.failed, "chunk_rows": b.chunk_rows, "chunks": b.chunks,
        "committed": b.committed, "output_bytes": b.output_bytes,
        "error_bytes": b.error_bytes, "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id, "node": b.node, "lease_until": b.lease_until,
        "run_started_at": b.run_started_at, "run_start_done": b.run_start_done,
        "error": b.error, "metadata_": dict(b.metadata), "created_at": b.created_at,
        "in_progress_at": b.in_progress_at, "finalizing_at": b.finalizing_at,
        "completed_at": b.completed_at, "failed_at": b.failed_at,
        "cancelling_at": b.cancelling_at, "cancelled_at": b.cancelled_at,
        "expires_at": b.expires_at, "expired_at": b.expired_at,
    }  # fmt: skip
    return BatchJobRow(**fields)
