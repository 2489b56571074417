"""The audit log and the server secrets kept in the database."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from inferd.core.records import (
    AuditEntry,
)
from inferd.registry.db import guarded
from inferd.registry.repository import Repository, new_id
from inferd.registry.tables import (
    AuditRow,
    SecretRow,
    as_utc,
)


def audit_row(at: datetime, *, actor_id: str | None, actor_name: str, action: str,
              target_type: str, target_id: str, outcome: str = "ok", ip: str = "",
              detail: dict[str, Any] | None = None) -> AuditRow:  # fmt: skip
    """One audit entry's row (for a transaction that records its action with it)."""
    # Through JSON and back with str() for anything else (datetimes, enums, paths): an audit
    # entry must never be lost because a detail value is not JSON.
    safe = json.loads(json.dumps(detail or {}, default=str))
    return AuditRow(id=new_id(), at=at, actor_id=actor_id, actor_name=actor_name, action=action,
                    target_type=target_type, target_id=target_id, outcome=outcome, ip=ip,
                    detail=safe)  # fmt: skip


class AuditStore(Repository):
    """The audit log and the server secrets kept in the database."""

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
        row = audit_row(self._now(), actor_id=actor_id, actor_name=actor_name, action=action,
                        target_type=target_type, target_id=target_id, outcome=outcome, ip=ip,
                        detail=detail)  # fmt: skip
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
