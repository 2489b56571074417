"""Webhook deliveries (the outbox `JobStore` fills as jobs end) and each user's signing secret.

A delivery is claimed by one sender at a time: claiming moves its `next_at` a lease ahead, in
the claiming transaction (on PostgreSQL the due rows are locked with `FOR UPDATE SKIP LOCKED`,
so senders sharing the database never claim the same one and never wait on each other; on
SQLite the write transaction itself is exclusive). A sender that dies mid-send leaves the row
`pending`; once the lease runs out anyone sends it again, with the same `webhook-id`.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from inferd.core.records import DeliveryStatus, WebhookDelivery
from inferd.registry.db import guarded
from inferd.registry.repository import Repository, get_row
from inferd.registry.tables import WebhookDeliveryRow, WebhookSecretRow, as_utc

#: Standard Webhooks' secret prefix; the rest is the base64 of the HMAC key.
SECRET_PREFIX = "whsec_"
#: At most this many characters of a failure are kept (it is shown to the job's owner).
MAX_ERROR_CHARS = 500


def new_webhook_secret() -> str:
    """A fresh signing secret in the Standard Webhooks format: `whsec_` + base64(32 bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


class WebhookStore(Repository):
    """Webhook deliveries and signing secrets."""

    # ---- signing secrets ------------------------------------------------------------------

    @guarded
    async def webhook_secret(self, owner_id: str) -> tuple[str, str | None]:
        """The user's signing secret and, within the grace period of a rotation, the previous
        one (else None). Created on first use; two callers at once get the same one."""
        now = self._now()
        if self._db.dialect == "postgresql":
            insert: Any = postgresql.insert(WebhookSecretRow)
        else:
            insert = sqlite.insert(WebhookSecretRow)
        async with self._sessions() as s:
            row = await s.get(WebhookSecretRow, owner_id)
        if row is None:
            values = {"owner_id": owner_id, "secret": new_webhook_secret(), "previous": None,
                      "previous_until": None, "created_at": now}  # fmt: skip
            async with self._db.write_session() as s:
                # a concurrent first use: ON CONFLICT waits for it, and both read its secret
                await s.execute(insert.values(**values)
                                .on_conflict_do_nothing(index_elements=["owner_id"]))  # fmt: skip
                row = await get_row(s, WebhookSecretRow, owner_id, "webhook secret")
        return row.secret, _previous(row, now)

    @guarded
    async def rotate_webhook_secret(
        self, owner_id: str, grace: timedelta
    ) -> tuple[str, str | None]:
        """A new signing secret for the user; the one it replaces keeps signing until
        now + `grace` (none with a zero grace). Returns (secret, previous or None)."""
        now = self._now()
        q = select(WebhookSecretRow).where(WebhookSecretRow.owner_id == owner_id)
        if self._db.dialect == "postgresql":
            q = q.with_for_update()
        async with self._db.write_session() as s:
            row = await s.scalar(q)
            if row is None:
                row = WebhookSecretRow(owner_id=owner_id, secret=new_webhook_secret(),
                                       previous=None, previous_until=None,
                                       created_at=now)  # fmt: skip
                s.add(row)
                return row.secret, None
            keep = grace > timedelta(0)
            row.previous = row.secret if keep else None
            row.previous_until = now + grace if keep else None
            row.secret = new_webhook_secret()
            row.created_at = now
            return row.secret, row.previous

    # ---- deliveries -----------------------------------------------------------------------

    @guarded
    async def claim_deliveries(self, limit: int, lease: timedelta) -> list[WebhookDelivery]:
        """Up to `limit` pending deliveries that are due, oldest first, each held for `lease`
        (its `next_at` moved to now + lease: no one else sends it meanwhile)."""
        if limit < 1:
            return []
        now = self._now()
        q = (select(WebhookDeliveryRow)
             .where(WebhookDeliveryRow.status == DeliveryStatus.PENDING.value,
                    WebhookDeliveryRow.next_at <= now)
             .order_by(WebhookDeliveryRow.next_at, WebhookDeliveryRow.created_at,
                       WebhookDeliveryRow.id)
             .limit(limit))  # fmt: skip
        if self._db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        async with self._db.write_session() as s:
            rows = list(await s.scalars(q))
            claimed = [r.to_core() for r in rows]  # as they were due: `next_at` is the due time
            for r in rows:
                r.next_at = now + lease
            return claimed

    @guarded
    async def next_delivery_at(self) -> datetime | None:
        """When the earliest pending delivery is due (claimed ones: when their lease ends)."""
        q = select(func.min(WebhookDeliveryRow.next_at)).where(
            WebhookDeliveryRow.status == DeliveryStatus.PENDING.value
        )
        async with self._sessions() as s:
            at = await s.scalar(q)
        return None if at is None else as_utc(at, "next_at")

    @guarded
    async def delivery_attempted(
        self, delivery_id: str, code: int | None, error: str, next_at: datetime | None
    ) -> WebhookDelivery:
        """Record one attempt: the receiver's status `code` (None: no answer) and what went
        wrong. With `next_at` it stays pending until then; without, it ends: `delivered` for a
        2xx answer, else `failed`. A delivery already ended keeps its end."""
        async with self._db.write_session() as s:
            row = await get_row(s, WebhookDeliveryRow, delivery_id, "webhook delivery")
            if row.status != DeliveryStatus.PENDING.value:
                return row.to_core()
            row.attempts += 1
            row.last_code = code
            row.last_error = error[:MAX_ERROR_CHARS]
            if next_at is not None:
                row.next_at = as_utc(next_at, "next_at")
            else:
                ok = code is not None and 200 <= code < 300
                row.status = (DeliveryStatus.DELIVERED if ok else DeliveryStatus.FAILED).value
                row.finished_at = self._now()
            return row.to_core()

    @guarded
    async def release_deliveries(self, delivery_ids: Sequence[str]) -> int:
        """Pending deliveries this sender claimed but did not send (it stops): due at once, for
        the next sender. Returns how many."""
        if not delivery_ids:
            return 0
        async with self._db.write_session() as s:
            done = await s.execute(
                update(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.id.in_(list(delivery_ids)),
                       WebhookDeliveryRow.status == DeliveryStatus.PENDING.value)
                .values(next_at=self._now())
            )  # fmt: skip
        return done.rowcount or 0  # type: ignore[attr-defined]

    @guarded
    async def list_deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """A job's deliveries, oldest first."""
        q = (select(WebhookDeliveryRow).where(WebhookDeliveryRow.job_id == job_id)
             .order_by(WebhookDeliveryRow.created_at, WebhookDeliveryRow.id))  # fmt: skip
        async with self._sessions() as s:
            return [r.to_core() for r in await s.scalars(q)]


def _previous(row: WebhookSecretRow, now: datetime) -> str | None:
    until = row.previous_until
    if row.previous is None or until is None or as_utc(until, "previous_until") <= now:
        return None
    return row.previous
