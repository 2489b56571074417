"""Deployments: which version of a model is served, how, and its status."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from inferd.core.errors import Conflict, NotFound
from inferd.core.records import (
    Deployment,
    DeploymentConfig,
    DeploymentStatus,
)
from inferd.core.routing import NO_ROUTING, RoutingPolicy
from inferd.core.traffic import Revision
from inferd.registry.db import guarded
from inferd.registry.repository import Repository, get_row, new_id
from inferd.registry.tables import (
    DeploymentRow,
    ModelRow,
    VersionRow,
    config_to_json,
)


class DeploymentStore(Repository):
    """Deployments: which version of a model is served, how, and its status."""

    # ---- deployments ----------------------------------------------------------------------------

    @guarded
    async def create_deployment(
        self,
        model_id: str,
        version: int,
        config: DeploymentConfig,
        created_by: str | None,
        traffic: tuple[Revision, ...] = (),
        routing: RoutingPolicy = NO_ROUTING,
    ) -> Deployment:
        now = self._now()
        row = DeploymentRow(
            id=new_id(),
            model_id=model_id,
            version=version,
            config=config_to_json(config),
            status=DeploymentStatus.DEPLOYING.value,
            reason="",
            created_by=created_by,
            generation=1,
            observed_generation=0,
            traffic=_traffic_json(traffic),
            routing=routing.doc(),
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._db.write_session() as s:
                await get_row(s, ModelRow, model_id, "model")
                await self._require_version(s, model_id, version)
                for r in traffic:
                    await self._require_version(s, model_id, r.version)
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
            return (await get_row(s, DeploymentRow, deployment_id, "deployment")).to_core()

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
        traffic: tuple[Revision, ...] | None = None,
        routing: RoutingPolicy | None = None,
    ) -> Deployment:
        """Change what is deployed; `traffic=()` drops the split (`version` takes all);
        `routing=NO_ROUTING` drops the routing policy."""
        async with self._db.write_session() as s:
            row = await get_row(s, DeploymentRow, deployment_id, "deployment")
            if version is not None:
                await self._require_version(s, row.model_id, version)
                row.version = version
            if config is not None:
                row.config = config_to_json(config)
            if traffic is not None:
                for r in traffic:
                    await self._require_version(s, row.model_id, r.version)
                row.traffic = _traffic_json(traffic)
            if routing is not None:
                row.routing = routing.doc()
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
            row = await get_row(s, DeploymentRow, deployment_id, "deployment")
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
            row = await get_row(s, DeploymentRow, deployment_id, "deployment")
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


def _traffic_json(traffic: tuple[Revision, ...]) -> list[dict[str, Any]]:
    """Each revision: version, weight and, when it has its own, its runtime config."""
    out: list[dict[str, Any]] = []
    for r in traffic:
        doc: dict[str, Any] = {"version": r.version, "weight": r.weight}
        if r.config is not None:
            doc["config"] = config_to_json(r.config)
        out.append(doc)
    return out
