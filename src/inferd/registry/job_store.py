"""Async prediction jobs: submitted, claimed by one runner at a time, finished, cancelled.

Claiming is one write transaction: on PostgreSQL the next queued row is locked with
`FOR UPDATE SKIP LOCKED` (so nodes sharing the database never claim the same job, and never wait
on each other's claims); on SQLite the write transaction itself is exclusive (BEGIN IMMEDIATE).
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from inferd.core.errors import NotFound
from inferd.core.records import JOB_DONE, Job, JobStatus
from inferd.registry.db import guarded
from inferd.registry.repository import Repository, get_row, new_id
from inferd.registry.tables import JobRow


class JobStore(Repository):
    """Async prediction jobs."""

    @guarded
    async def create_job(
        self, owner_id: str, model: str, version: str | None, body: dict[str, object],
        priority: int, max_attempts: int, idempotency_key: str | None,
    ) -> tuple[Job, bool]:  # fmt: skip
        """A new queued job, or the owner's existing job with `idempotency_key` (False: not
        created now)."""
        if idempotency_key is not None:
            found = await self._by_key(owner_id, idempotency_key)
            if found is not None:
                return found, False
        row = JobRow(
            id=new_id(), owner_id=owner_id, model=model, version=version, input=body,
            status=JobStatus.QUEUED.value, priority=priority, attempts=0,
            max_attempts=max_attempts, result=None, error="", idempotency_key=idempotency_key,
            cancel_requested=False, created_at=self._now(),
        )  # fmt: skip
        try:
            async with self._db.write_session() as s:
                s.add(row)
        except IntegrityError:  # the same key, submitted at the same moment: theirs won
            if idempotency_key is not None:
                found = await self._by_key(owner_id, idempotency_key)
                if found is not None:
                    return found, False
            raise
        return row.to_core(), True

    async def _by_key(self, owner_id: str, key: str) -> Job | None:
        async with self._sessions() as s:
            row = await s.scalar(
                select(JobRow).where(JobRow.owner_id == owner_id, JobRow.idempotency_key == key)
            )
            return None if row is None else row.to_core()

    @guarded
    async def get_job(self, job_id: str) -> Job:
        async with self._sessions() as s:
            return (await get_row(s, JobRow, job_id, "job")).to_core()

    @guarded
    async def list_jobs(
        self, owner_id: str | None, status: JobStatus | None = None, limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:  # fmt: skip
        """Newest first; `owner_id` None: everyone's (admins)."""
        q = select(JobRow)
        if owner_id is not None:
            q = q.where(JobRow.owner_id == owner_id)
        if status is not None:
            q = q.where(JobRow.status == status.value)
        q = q.order_by(JobRow.created_at.desc(), JobRow.id).limit(limit).offset(offset)
        async with self._sessions() as s:
            return [r.to_core() for r in await s.scalars(q)]

    @guarded
    async def claim_job(self) -> Job | None:
        """The next queued job (highest priority, then oldest), now running with one more
        attempt; None when none is queued."""
        q = (select(JobRow).where(JobRow.status == JobStatus.QUEUED.value)
             .order_by(JobRow.priority.desc(), JobRow.created_at, JobRow.id).limit(1))  # fmt: skip
        if self._db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        async with self._db.write_session() as s:
            row = await s.scalar(q)
            if row is None:
                return None
            row.status = JobStatus.RUNNING.value
            row.attempts += 1
            row.started_at = self._now()
            return row.to_core()

    @guarded
    async def finish_job(
        self, job_id: str, status: JobStatus, result: dict[str, object] | None = None,
        error: str = "",
    ) -> Job:  # fmt: skip
        """Record a running job's end (a job already ended keeps its first end)."""
        async with self._db.write_session() as s:
            row = await get_row(s, JobRow, job_id, "job")
            if JobStatus(row.status) in JOB_DONE:
                return row.to_core()
            row.status = status.value
            row.result = result
            row.error = error
            row.finished_at = self._now()
            return row.to_core()

    @guarded
    async def requeue_job(self, job_id: str, error: str) -> Job:
        """A running job that met a passing condition (the model loading, overloaded): queued
        again while it has attempts left, else failed with `error`."""
        async with self._db.write_session() as s:
            row = await get_row(s, JobRow, job_id, "job")
            if row.status != JobStatus.RUNNING.value:
                return row.to_core()
            if row.attempts >= row.max_attempts or row.cancel_requested:
                row.status = (JobStatus.CANCELLED if row.cancel_requested
                              else JobStatus.FAILED).value  # fmt: skip
                row.error = error
                row.finished_at = self._now()
            else:
                row.status = JobStatus.QUEUED.value
                row.error = error
            return row.to_core()

    @guarded
    async def cancel_job(self, job_id: str) -> Job:
        """A queued job is cancelled at once (it never runs); a running one is marked for its
        runner to abort; an ended one stays as it is."""
        async with self._db.write_session() as s:
            row = await get_row(s, JobRow, job_id, "job")
            if row.status == JobStatus.QUEUED.value:
                row.status = JobStatus.CANCELLED.value
                row.finished_at = self._now()
                row.error = "cancelled before it ran"
            elif row.status == JobStatus.RUNNING.value:
                row.cancel_requested = True
            return row.to_core()

    @guarded
    async def requeue_orphans(self) -> tuple[int, int]:
        """Jobs left `running` by a process that is gone (called at start, single node; a
        cluster uses leases): queued again while attempts remain, else failed with the
        reason. Returns (requeued, failed)."""
        running = JobRow.status == JobStatus.RUNNING.value
        now = self._now()
        gone = "the server stopped while it ran, and no attempt is left"
        async with self._db.write_session() as s:
            no_attempt = running & (JobRow.attempts >= JobRow.max_attempts)
            failed = await s.execute(
                update(JobRow)
                .where(no_attempt)
                .values(status=JobStatus.FAILED.value, finished_at=now, error=gone)
            )
            await s.execute(
                update(JobRow)
                .where(running & JobRow.cancel_requested)
                .values(status=JobStatus.CANCELLED.value, finished_at=now, error="cancelled")
            )
            requeued = await s.execute(
                update(JobRow).where(running).values(status=JobStatus.QUEUED.value)
            )
        return requeued.rowcount or 0, failed.rowcount or 0  # type: ignore[attr-defined]

    async def require_job(self, job_id: str) -> Job:
        try:
            return await self.get_job(job_id)
        except NotFound:
            raise NotFound(f"prediction '{job_id[:64]}' not found") from None
