"""Who is acting (principal + client address) and the audit trail of management actions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from inferd.auth.principal import ANONYMOUS, Principal
from inferd.core.errors import InferdError
from inferd.core.records import AuditEntry
from inferd.registry.store import RegistryStore

log = logging.getLogger("inferd.audit")


@dataclass(frozen=True, slots=True)
class Actor:
    """The caller of a management use-case: who, and from which address."""

    principal: Principal = ANONYMOUS
    ip: str = ""
    #: Extra detail merged into the audit entry (e.g. the API route).
    context: dict[str, Any] = field(default_factory=dict)


class Audit:
    """Appends one entry per management action. Failing to audit never hides the action's
    own error, and is logged (the action itself already happened)."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store

    async def record(
        self,
        actor: Actor,
        action: str,
        target_type: str,
        target_id: str,
        outcome: str = "ok",
        **detail: Any,
    ) -> None:
        p = actor.principal
        try:
            await self.store.add_audit(
                actor_id=p.user_id,
                actor_name=p.username,
                action=action,
                target_type=target_type,
                target_id=target_id,
                outcome=outcome,
                ip=actor.ip,
                detail={**actor.context, **detail},
            )
        except InferdError as e:
            log.warning("audit entry for %s on %s %s lost: %s", action, target_type, target_id,
                        e.message)  # fmt: skip

    @staticmethod
    def fields(actor: Actor, action: str, target_type: str, **detail: Any) -> dict[str, Any]:
        """An entry's fields but its target id, for a store method that records the action
        and its entry in one transaction (`registry.audit_store.audit_row`)."""
        p = actor.principal
        return {"actor_id": p.user_id, "actor_name": p.username, "action": action,
                "target_type": target_type, "ip": actor.ip,
                "detail": {**actor.context, **detail}}  # fmt: skip

    async def entries(
        self, *, limit: int = 100, actor_id: str | None = None, action: str | None = None
    ) -> list[AuditEntry]:
        return await self.store.list_audit(limit=limit, actor_id=actor_id, action=action)
