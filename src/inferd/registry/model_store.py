"""Models, their versions and the storage they use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from inferd.core.errors import Conflict, NotFound
from inferd.core.records import (
    Model,
    ModelVersion,
    VersionStatus,
    Visibility,
)
from inferd.registry.db import guarded
from inferd.registry.repository import Repository, converted, get_row, new_id
from inferd.registry.tables import (
    MODEL_UPDATES,
    VERSION_UPDATES,
    DeploymentRow,
    ModelRow,
    UserRow,
    VersionRow,
)


class ModelStore(Repository):
    """Models, their versions and the storage they use."""

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
            id=new_id(),
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
                await get_row(s, UserRow, owner_id, "user")
                s.add(row)
        except IntegrityError:
            raise Conflict(f"model name '{name}' is taken") from None
        return row.to_core()

    @guarded
    async def get_model(self, model_id: str) -> Model:
        async with self._sessions() as s:
            return (await get_row(s, ModelRow, model_id, "model")).to_core()

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
        values = converted(fields, MODEL_UPDATES)
        async with self._db.write_session() as s:
            row = await get_row(s, ModelRow, model_id, "model")
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = self._now()
        return row.to_core()

    @guarded
    async def delete_model(self, model_id: str) -> None:
        async with self._db.write_session() as s:
            row = await get_row(s, ModelRow, model_id, "model")
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
                id=new_id(),
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
            return (await get_row(s, VersionRow, version_id, "version")).to_core()

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
        values = converted(fields, VERSION_UPDATES)
        async with self._db.write_session() as s:
            row = await get_row(s, VersionRow, version_id, "version")
            for name, value in values.items():
                setattr(row, name, value)
        return row.to_core()

    @guarded
    async def delete_version(self, version_id: str) -> None:
        try:
            async with self._db.write_session() as s:
                row = await get_row(s, VersionRow, version_id, "version")
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
