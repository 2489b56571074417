"""What every part of the registry's repository shares: the session factory, the injected
clock, and the small helpers of its transactions."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from inferd.core.errors import NotFound
from inferd.registry.db import Database
from inferd.registry.tables import (
    as_utc,
)

T = TypeVar("T")


async def get_row(s: AsyncSession, row_type: type[T], key: str, what: str) -> T:
    row = await s.get(row_type, key)
    if row is None:
        raise NotFound(f"{what} not found")
    return row


def new_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)


def converted(fields: dict[str, Any], allowed: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ValueError(f"cannot update field(s): {', '.join(unknown)}")
    return {name: allowed[name](value) for name, value in fields.items()}


class Repository:
    """The registry's persistence, one aggregate per subclass (users, models, deployments,
    audit); `RegistryStore` joins them. `clock` returns the current UTC time (injected so tests
    can pin timestamps)."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] | None = None) -> None:
        self._db = db
        self._sessions = db.sessions()
        self._clock = clock or utc_now

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._db.dialect

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> None:
        """PostgreSQL only: `on_notify()` on each NOTIFY on `channel`, until cancelled."""
        await self._db.listen(channel, on_notify)

    def _now(self) -> datetime:
        return as_utc(self._clock(), "clock()")
