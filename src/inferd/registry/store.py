"""The registry's repository: users, API keys, models, versions, deployments, audit, secrets.

Every method is one transaction and returns `inferd.core.records` types, never ORM rows.
Connection failures become `Unavailable("database unavailable")` (details are logged, never put
in the message: they hold SQL, hosts and paths).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from inferd.core.errors import Conflict, NotFound
from inferd.core.records import (
    ApiKey,
    AuditEntry,
    Deployment,
    DeploymentConfig,
    DeploymentStatus,
    Model,
    ModelVersion,
    Role,
    Scope,
    User,
    VersionStatus,
    Visibility,
)
from inferd.registry.db import Database, guarded
from inferd.registry.tables import (
    MODEL_UPDATES,
    USER_UPDATES,
    VERSION_UPDATES,
    ApiKeyRow,
    AuditRow,
    DeploymentRow,
    ModelRow,
    SecretRow,
    UserRow,
    VersionRow,
    as_utc,
    config_to_json,
)

T = TypeVar("T")


async def _get(s: AsyncSession, row_type: type[T], key: str, what: str) -> T:
    row = await s.get(row_type, key)
    if row is None:
        raise NotFound(f"{what} not found")
    return row


def _new_id() -> str:
    return uuid.uuid4().hex


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _converted(fields: dict[str, Any], allowed: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ValueError(f"cannot update field(s): {', '.join(unknown)}")
    return {name: allowed[name](value) for name, value in fields.items()}


class RegistryStore:
    """The registry's persistence. One instance per process, shared by every use-case.

    `clock` returns the current UTC time (injected so tests can pin timestamps).
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] | None = None) -> None:
        self._db = db
        self._sessions = db.sessions()
        self._clock = clock or _utc_now

    def _now(self) -> datetime:
        return as_utc(self._clock(), "clock()")

    # ---- users ----------------------------------------------------------------------------------

    @guarded
    async def create_user(
        self, username: str, password_hash: str | None, role: Role, *, trusted: bool = False
    ) -> User:
        row = UserRow(
            id=_new_id(),
            username=username,
            username_key=username.lower(),
            password_hash=password_hash,
            role=Role(role).value,
            trusted=trusted,
            disabled=False,
            created_at=self._now(),
        )
        try:
            async with self._db.write_session() as s:
                s.add(row)
        except IntegrityError:
            raise Conflict(f"username '{username}' is taken") from None
        return row.to_core()

    @guarded
    async def get_user(self, user_id: str) -> User:
        async with self._sessions() as s:
            return (await _get(s, UserRow, user_id, "user")).to_core()

    @guarded
    async def find_user(self, username: str) -> tuple[User, str | None] | None:
        async with self._sessions() as s:
            row = await s.scalar(select(UserRow).where(UserRow.username_key == username.lower()))
        return None if row is None else (row.to_core(), row.password_hash)

    @guarded
    async def list_users(self) -> list[User]:
        async with self._sessions() as s:
            rows = await s.scalars(select(UserRow).order_by(UserRow.username_key))
            return [r.to_core() for r in rows]

    @guarded
    async def update_user(self, user_id: str, **fields: Any) -> User:
        values = _converted(fields, USER_UPDATES)
        async with self._db.write_session() as s:
            row = await _get(s, UserRow, user_id, "user")
            for name, value in values.items():
                setattr(row, name, value)
        return row.to_core()

    @guarded
    async def count_users(self) -> int:
        async with self._sessions() as s:
            return int(await s.scalar(select(func.count()).select_from(UserRow)) or 0)

    # ---- API keys -------------------------------------------------------------------------------

    @guarded
    async def create_key(
        self,
        user_id: str,
        name: str,
        prefix: str,
        key_hash: str,
        scopes: frozenset[Scope],
        expires_at: datetime | None,
        rpm_limit: int | None = None,
    ) -> ApiKey:
        row = ApiKeyRow(
            id=_new_id(),
            user_id=user_id,
            name=name,
            prefix=prefix,
            key_hash=key_hash,
            scopes=sorted(Scope(x).value for x in scopes),
            created_at=self._now(),
            expires_at=None if expires_at is None else as_utc(expires_at, "expires_at"),
            rpm_limit=rpm_limit,
        )
        try:
            async with self._db.write_session() as s:
                await _get(s, UserRow, user_id, "user")
                s.add(row)
        except IntegrityError:
            raise Conflict("key prefix is taken") from None
        return row.to_core()

    @guarded
    async def find_key(self, prefix: str) -> tuple[ApiKey, str] | None:
        async with self._sessions() as s:
            row = await s.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == prefix))
        return None if row is None else (row.to_core(), row.key_hash)

    @guarded
    async def get_key(self, key_id: str) -> ApiKey:
        async with self._sessions() as s:
            return (await _get(s, ApiKeyRow, key_id, "key")).to_core()

    @guarded
    async def list_keys(self, user_id: str) -> list[ApiKey]:
        async with self._sessions() as s:
            rows = await s.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.user_id == user_id)
                .order_by(ApiKeyRow.created_at, ApiKeyRow.id)
            )
            return [r.to_core() for r in rows]

    @guarded
    async def revoke_key(self, key_id: str, at: datetime) -> ApiKey:
        at = as_utc(at, "at")
        async with self._db.write_session() as s:
            row = await _get(s, ApiKeyRow, key_id, "key")
            # Idempotent: revoking twice keeps the first revocation time.
            if row.revoked_at is None:
                row.revoked_at = at
        return row.to_core()

    @guarded
    async def touch_key(self, key_id: str, at: datetime) -> None:
        at = as_utc(at, "at")
        async with self._db.write_session() as s:
            # Only forwards: concurrent requests may report out of order.
            result = await s.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id)
                .where(or_(ApiKeyRow.last_used_at.is_(None), ApiKeyRow.last_used_at < at))
                .values(last_used_at=at)
            )
            if cast(CursorResult[Any], result).rowcount == 0 and (
                await s.get(ApiKeyRow, key_id) is None
            ):
                raise NotFound("key not found")

    # ---- models ---------------------------------------------------------------------------------

    @guarded
    async def create_model(
        self,
        *,
        name: str,
        owner_id: str,
        visibility: Visibility,
        description: str = "",
        framework: str = "",
        model_type: str = "",
        task_type: str = "",
        tags: Sequence[str] = (),
        system: bool = False,
    ) -> Model:
        now = self._now()
        row = ModelRow(
            id=_new_id(),
            name=name,
            owner_id=owner_id,
            visibility=Visibility(visibility).value,
            description=description,
            framework=framework,
            model_type=model_type,
            task_type=task_type,
            tags=[str(t) for t in tags],
            system=system,
            last_version=0,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._db.write_session() as s:
                await _get(s, UserRow, owner_id, "user")
                s.add(row)
        except IntegrityError:
            raise Conflict(f"model name '{name}' is taken") from None
        return row.to_core()

    @guarded
    async def get_model(self, model_id: str) -> Model:
        async with self._sessions() as s:
            return (await _get(s, ModelRow, model_id, "model")).to_core()

    @guarded
    async def find_model(self, name: str) -> Model | None:
        async with self._sessions() as s:
            row = await s.scalar(select(ModelRow).where(ModelRow.name == name))
        return None if row is None else row.to_core()

    @guarded
    async def list_models(self, *, visible_to: str | None = None) -> list[Model]:
        query = select(ModelRow).order_by(ModelRow.name)
        if visible_to is not None:
            query = query.where(
                or_(
                    ModelRow.owner_id == visible_to,
                    ModelRow.visibility == Visibility.PUBLIC.value,
                )
            )
        async with self._sessions() as s:
            return [r.to_core() for r in await s.scalars(query)]

    @guarded
    async def update_model(self, model_id: str, **fields: Any) -> Model:
        values = _converted(fields, MODEL_UPDATES)
        async with self._db.write_session() as s:
            row = await _get(s, ModelRow, model_id, "model")
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = self._now()
        return row.to_core()

    @guarded
    async def delete_model(self, model_id: str) -> None:
        async with self._db.write_session() as s:
            row = await _get(s, ModelRow, model_id, "model")
            # The database cascades to versions and the deployment (ON DELETE CASCADE); the ORM
            # has no relationships to load, so this is one DELETE.
            await s.delete(row)

    # ---- versions -------------------------------------------------------------------------------

    @guarded
    async def create_version(
        self, model_id: str, *, source: str, created_by: str | None
    ) -> ModelVersion:
        async with self._db.write_session() as s:
            # The increment takes the model row's write lock (PostgreSQL) or the database write
            # lock (SQLite: BEGIN IMMEDIATE), so concurrent creates get 1, 2, 3 … in turn.
            bumped = await s.execute(
                update(ModelRow)
                .where(ModelRow.id == model_id)
                .values(last_version=ModelRow.last_version + 1)
            )
            if cast(CursorResult[Any], bumped).rowcount == 0:
                raise NotFound("model not found")
            number = await s.scalar(select(ModelRow.last_version).where(ModelRow.id == model_id))
            row = VersionRow(
                id=_new_id(),
                model_id=model_id,
                version=int(number or 0),
                status=VersionStatus.IMPORTING.value,
                reason="",
                artifact_key="",
                artifact_format="",
                runtime="",
                sha256="",
                size_bytes=0,
                source=source,
                inputs=[],
                outputs=[],
                sample_input=None,
                sample_output=None,
                created_by=created_by,
                created_at=self._now(),
            )
            s.add(row)
        return row.to_core()

    @guarded
    async def get_version(self, model_id: str, version: int) -> ModelVersion:
        async with self._sessions() as s:
            row = await s.scalar(
                select(VersionRow).where(
                    VersionRow.model_id == model_id, VersionRow.version == version
                )
            )
        if row is None:
            raise NotFound("version not found")
        return row.to_core()

    @guarded
    async def get_version_by_id(self, version_id: str) -> ModelVersion:
        async with self._sessions() as s:
            return (await _get(s, VersionRow, version_id, "version")).to_core()

    @guarded
    async def list_versions(self, model_id: str) -> list[ModelVersion]:
        async with self._sessions() as s:
            rows = await s.scalars(
                select(VersionRow)
                .where(VersionRow.model_id == model_id)
                .order_by(VersionRow.version)
            )
            return [r.to_core() for r in rows]

    @guarded
    async def update_version(self, version_id: str, **fields: Any) -> ModelVersion:
        values = _converted(fields, VERSION_UPDATES)
        async with self._db.write_session() as s:
            row = await _get(s, VersionRow, version_id, "version")
            for name, value in values.items():
                setattr(row, name, value)
        return row.to_core()

    @guarded
    async def delete_version(self, version_id: str) -> None:
        try:
            async with self._db.write_session() as s:
                row = await _get(s, VersionRow, version_id, "version")
                deployed = await s.scalar(
                    select(DeploymentRow.id).where(
                        DeploymentRow.model_id == row.model_id,
                        DeploymentRow.version == row.version,
                    )
                )
                if deployed is not None:
                    raise Conflict(f"version {row.version} is deployed")
                await s.delete(row)
        except IntegrityError:
            # The foreign key from deployments, should a deploy land between check and delete.
            raise Conflict("version is deployed") from None

    @guarded
    async def storage_used(self, owner_id: str) -> int:
        async with self._sessions() as s:
            total = await s.scalar(
                select(func.coalesce(func.sum(VersionRow.size_bytes), 0))
                .join(ModelRow, ModelRow.id == VersionRow.model_id)
                .where(ModelRow.owner_id == owner_id)
            )
        return int(total or 0)

    # ---- deployments ----------------------------------------------------------------------------

    @guarded
    async def create_deployment(
        self, model_id: str, version: int, config: DeploymentConfig, created_by: str | None
    ) -> Deployment:
        now = self._now()
        row = DeploymentRow(
            id=_new_id(),
            model_id=model_id,
            version=version,
            config=config_to_json(config),
            status=DeploymentStatus.DEPLOYING.value,
            reason="",
            created_by=created_by,
            generation=1,
            observed_generation=0,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._db.write_session() as s:
                await _get(s, ModelRow, model_id, "model")
                await self._require_version(s, model_id, version)
                if await s.scalar(
                    select(DeploymentRow.id).where(DeploymentRow.model_id == model_id)
                ):
                    raise Conflict("model already has a deployment")
                s.add(row)
        except IntegrityError:
            raise Conflict("model already has a deployment") from None
        return row.to_core()

    @guarded
    async def get_deployment(self, deployment_id: str) -> Deployment:
        async with self._sessions() as s:
            return (await _get(s, DeploymentRow, deployment_id, "deployment")).to_core()

    @guarded
    async def find_deployment(self, model_id: str) -> Deployment | None:
        async with self._sessions() as s:
            row = await s.scalar(select(DeploymentRow).where(DeploymentRow.model_id == model_id))
        return None if row is None else row.to_core()

    @guarded
    async def list_deployments(self) -> list[Deployment]:
        async with self._sessions() as s:
            rows = await s.scalars(
                select(DeploymentRow).order_by(DeploymentRow.created_at, DeploymentRow.id)
            )
            return [r.to_core() for r in rows]

    @guarded
    async def update_deployment(
        self,
        deployment_id: str,
        *,
        version: int | None = None,
        config: DeploymentConfig | None = None,
    ) -> Deployment:
        async with self._db.write_session() as s:
            row = await _get(s, DeploymentRow, deployment_id, "deployment")
            if version is not None:
                await self._require_version(s, row.model_id, version)
                row.version = version
            if config is not None:
                row.config = config_to_json(config)
            row.generation += 1
            row.status = DeploymentStatus.DEPLOYING.value
            row.reason = ""
            row.updated_at = self._now()
        return row.to_core()

    @guarded
    async def set_deployment_status(
        self,
        deployment_id: str,
        status: DeploymentStatus,
        reason: str,
        observed_generation: int,
    ) -> Deployment:
        """Record what the reconciler observed for `observed_generation`.

        A report about an older generation than the current one (the deployment was changed while
        the reconciler worked) only moves `observed_generation`; status and reason keep describing
        the newer, pending generation. `observed_generation` never moves backwards.
        """
        async with self._db.write_session() as s:
            row = await _get(s, DeploymentRow, deployment_id, "deployment")
            if observed_generation > row.generation:
                raise ValueError(
                    f"observed generation {observed_generation} is newer than {row.generation}"
                )
            if observed_generation >= row.observed_generation:
                row.observed_generation = observed_generation
                if observed_generation == row.generation:
                    row.status = DeploymentStatus(status).value
                    row.reason = reason
                row.updated_at = self._now()
        return row.to_core()

    @guarded
    async def delete_deployment(self, deployment_id: str) -> None:
        async with self._db.write_session() as s:
            row = await _get(s, DeploymentRow, deployment_id, "deployment")
            await s.delete(row)

    @staticmethod
    async def _require_version(s: AsyncSession, model_id: str, version: int) -> None:
        found = await s.scalar(
            select(VersionRow.id).where(
                VersionRow.model_id == model_id, VersionRow.version == version
            )
        )
        if found is None:
            raise NotFound("version not found")

    # ---- audit ----------------------------------------------------------------------------------

    @guarded
    async def add_audit(
        self,
        *,
        actor_id: str | None,
        actor_name: str,
        action: str,
        target_type: str,
        target_id: str,
        outcome: str = "ok",
        ip: str = "",
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        # Through JSON and back with str() for anything else (datetimes, enums, paths): an audit
        # entry must never be lost because a detail value is not JSON.
        safe = json.loads(json.dumps(detail or {}, default=str))
        row = AuditRow(
            id=_new_id(),
            at=self._now(),
            actor_id=actor_id,
            actor_name=actor_name,
            action=action,
            target_type=target_type,
            target_id=target_id,
            outcome=outcome,
            ip=ip,
            detail=safe,
        )
        async with self._db.write_session() as s:
            s.add(row)
        return row.to_core()

    @guarded
    async def list_audit(
        self,
        *,
        limit: int = 100,
        before: datetime | None = None,
        actor_id: str | None = None,
        action: str | None = None,
    ) -> list[AuditEntry]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        # seq breaks ties between entries written within the same clock tick.
        query = select(AuditRow).order_by(AuditRow.at.desc(), AuditRow.seq.desc()).limit(limit)
        if before is not None:
            query = query.where(AuditRow.at < as_utc(before, "before"))
        if actor_id is not None:
            query = query.where(AuditRow.actor_id == actor_id)
        if action is not None:
            query = query.where(AuditRow.action == action)
        async with self._sessions() as s:
            return [r.to_core() for r in await s.scalars(query)]

    # ---- server secrets -------------------------------------------------------------------------

    @guarded
    async def get_or_create_secret(self, name: str, value: str) -> str:
        """The stored secret `name`, storing `value` first if there is none. Two nodes starting at
        once both get whichever value was stored first."""
        values = {"name": name, "value": value, "created_at": self._now()}
        if self._db.dialect == "postgresql":
            insert: Any = postgresql.insert(SecretRow)
        else:
            insert = sqlite.insert(SecretRow)
        async with self._db.write_session() as s:
            # ON CONFLICT DO NOTHING waits for a concurrent insert of the same name to commit and
            # then does nothing, so the SELECT below sees the winner's value.
            await s.execute(insert.values(**values).on_conflict_do_nothing(index_elements=["name"]))
            stored = await s.scalar(select(SecretRow.value).where(SecretRow.name == name))
        if stored is None:  # pragma: no cover - the row was just written or already there
            raise RuntimeError("secret vanished during get_or_create")
        return stored
