"""The management API under /api/v1: thin handlers over the control plane's use-cases.

Every route names its policy (`Depends(<POLICY>)`); bodies are pydantic models (this is not the
inference path), answers are the shapes in `views`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt
from pydantic_core import PydanticCustomError

from inferd.api.admin import views
from inferd.api.admin.policy import ADMIN, AUTHENTICATED, MANAGE, OPTIONAL, PUBLIC, control
from inferd.api.admin.upload import receive_upload
from inferd.control.audit import Actor
from inferd.control.catalog import VersionMeta
from inferd.control.deployments import parse_config
from inferd.control.plane import ControlPlane
from inferd.control.rollouts import Rollout
from inferd.core.canary import parse_canary
from inferd.core.errors import InvalidField, InvalidInput
from inferd.core.records import Deployment, Role, Scope
from inferd.core.routing import NO_ROUTING, RoutingPolicy, parse_routing
from inferd.core.traffic import Revision, parse_traffic

#: Every error answer has this shape (and a 4xx status); bad input is 400 naming the field.
ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": views.Error, "description": "Refused: 400 bad input (the message names the "
            "field), 401, 403, 404, 409, 413, 422, 429 …"},
}  # fmt: skip
router = APIRouter(prefix="/api/v1", responses=ERRORS)
#: Bounds of the database's integer columns: a larger number is a 400, not a failed write.
INT32 = 2**31 - 1
#: 8 PiB: beyond any disk, and a number the OpenAPI document (floats) states exactly.
MAX_BYTES = 2**53
VersionNumber = Annotated[int, Path(ge=1, le=INT32, description="Version number")]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul", "must not contain NUL characters")
    return value


#: Every string of a request body: none has a use for NUL, and PostgreSQL cannot store or
#: compare text holding it.
Text = Annotated[str, AfterValidator(_no_nul)]


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional(**constraints: Any) -> Any:
    """A PATCH field that may be left out but not set to null: what it changes has no null
    value. Left out, it is not in `model_dump(exclude_unset=True)`; null is a 400 naming it."""
    return Field(None, json_schema_extra=_drop_default, **constraints)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterBody(Body):
    username: Text = Field(max_length=256)
    password: Text = Field(max_length=1024)
    role: Role = Role.MEMBER


class LoginBody(Body):
    username: Text = Field(max_length=256)
    password: Text = Field(max_length=1024)


class RefreshBody(Body):
    refresh_token: Text = Field(max_length=4096)


class UserPatch(Body):
    """Leave a field out to keep it; a quota set to null returns to the server default."""

    role: Role = _optional()
    trusted: StrictBool = _optional()
    disabled: StrictBool = _optional()
    rpm_limit: StrictInt | None = Field(None, gt=0, le=INT32)
    concurrency_limit: StrictInt | None = Field(None, gt=0, le=INT32)
    storage_quota_bytes: StrictInt | None = Field(None, gt=0, le=MAX_BYTES)


class KeyBody(Body):
    name: Text = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(default_factory=lambda: [Scope.INFER], max_length=3)
    expires_at: datetime | None = None
    user_id: Text | None = Field(None, max_length=64)


class ModelBody(Body):
    name: Text = Field(max_length=256)
    description: Text = Field("", max_length=10_000)
    framework: Text = Field("", max_length=64)
    model_type: Text = Field("", max_length=64)
    task_type: Text = Field("", max_length=64)
    tags: list[Annotated[Text, Field(max_length=64)]] = Field(default_factory=list, max_length=64)
    visibility: Literal["private", "public"] = "private"


class ModelPatch(Body):
    """Leave a field out to keep it."""

    description: Text = _optional(max_length=10_000)
    framework: Text = _optional(max_length=64)
    model_type: Text = _optional(max_length=64)
    task_type: Text = _optional(max_length=64)
    tags: list[Annotated[Text, Field(max_length=64)]] = _optional(max_length=64)
    visibility: Literal["private", "public"] = _optional()


class MetaBody(Body):
    """What the uploader states about a version (the rest is detected)."""

    runtime: Text | None = Field(None, max_length=64)
    inputs: list[dict[str, Any]] = Field(default_factory=list, max_length=1000)
    outputs: list[dict[str, Any]] = Field(default_factory=list, max_length=1000)
    max_batch_size: StrictInt = Field(0, ge=0, le=INT32)
    parameters: dict[str, Any] = Field(default_factory=dict)
    sample_input: dict[str, Any] | None = None
    sample_output: dict[str, Any] | None = None


class ImportBody(MetaBody):
    url: Text = Field(max_length=4096)


class VersionPatch(Body):
    sample_input: dict[str, Any] | None = None
    sample_output: dict[str, Any] | None = None


#: A traffic split: `[{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]` or the short
#: form `{"1": 90, "2": 10}`; whole percentages that sum to 100. An entry of the list form may
#: carry the revision's own runtime `config` (`null`: the deployment's; absent: unchanged).
Traffic = list[dict[str, Any]] | dict[str, Any] | None


#: A routing policy: `{"rules": [{"header", "value", "version"}], "fallbacks": [{"model",
#: "version"}], "circuit_breaker": {"failures", "error_ratio", "window_s", "min_requests",
#: "open_s", "probes"}}` (every part optional).
Routing = dict[str, Any] | None
ROUTING_DOC = (
    "Header rules, fallbacks, a circuit breaker per revision, a shadow, an A/B test; {} removes "
    "them (docs/control-plane.md, 'Routing rules, fallbacks, circuit breakers, shadow traffic "
    "and A/B tests')"
)


class PipelineBody(Body):
    name: Text = Field(max_length=256)
    description: Text = Field("", max_length=10_000)
    visibility: Literal["private", "public"] = "private"
    document: dict[str, Any] = Field(
        description="The pipeline document (docs/pipelines.md): format, inputs, outputs, root, "
        "nodes, layout"
    )


class PipelineDocument(Body):
    document: dict[str, Any] = Field(description="The pipeline document (docs/pipelines.md)")


class DeployBody(Body):
    model: Text = Field(max_length=256)
    version: StrictInt | None = Field(None, ge=1, le=INT32)
    config: dict[str, Any] | None = None
    traffic: Traffic = Field(None, description="Revisions and their weights (instead of version)")
    routing: Routing = Field(None, description=ROUTING_DOC)


class DeploymentPatch(Body):
    version: StrictInt | None = Field(
        None, ge=1, le=INT32, description="Send all traffic to this version"
    )
    config: dict[str, Any] | None = None
    traffic: Traffic = Field(None, description="Revisions and their weights (instead of version)")
    routing: Routing = Field(None, description=ROUTING_DOC)


def _traffic(raw: Traffic) -> tuple[Revision, ...] | None:
    return None if raw is None else parse_traffic(raw, config=parse_config)


def _routing(raw: Routing) -> RoutingPolicy | None:
    return None if raw is None else parse_routing(raw)


def _meta(body: MetaBody) -> VersionMeta:
    return VersionMeta(
        runtime=body.runtime, inputs=body.inputs, outputs=body.outputs,
        max_batch_size=body.max_batch_size, parameters=body.parameters,
        sample_input=body.sample_input, sample_output=body.sample_output,
    )  # fmt: skip


# ---- auth and users ----------------------------------------------------------------------


@router.post("/auth/register", status_code=201, tags=["users"])
async def register(body: RegisterBody, request: Request, actor: Actor = Depends(PUBLIC)) -> Any:
    """Create a user: admins create anyone; others only with open registration."""
    u = await control(request).identity.register(actor, body.username, body.password, body.role)
    return views.user(u)


@router.post("/auth/login", tags=["users"])
async def login(body: LoginBody, request: Request, actor: Actor = Depends(PUBLIC)) -> Any:
    """Exchange a username and password for an access and a refresh token (JWT)."""
    pair = await control(request).identity.login(body.username, body.password, actor.ip)
    return {"access_token": pair.access_token, "refresh_token": pair.refresh_token,
            "token_type": pair.token_type, "expires_in": pair.expires_in}  # fmt: skip


@router.post("/auth/refresh", tags=["users"])
async def refresh(body: RefreshBody, request: Request, actor: Actor = Depends(PUBLIC)) -> Any:
    """A new token pair for a valid refresh token."""
    pair = await control(request).identity.refresh(body.refresh_token)
    return {"access_token": pair.access_token, "refresh_token": pair.refresh_token,
            "token_type": pair.token_type, "expires_in": pair.expires_in}  # fmt: skip


@router.get("/auth/me", tags=["users"])
async def me(request: Request, actor: Actor = Depends(AUTHENTICATED)) -> Any:
    """The calling user, and the scopes of the credential used."""
    u = await control(request).identity.me(actor)
    p = actor.principal
    return views.user(u) | {"scopes": sorted(str(s) for s in p.scopes), "via": p.via}


@router.get("/users", tags=["users"])
async def list_users(request: Request, actor: Actor = Depends(ADMIN)) -> Any:
    return [views.user(u) for u in await control(request).identity.list_users(actor)]


@router.patch("/users/{user_id}", tags=["users"])
async def update_user(
    user_id: str, body: UserPatch, request: Request, actor: Actor = Depends(ADMIN)
) -> Any:
    """Admins set role, trusted (may upload code-executing formats), disabled and quotas."""
    fields = body.model_dump(exclude_unset=True)
    return views.user(await control(request).identity.update_user(actor, user_id, fields))


# ---- API keys ----------------------------------------------------------------------------


@router.post("/keys", status_code=201, tags=["keys"])
async def create_key(body: KeyBody, request: Request, actor: Actor = Depends(MANAGE)) -> Any:
    """A new API key. The `key` field is shown only in this answer; store it now."""
    k, token = await control(request).identity.create_key(
        actor, body.name, frozenset(body.scopes), body.expires_at, body.user_id
    )
    return views.key(k) | {"key": token}


@router.get("/keys", tags=["keys"])
async def list_keys(
    request: Request, user_id: str | None = None, actor: Actor = Depends(MANAGE)
) -> Any:
    return [views.key(k) for k in await control(request).identity.list_keys(actor, user_id)]


@router.delete("/keys/{key_id}", tags=["keys"])
async def revoke_key(key_id: str, request: Request, actor: Actor = Depends(MANAGE)) -> Any:
    """Revoke a key: it stops working at once."""
    return views.key(await control(request).identity.revoke_key(actor, key_id))


# ---- models and versions -----------------------------------------------------------------


@router.get("/models", tags=["models"])
async def list_models(request: Request, actor: Actor = Depends(OPTIONAL)) -> Any:
    """Models the caller may see: their own, public ones, and the repository's system models."""
    return [views.model(m) for m in await control(request).catalog.list_models(actor)]


@router.post("/models", status_code=201, tags=["models"])
async def create_model(body: ModelBody, request: Request, actor: Actor = Depends(MANAGE)) -> Any:
    return views.model(await control(request).catalog.create_model(actor, body.model_dump()))


@router.get("/models/{name}", tags=["models"])
async def get_model(name: str, request: Request, actor: Actor = Depends(OPTIONAL)) -> Any:
    return views.model(await control(request).catalog.find(actor, name))


@router.patch("/models/{name}", tags=["models"])
async def update_model(
    name: str, body: ModelPatch, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    fields = body.model_dump(exclude_unset=True)
    return views.model(await control(request).catalog.update_model(actor, name, fields))


@router.delete("/models/{name}", tags=["models"])
async def delete_model(name: str, request: Request, actor: Actor = Depends(MANAGE)) -> Any:
    """Delete a model with its versions, artifacts and deployment."""
    cp = control(request)
    m = await cp.catalog.delete_model(actor, name)
    cp.deployments.wake()
    return views.model(m)


@router.get("/models/{name}/versions", tags=["versions"])
async def list_versions(name: str, request: Request, actor: Actor = Depends(OPTIONAL)) -> Any:
    m, versions = await control(request).catalog.list_versions(actor, name)
    return [views.version(v, m.name) for v in versions]


@router.post("/models/{name}/versions", status_code=201, tags=["versions"])
async def upload_version(name: str, request: Request, actor: Actor = Depends(MANAGE)) -> Any:
    """Upload an artifact: multipart/form-data with a `file` part and an optional `meta` JSON
    part (runtime, inputs, outputs, max_batch_size, parameters, sample_input, sample_output),
    or a raw application/octet-stream body (`X-Filename` header, `meta` query parameter).
    The format is detected from the bytes; the version is validated by loading it once."""
    cp = control(request)
    cat = cp.catalog
    declared = request.headers.get("content-length")
    model = await cat.prepare_upload(actor, name, int(declared) if declared
                                     and declared.isdigit() else None)  # fmt: skip
    staged, raw_meta = await receive_upload(request, cat.staging_file(),
                                            cat.settings.max_upload_bytes)  # fmt: skip
    try:
        meta = _meta(MetaBody.model_validate(raw_meta))
    except ValueError as e:
        raise InvalidInput(f"meta: {_first_error(e)}") from None
    mv = await cat.add_version(actor, model, staged, meta)
    return views.version(mv, model.name)


@router.post("/models/{name}/versions/import", status_code=202, tags=["versions"])
async def import_version(
    name: str, body: ImportBody, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    """Import an artifact from an http(s) URL (checked against SSRF on every hop). Answers at
    once with the version `importing`; poll it until `ready` or `failed`."""
    mv = await control(request).catalog.import_url(actor, name, body.url, _meta(body))
    return views.version(mv, name)


@router.get("/models/{name}/versions/{version}", tags=["versions"])
async def get_version(
    name: str, version: VersionNumber, request: Request, actor: Actor = Depends(OPTIONAL)
) -> Any:
    return views.version(await control(request).catalog.get_version(actor, name, version), name)


@router.patch("/models/{name}/versions/{version}", tags=["versions"])
async def update_version(
    name: str,
    version: VersionNumber,
    body: VersionPatch,
    request: Request,
    actor: Actor = Depends(MANAGE),
) -> Any:
    """Set the sample input (a V2 inference request body) and its expected output."""
    fields = body.model_dump(exclude_unset=True)
    mv = await control(request).catalog.update_version(actor, name, version, fields)
    return views.version(mv, name)


@router.delete("/models/{name}/versions/{version}", tags=["versions"])
async def delete_version(
    name: str, version: VersionNumber, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    mv = await control(request).catalog.delete_version(actor, name, version)
    return views.version(mv, name)


# ---- pipelines ---------------------------------------------------------------------------


@router.get("/pipelines", tags=["pipelines"])
async def list_pipelines(request: Request, actor: Actor = Depends(OPTIONAL)) -> Any:
    """Pipelines the caller may see: their own, public ones, the repository's."""
    return [views.model(m) for m in await control(request).pipelines.list(actor)]


@router.post("/pipelines", status_code=201, tags=["pipelines"])
async def create_pipeline(
    body: PipelineBody, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    """Create a pipeline with its first version. The document is checked first (422 naming the
    node and field; nothing is stored): structure, processors, the models its steps name (ones
    the caller may use), datatypes and ranks between connected steps. Deploy it as a model."""
    stored = await control(request).pipelines.create(actor, body.model_dump())
    return views.pipeline(stored)


@router.post("/pipelines/validate", tags=["pipelines"])
async def validate_pipeline(
    body: PipelineDocument, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    """Check a document as saving it would, without saving anything (the editor's check)."""
    pipeline = await control(request).pipelines.check(actor, body.document)
    return {"valid": True, "nodes": sorted(pipeline.nodes),
            "models": sorted({m for m, _ in pipeline.models()})}  # fmt: skip


@router.get("/pipelines/{name}", tags=["pipelines"])
async def get_pipeline(name: str, request: Request, actor: Actor = Depends(OPTIONAL)) -> Any:
    """The pipeline with its newest version's document."""
    return views.pipeline(await control(request).pipelines.get(actor, name))


@router.put("/pipelines/{name}", tags=["pipelines"])
async def update_pipeline(
    name: str, body: PipelineDocument, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    """Store a new version of the pipeline with this document (checked as on create). A
    deployment serving it moves to the new version when it is redeployed with it."""
    return views.pipeline(await control(request).pipelines.update(actor, name, body.document))


@router.get("/pipelines/{name}/versions/{version}", tags=["pipelines"])
async def get_pipeline_version(
    name: str, version: VersionNumber, request: Request, actor: Actor = Depends(OPTIONAL)
) -> Any:
    return views.pipeline(await control(request).pipelines.get(actor, name, version))


@router.delete("/pipelines/{name}", tags=["pipelines"])
async def delete_pipeline(name: str, request: Request, actor: Actor = Depends(MANAGE)) -> Any:
    """Delete a pipeline with its versions and deployment."""
    cp = control(request)
    m = await cp.pipelines.delete(actor, name)
    cp.deployments.wake()
    return views.model(m)


# ---- deployments -------------------------------------------------------------------------


@router.get("/deployments", tags=["deployments"])
async def list_deployments(request: Request, actor: Actor = Depends(AUTHENTICATED)) -> Any:
    deps = control(request).deployments
    return [views.deployment(d, m.name, deps.routes.shadows.get(m.name))
            for d, m in await deps.list(actor)]  # fmt: skip


@router.post("/deployments", status_code=201, tags=["deployments"])
async def create_deployment(
    body: DeployBody, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    """Deploy a version (default: the newest ready one). Status goes `deploying` → `ready`
    (or `failed` with the reason) as the data plane loads it."""
    d = await control(request).deployments.create(
        actor, body.model, body.version, parse_config(body.config), _traffic(body.traffic),
        _routing(body.routing) or NO_ROUTING,
    )  # fmt: skip
    return views.deployment(d, body.model)


@router.get("/deployments/{deployment_id}", tags=["deployments"])
async def get_deployment(
    deployment_id: str, request: Request, actor: Actor = Depends(AUTHENTICATED)
) -> Any:
    deps = control(request).deployments
    # the rollout as it was before the deployment is read: a phase shown is never ahead of the
    # deployment shown with it (a rollback's new traffic is stored before its phase is set)
    ro = control(request).rollouts.latest.get(deployment_id)
    rollout = ro.doc() if ro is not None else None
    d, m = await deps.get(actor, deployment_id)
    return views.deployment(d, m.name, deps.routes.shadows.get(m.name), rollout)


@router.patch("/deployments/{deployment_id}", tags=["deployments"])
async def update_deployment(
    deployment_id: str, body: DeploymentPatch, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    cfg = parse_config(body.config) if body.config is not None else None
    cp = control(request)
    d = await cp.deployments.update(actor, deployment_id, body.version, cfg,
                                    _traffic(body.traffic), _routing(body.routing))  # fmt: skip
    _, m = await cp.deployments.get(actor, d.id)
    return views.deployment(d, m.name)


@router.delete("/deployments/{deployment_id}", tags=["deployments"])
async def delete_deployment(
    deployment_id: str, request: Request, actor: Actor = Depends(MANAGE)
) -> Response:
    await control(request).deployments.delete(actor, deployment_id)
    return Response(status_code=204)


@router.post("/deployments/{deployment_id}/test", tags=["deployments"])
async def test_deployment(
    deployment_id: str, request: Request, actor: Actor = Depends(AUTHENTICATED)
) -> Any:
    """Run the deployed version's sample input; compare with its sample output."""
    return await control(request).deployments.test(actor, deployment_id)


class FeedbackBody(Body):
    request_id: Text = Field(max_length=256, description="The id of a request it answered")
    reward: float = Field(description="The outcome: any number, or 0/1 for a rate")


@router.post("/deployments/{deployment_id}/feedback", tags=["deployments"])
async def deployment_feedback(
    deployment_id: str, body: FeedbackBody, request: Request,
    actor: Actor = Depends(AUTHENTICATED),
) -> Any:  # fmt: skip
    """Attach an outcome to a request the deployment answered (its A/B test reads it)."""
    return await control(request).abtests.feedback(actor, deployment_id, body.request_id,
                                                   body.reward)  # fmt: skip


@router.get("/deployments/{deployment_id}/abtest", tags=["deployments"])
async def deployment_abtest(
    deployment_id: str, request: Request, actor: Actor = Depends(AUTHENTICATED)
) -> Any:
    """Each arm's requests and feedback (counts, mean, rate) and each arm against the control
    arm: a two-proportion z-test for rates, Welch's t-test for means, p-value and 95 % CI."""
    return await control(request).abtests.report(actor, deployment_id)


class RolloutBody(Body):
    strategy: Literal["blue_green", "canary"] = Field("blue_green", description="How to roll out")
    version: StrictInt = Field(ge=1, le=INT32, description="The version to roll out")
    test: bool = Field(False, description="Blue-green: its sample test must pass before the switch")
    keep_previous_s: float = Field(
        300.0, ge=0, le=86_400, description="Blue-green: how long the previous version stays warm"
    )
    config: dict[str, Any] | None = Field(
        None,
        description="Canary: the new revision's own runtime config (default: the "
        "deployment's); it keeps it when promoted",
    )
    canary: dict[str, Any] | None = Field(
        None,
        description="Canary: `steps` (percentages, e.g. [5, 25, 50, 100]), `dwell_s`, "
        "`interval_s` and `analysis` (`window_s`, `min_requests`, `max_error_rate`, "
        "`max_error_rate_increase`, `max_latency_ratio` {p50, p95, p99}, "
        "`latency_tolerance_ms`); every part optional",
    )


@router.post("/deployments/{deployment_id}/rollout", tags=["deployments"])
async def rollout_deployment(
    deployment_id: str, body: RolloutBody, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    """Blue-green: bring `version` up beside the served one (every replica loaded, its sample
    test passed if `test`), then switch all traffic to it at once; the previous version stays
    warm for `keep_previous_s` (`/rollback` returns to it instantly).

    Canary: bring `version` up beside the served one, then give it the plan's steps of the
    traffic, comparing it with the stable version (error rate, p50/p95/p99 latency) every
    `interval_s`: a failed check rolls back at once, passing every step promotes it. Answers
    once the first step is applied; the rollout's `phase`, `weight`, `analysis` and `events`
    show the rest (`GET /deployments/{id}`)."""
    cp = control(request)
    if body.strategy == "canary":
        plan = parse_canary(body.canary)
        own = parse_config(body.config) if body.config is not None else None
        d, ro = await cp.rollouts.canary(actor, deployment_id, body.version, plan, own)
    else:
        for given in ("canary", "config"):
            if getattr(body, given) is not None:
                raise InvalidField(given, "is for strategy 'canary'")
        d, ro = await cp.rollouts.blue_green(actor, deployment_id, body.version, body.test,
                                             body.keep_previous_s)  # fmt: skip
    return await _with_rollout(cp, actor, d, ro)


async def _with_rollout(cp: ControlPlane, actor: Actor, d: Deployment, ro: Rollout) -> Any:
    """A deployment as a rollout endpoint answers it: with the rollout's document."""
    _, m = await cp.deployments.get(actor, d.id)
    return views.deployment(d, m.name, rollout=ro.doc())


@router.post("/deployments/{deployment_id}/promote", tags=["deployments"])
async def promote_deployment(
    deployment_id: str, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    """End a canary in progress now: the canary version serves all traffic alone."""
    cp = control(request)
    d, ro = await cp.rollouts.promote(actor, deployment_id)
    return await _with_rollout(cp, actor, d, ro)


@router.post("/deployments/{deployment_id}/rollback", tags=["deployments"])
async def rollback_deployment(
    deployment_id: str, request: Request, actor: Actor = Depends(MANAGE)
) -> Any:
    """Move all traffic back to the version served before the last rollout: a canary's stable
    version while the canary progresses, a blue-green one's while it is warm."""
    cp = control(request)
    d, ro = await cp.rollouts.rollback(actor, deployment_id)
    return await _with_rollout(cp, actor, d, ro)


# ---- audit -------------------------------------------------------------------------------


@router.get("/audit", tags=["audit"])
async def audit(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    actor_id: str | None = None,
    action: str | None = None,
    actor: Actor = Depends(ADMIN),
) -> Any:
    """Management actions, newest first: who, what, on which object, when, from where."""
    entries = await control(request).audit.entries(limit=limit, actor_id=actor_id, action=action)
    return [{"id": e.id, "at": e.at.isoformat(), "actor_id": e.actor_id,
             "actor": e.actor_name, "action": e.action, "target_type": e.target_type,
             "target_id": e.target_id, "outcome": e.outcome, "ip": e.ip, "detail": e.detail}
            for e in entries]  # fmt: skip


def _first_error(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        return f"{loc}: {first.get('msg', 'invalid')}" if loc else str(first.get("msg"))
    return str(e)
