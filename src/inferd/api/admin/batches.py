"""Batch jobs over HTTP: inferd's `/api/v1/batch-jobs` and OpenAI's `/v1/files` and
`/v1/batches` (the openai SDK's batch API), thin handlers over `control.batches.Batches`.

The OpenAI routes answer in OpenAI's shapes, errors included (`{"error": {"message", "type",
"param", "code"}}`); they are reached because the raw data-plane router hands every path it
does not serve itself to the management app. Both take the same credentials as every route
(`Authorization: Bearer <key or token>`, the openai SDK's `api_key`) with the `infer` scope.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from inferd.api.admin import views
from inferd.api.admin.policy import AUTHENTICATED, control
from inferd.api.admin.routes import Text
from inferd.api.admin.upload import receive_form
from inferd.api.http.errors import status_of
from inferd.api.http.openai import error_body
from inferd.control.audit import Actor
from inferd.control.batches import Batches, Upload
from inferd.core.errors import InferdError, InvalidField, InvalidInput
from inferd.core.records import BatchJob, BatchStatus, StoredFile

ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": views.Error, "description": "Refused: 400 bad input (the message names the "
            "field or the file's line), 401, 403, 404, 409, 413 …"},
}  # fmt: skip
router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["batch-jobs"])
#: The form fields a batch job's upload may carry beside its `file`.
FORM_FIELDS = ("model", "version", "format", "api", "metadata")
#: `/v1/files` form fields (the openai SDK sends `expires_after[...]` when asked: ignored).
FILE_FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")
JSONL = "application/jsonl"


def _batches(request: Request) -> Batches:
    return control(request).batches


class BatchJobBody(BaseModel):
    """A batch job over a file stored before (an upload is a multipart form instead: `file`
    and these fields)."""

    model_config = ConfigDict(extra="forbid")

    model: Text = Field(max_length=256)
    version: Annotated[StrictInt, Field(ge=1, le=2**31 - 1)] | Annotated[
        Text, Field(max_length=64)
    ] | None = Field(None, description="A version (default: as routed)")  # fmt: skip
    input_file_id: Text | None = Field(None, max_length=64, description="A file from /v1/files")
    input_key: Text | None = Field(
        None, max_length=1024, description="Admins: an object of the artifact store"
    )
    format: Literal["jsonl", "csv", "parquet"] | None = Field(
        None, description="Default: Parquet by its bytes, else by the file name, else JSONL"
    )
    api: Literal["v2", "v1", "openai.chat", "openai.completions", "openai.embeddings",
                 "openai.images"] | None = Field(
        None, description="The dialect of JSONL request bodies (default: recognised per line)"
    )  # fmt: skip
    metadata: dict[Text, Text] | None = None


class OpenAIBatchBody(BaseModel):
    """OpenAI's `POST /v1/batches` body (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: Text = Field(max_length=64)
    endpoint: Text = Field(max_length=64)
    completion_window: Text = Field(max_length=16)
    metadata: dict[Text, Text] | None = None


def _first_error(e: ValidationError) -> InvalidInput:
    errors = e.errors()
    if not errors:
        return InvalidField("body", "invalid value")
    field = ".".join(str(x) for x in errors[0]["loc"]) or "body"
    return InvalidField(field, errors[0]["msg"])


async def _json_body(request: Request, model: type[BaseModel]) -> dict[str, Any]:
    raw = await request.body()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"body: not valid JSON ({e})") from None
    try:
        return model.model_validate(doc).model_dump(exclude_none=True)
    except ValidationError as e:
        raise _first_error(e) from None


async def _upload(request: Request, allowed: tuple[str, ...]) -> tuple[Upload, dict[str, str]]:
    b = _batches(request)
    staged, raw = await receive_form(request, b.staging_file(), b.settings.max_file_bytes,
                                     allowed)  # fmt: skip
    up = Upload(staged.path, staged.filename, staged.size)
    try:
        fields = {}
        for k, v in raw.items():
            try:
                fields[k] = v.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidField(k, "must be UTF-8 text") from None
            if "\x00" in fields[k]:
                raise InvalidField(k, "must not contain NUL characters")
    except BaseException:
        shutil.rmtree(staged.path.parent, ignore_errors=True)
        raise
    return up, fields


async def _file_response(f: StoredFile, parts: AsyncIterator[bytes]) -> Response:
    """The file's bytes, streamed part by part (the first part is read before answering,
    so a missing object is an error answer rather than a cut stream)."""
    try:
        first = await anext(parts)
    except StopAsyncIteration:
        first = b""

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for part in parts:
            yield part

    headers = {"content-disposition": f'attachment; filename="{f.filename}"'}
    media = JSONL if f.filename.endswith(".jsonl") else "application/octet-stream"
    return StreamingResponse(body(), media_type=media, headers=headers)


# ---- /api/v1/batch-jobs ----------------------------------------------------------------------


@router.post("/batch-jobs", status_code=201, openapi_extra={"requestBody": {
    "required": True, "content": {
        "application/json": {"schema": BatchJobBody.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
            "version": {"type": "string"}, "format": {"type": "string"},
            "api": {"type": "string"}, "metadata": {"type": "string"}}}}}}})  # fmt: skip
async def create_batch_job(
    request: Request, response: Response, actor: Actor = Depends(AUTHENTICATED)
) -> Any:
    """Run a file through a model: a multipart upload (`file`, `model`, and optionally
    `version`, `format`, `api`, `metadata` as JSON), or JSON naming a stored file
    (`input_file_id`) or, for admins, an artifact-store object (`input_key`). The file is
    checked at once (400 naming the line or field); its rows then run in the background."""
    ctype = request.headers.get("content-type", "")
    b = _batches(request)
    if ctype.startswith(("multipart/form-data", "application/octet-stream")):
        upload, fields = await _upload(request, FORM_FIELDS)
        doc: dict[str, Any] = dict(fields)
        if "metadata" in doc:
            try:
                doc["metadata"] = orjson.loads(doc["metadata"])
            except orjson.JSONDecodeError:
                doc["metadata"] = "not JSON"  # refused by the use-case, which cleans up
        job = await b.create(actor, doc, upload)
    else:
        job = await b.create(actor, await _json_body(request, BatchJobBody))
    response.headers["Location"] = f"/api/v1/batch-jobs/{job.id}"
    return batch_job(job)


@router.get("/batch-jobs")
async def list_batch_jobs(
    request: Request,
    status: Annotated[BatchStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    actor: Actor = Depends(AUTHENTICATED),
) -> Any:
    """The caller's own batch jobs (and OpenAI batches), newest first."""
    jobs = await _batches(request).list(actor, status, limit, offset)
    return [batch_job(j) for j in jobs]


@router.get("/batch-jobs/{batch_id}")
async def get_batch_job(batch_id: str, request: Request,
                        actor: Actor = Depends(AUTHENTICATED)) -> Any:  # fmt: skip
    """Status and progress: rows done of the total, rows per second, the time left."""
    return batch_job(await _batches(request).get(actor, batch_id))


@router.post("/batch-jobs/{batch_id}/cancel")
async def cancel_batch_job(batch_id: str, request: Request,
                           actor: Actor = Depends(AUTHENTICATED)) -> Any:  # fmt: skip
    """Stop a job: the rows stored so far are its output; an ended job is unchanged."""
    return batch_job(await _batches(request).cancel(actor, batch_id))


@router.get("/batch-jobs/{batch_id}/output",
            responses={200: {"content": {JSONL: {"schema": {"type": "string"}}}}})  # fmt: skip
async def batch_job_output(batch_id: str, request: Request,
                           actor: Actor = Depends(AUTHENTICATED)) -> Any:  # fmt: skip
    """The output file (JSONL, one line per input row, in input order), once the job ended
    (409 before)."""
    f, parts = await _batches(request).output(actor, batch_id)
    return await _file_response(f, parts)


# ---- OpenAI: /v1/files and /v1/batches --------------------------------------------------------


class OpenAIRoute(APIRoute):
    """An OpenAI route of the management app: refusals in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except InferdError as e:
                status = status_of(e)
                headers = {"www-authenticate": "Bearer"} if status == 401 else None
                return JSONResponse(error_body(e, status), status, headers=headers)
            except RequestValidationError as e:
                first = e.errors()[0] if e.errors() else {}
                loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
                err = InvalidField(".".join(loc) or "body", str(first.get("msg", "invalid")))
                return JSONResponse(error_body(err, 400), 400)

        return run


openai_router = APIRouter(route_class=OpenAIRoute, tags=["openai-batch"])
OpenAIErrors: dict[int | str, dict[str, Any]] = {
    "4XX": {"description": 'OpenAI\'s shape: {"error": {"message", "type", "param", "code"}}'}
}


@openai_router.post("/v1/files", responses=OpenAIErrors)
async def create_file(request: Request, actor: Actor = Depends(AUTHENTICATED)) -> Any:
    """Upload a file (multipart: `file`, `purpose` = `batch` for a batch's input)."""
    upload, fields = await _upload(request, FILE_FIELDS)
    f = await _batches(request).upload_file(actor, upload, fields.get("purpose"))
    return file_object(f)


@openai_router.get("/v1/files", responses=OpenAIErrors)
async def list_files(
    request: Request,
    purpose: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: Annotated[str | None, Query(max_length=64)] = None,
    actor: Actor = Depends(AUTHENTICATED),
) -> Any:
    """The caller's files, newest first."""
    files = await _batches(request).files(actor, purpose, limit + 1, after)
    return _page([file_object(f) for f in files], limit)


@openai_router.get("/v1/files/{file_id}", responses=OpenAIErrors)
async def get_file(file_id: str, request: Request, actor: Actor = Depends(AUTHENTICATED)) -> Any:
    return file_object(await _batches(request).file(actor, file_id))


@openai_router.get("/v1/files/{file_id}/content", responses=OpenAIErrors)
async def file_content(file_id: str, request: Request,
                       actor: Actor = Depends(AUTHENTICATED)) -> Any:  # fmt: skip
    """The file's bytes (a batch's output: one JSON line per request)."""
    f, parts = await _batches(request).content(actor, file_id)
    return await _file_response(f, parts)


@openai_router.delete("/v1/files/{file_id}", responses=OpenAIErrors)
async def delete_file(file_id: str, request: Request,
                      actor: Actor = Depends(AUTHENTICATED)) -> Any:  # fmt: skip
    f = await _batches(request).delete_file(actor, file_id)
    return {"id": f.id, "object": "file", "deleted": True}


@openai_router.post("/v1/batches", responses=OpenAIErrors,
                    openapi_extra={"requestBody": {"required": True, "content": {
                        "application/json": {
                            "schema": OpenAIBatchBody.model_json_schema()}}}})  # fmt: skip
async def create_batch(request: Request, actor: Actor = Depends(AUTHENTICATED)) -> Any:
    """A batch over an uploaded JSONL file of OpenAI batch lines (`custom_id`, `method`,
    `url`, `body`), all for one model and `endpoint`."""
    fields = await _json_body(request, OpenAIBatchBody)
    return openai_batch(await _batches(request).create_openai(actor, fields))


@openai_router.get("/v1/batches", responses=OpenAIErrors)
async def list_batches(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
    actor: Actor = Depends(AUTHENTICATED),
) -> Any:
    jobs = await _batches(request).list(actor, None, limit + 1, 0, after, openai=True)
    return _page([openai_batch(j) for j in jobs], limit)


@openai_router.get("/v1/batches/{batch_id}", responses=OpenAIErrors)
async def get_batch(batch_id: str, request: Request, actor: Actor = Depends(AUTHENTICATED)) -> Any:
    return openai_batch(await _batches(request).get(actor, batch_id))


@openai_router.post("/v1/batches/{batch_id}/cancel", responses=OpenAIErrors)
async def cancel_batch(batch_id: str, request: Request,
                       actor: Actor = Depends(AUTHENTICATED)) -> Any:  # fmt: skip
    return openai_batch(await _batches(request).cancel(actor, batch_id))


# ---- shapes ------------------------------------------------------------------------------------


def _page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """OpenAI's cursor page (`data` holds one more than `limit` when there is more)."""
    more = len(data) > limit
    data = data[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}  # fmt: skip


def _unix(t: datetime | None) -> int | None:
    return None if t is None else int(t.timestamp())


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def file_object(f: StoredFile) -> dict[str, Any]:
    """OpenAI's file object."""
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": _unix(f.created_at),
            "filename": f.filename, "purpose": f.purpose, "status": "processed",
            "expires_at": None, "status_details": None}  # fmt: skip


def openai_batch(b: BatchJob) -> dict[str, Any]:
    """OpenAI's batch object."""
    errors = None
    if b.error:
        errors = {"object": "list", "data": [{"code": "batch_failed", "message": b.error,
                                              "param": None, "line": None}]}  # fmt: skip
    return {
        "id": b.id, "object": "batch", "endpoint": b.endpoint, "model": b.model,
        "errors": errors, "input_file_id": b.input_file_id,
        "completion_window": b.completion_window or "24h", "status": b.status.value,
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": _unix(b.created_at), "in_progress_at": _unix(b.in_progress_at),
        "expires_at": _unix(b.expires_at), "finalizing_at": _unix(b.finalizing_at),
        "completed_at": _unix(b.completed_at), "failed_at": _unix(b.failed_at),
        "expired_at": _unix(b.expired_at), "cancelling_at": _unix(b.cancelling_at),
        "cancelled_at": _unix(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.done - b.failed,
                           "failed": b.failed},
        "metadata": b.metadata or None,
    }  # fmt: skip


def progress(b: BatchJob, now: datetime | None = None) -> dict[str, Any]:
    """Rows done (and how) of the total; over the current (or last) run, rows per second and
    the seconds left at that pace."""
    rate = eta = None
    start = b.run_started_at
    end = now or datetime.now(UTC)
    if b.status not in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
        end = b.completed_at or b.cancelled_at or b.expired_at or b.failed_at or end
    if start is not None:
        elapsed = (end - start).total_seconds()
        ran = b.done - b.run_start_done
        if elapsed > 0 and ran > 0:
            rate = round(ran / elapsed, 2)
            if b.status == BatchStatus.IN_PROGRESS:
                eta = round((b.total - b.done) / (ran / elapsed), 1)
    return {"total": b.total, "done": b.done, "succeeded": b.done - b.failed,
            "failed": b.failed, "percent": round(100 * b.done / b.total, 1) if b.total else 0.0,
            "rows_per_s": rate, "eta_s": eta}  # fmt: skip


def batch_job(b: BatchJob) -> dict[str, Any]:
    """A batch job as its owner sees it on `/api/v1/batch-jobs`."""
    return {
        "id": b.id, "object": "batch_job", "model": b.model, "version": b.version,
        "status": b.status.value, "format": b.format, "api": b.api or None,
        "endpoint": b.endpoint or None, "input_file_id": b.input_file_id,
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "progress": progress(b), "error": b.error or None, "metadata": b.metadata,
        "created_at": _iso(b.created_at), "in_progress_at": _iso(b.in_progress_at),
        "finalizing_at": _iso(b.finalizing_at), "completed_at": _iso(b.completed_at),
        "failed_at": _iso(b.failed_at), "cancelling_at": _iso(b.cancelling_at),
        "cancelled_at": _iso(b.cancelled_at), "expires_at": _iso(b.expires_at),
        "expired_at": _iso(b.expired_at),
        "output": f"/api/v1/batch-jobs/{b.id}/output" if b.output_file_id else None,
    }  # fmt: skip
