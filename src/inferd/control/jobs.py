"""Async predictions (`/api/v1/predictions`): a request is stored as a job and answered later;
its owner polls it, lists it, cancels it.

Jobs live in the registry database, so they outlive the process: at start, a job left running by
a process that died is queued again while it has attempts left (then failed, with the reason);
a queued job is never lost. Each server runs up to `jobs.concurrency` jobs at once, claiming
them one at a time (`JobStore.claim_job`: a row lock on PostgreSQL, so nodes sharing the database
never run one job twice). A submission wakes this server's runner at once; jobs another node
queued are found within `jobs.poll_interval_s`.

The job runs its request through `execute` (the composition root wires the data plane: routing,
fallbacks, the model's queue and batching, as a synchronous call of the same body would).
Cancelling a queued job means it never runs; cancelling a running one cancels its task, which
aborts the request the way a client that went away does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson

from inferd.auth.policy import require
from inferd.control.audit import Actor, Audit
from inferd.control.catalog import Catalog
from inferd.core.errors import (
    InferdError,
    InvalidInput,
    ModelNotReady,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthenticated,
)
from inferd.core.records import JOB_DONE, Job, JobStatus, Scope
from inferd.observability.metrics import JobMetrics
from inferd.registry.store import RegistryStore
from inferd.settings import JobSettings

log = logging.getLogger("inferd.jobs")

#: Runs a job's request; returns the response body (what a synchronous call would answer).
Execute = Callable[[Job], Awaitable[dict[str, Any]]]


class Jobs:
    """Async prediction use-cases and this server's job runner."""

    def __init__(self, store: RegistryStore, catalog: Catalog, audit: Audit,
                 settings: JobSettings, metrics: JobMetrics) -> None:  # fmt: skip
        self.metrics = metrics
        self.store = store
        self.catalog = catalog
        self.audit = audit
        self.settings = settings
        #: Set by the composition root (`app.build`): how a job's request runs.
        self.execute: Execute | None = None
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._loop: asyncio.Task[None] | None = None

    # ---- use-cases -----------------------------------------------------------------------

    async def submit(self, actor: Actor, fields: dict[str, Any],
                     idempotency_key: str | None = None) -> tuple[Job, bool]:  # fmt: skip
        """Queue a prediction for the caller (the job, and whether it was created now: an
        `Idempotency-Key` seen before gives back the first job)."""
        p = actor.principal
        require(p, Scope.INFER)
        if p.user_id is None:
            raise Unauthenticated("an async prediction belongs to a user: sign in or use a key")
        name = fields.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidInput("model: must be a model name")
        await self.catalog.find(actor, name)  # 404 for a model the caller may not see
        body = fields.get("input")
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise InvalidInput('input: must be a V2 inference request body ({"inputs": [...]})')
        if len(orjson.dumps(body)) > self.settings.max_input_bytes:
            raise PayloadTooLarge(f"input: larger than {self.settings.max_input_bytes} bytes")
        version = fields.get("version")
        priority = fields.get("priority", 0)
        job, created = await self.store.create_job(
            p.user_id, name, None if version is None else str(version), body, int(priority),
            self.settings.max_attempts, idempotency_key,
        )  # fmt: skip
        if created:
            self.metrics.submitted.inc()
            await self.audit.record(actor, "prediction.submit", "job", job.id, model=name)
            self._wake.set()
        return job, created

    async def get(self, actor: Actor, job_id: str) -> Job:
        """The caller's job (404 for anyone else's, unless an admin asks)."""
        p = actor.principal
        require(p, Scope.INFER)
        job = await self.store.require_job(job_id)
        if job.owner_id != p.user_id and not p.is_admin:
            raise NotFound(f"prediction '{job_id[:64]}' not found")
        return job

    async def list(self, actor: Actor, status: JobStatus | None, limit: int,
                   offset: int) -> list[Job]:  # fmt: skip
        p = actor.principal
        require(p, Scope.INFER)
        if p.user_id is None:
            return []
        return await self.store.list_jobs(p.user_id, status, limit, offset)

    async def cancel(self, actor: Actor, job_id: str) -> Job:
        job = await self.get(actor, job_id)
        if job.status in JOB_DONE:
            return job
        job = await self.store.cancel_job(job.id)
        task = self._running.get(job.id)
        if task is not None:  # running here: abort it now (another node sees the flag)
            self._cancelled.add(job.id)
            task.cancel()
        await self.audit.record(actor, "prediction.cancel", "job", job.id)
        return job

    # ---- the runner ----------------------------------------------------------------------

    async def start(self) -> None:
        requeued, failed = await self.store.requeue_orphans()
        if requeued or failed:
            log.warning("jobs left running by a stopped server: %d queued again, %d failed "
                        "(no attempt left)", requeued, failed)  # fmt: skip
        if self.settings.concurrency > 0:
            self._loop = asyncio.create_task(self._run_loop())

    async def stop(self) -> None:
        """Stop taking jobs; jobs running now are left `running` and queued again at the next
        start (an attempt is counted)."""
        tasks = [t for t in (self._loop, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None

    async def _run_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                while len(self._running) < self.settings.concurrency:
                    job = await self.store.claim_job()
                    if job is None:
                        break
                    self._running[job.id] = asyncio.create_task(self._run(job))
            except InferdError as e:  # the database is down: try again at the next tick
                log.warning("claiming jobs failed: %s", e.message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval_s):
                    await self._wake.wait()

    async def _run(self, job: Job) -> None:
        m = self.metrics
        m.running.inc()
        if job.started_at is not None:
            m.wait.observe(max(0.0, (job.started_at - job.created_at).total_seconds()))
        try:
            if self.execute is None:
                raise InferdError("this server runs no jobs")
            result = await self.execute(job)
        except asyncio.CancelledError:
            if job.id in self._cancelled:
                await self._finish(job, JobStatus.CANCELLED, error="cancelled while it ran")
                return
            raise  # the server stops: the job is queued again at the next start
        except (ModelNotReady, Overloaded) as e:  # passing: later, while attempts remain
            await self.store.requeue_job(job.id, e.message)
        except InferdError as e:
            await self._finish(job, JobStatus.FAILED, error=e.message)
        except Exception as e:
            log.exception("job %s failed", job.id)
            await self._finish(job, JobStatus.FAILED, error=f"{type(e).__name__}: {e}")
        else:
            await self._finish(job, JobStatus.SUCCEEDED, result=result)
        finally:
            m.running.dec()
            self._running.pop(job.id, None)
            self._cancelled.discard(job.id)
            self._wake.set()  # a slot is free

    async def _finish(self, job: Job, status: JobStatus, result: dict[str, Any] | None = None,
                      error: str = "") -> None:  # fmt: skip
        ended = await self.store.finish_job(job.id, status, result, error)
        self.metrics.finished.labels(str(ended.status)).inc()


def job_view(j: Job) -> dict[str, Any]:
    """An async prediction as its owner sees it."""
    return {
        "id": j.id, "model": j.model, "version": j.version, "status": str(j.status),
        "priority": j.priority, "attempts": j.attempts, "max_attempts": j.max_attempts,
        "created_at": _iso(j.created_at),
        "started_at": _iso(j.started_at) if j.started_at else None,
        "finished_at": _iso(j.finished_at) if j.finished_at else None,
        "result": j.result, "error": j.error or None, "idempotency_key": j.idempotency_key,
        "cancel_requested": j.cancel_requested,
    }  # fmt: skip


def _iso(at: datetime) -> str:
    return at.isoformat()
