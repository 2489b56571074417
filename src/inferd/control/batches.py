"""Batch jobs (`/api/v1/batch-jobs`) and OpenAI's files and batches (`/v1/files`,
`/v1/batches`): a file of requests (JSONL) or of rows (CSV, Parquet) run through a model,
answered by a file with one result per row, in input order.

A job is created from an upload, a file uploaded before (`input_file_id`) or, for admins, an
object of the artifact store (`input_key`). Its file is checked and split into chunks at once
(a bad file is a 400 naming the line or field, `batch_input`); its rows then run on whichever
node claims the job (`batch_runner`), as its owner: a disabled owner's job fails. Jobs and files
belong to the user who made them: anyone else gets 404 (admins see all).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from inferd.auth.policy import require
from inferd.auth.principal import Principal
from inferd.control import batch_rows
from inferd.control.audit import Actor, Audit
from inferd.control.batch_input import TABULAR, Prepared, detect_format, prepare
from inferd.control.batch_runner import BatchRunner, RowPlane, input_key, part_key
from inferd.control.catalog import Catalog
from inferd.core.bodies import APIS, OPENAI_URLS, V2
from inferd.core.errors import (
    Conflict,
    InferdError,
    InvalidField,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
)
from inferd.core.records import BATCH_DONE, BatchJob, BatchStatus, Scope, StoredFile
from inferd.observability.batches import BatchMetrics
from inferd.registry.artifacts import ArtifactStore, check_key
from inferd.registry.repository import utc_now
from inferd.registry.store import RegistryStore
from inferd.settings import BatchSettings

#: Purposes a file may be uploaded with (OpenAI's names); `batch` files are batch inputs.
PURPOSES = ("batch", "user_data")
#: The completion windows a `/v1/batches` job may ask for: it expires when it runs out.
WINDOWS = {"24h": timedelta(hours=24)}
#: OpenAI's limits on a job's metadata.
MAX_METADATA = 16
#: Chunks stored at once while a job is created.
_PUTS = 8
#: What a file name may hold (it reaches a Content-Disposition header).
_SAFE = re.compile(r"[^A-Za-z0-9._\-]")


@dataclass(frozen=True, slots=True)
class Upload:
    """A file received into the staging area (removed once stored)."""

    path: Path
    filename: str
    size: int


@dataclass(frozen=True, slots=True)
class _New:
    """An input not stored as a file yet: stored once it is found good."""

    filename: str
    data: bytes
    path: Path | None = None


class Batches:
    """Batch job and file use-cases, and this server's batch runner."""

    def __init__(self, store: RegistryStore, catalog: Catalog, audit: Audit,
                 artifacts: ArtifactStore, settings: BatchSettings, metrics: BatchMetrics,
                 node: str | None = None) -> None:  # fmt: skip
        self.store = store
        self.catalog = catalog
        self.audit = audit
        self.artifacts = artifacts
        self.settings = settings
        self.metrics = metrics
        self.runner = BatchRunner(store, artifacts, settings, metrics, node)

    @property
    def rows(self) -> RowPlane | None:
        """How rows reach the models; set by the composition root (`app.build`)."""
        return self.runner.rows

    @rows.setter
    def rows(self, plane: RowPlane | None) -> None:
        self.runner.rows = plane

    async def start(self) -> None:
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()

    def staging_file(self) -> Path:
        """Where an incoming upload is received."""
        return self.catalog.staging_file()

    # ---- files -----------------------------------------------------------------------------

    async def upload_file(self, actor: Actor, upload: Upload, purpose: Any) -> StoredFile:
        """Stores an uploaded file (`/v1/files`)."""
        try:
            owner = _owner(actor.principal)
            if purpose not in PURPOSES:
                raise InvalidField("purpose", f"must be one of {', '.join(PURPOSES)}")
            f = await self._store_file(owner, upload.filename, upload.size, purpose,
                                       path=upload.path)  # fmt: skip
        finally:
            shutil.rmtree(upload.path.parent, ignore_errors=True)
        await self.audit.record(actor, "file.upload", "file", f.id, bytes=f.bytes)
        return f

    async def _store_file(
        self, owner: str, filename: str, size: int, purpose: str, *, path: Path | None = None,
        data: bytes | None = None,
    ) -> StoredFile:  # fmt: skip
        file_id = f"file-{uuid.uuid4().hex}"
        key = f"files/{file_id}/data"
        if path is not None:
            await self.artifacts.put_file(key, path)
        else:
            await self.artifacts.put_bytes(key, data or b"")
        f = StoredFile(id=file_id, owner_id=owner, purpose=purpose, filename=filename[:256],
                       bytes=size, key=key, created_at=utc_now())  # fmt: skip
        try:
            return await self.store.create_file(f)
        except BaseException:
            await self.artifacts.delete_prefix(f"files/{file_id}")
            raise

    async def file(self, actor: Actor, file_id: str) -> StoredFile:
        """The caller's file (404 for anyone else's, unless an admin asks)."""
        p = actor.principal
        require(p, Scope.INFER)
        f = await self.store.get_file(file_id)
        if not _mine(p, f.owner_id):
            raise NotFound(f"file '{file_id[:64]}' not found")
        return f

    async def files(self, actor: Actor, purpose: str | None, limit: int,
                    after: str | None = None) -> list[StoredFile]:  # fmt: skip
        p = actor.principal
        require(p, Scope.INFER)
        if p.user_id is None:
            return []
        return await self.store.list_files(p.user_id, purpose, limit, after)

    async def content(self, actor: Actor, file_id: str) -> tuple[StoredFile, AsyncIterator[bytes]]:
        """The file and its bytes, read part by part."""
        f = await self.file(actor, file_id)
        return f, self._read(f)

    async def _read(self, f: StoredFile) -> AsyncIterator[bytes]:
        if f.parts == 0:
            yield await self.artifacts.get_bytes(f.key)
            return
        for i in range(f.parts):
            yield await self.artifacts.get_bytes(part_key(f.key, i))

    async def delete_file(self, actor: Actor, file_id: str) -> StoredFile:
        f = await self.file(actor, file_id)
        await self.store.delete_file(f.id)
        await self.artifacts.delete_prefix(f.key if f.parts else f.key.rsplit("/", 1)[0])
        await self.audit.record(actor, "file.delete", "file", f.id)
        return f

    # ---- batch jobs ------------------------------------------------------------------------

    async def create(self, actor: Actor, fields: dict[str, Any],
                     upload: Upload | None = None) -> BatchJob:  # fmt: skip
        """An inferd batch job (`/api/v1/batch-jobs`): `model`, the input (`upload`,
        `input_file_id` or `input_key`), and optionally `version`, `format`, `api`
        (the dialect of JSONL request bodies) and `metadata`."""
        try:
            p = actor.principal
            owner = _owner(p)
            source: StoredFile | _New
            model = fields.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidField("model", "must be a model name")
            await self.catalog.find(actor, model)  # 404 for a model the caller may not see
            version = fields.get("version")
            if version is not None and (not isinstance(version, str | int)
                                        or not 0 < len(str(version)) <= 64):  # fmt: skip
                raise InvalidField("version", "must be a version number")
            api = fields.get("api")
            if api is not None and api not in APIS:
                raise InvalidField("api", f"must be one of {', '.join(APIS)}")
            sources = [k for k in ("input_file_id", "input_key") if fields.get(k) is not None]
            if len(sources) + (upload is not None) != 1:
                raise InvalidField("input_file_id", "give one input: a file upload, "
                                   "input_file_id or input_key")  # fmt: skip
            if upload is not None:
                data = await asyncio.to_thread(upload.path.read_bytes)
                source = _New(upload.filename, data, upload.path)
            elif sources == ["input_file_id"]:
                source, data = await self._input_file(actor, fields["input_file_id"])
            else:
                source = await self._input_key(p, fields["input_key"])
                data = source.data
            fmt = detect_format(source.filename, data[:4], _str_or_none(fields, "format"))
            return await self._create(
                actor, owner, data, fmt, source, model=model,
                version=None if version is None else str(version), api=api, endpoint=None,
                window="", metadata=_metadata(fields.get("metadata")),
            )  # fmt: skip
        finally:
            if upload is not None:
                shutil.rmtree(upload.path.parent, ignore_errors=True)

    async def create_openai(self, actor: Actor, fields: dict[str, Any]) -> BatchJob:
        """An OpenAI batch (`/v1/batches`): `input_file_id` (a JSONL file of OpenAI batch
        lines, all for one model), `endpoint`, `completion_window` and `metadata`."""
        owner = _owner(actor.principal)
        endpoint = fields.get("endpoint")
        if endpoint not in OPENAI_URLS:
            raise InvalidField("endpoint", f"must be one of {', '.join(OPENAI_URLS)}")
        window = fields.get("completion_window")
        if window not in WINDOWS:
            raise InvalidField("completion_window", f"must be {', '.join(WINDOWS)}")
        file_id = fields.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise InvalidField("input_file_id", "must be a file id")
        source, data = await self._input_file(actor, file_id)
        if source.purpose != "batch":
            raise InvalidField("input_file_id", "must be a file uploaded with purpose 'batch'")
        return await self._create(
            actor, owner, data, "jsonl", source, model=None, version=None, api=None,
            endpoint=str(endpoint), window=str(window), metadata=_metadata(fields.get("metadata")),
        )  # fmt: skip

    async def _input_file(self, actor: Actor, file_id: Any) -> tuple[StoredFile, bytes]:
        if not isinstance(file_id, str) or not file_id:
            raise InvalidField("input_file_id", "must be a file id")
        try:
            f = await self.file(actor, file_id)
        except NotFound:
            raise NotFound(f"input_file_id: file '{file_id[:64]}' not found") from None
        if f.bytes > self.settings.max_file_bytes:
            raise PayloadTooLarge(f"input_file_id: over the {self.settings.max_file_bytes} "
                                  "byte limit of a batch file")  # fmt: skip
        chunks = [chunk async for chunk in self._read(f)]
        return f, b"".join(chunks)

    async def _input_key(self, p: Principal, key: Any) -> _New:
        """An admin's input read from the artifact store (kept as a file of its own, so the
        job does not depend on the object staying there)."""
        if not p.is_admin:
            raise PermissionDenied("input_key: only admins may read the artifact store; "
                                   "upload the file instead")  # fmt: skip
        if not isinstance(key, str):
            raise InvalidField("input_key", "must be an artifact-store key")
        check_key(key, "input_key")
        try:
            data = await self.artifacts.get_bytes(key)
        except NotFound:
            raise NotFound(f"input_key: no object '{key[:128]}' in the artifact store") from None
        if len(data) > self.settings.max_file_bytes:
            raise PayloadTooLarge(f"input_key: over the {self.settings.max_file_bytes} byte "
                                  "limit of a batch file")  # fmt: skip
        return _New(_SAFE.sub("_", key.rsplit("/", 1)[-1])[:200] or "input", data)

    async def _create(self, actor: Actor, owner: str, data: bytes, fmt: str,
                      source: StoredFile | _New,
                      *, model: str | None, version: str | None, api: str | None,
                      endpoint: str | None, window: str,
                      metadata: dict[str, str]) -> BatchJob:  # fmt: skip
        s = self.settings
        openai = endpoint is not None
        prepared: Prepared = await asyncio.to_thread(
            prepare, data, fmt, s.chunk_rows, model=model, endpoint=endpoint, openai=openai
        )
        if model is None:  # an OpenAI batch: its lines name the model
            model = prepared.model or ""
            try:
                await self.catalog.find(actor, model)
            except NotFound:
                raise NotFound(f"input_file_id: line 1: body.model: model '{model[:128]}' "
                               "not found") from None  # fmt: skip
        if fmt in TABULAR:
            self._check_columns(prepared, model, version)
            api = V2
        elif prepared.endpoint:
            api = OPENAI_URLS[prepared.endpoint]
        if isinstance(source, _New):
            source = await self._store_file(owner, source.filename, len(source.data), "batch",
                                            path=source.path, data=source.data)  # fmt: skip
        batch_id = f"batch_{uuid.uuid4().hex}"
        now = utc_now()
        job = BatchJob(
            id=batch_id, owner_id=owner, model=model, version=version, api=api or "",
            endpoint=prepared.endpoint, input_file_id=source.id, format=fmt,
            status=BatchStatus.IN_PROGRESS, total=prepared.total, done=0, failed=0,
            chunk_rows=s.chunk_rows, chunks=len(prepared.chunks), committed=0, created_at=now,
            openai=openai, completion_window=window,
            expires_at=now + WINDOWS[window] if window else None, metadata=metadata,
        )  # fmt: skip
        try:
            await self._put_chunks(batch_id, prepared.chunks)
            await self.store.create_batch(job)
        except BaseException:
            await self.artifacts.delete_prefix(f"batches/{batch_id}")
            raise
        await self.audit.record(actor, "batch.create", "batch", batch_id, model=model,
                                rows=job.total, format=fmt)  # fmt: skip
        self.runner.wake()
        return job

    def _check_columns(self, prepared: Prepared, model: str, version: str | None) -> None:
        """A table's columns against the model's inputs, when this server serves it now
        (otherwise each chunk is checked when it runs)."""
        if self.rows is None:
            return
        try:
            inputs, mbs = self.rows.signature(model, version)
        except InferdError:
            return
        batch_rows.layout(prepared.columns, inputs, mbs)

    async def _put_chunks(self, batch_id: str, chunks: list[bytes]) -> None:
        gate = asyncio.Semaphore(_PUTS)

        async def put(i: int, blob: bytes) -> None:
            async with gate:
                await self.artifacts.put_bytes(input_key(batch_id, i), blob)

        await asyncio.gather(*(put(i, blob) for i, blob in enumerate(chunks)))

    async def get(self, actor: Actor, batch_id: str) -> BatchJob:
        """The caller's batch job (404 for anyone else's, unless an admin asks)."""
        p = actor.principal
        require(p, Scope.INFER)
        try:
            job = await self.store.get_batch(batch_id)
        except NotFound:
            job = None
        if job is None or not _mine(p, job.owner_id):
            raise NotFound(f"batch '{batch_id[:64]}' not found")
        return self._with_live(job)

    def _with_live(self, job: BatchJob) -> BatchJob:
        """The job with the rows done here since its last recorded chunk counted (progress
        between chunks; a job running on another node shows its recorded chunks)."""
        done, failed = self.runner.live(job.id)
        if not done or job.status in BATCH_DONE:
            return job
        return dataclasses.replace(job, done=min(job.total, job.done + done),
                                   failed=job.failed + failed)  # fmt: skip

    async def list(self, actor: Actor, status: BatchStatus | None = None, limit: int = 50,
                   offset: int = 0, after: str | None = None,
                   openai: bool | None = None) -> list[BatchJob]:  # fmt: skip
        """The caller's own batch jobs, newest first."""
        p = actor.principal
        require(p, Scope.INFER)
        if p.user_id is None:
            return []
        jobs = await self.store.list_batches(p.user_id, status, limit, offset, after, openai)
        return [self._with_live(j) for j in jobs]

    async def cancel(self, actor: Actor, batch_id: str) -> BatchJob:
        """Stops a job: the chunks it stored so far are its output; an ended job is
        unchanged."""
        job = await self.get(actor, batch_id)
        if job.status in BATCH_DONE:
            return job
        job = await self.store.cancel_batch(job.id)
        if job.status == BatchStatus.CANCELLED:  # never ran: nothing to keep
            await self.artifacts.delete_prefix(f"batches/{job.id}")
        self.runner.cancel(job.id)  # at once when it runs here; another node sees the status
        await self.audit.record(actor, "batch.cancel", "batch", job.id)
        return job

    async def output(self, actor: Actor, batch_id: str) -> tuple[StoredFile, AsyncIterator[bytes]]:
        """An ended job's output file (409 while it runs, 404 when it has none)."""
        job = await self.get(actor, batch_id)
        if job.status not in BATCH_DONE:
            raise Conflict(f"batch '{job.id}' is {job.status.value}: its output is written "
                           "when it ends")  # fmt: skip
        if job.output_file_id is None:
            raise NotFound(f"batch '{job.id}' has no output ({job.status.value} before any "
                           "row was stored)")  # fmt: skip
        return await self.content(actor, job.output_file_id)


def _mine(p: Principal, owner_id: str) -> bool:
    return p.user_id == owner_id or p.is_admin


def _owner(p: Principal) -> str:
    require(p, Scope.INFER)
    if p.user_id is None:
        raise Unauthenticated("a batch job belongs to a user: sign in or use a key")
    return p.user_id


def _str_or_none(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(name, "must be a string")
    return value


def _metadata(raw: Any) -> dict[str, str]:
    """OpenAI's metadata: up to 16 string keys (64 characters) and values (512)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_METADATA:
        raise InvalidField("metadata", f"must be an object of at most {MAX_METADATA} keys")
    for k, v in raw.items():
        if not isinstance(k, str) or len(k) > 64 or not isinstance(v, str) or len(v) > 512:
            raise InvalidField("metadata", "keys are strings of up to 64 characters, values "
                               "strings of up to 512")  # fmt: skip
    return dict(raw)
