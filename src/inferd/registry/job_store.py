"""Async prediction jobs: submitted, claimed by one runner at a time under a lease, finished,
cancelled, swept when their lease runs out or their retention ends.

Claiming is one write transaction: on PostgreSQL the next queued row is locked with
`FOR UPDATE SKIP LOCKED` (so nodes sharing the database never claim the same job, and never wait
on each other's claims); on SQLite the write transaction itself is exclusive (BEGIN IMMEDIATE).
A claimed job carries the claiming node's name and a lease the node renews while the job runs;
a job whose lease ran out (its node died) is queued again by whichever node sweeps first, and a
node that lost its lease cannot record an end any more: one job never runs twice at once as far
as its record knows, and never ends twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from inferd.core.errors import NotFound
from inferd.core.records import JOB_DONE, DeliveryStatus, Job, JobStatus
from inferd.registry.audit_store import audit_row
from inferd.registry.db import GroupCommit, guarded
from inferd.registry.repository import Repository, get_row, new_id
from inferd.registry.tables import JobRow, WebhookDeliveryRow

#: A job's event as its webhook receives it (the body), from the job as it is now.
EventBody = Callable[[str, Job], dict[str, Any]]

#: The event every webhook gets; `started` and `progress` only when asked for.
COMPLETED = "completed"

#: The PostgreSQL channel a submission notifies, waking every node's runner.
CHANNEL = "inferd_jobs"

_RUNNING = JobStatus.RUNNING.value


class JobStore(Repository):
    """Async prediction jobs."""

    @functools.cached_property
    def _submissions(self) -> GroupCommit:
        return GroupCommit(self._db, notify=CHANNEL)

    @guarded
    async def create_job(
        self, owner_id: str, model: str, version: str | None, body: dict[str, object],
        priority: int, max_attempts: int, idempotency_key: str | None, *, api: str = "v2",
        webhook: str | None = None, webhook_events: Sequence[str] | None = None,
        audit: dict[str, Any] | None = None,
    ) -> tuple[Job, bool]:  # fmt: skip
        """A new queued job, or the owner's existing job with `idempotency_key` (False: not
        created now). `audit`: the fields of the submission's audit entry, written in the same
        transaction (`Audit.fields`), which other submissions of the same moment share
        (`GroupCommit`); on PostgreSQL its commit notifies `CHANNEL`."""
        if idempotency_key is not None:
            found = await self._by_key(owner_id, idempotency_key)
            if found is not None:
                return found, False
        now = self._now()
        row = JobRow(
            id=new_id(), owner_id=owner_id, model=model, version=version, input=body,
            status=JobStatus.QUEUED.value, priority=priority, attempts=0,
            max_attempts=max_attempts, result=None, error="", idempotency_key=idempotency_key,
            cancel_requested=False, created_at=now, api=api, webhook=webhook,
            webhook_events=None if webhook_events is None else list(webhook_events),
        )  # fmt: skip
        rows: list[Any] = [row]
        if audit is not None:
            rows.append(audit_row(now, target_id=row.id, **audit))
        try:
            await self._submissions.add(rows)  # with the other submissions of the moment
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
        offset: int = 0, model: str | None = None,
    ) -> list[Job]:  # fmt: skip
        """Newest first; `owner_id` None: everyone's (admins)."""
        q = select(JobRow)
        if owner_id is not None:
            q = q.where(JobRow.owner_id == owner_id)
        if status is not None:
            q = q.where(JobRow.status == status.value)
        if model is not None:
            q = q.where(JobRow.model == model)
        q = q.order_by(JobRow.created_at.desc(), JobRow.id).limit(limit).offset(offset)
        async with self._sessions() as s:
            return [r.to_core() for r in await s.scalars(q)]

    @guarded
    async def count_jobs(self) -> dict[str, int]:
        """How many jobs are in each status (every owner's)."""
        q = select(JobRow.status, func.count()).group_by(JobRow.status)
        async with self._sessions() as s:
            return {str(status): int(n) for status, n in (await s.execute(q)).all()}

    @guarded
    async def claim_job(self, node: str, lease: timedelta,
                        event: EventBody | None = None) -> Job | None:  # fmt: skip
        """The next queued job (highest priority, then oldest), now running on `node` with one
        more attempt and a lease until now + `lease`; None when none is queued. Its `started`
        webhook event (when it wants one) is queued in the same transaction."""
        q = (select(JobRow).where(JobRow.status == JobStatus.QUEUED.value)
             .order_by(JobRow.priority.desc(), JobRow.created_at, JobRow.id).limit(1))  # fmt: skip
        if self._db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        async with self._db.write_session() as s:
            row = await s.scalar(q)
            if row is None:
                return None
            now = self._now()
            row.status = _RUNNING
            row.attempts += 1
            row.started_at = now
            row.node = node
            row.lease_until = now + lease
            job = row.to_core()
            if event is not None:
                self._queue_event(s, job, "started", event)
            return job

    @guarded
    async def renew_leases(self, node: str, job_ids: Sequence[str],
                           lease: timedelta) -> tuple[set[str], set[str]]:  # fmt: skip
        """Extends `node`'s leases on `job_ids`; returns (the ids it no longer holds, the ids
        whose cancel was asked for on any node)."""
        if not job_ids:
            return set(), set()
        mine = (JobRow.id.in_(list(job_ids)), JobRow.node == node, JobRow.status == _RUNNING)
        async with self._db.write_session() as s:
            await s.execute(update(JobRow).where(*mine).values(lease_until=self._now() + lease))
            rows = (await s.execute(select(JobRow.id, JobRow.cancel_requested)
                                    .where(*mine))).all()  # fmt: skip
        held = {r[0] for r in rows}
        return set(job_ids) - held, {r[0] for r in rows if r[1]}

    @guarded
    async def finish_job(
        self, job_id: str, status: JobStatus, result: dict[str, object] | None = None,
        error: str = "", event: EventBody | None = None, *, node: str | None = None,
        result_ref: str | None = None,
    ) -> Job:  # fmt: skip
        """Record a running job's end (a job already ended keeps its first end; a job `node`
        no longer holds is left to its holder); with a webhook, its `completed` delivery is
        queued in the same transaction, so an ended job never misses it."""
        async with self._db.write_session() as s:
            row = await get_row(s, JobRow, job_id, "job")
            if JobStatus(row.status) in JOB_DONE or (node is not None and row.node != node):
                return row.to_core()
            row.status = status.value
            row.result = result
            row.result_ref = result_ref
            row.error = error
            row.finished_at = self._now()
            row.lease_until = None
            job = row.to_core()
            if event is not None:
                self._queue_event(s, job, COMPLETED, event)
            return job

    def _queue_event(self, s: AsyncSession, job: Job, name: str, event: EventBody) -> bool:
        """Adds the delivery of `job`'s event `name` to its webhook, when it has one and
        wants that event (`completed` always)."""
        if job.webhook is None:
            return False
        if name != COMPLETED and name not in (job.webhook_events or ()):
            return False
        now = self._now()
        s.add(WebhookDeliveryRow(
            id=new_id(), job_id=job.id, owner_id=job.owner_id, event=name, url=job.webhook,
            payload=event(name, job), status=DeliveryStatus.PENDING.value, attempts=0,
            last_code=None, last_error="", next_at=now, created_at=now, finished_at=None,
        ))  # fmt: skip
        return True

    @guarded
    async def job_event(self, job_id: str, name: str, event: EventBody,
                        progress: dict[str, Any] | None = None) -> bool:  # fmt: skip
        """Records a running job's progress (when given) and queues its event `name` for its
        webhook (False: it has none, or does not want that event)."""
        async with self._db.write_session() as s:
            row = await get_row(s, JobRow, job_id, "job")
            if row.status != _RUNNING:  # ended meanwhile: its `completed` said the last word
                return False
            if progress is not None:
                row.progress = progress
            return self._queue_event(s, row.to_core(), name, event)

    @guarded
    async def requeue_job(self, job_id: str, error: str, node: str | None = None) -> Job:
        """A running job that met a passing condition (the model loading, overloaded): queued
        again while it has attempts left, else failed with `error`."""
        async with self._db.write_session() as s:
            row = await get_row(s, JobRow, job_id, "job")
            if row.status != _RUNNING or (node is not None and row.node != node):
                return row.to_core()
            if row.attempts >= row.max_attempts or row.cancel_requested:
                row.status = (JobStatus.CANCELLED if row.cancel_requested
                              else JobStatus.FAILED).value  # fmt: skip
                row.error = error
                row.finished_at = self._now()
            else:
                row.status = JobStatus.QUEUED.value
                row.error = error
            row.node = row.lease_until = None
            return row.to_core()

    @guarded
    async def release_jobs(self, node: str, job_ids: Sequence[str]) -> int:
        """`node` stops (gracefully) while these run: queued again, the attempt not counted."""
        if not job_ids:
            return 0
        async with self._db.write_session() as s:
            mine = (JobRow.id.in_(list(job_ids)), JobRow.node == node, JobRow.status == _RUNNING)
            back = {"status": JobStatus.QUEUED.value, "attempts": JobRow.attempts - 1,
                    "node": None, "lease_until": None}  # fmt: skip
            done = await s.execute(update(JobRow).where(*mine).values(**back))
        return done.rowcount or 0  # type: ignore[attr-defined]

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
            elif row.status == _RUNNING:
                row.cancel_requested = True
            return row.to_core()

    @guarded
    async def requeue_expired(self, event: EventBody | None = None) -> tuple[int, int]:
        """Jobs whose lease ran out (the node running them died): queued again while attempts
        remain, else failed with the reason (their `completed` event queued); a cancel asked
        meanwhile ends them cancelled. Returns (requeued, ended)."""
        now = self._now()
        gone = "the server running it stopped, and no attempt is left"
        async with self._db.write_session() as s:
            q = select(JobRow).where(JobRow.status == _RUNNING, JobRow.lease_until < now)
            if self._db.dialect == "postgresql":
                q = q.with_for_update(skip_locked=True)
            requeued = ended = 0
            for row in await s.scalars(q):
                row.node = row.lease_until = None
                if row.cancel_requested or row.attempts >= row.max_attempts:
                    row.status = (JobStatus.CANCELLED if row.cancel_requested
                                  else JobStatus.FAILED).value  # fmt: skip
                    row.error = "cancelled" if row.cancel_requested else gone
                    row.finished_at = now
                    ended += 1
                    if event is not None:
                        self._queue_event(s, row.to_core(), COMPLETED, event)
                else:
                    row.status = JobStatus.QUEUED.value
                    requeued += 1
        return requeued, ended

    @guarded
    async def expire_jobs(self, before: datetime, limit: int = 500) -> list[Job]:
        """Deletes up to `limit` jobs that ended before `before`, with their webhook
        deliveries; returns them (their `result_ref` objects are the caller's to delete)."""
        q = (select(JobRow).where(JobRow.finished_at < before)
             .order_by(JobRow.finished_at).limit(limit))  # fmt: skip
        async with self._db.write_session() as s:
            rows = list(await s.scalars(q))
            ids = [r.id for r in rows]
            if ids:
                deliveries = WebhookDeliveryRow.job_id.in_(ids)
                await s.execute(delete(WebhookDeliveryRow).where(deliveries))
                await s.execute(delete(JobRow).where(JobRow.id.in_(ids)))
        return [r.to_core() for r in rows]

    async def require_job(self, job_id: str) -> Job:
        try:
            return await self.get_job(job_id)
        except NotFound:
            raise NotFound(f"prediction '{job_id[:64]}' not found") from None
