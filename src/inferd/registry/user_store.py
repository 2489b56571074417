"""Users and their API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from inferd.core.errors import Conflict, NotFound
from inferd.core.records import (
    ApiKey,
    Role,
    Scope,
    User,
)
from inferd.registry.db import guarded
from inferd.registry.repository import Repository, converted, get_row, new_id
from inferd.registry.tables import (
    USER_UPDATES,
    ApiKeyRow,
    UserRow,
    as_utc,
)


class UserStore(Repository):
    """Users and their API keys."""

    # ---- users ----------------------------------------------------------------------------------

    @guarded
    async def create_user(
        self, username: str, password_hash: str | None, role: Role, *, trusted: bool = False
    ) -> User:
        row = UserRow(
            id=new_id(),
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
            return (await get_row(s, UserRow, user_id, "user")).to_core()

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
        values = converted(fields, USER_UPDATES)
        async with self._db.write_session() as s:
            row = await get_row(s, UserRow, user_id, "user")
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
            id=new_id(),
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
                await get_row(s, UserRow, user_id, "user")
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
            return (await get_row(s, ApiKeyRow, key_id, "key")).to_core()

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
            row = await get_row(s, ApiKeyRow, key_id, "key")
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
