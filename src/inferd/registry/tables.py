"""The registry's tables (SQLAlchemy ORM). Private to the registry: rows leave it only as
`inferd.core.records` types, through each row's `to_core()`.

The Alembic revisions under `migrations/versions` create exactly this schema; the migration tests
compare the two, so a change here needs a new revision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from inferd.core.records import (
    ApiKey,
    AuditEntry,
    BatchJob,
    BatchStatus,
    DeliveryStatus,
    Deployment,
    DeploymentConfig,
    DeploymentStatus,
    Job,
    JobStatus,
    Model,
    ModelVersion,
    Role,
    Scope,
    StoredFile,
    User,
    VersionStatus,
    Visibility,
    WebhookDelivery,
)
from inferd.core.routing import parse_routing
from inferd.core.traffic import Revision

#: Deterministic constraint names: SQLite's batch migrations (copy-and-move) can only drop or
#: alter a constraint that has a name, and hand-written revisions must spell the same names.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(32)  # uuid4().hex


def as_utc(value: datetime, name: str) -> datetime:
    """`value` in UTC; a naive time is ambiguous (local? UTC?), and refusing it beats storing a
    wrong hour."""
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out. SQLite has no time zones and hands back naive values, so
    this stores UTC and re-attaches UTC on the way out; PostgreSQL uses `timestamptz`."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value, "datetime")
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    username: Mapped[str] = mapped_column(String(), nullable=False)
    #: username.lower(): the unique, case-insensitive lookup key. A column rather than a functional
    #: index so the same comparison (Python's lower()) holds on SQLite and PostgreSQL alike.
    username_key: Mapped[str] = mapped_column(String(), nullable=False, unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text(), nullable=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    trusted: Mapped[bool] = mapped_column(Boolean(), nullable=False, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean(), nullable=False, default=False)
    rpm_limit: Mapped[int | None] = mapped_column(Integer(), nullable=True)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer(), nullable=True)
    storage_quota_bytes: Mapped[int | None] = mapped_column(BigInteger(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    def to_core(self) -> User:
        return User(
            id=self.id,
            username=self.username,
            role=Role(self.role),
            created_at=self.created_at,
            trusted=self.trusted,
            disabled=self.disabled,
            rpm_limit=self.rpm_limit,
            concurrency_limit=self.concurrency_limit,
            storage_quota_bytes=self.storage_quota_bytes,
        )


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(
        ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(), nullable=False)
    #: Every authenticated request looks its key up by prefix: unique, hence indexed.
    prefix: Mapped[str] = mapped_column(String(), nullable=False, unique=True)
    key_hash: Mapped[str] = mapped_column(Text(), nullable=False)
    scopes: Mapped[list[str]] = mapped_column(JSON(), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    rpm_limit: Mapped[int | None] = mapped_column(Integer(), nullable=True)

    def to_core(self) -> ApiKey:
        return ApiKey(
            id=self.id,
            user_id=self.user_id,
            name=self.name,
            prefix=self.prefix,
            scopes=frozenset(Scope(x) for x in self.scopes),
            created_at=self.created_at,
            expires_at=self.expires_at,
            revoked_at=self.revoked_at,
            last_used_at=self.last_used_at,
            rpm_limit=self.rpm_limit,
        )


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    #: Case-sensitive on both backends (SQLite's default BINARY collation, PostgreSQL varchar).
    name: Mapped[str] = mapped_column(String(), nullable=False, unique=True)
    #: RESTRICT: deleting a user who still owns models must fail, not silently drop the models.
    owner_id: Mapped[str] = mapped_column(
        ID, ForeignKey("users.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    visibility: Mapped[str] = mapped_column(String(16), nullable=False)
    description: Mapped[str] = mapped_column(Text(), nullable=False, default="")
    framework: Mapped[str] = mapped_column(String(), nullable=False, default="")
    model_type: Mapped[str] = mapped_column(String(), nullable=False, default="")
    task_type: Mapped[str] = mapped_column(String(), nullable=False, default="")
    tags: Mapped[list[str]] = mapped_column(JSON(), nullable=False)
    system: Mapped[bool] = mapped_column(Boolean(), nullable=False, default=False)
    #: The last version number handed out. A counter rather than max(version) + 1, so a number
    #: is never reused after its version is deleted (a cache or a pinned client keyed by
    #: "name v3" must never get a different artifact), and so that concurrent creates serialise
    #: on this one row instead of racing and retrying.
    last_version: Mapped[int] = mapped_column(Integer(), nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    def to_core(self) -> Model:
        return Model(
            id=self.id,
            name=self.name,
            owner_id=self.owner_id,
            visibility=Visibility(self.visibility),
            created_at=self.created_at,
            updated_at=self.updated_at,
            description=self.description,
            framework=self.framework,
            model_type=self.model_type,
            task_type=self.task_type,
            tags=tuple(self.tags),
            system=self.system,
        )


class VersionRow(Base):
    __tablename__ = "model_versions"
    # The unique pair is what makes concurrent creates safe: a duplicate number cannot commit.
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    model_id: Mapped[str] = mapped_column(
        ID, ForeignKey("models.id", ondelete="CASCADE"), nullable=False
    )
    version: Mapped[int] = mapped_column(Integer(), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str] = mapped_column(Text(), nullable=False, default="")
    artifact_key: Mapped[str] = mapped_column(String(), nullable=False, default="")
    artifact_format: Mapped[str] = mapped_column(String(), nullable=False, default="")
    #: The runtime the version was validated with (serving uses it unless a deployment says).
    runtime: Mapped[str] = mapped_column(String(64), nullable=False, default="", server_default="")
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger(), nullable=False, default=0)
    source: Mapped[str] = mapped_column(Text(), nullable=False, default="")
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON(), nullable=False)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON(), nullable=False)
    # none_as_null: None is SQL NULL, not the JSON literal `null`.
    sample_input: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )
    sample_output: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )
    #: No foreign key: attribution is history and outlives the account.
    created_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    def to_core(self) -> ModelVersion:
        return ModelVersion(
            id=self.id,
            model_id=self.model_id,
            version=self.version,
            status=VersionStatus(self.status),
            created_at=self.created_at,
            reason=self.reason,
            artifact_key=self.artifact_key,
            artifact_format=self.artifact_format,
            runtime=self.runtime,
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            source=self.source,
            inputs=tuple(self.inputs),
            outputs=tuple(self.outputs),
            sample_input=self.sample_input,
            sample_output=self.sample_output,
            created_by=self.created_by,
        )


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        # The deployed version must exist, and a deployed version cannot be deleted. NO ACTION
        # (checked at the end of the statement) rather than RESTRICT, so deleting the model can
        # still cascade to both the deployment and its versions in one statement.
        ForeignKeyConstraint(
            ["model_id", "version"],
            ["model_versions.model_id", "model_versions.version"],
            name="fk_deployments_model_version",
        ),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    #: Unique: at most one deployment per model.
    model_id: Mapped[str] = mapped_column(
        ID, ForeignKey("models.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    version: Mapped[int] = mapped_column(Integer(), nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON(), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str] = mapped_column(Text(), nullable=False, default="")
    created_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    generation: Mapped[int] = mapped_column(Integer(), nullable=False, default=1)
    observed_generation: Mapped[int] = mapped_column(Integer(), nullable=False, default=0)
    #: The traffic split: [{"version", "weight", "config"?}] (a revision's own runtime config,
    #: when it has one); empty: `version` takes all of it.
    traffic: Mapped[list[dict[str, Any]]] = mapped_column(JSON(), nullable=False, default=list)
    #: The routing policy (`core.routing`): rules, fallbacks, circuit_breaker; {}: none.
    routing: Mapped[dict[str, Any]] = mapped_column(JSON(), nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    def to_core(self) -> Deployment:
        return Deployment(
            id=self.id,
            model_id=self.model_id,
            version=self.version,
            config=config_from_json(self.config),
            status=DeploymentStatus(self.status),
            created_at=self.created_at,
            updated_at=self.updated_at,
            reason=self.reason,
            created_by=self.created_by,
            generation=self.generation,
            observed_generation=self.observed_generation,
            traffic=tuple(_revision(r) for r in self.traffic),
            routing=parse_routing(self.routing or None),
        )


class AuditRow(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_actor_id_at", "actor_id", "at"),
        Index("ix_audit_log_action_at", "action", "at"),
    )

    #: Insertion order: breaks ties between entries written in the same microsecond, so
    #: "newest first" is total. INTEGER on SQLite, where only that type aliases the rowid.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(ID, nullable=False, unique=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    #: No foreign key: the trail is append-only and must outlive the actor.
    actor_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    actor_name: Mapped[str] = mapped_column(String(), nullable=False)
    action: Mapped[str] = mapped_column(String(), nullable=False)
    target_type: Mapped[str] = mapped_column(String(), nullable=False)
    target_id: Mapped[str] = mapped_column(String(), nullable=False)
    outcome: Mapped[str] = mapped_column(String(), nullable=False, default="ok")
    ip: Mapped[str] = mapped_column(String(), nullable=False, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON(), nullable=False)

    def to_core(self) -> AuditEntry:
        return AuditEntry(
            id=self.id,
            at=self.at,
            actor_id=self.actor_id,
            actor_name=self.actor_name,
            action=self.action,
            target_type=self.target_type,
            target_id=self.target_id,
            outcome=self.outcome,
            ip=self.ip,
            detail=dict(self.detail),
        )


class SecretRow(Base):
    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(), primary_key=True)
    value: Mapped[str] = mapped_column(Text(), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


metadata = Base.metadata

# The fields `update_*` may change, each with how a record value becomes a column value
# (enums to their strings, tuples to JSON lists). Anything else is refused.
USER_UPDATES: dict[str, Callable[[Any], Any]] = {
    "role": lambda v: Role(v).value,
    "trusted": bool,
    "disabled": bool,
    "rpm_limit": lambda v: None if v is None else int(v),
    "concurrency_limit": lambda v: None if v is None else int(v),
    "storage_quota_bytes": lambda v: None if v is None else int(v),
    "password_hash": lambda v: None if v is None else str(v),
}
MODEL_UPDATES: dict[str, Callable[[Any], Any]] = {
    "description": str,
    "framework": str,
    "model_type": str,
    "task_type": str,
    "tags": lambda v: [str(t) for t in v],
    "visibility": lambda v: Visibility(v).value,
}
VERSION_UPDATES: dict[str, Callable[[Any], Any]] = {
    "status": lambda v: VersionStatus(v).value,
    "reason": str,
    "artifact_key": str,
    "artifact_format": str,
    "runtime": str,
    "sha256": str,
    "size_bytes": int,
    "inputs": lambda v: [dict(x) for x in v],
    "outputs": lambda v: [dict(x) for x in v],
    "sample_input": lambda v: None if v is None else dict(v),
    "sample_output": lambda v: None if v is None else dict(v),
}

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(DeploymentConfig))


def config_to_json(config: DeploymentConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _revision(doc: dict[str, Any]) -> Revision:
    own = doc.get("config")
    return Revision(int(doc["version"]), int(doc["weight"]),
                    config_from_json(own) if own is not None else None)  # fmt: skip


def config_from_json(data: dict[str, Any]) -> DeploymentConfig:
    # Unknown keys are dropped: a row written by a newer release must still load in an older one.
    return DeploymentConfig(**{k: v for k, v in data.items() if k in _CONFIG_FIELDS})


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # what a runner claims next: queued first by priority, then oldest
        Index("ix_jobs_status_priority_created_at", "status", "priority", "created_at"),
        Index("ix_jobs_owner_id_created_at", "owner_id", "created_at"),
        # leases run out (a node died): found by the sweep
        Index("ix_jobs_status_lease_until", "status", "lease_until"),
        # the retention sweep
        Index("ix_jobs_finished_at", "finished_at"),
        # one job per (owner, key): a retried submission finds the first
        UniqueConstraint("owner_id", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    #: No foreign key: a job's record outlives nothing it names, and is deleted with its owner
    #: by the retention sweep, not by a cascade.
    owner_id: Mapped[str] = mapped_column(ID, nullable=False)
    model: Mapped[str] = mapped_column(String(), nullable=False)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    input: Mapped[dict[str, Any]] = mapped_column(JSON(), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    priority: Mapped[int] = mapped_column(Integer(), nullable=False, default=0)
    attempts: Mapped[int] = mapped_column(Integer(), nullable=False, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer(), nullable=False, default=3)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    error: Mapped[str] = mapped_column(Text(), nullable=False, default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean(), nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: The request body's dialect (`inferd.core.bodies.APIS`).
    api: Mapped[str] = mapped_column(String(32), nullable=False, default="v2",
                                     server_default="v2")  # fmt: skip
    #: Where the job's events are POSTed (checked against SSRF rules at submission).
    webhook: Mapped[str | None] = mapped_column(String(), nullable=True)
    #: Which events go there (None: only the end, `completed`).
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True),
                                                             nullable=True)  # fmt: skip
    #: The node running it and until when its lease holds (renewed while it runs).
    node: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: The artifact-store key of a result too large for the row (then `result` is None).
    result_ref: Mapped[str | None] = mapped_column(String(), nullable=True)

    def to_core(self) -> Job:
        return Job(
            id=self.id, owner_id=self.owner_id, model=self.model, version=self.version,
            input=dict(self.input), status=JobStatus(self.status), created_at=self.created_at,
            priority=self.priority, attempts=self.attempts, max_attempts=self.max_attempts,
            started_at=self.started_at, finished_at=self.finished_at,
            result=None if self.result is None else dict(self.result), error=self.error,
            idempotency_key=self.idempotency_key, cancel_requested=self.cancel_requested,
            api=self.api, webhook=self.webhook,
            webhook_events=None if self.webhook_events is None else tuple(self.webhook_events),
            node=self.node, lease_until=self.lease_until,
            progress=None if self.progress is None else dict(self.progress),
            result_ref=self.result_ref,
        )  # fmt: skip


class WebhookDeliveryRow(Base):
    """One event of a job to POST to its webhook, retried until delivered or out of tries."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next_at", "status", "next_at"),
        Index("ix_webhook_deliveries_job_id", "job_id"),
    )

    #: Also the Standard Webhooks `webhook-id`: the same on every retry of this delivery.
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ID, nullable=False)
    owner_id: Mapped[str] = mapped_column(ID, nullable=False)
    event: Mapped[str] = mapped_column(String(32), nullable=False)
    url: Mapped[str] = mapped_column(String(), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON(), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer(), nullable=False, default=0)
    last_code: Mapped[int | None] = mapped_column(Integer(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text(), nullable=False, default="")
    next_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def to_core(self) -> WebhookDelivery:
        return WebhookDelivery(
            id=self.id, job_id=self.job_id, owner_id=self.owner_id, event=self.event,
            url=self.url, payload=dict(self.payload), status=DeliveryStatus(self.status),
            attempts=self.attempts, last_code=self.last_code, last_error=self.last_error,
            next_at=self.next_at, created_at=self.created_at, finished_at=self.finished_at,
        )  # fmt: skip


class WebhookSecretRow(Base):
    """A user's webhook signing secret; after a rotation the previous one also signs until
    `previous_until`, so receivers can switch over."""

    __tablename__ = "webhook_secrets"

    owner_id: Mapped[str] = mapped_column(ID, primary_key=True)
    secret: Mapped[str] = mapped_column(Text(), nullable=False)
    previous: Mapped[str | None] = mapped_column(Text(), nullable=True)
    previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class FileRow(Base):
    """A file uploaded through `/v1/files` or written by a batch job (bytes in the artifact
    store)."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_owner_id_created_at", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ID, nullable=False)
    purpose: Mapped[str] = mapped_column(String(32), nullable=False)
    filename: Mapped[str] = mapped_column(String(256), nullable=False)
    bytes: Mapped[int] = mapped_column(BigInteger(), nullable=False)
    key: Mapped[str] = mapped_column(String(1024), nullable=False)
    #: 0: one object at `key`; n: the objects `key/000000.jsonl` ... in order (a batch output).
    parts: Mapped[int] = mapped_column(Integer(), nullable=False)
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    def to_core(self) -> StoredFile:
        return StoredFile(
            id=self.id, owner_id=self.owner_id, purpose=self.purpose, filename=self.filename,
            bytes=self.bytes, key=self.key, created_at=self.created_at, parts=self.parts,
            batch_id=self.batch_id,
        )  # fmt: skip


class BatchJobRow(Base):
    """A batch job: its file split in chunks, the next chunk to run, the node running it."""

    __tablename__ = "batch_jobs"
    __table_args__ = (
        Index("ix_batch_jobs_owner_id_created_at", "owner_id", "created_at"),
        # what a runner claims next: unfinished, lease free or run out, oldest first
        Index("ix_batch_jobs_status_lease_until", "status", "lease_until"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ID, nullable=False)
    model: Mapped[str] = mapped_column(String(), nullable=False)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    api: Mapped[str] = mapped_column(String(32), nullable=False)
    endpoint: Mapped[str] = mapped_column(String(64), nullable=False)
    input_file_id: Mapped[str] = mapped_column(String(64), nullable=False)
    format: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    openai: Mapped[bool] = mapped_column(Boolean(), nullable=False)
    completion_window: Mapped[str] = mapped_column(String(16), nullable=False)
    total: Mapped[int] = mapped_column(Integer(), nullable=False)
    done: Mapped[int] = mapped_column(Integer(), nullable=False)
    failed: Mapped[int] = mapped_column(Integer(), nullable=False)
    chunk_rows: Mapped[int] = mapped_column(Integer(), nullable=False)
    chunks: Mapped[int] = mapped_column(Integer(), nullable=False)
    #: Chunks whose output is stored: the next run starts at this one.
    committed: Mapped[int] = mapped_column(Integer(), nullable=False)
    output_bytes: Mapped[int] = mapped_column(BigInteger(), nullable=False)
    error_bytes: Mapped[int] = mapped_column(BigInteger(), nullable=False)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    node: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    run_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    run_start_done: Mapped[int] = mapped_column(Integer(), nullable=False)
    error: Mapped[str] = mapped_column(Text(), nullable=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON(), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def to_core(self) -> BatchJob:
        return BatchJob(
            id=self.id, owner_id=self.owner_id, model=self.model, version=self.version,
            api=self.api, endpoint=self.endpoint, input_file_id=self.input_file_id,
            format=self.format, status=BatchStatus(self.status), openai=self.openai,
            completion_window=self.completion_window, total=self.total, done=self.done,
            failed=self.failed, chunk_rows=self.chunk_rows, chunks=self.chunks,
            committed=self.committed, output_bytes=self.output_bytes,
            error_bytes=self.error_bytes, output_file_id=self.output_file_id,
            error_file_id=self.error_file_id, node=self.node, lease_until=self.lease_until,
            run_started_at=self.run_started_at, run_start_done=self.run_start_done,
            error=self.error, metadata={str(k): str(v) for k, v in self.metadata_.items()},
            created_at=self.created_at, in_progress_at=self.in_progress_at,
            finalizing_at=self.finalizing_at, completed_at=self.completed_at,
            failed_at=self.failed_at, cancelling_at=self.cancelling_at,
            cancelled_at=self.cancelled_at, expires_at=self.expires_at,
            expired_at=self.expired_at,
        )  # fmt: skip
