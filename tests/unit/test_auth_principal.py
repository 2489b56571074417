"""Principals: scope implication, admin-ness, and what users and their keys may hold."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from inferd.auth.principal import ANONYMOUS, Principal, for_key, for_user, scopes_for_role
from inferd.core.records import ApiKey, Role, Scope, User

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ALL = frozenset(Scope)


def user(role: Role = Role.MEMBER, **kw: object) -> User:
    return User(id="u1", username="ann", role=role, created_at=NOW, **kw)  # type: ignore[arg-type]


def key(*scopes: Scope, rpm: int | None = None) -> ApiKey:
    return ApiKey(
        id="k1",
        user_id="u1",
        name="ci",
        prefix="inferd_abcd1234",
        scopes=frozenset(scopes),
        created_at=NOW,
        rpm_limit=rpm,
    )


def principal(*scopes: Scope, role: Role | None = Role.MEMBER) -> Principal:
    return Principal(user_id="u1", username="ann", role=role, scopes=frozenset(scopes), via="key")


def test_anonymous() -> None:
    assert ANONYMOUS.anonymous
    assert ANONYMOUS.scopes == frozenset()
    assert ANONYMOUS.role is None
    assert ANONYMOUS.via == "anonymous"
    assert not ANONYMOUS.is_admin
    assert not any(ANONYMOUS.has(s) for s in Scope)
    assert not principal().anonymous


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        ({Scope.INFER}, {Scope.INFER}),
        ({Scope.MANAGE}, {Scope.INFER, Scope.MANAGE}),
        ({Scope.ADMIN}, set(Scope)),
        ({Scope.INFER, Scope.MANAGE}, {Scope.INFER, Scope.MANAGE}),
        (set(), set()),
    ],
)
def test_has_follows_implication(held: set[Scope], expected: set[Scope]) -> None:
    p = principal(*held)
    assert {s for s in Scope if p.has(s)} == expected


def test_is_admin_needs_role_and_scope() -> None:
    assert principal(Scope.ADMIN, role=Role.ADMIN).is_admin
    assert not principal(Scope.INFER, Scope.MANAGE, role=Role.ADMIN).is_admin
    assert not principal(Scope.ADMIN, role=Role.MEMBER).is_admin


def test_scopes_for_role() -> None:
    assert scopes_for_role(Role.MEMBER) == {Scope.INFER, Scope.MANAGE}
    assert scopes_for_role(Role.ADMIN) == ALL


def test_for_user() -> None:
    p = for_user(user(Role.ADMIN, rpm_limit=60, concurrency_limit=4))
    assert (p.user_id, p.username, p.role, p.via, p.key_id) == (
        "u1",
        "ann",
        Role.ADMIN,
        "token",
        None,
    )
    assert p.scopes == ALL and p.is_admin
    assert (p.rpm_limit, p.concurrency_limit) == (60, 4)
    member = for_user(user())
    assert member.scopes == {Scope.INFER, Scope.MANAGE} and not member.is_admin


def test_for_key_intersects_with_the_role() -> None:
    p = for_key(user(Role.MEMBER), key(Scope.ADMIN, Scope.INFER))
    assert p.scopes == {Scope.INFER}
    assert not p.is_admin and not p.has(Scope.MANAGE)
    assert (p.via, p.key_id) == ("key", "k1")


def test_admin_key_keeps_only_its_own_scopes() -> None:
    p = for_key(user(Role.ADMIN), key(Scope.INFER))
    assert p.scopes == {Scope.INFER}
    assert not p.is_admin and not p.has(Scope.MANAGE)
    assert for_key(user(Role.ADMIN), key(Scope.ADMIN)).is_admin


def test_for_key_limits() -> None:
    u = user(rpm_limit=100, concurrency_limit=3)
    assert for_key(u, key(Scope.INFER, rpm=10)).rpm_limit == 10
    assert for_key(u, key(Scope.INFER)).rpm_limit == 100
    assert for_key(u, key(Scope.INFER)).concurrency_limit == 3
    assert for_key(user(), key(Scope.INFER)).rpm_limit is None
