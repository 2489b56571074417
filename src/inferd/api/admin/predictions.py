"""The async prediction routes under /api/v1 (`/predictions`, `/webhooks/secret`): thin
handlers over `control/jobs.py` and `control/webhooks.py`, each with its policy."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field, StrictInt

from inferd.api.admin import views
from inferd.api.admin.policy import AUTHENTICATED, control
from inferd.api.admin.routes import ERRORS, INT32, Body, Text
from inferd.control.audit import Actor
from inferd.core.errors import InvalidInput
from inferd.core.records import JobStatus

router = APIRouter(prefix="/api/v1", responses=ERRORS)

Dialect = Literal[
    "v2", "v1", "openai.chat", "openai.completions", "openai.embeddings", "openai.images"
]


class PredictionBody(Body):
    model: Text = Field(max_length=256)
    version: StrictInt | Text | None = Field(None, description="A version (default: as routed)")
    input: dict[str, Any] = Field(
        description="A request body the model takes: V2 infer, KServe V1 predict, or an OpenAI "
        "chat / completions / embeddings / images body (`model` and `stream` are ignored)"
    )
    api: Dialect | None = Field(
        None, description="The body's dialect (default: recognised from its fields)"
    )
    priority: StrictInt = Field(0, ge=-1000, le=1000, description="Higher runs first")
    webhook: Text | None = Field(None, max_length=2048,
                                 description="An http(s) URL the job's events are POSTed to, "
                                 "signed (Standard Webhooks)")  # fmt: skip
    webhook_events: list[Literal["started", "progress", "completed"]] | None = Field(
        None, description="Events sent besides `completed` (default: only `completed`)"
    )


# ---- async predictions ---------------------------------------------------------------------


@router.post("/predictions", status_code=202, tags=["predictions"])
async def submit_prediction(
    body: PredictionBody, request: Request, actor: Actor = Depends(AUTHENTICATED)
) -> Any:
    """Queue a prediction and answer at once (202, `Location`: where to poll it). An
    `Idempotency-Key` header seen before from the same user gives back the first job (200)."""
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 256:
        raise InvalidInput("Idempotency-Key: must be 1 to 256 characters")
    job, created = await control(request).jobs.submit(actor, body.model_dump(), key)
    # serialised here (orjson), not walked by FastAPI's encoder: this route is called at rate
    return Response(orjson.dumps(views.job(job)), 202 if created else 200,
                    {"Location": f"/api/v1/predictions/{job.id}"},
                    media_type="application/json")  # fmt: skip


@router.get("/predictions", tags=["predictions"])
async def list_predictions(
    request: Request,
    status: Annotated[JobStatus | None, Query()] = None,
    model: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT32)] = 0,
    actor: Actor = Depends(AUTHENTICATED),
) -> Any:
    """The caller's own predictions, newest first."""
    jobs = await control(request).jobs.list(actor, status, limit, offset, model)
    return [views.job(j) for j in jobs]


@router.get("/predictions/{job_id}", tags=["predictions"])
async def get_prediction(
    job_id: str, request: Request, actor: Actor = Depends(AUTHENTICATED)
) -> Any:
    """Status, attempts, timestamps, and the result (a V2 response body) or the error; with a
    webhook, its `deliveries` too."""
    cp = control(request)
    job = await cp.jobs.get(actor, job_id)
    doc = views.job(job)
    if job.webhook is not None:
        doc["deliveries"] = [views.delivery(d) for d in await cp.webhooks.deliveries(job.id)]
    return doc


@router.get("/predictions/{job_id}/deliveries", tags=["predictions"])
async def prediction_deliveries(
    job_id: str, request: Request, actor: Actor = Depends(AUTHENTICATED)
) -> Any:
    """The prediction's webhook deliveries, oldest first: event, status (`pending`,
    `delivered`, `failed`), attempts, the last answer's status code or error."""
    cp = control(request)
    job = await cp.jobs.get(actor, job_id)  # 404 for anyone else's
    return [views.delivery(d) for d in await cp.webhooks.deliveries(job.id)]


@router.post("/predictions/{job_id}/cancel", tags=["predictions"])
async def cancel_prediction(
    job_id: str, request: Request, actor: Actor = Depends(AUTHENTICATED)
) -> Any:
    """A queued prediction never runs; a running one is aborted; an ended one is unchanged."""
    return views.job(await control(request).jobs.cancel(actor, job_id))


# ---- webhooks ----------------------------------------------------------------------------


@router.get("/webhooks/secret", tags=["webhooks"])
async def webhook_secret(request: Request, actor: Actor = Depends(AUTHENTICATED)) -> Any:
    """The caller's webhook signing secret (`whsec_...`, created on first use): receivers
    verify deliveries with it (Standard Webhooks). `previous`: the secret it replaced, while it
    still signs after a rotation."""
    secret, previous = await control(request).webhooks.secret(actor)
    return views.webhook_secret(secret, previous)


@router.post("/webhooks/secret/rotate", tags=["webhooks"])
async def rotate_webhook_secret(request: Request, actor: Actor = Depends(AUTHENTICATED)) -> Any:
    """A new signing secret; the previous one also signs deliveries until `previous_until`
    (`webhooks.secret_rotation_grace_s`), so receivers can switch over."""
    secret, previous, until = await control(request).webhooks.rotate_secret(actor)
    return views.webhook_secret(secret, previous, until)
