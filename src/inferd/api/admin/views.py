"""JSON shapes of control-plane records: never a secret (no hashes; a key once, at creation),
but the caller's own webhook signing secret, which their receiver needs."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from inferd.control.jobs import job_view
from inferd.control.pipelines import StoredPipeline
from inferd.core.records import (
    ApiKey,
    Deployment,
    Job,
    Model,
    ModelVersion,
    User,
    WebhookDelivery,
)
from inferd.core.routing import ShadowStats
from inferd.core.traffic import Revision


class Error(BaseModel):
    """Every refusal: `{"error": "<field>: <what is wrong>"}` for bad input."""

    error: str


def _ts(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def user(u: User) -> dict[str, Any]:
    return {
        "id": u.id, "username": u.username, "role": str(u.role), "trusted": u.trusted,
        "disabled": u.disabled, "created_at": _ts(u.created_at), "rpm_limit": u.rpm_limit,
        "concurrency_limit": u.concurrency_limit,
        "storage_quota_bytes": u.storage_quota_bytes,
    }  # fmt: skip


def key(k: ApiKey) -> dict[str, Any]:
    return {
        "id": k.id, "user_id": k.user_id, "name": k.name, "prefix": k.prefix,
        "scopes": sorted(str(s) for s in k.scopes), "created_at": _ts(k.created_at),
        "expires_at": _ts(k.expires_at), "revoked_at": _ts(k.revoked_at),
        "last_used_at": _ts(k.last_used_at),
    }  # fmt: skip


def model(m: Model) -> dict[str, Any]:
    return {
        "id": m.id, "name": m.name, "description": m.description, "framework": m.framework,
        "model_type": m.model_type, "task_type": m.task_type, "tags": list(m.tags),
        "visibility": str(m.visibility), "owner_id": m.owner_id or None, "system": m.system,
        # repository models have no registry history
        "created_at": None if m.system else _ts(m.created_at),
        "updated_at": None if m.system else _ts(m.updated_at),
    }  # fmt: skip


def version(v: ModelVersion, model_name: str) -> dict[str, Any]:
    return {
        "id": v.id, "model": model_name, "version": v.version, "status": str(v.status),
        "reason": v.reason, "format": v.artifact_format, "runtime": v.runtime or None,
        "sha256": v.sha256,
        "size_bytes": v.size_bytes, "source": v.source, "inputs": list(v.inputs),
        "outputs": list(v.outputs), "sample_input": v.sample_input,
        "sample_output": v.sample_output, "created_at": _ts(v.created_at),
        "created_by": v.created_by,
    }  # fmt: skip


def job(j: Job) -> dict[str, Any]:
    """An async prediction as its owner sees it (`control.jobs.job_view`)."""
    return job_view(j)


def delivery(d: WebhookDelivery) -> dict[str, Any]:
    """One webhook delivery of a job: where, which event, how it went (not its body)."""
    return {
        "id": d.id, "event": d.event, "url": d.url, "status": str(d.status),
        "attempts": d.attempts, "last_code": d.last_code, "last_error": d.last_error or None,
        "next_at": _ts(d.next_at) if str(d.status) == "pending" else None,
        "created_at": _ts(d.created_at), "finished_at": _ts(d.finished_at),
    }  # fmt: skip


def webhook_secret(
    secret: str, previous: str | None, previous_until: datetime | None = None
) -> dict[str, Any]:
    """A user's signing secret (and the previous one while it still signs)."""
    doc: dict[str, Any] = {"secret": secret, "previous": previous}
    if previous_until is not None:
        doc["previous_until"] = _ts(previous_until)
    return doc


def pipeline(p: StoredPipeline) -> dict[str, Any]:
    """A pipeline with one version's document (the version: null for a repository pipeline)."""
    return {**model(p.model), "version": p.version.version if p.version else None,
            "created_by": p.version.created_by if p.version else None,
            "document": p.document}  # fmt: skip


def deployment(
    d: Deployment, model_name: str, shadow: ShadowStats | None = None,
    rollout: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A deployment as the API shows it; `shadow`: how its shadow compares, `rollout`: its
    latest rollout's document (both as this node saw them)."""
    return {
        "id": d.id, "model": model_name, "version": d.version, "status": str(d.status),
        "reason": d.reason, "generation": d.generation,
        "observed_generation": d.observed_generation,
        "config": dataclasses.asdict(d.config),
        "created_at": _ts(d.created_at), "updated_at": _ts(d.updated_at),
        "created_by": d.created_by,
        "traffic": [_revision(r) for r in d.revisions()],
        "routing": d.routing.doc(),
        **({"shadow": shadow.doc()} if shadow is not None else {}),
        **({"rollout": rollout} if rollout is not None else {}),
        "endpoint": f"/v2/models/{model_name}/infer",
    }  # fmt: skip


def _revision(r: Revision) -> dict[str, Any]:
    """A revision: version, weight and its own runtime config when it has one."""
    doc: dict[str, Any] = {"version": r.version, "weight": r.weight}
    if r.config is not None:
        doc["config"] = dataclasses.asdict(r.config)
    return doc
