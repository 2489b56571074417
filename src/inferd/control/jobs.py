"""Async predictions (`/api/v1/predictions`): a request is stored as a job and answered later;
its owner polls it, lists it, cancels it, or is told by a signed webhook.

Jobs live in the registry database, so they outlive the process. A node claims a job under a
lease (`jobs.lease_s`) that it renews while the job runs; when a node dies its leases run out
and whichever node sweeps next queues those jobs again while they have attempts left (then
fails them, with the reason): a queued job is never lost, and one job never runs on two nodes
at once. A node stopping gracefully hands its running jobs back at once (the attempt not
counted). Each server runs up to `jobs.concurrency` jobs at once, claiming them one at a time
(`JobStore.claim_job`: a row lock on PostgreSQL). A submission wakes this server's runner at
once, and on PostgreSQL every node's (LISTEN/NOTIFY); otherwise jobs another node queued are
found within `jobs.poll_interval_s`.

A job's request body may be in any dialect the model is served in (V2, KServe V1, OpenAI;
`inferd.core.bodies`); it runs through `execute`, which the composition root wires to the data
plane as the owner: routing, fallbacks, the model's queue and batching, as a synchronous call
of the same body would. Results larger than `jobs.result_inline_bytes` are kept in the artifact
store; ended jobs are deleted after `jobs.retention_s`. Cancelling a queued job means it never
runs; cancelling a running one cancels its task (on whichever node runs it: the flag is seen
at the next lease renewal), which aborts the request the way a client that went away does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from inferd.auth.policy import require
from inferd.auth.principal import Principal, for_user
from inferd.control.audit import Actor, Audit
from inferd.control.catalog import Catalog
from inferd.core.bodies import body_api
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
from inferd.registry.artifacts import ArtifactStore
from inferd.registry.job_store import CHANNEL
from inferd.registry.store import RegistryStore
from inferd.settings import JobSettings

log = logging.getLogger("inferd.jobs")

#: Tells the job's progress (`{"tokens": n}`, ...) as the work reports it.
Progress = Callable[[dict[str, Any]], None]
#: Runs a job's request as its owner; returns the response body (what a synchronous call of
#: the same body would answer).
Execute = Callable[[Job, Principal, Progress], Awaitable[dict[str, Any]]]

#: Webhook events a job may ask for besides `completed`, which every webhook gets.
EVENTS = ("started", "progress", "completed")

#: The least time between two progress writes of one job (and its `progress` events).
PROGRESS_EVERY_S = 1.0


class WebhookSender(Protocol):
    """What jobs need of the webhook sender (`control.webhooks.Webhooks`)."""

    async def check_url(self, url: str) -> None:
        """InvalidInput naming `webhook` for a URL the server must not call."""
        ...

    def wake(self) -> None:
        """A delivery was queued: send it now."""
        ...


def default_node() -> str:
    """This process's name in job leases: the host, and a part unique to the process."""
    return f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:12]}"


class Jobs:
    """Async prediction use-cases and this server's job runner."""

    def __init__(self, store: RegistryStore, catalog: Catalog, audit: Audit,
                 settings: JobSettings, metrics: JobMetrics, artifacts: ArtifactStore,
                 node: str | None = None) -> None:  # fmt: skip
        self.metrics = metrics
        self.store = store
        self.catalog = catalog
        self.audit = audit
        self.settings = settings
        self.artifacts = artifacts
        self.node = node or default_node()
        #: Set by the composition root (`app.build`): how a job's request runs.
        self.execute: Execute | None = None
        #: Set by the composition root: who sends webhooks (None: jobs take no webhook).
        self.webhooks: WebhookSender | None = None
        self._lease = timedelta(seconds=settings.lease_s)
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()  # cancelled by their owner: recorded so
        self._lost: set[str] = set()  # another node holds them now: not recorded here
        self._tasks: list[asyncio.Task[None]] = []
        self._swept = 0.0

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
        await self.catalog.find_known(actor, name)  # 404 for a model the caller may not see
        body = fields.get("input")
        api = body_api(body, fields.get("api"))
        assert isinstance(body, dict)
        if len(orjson.dumps(body)) > self.settings.max_input_bytes:
            raise PayloadTooLarge(f"input: larger than {self.settings.max_input_bytes} bytes")
        webhook, events = await self._webhook(fields)
        version = fields.get("version")
        job, created = await self.store.create_job(
            p.user_id, name, None if version is None else str(version), body,
            int(fields.get("priority", 0)), self.settings.max_attempts, idempotency_key,
            api=api, webhook=webhook, webhook_events=events,
            audit=Audit.fields(actor, "prediction.submit", "job", model=name),
        )  # fmt: skip
        if created:
            self.metrics.submitted.inc()
            self._wake.set()
        return job, created

    async def _webhook(self, fields: dict[str, Any]) -> tuple[str | None, list[str] | None]:
        url = fields.get("webhook")
        events = fields.get("webhook_events")
        if url is None:
            if events:
                raise InvalidInput("webhook_events: needs a webhook")
            return None, None
        if not isinstance(url, str) or not url:
            raise InvalidInput("webhook: must be an http(s) URL")
        if self.webhooks is None:
            raise InvalidInput("webhook: this server sends no webhooks")
        await self.webhooks.check_url(url)
        if events is not None:
            if not isinstance(events, list) or any(e not in EVENTS for e in events):
                raise InvalidInput(f"webhook_events: each one of {', '.join(EVENTS)}")
            events = sorted(set(events))
        return url, events

    async def get(self, actor: Actor, job_id: str) -> Job:
        """The caller's job (404 for anyone else's, unless an admin asks), with its result
        read back from the artifact store when it is kept there."""
        job = await self._own(actor, job_id)
        if job.result_ref is not None and job.result is None:
            try:
                result = orjson.loads(await self.artifacts.get_bytes(job.result_ref))
            except NotFound:
                return dataclasses.replace(job, error=job.error or "the result is gone")
            job = dataclasses.replace(job, result=result)
        return job

    async def _own(self, actor: Actor, job_id: str) -> Job:
        p = actor.principal
        require(p, Scope.INFER)
        job = await self.store.require_job(job_id)
        if job.owner_id != p.user_id and not p.is_admin:
            raise NotFound(f"prediction '{job_id[:64]}' not found")
        return job

    async def list(self, actor: Actor, status: JobStatus | None, limit: int,
                   offset: int, model: str | None = None) -> list[Job]:  # fmt: skip
        """The caller's jobs, newest first (results kept in the artifact store are not read
        back here: GET the job)."""
        p = actor.principal
        require(p, Scope.INFER)
        if p.user_id is None:
            return []
        return await self.store.list_jobs(p.user_id, status, limit, offset, model)

    async def cancel(self, actor: Actor, job_id: str) -> Job:
        job = await self._own(actor, job_id)
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
        if self.settings.concurrency > 0:
            self._tasks = [asyncio.create_task(self._run_loop()),
                           asyncio.create_task(self._renew_loop())]  # fmt: skip
            if self.store.dialect == "postgresql":
                self._tasks.append(asyncio.create_task(self.store.listen(CHANNEL, self.wake)))
        else:  # takes none, but still sweeps leases, retention and the gauges
            self._tasks = [asyncio.create_task(self._sweep_loop())]

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop taking jobs; jobs running here are handed back (queued again, the attempt not
        counted) for this or another node to run."""
        running = dict(self._running)
        for task in (*self._tasks, *running.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *running.values(), return_exceptions=True)
        self._tasks = []
        unfinished = [i for i in running if i not in self._cancelled]
        if unfinished:
            try:
                n = await self.store.release_jobs(self.node, unfinished)
                log.info("stopping: %d running job(s) queued again", n)
            except InferdError as e:  # their leases run out instead
                log.warning("stopping: could not hand back %d job(s): %s", len(unfinished),
                            e.message)  # fmt: skip

    async def _run_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._sweep()
                while len(self._running) < self.settings.concurrency:
                    job = await self.store.claim_job(self.node, self._lease, event_body)
                    if job is None:
                        break
                    if job.webhook is not None and "started" in (job.webhook_events or ()):
                        self._tell_webhooks()
                    self._running[job.id] = asyncio.create_task(self._run(job))
            except InferdError as e:  # the database is down: try again at the next tick
                log.warning("claiming jobs failed: %s", e.message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval_s):
                    await self._wake.wait()

    async def _sweep_loop(self) -> None:
        while True:
            with contextlib.suppress(InferdError):
                await self._sweep()
            await asyncio.sleep(self._sweep_every())

    def _sweep_every(self) -> float:
        return min(self.settings.lease_s / 2, 5.0)

    async def _sweep(self) -> None:
        """Now and then (not on every wake-up): jobs whose node died queued again, ended jobs
        past their retention deleted, the status gauges refreshed."""
        now = time.monotonic()
        if now - self._swept < self._sweep_every():
            return
        self._swept = now
        requeued, ended = await self.store.requeue_expired(event_body)
        if requeued or ended:
            log.warning("jobs whose server stopped while they ran: %d queued again, %d ended",
                        requeued, ended)  # fmt: skip
            if ended:
                self._tell_webhooks()
        if self.settings.retention_s > 0:
            cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.retention_s)
            for job in await self.store.expire_jobs(cutoff):
                if job.result_ref is not None:
                    with contextlib.suppress(InferdError):
                        await self.artifacts.delete_prefix(f"jobs/{job.id}")
        counts = await self.store.count_jobs()
        for status in JobStatus:
            self.metrics.by_status.labels(str(status)).set(counts.get(str(status), 0))

    async def _renew_loop(self) -> None:
        """Renews this node's leases; aborts jobs cancelled on another node and jobs whose
        lease another node took over (after a long pause of this one)."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            ids = list(self._running)
            try:
                lost, cancelled = await self.store.renew_leases(self.node, ids, self._lease)
            except InferdError as e:
                log.warning("renewing job leases failed: %s", e.message)
                continue
            for job_id in lost | cancelled:
                task = self._running.get(job_id)
                if task is not None:
                    (self._lost if job_id in lost else self._cancelled).add(job_id)
                    task.cancel()

    async def _run(self, job: Job) -> None:
        m = self.metrics
        m.running.inc()
        if job.started_at is not None:
            m.wait.observe(max(0.0, (job.started_at - job.created_at).total_seconds()))
        try:
            if self.execute is None:
                raise InferdError("this server runs no jobs")
            result = await self.execute(job, await self._principal(job), self._reporter(job))
        except asyncio.CancelledError:
            if job.id in self._cancelled:
                await self._finish(job, JobStatus.CANCELLED, error="cancelled while it ran")
                return
            if job.id in self._lost:
                log.warning("job %s: its lease went to another node; left to it", job.id)
                return
            raise  # the server stops: `stop` hands the job back
        except (ModelNotReady, Overloaded) as e:  # passing: later, while attempts remain
            await self.store.requeue_job(job.id, e.message, self.node)
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
            self._lost.discard(job.id)
            self._wake.set()  # a slot is free

    def _reporter(self, job: Job) -> Progress:
        """Progress of `job` as the work tells it, written (with its webhook's `progress`
        event, when asked for) at most every `PROGRESS_EVERY_S`, the latest value winning."""
        latest: list[dict[str, Any]] = []
        writer: list[asyncio.Task[None]] = []

        async def write() -> None:
            while latest:
                progress = latest.pop()
                latest.clear()
                with contextlib.suppress(InferdError):
                    if await self.store.job_event(job.id, "progress", event_body, progress):
                        self._tell_webhooks()
                await asyncio.sleep(PROGRESS_EVERY_S)
            writer.clear()

        def report(progress: dict[str, Any]) -> None:
            latest.append(progress)
            if not writer:
                writer.append(asyncio.create_task(write()))

        return report

    async def _principal(self, job: Job) -> Principal:
        """The job runs as its owner (whose account may have been disabled since)."""
        user = await self.store.get_user(job.owner_id)
        if user.disabled:
            raise Unauthenticated("the owner's account is disabled")
        return for_user(user)

    async def _finish(self, job: Job, status: JobStatus, result: dict[str, Any] | None = None,
                      error: str = "") -> None:  # fmt: skip
        ref = None
        if result is not None:
            raw = orjson.dumps(result)
            if len(raw) > self.settings.result_inline_bytes:
                ref = f"jobs/{job.id}/result.json"
                await self.artifacts.put_bytes(ref, raw)
                result = None
        ended = await self.store.finish_job(job.id, status, result, error, event_body,
                                            node=self.node, result_ref=ref)  # fmt: skip
        if ended.node == self.node or ended.node is None:
            self.metrics.finished.labels(str(ended.status)).inc()
        if ended.webhook is not None:
            self._tell_webhooks()

    def _tell_webhooks(self) -> None:
        if self.webhooks is not None:
            self.webhooks.wake()


def event_body(name: str, job: Job) -> dict[str, Any]:
    """A job's webhook event (Standard Webhooks payload: type, timestamp, data)."""
    return {"type": f"prediction.{name}", "timestamp": datetime.now(UTC).isoformat(),
            "data": job_view(job)}  # fmt: skip


def job_view(j: Job) -> dict[str, Any]:
    """An async prediction as its owner sees it."""
    return {
        "id": j.id, "model": j.model, "version": j.version, "api": j.api,
        "status": str(j.status), "priority": j.priority, "attempts": j.attempts,
        "max_attempts": j.max_attempts, "created_at": _iso(j.created_at),
        "started_at": _iso(j.started_at) if j.started_at else None,
        "finished_at": _iso(j.finished_at) if j.finished_at else None,
        "result": j.result, "result_stored": j.result_ref is not None,
        "error": j.error or None, "idempotency_key": j.idempotency_key,
        "cancel_requested": j.cancel_requested, "progress": j.progress,
        "webhook": j.webhook, "webhook_events": list(j.webhook_events or ()) or None,
    }  # fmt: skip


def _iso(at: datetime) -> str:
    return at.isoformat()
