"""Authorization policy: the full principal by model by verb matrix, and the errors it raises."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from inferd.auth import policy
from inferd.auth.principal import ANONYMOUS, Principal
from inferd.core.errors import NotFound, PermissionDenied, Unauthenticated
from inferd.core.records import Model, Role, Scope, Visibility

NOW = datetime(2026, 1, 1, tzinfo=UTC)
INF, MAN, ADM = Scope.INFER, Scope.MANAGE, Scope.ADMIN


def _p(uid: str, role: Role, via: str, *scopes: Scope) -> Principal:
    return Principal(user_id=uid, username=uid, role=role, scopes=frozenset(scopes), via=via)


PRINCIPALS: dict[str, Principal] = {
    "anonymous": ANONYMOUS,
    "owner": _p("owner", Role.MEMBER, "token", INF, MAN),
    "other": _p("other", Role.MEMBER, "token", INF, MAN),
    "owner_key_infer": _p("owner", Role.MEMBER, "key", INF),
    "owner_key_manage": _p("owner", Role.MEMBER, "key", MAN),
    "admin": _p("admin", Role.ADMIN, "token", INF, MAN, ADM),
    "admin_key_no_admin": _p("admin", Role.ADMIN, "key", INF, MAN),
}


def _model(name: str, visibility: Visibility, owner: str = "owner", system: bool = False) -> Model:
    return Model(
        id=f"id-{name}",
        name=name,
        owner_id=owner,
        visibility=visibility,
        created_at=NOW,
        updated_at=NOW,
        system=system,
    )


MODELS: dict[str, Model] = {
    "private": _model("private", Visibility.PRIVATE),
    "public": _model("public", Visibility.PUBLIC),
    "system": _model("system", Visibility.PUBLIC, owner="system", system=True),
}

# Expected verbs per (principal, model), with anonymous access off: S see, I infer, M manage.
EXPECTED: dict[str, dict[str, str]] = {
    "anonymous": {"private": "", "public": "", "system": ""},
    "owner": {"private": "SIM", "public": "SIM", "system": "SI"},
    "other": {"private": "", "public": "SI", "system": "SI"},
    "owner_key_infer": {"private": "SI", "public": "SI", "system": "SI"},
    "owner_key_manage": {"private": "SIM", "public": "SIM", "system": "SI"},
    "admin": {"private": "SIM", "public": "SIM", "system": "SIM"},
    "admin_key_no_admin": {"private": "", "public": "SI", "system": "SI"},
}
# With anonymous access on, only the anonymous row changes.
EXPECTED_ANON_ALLOWED = {"private": "", "public": "SI", "system": "SI"}

CASES = [(p, m) for p in PRINCIPALS for m in MODELS]


def _verbs(p: Principal, m: Model, allow_anonymous: bool) -> str:
    return (
        ("S" if policy.can_see(p, m, allow_anonymous) else "")
        + ("I" if policy.can_infer(p, m, allow_anonymous) else "")
        + ("M" if policy.can_manage(p, m) else "")
    )


def test_the_table_covers_every_case() -> None:
    assert set(EXPECTED) == set(PRINCIPALS)
    assert all(set(row) == set(MODELS) for row in EXPECTED.values())


@pytest.mark.parametrize(("who", "what"), CASES)
def test_matrix_without_anonymous_access(who: str, what: str) -> None:
    assert _verbs(PRINCIPALS[who], MODELS[what], False) == EXPECTED[who][what]


@pytest.mark.parametrize(("who", "what"), CASES)
def test_matrix_with_anonymous_access(who: str, what: str) -> None:
    expected = EXPECTED_ANON_ALLOWED[what] if who == "anonymous" else EXPECTED[who][what]
    assert _verbs(PRINCIPALS[who], MODELS[what], True) == expected


@pytest.mark.parametrize(("who", "what"), CASES)
def test_visible_raises_not_found_exactly_when_unseen(who: str, what: str) -> None:
    p, m = PRINCIPALS[who], MODELS[what]
    if "S" in EXPECTED[who][what]:
        assert policy.visible(p, m, False) is m
    else:
        with pytest.raises(NotFound) as e:
            policy.visible(p, m, False)
        # Word for word what a model that does not exist gets: nothing leaks.
        assert e.value.message == f"model '{m.name}' not found"


@pytest.mark.parametrize(("who", "what"), CASES)
def test_manageable_errors(who: str, what: str) -> None:
    p, m = PRINCIPALS[who], MODELS[what]
    verbs = EXPECTED[who][what]
    if who == "anonymous":
        with pytest.raises(Unauthenticated):
            policy.manageable(p, m)
    elif "M" in verbs:
        assert policy.manageable(p, m) is m
    elif "S" not in verbs:
        with pytest.raises(NotFound):
            policy.manageable(p, m)
    else:
        with pytest.raises(PermissionDenied):
            policy.manageable(p, m)


@pytest.mark.parametrize(("who", "what"), CASES)
def test_inferable_errors(who: str, what: str) -> None:
    p, m = PRINCIPALS[who], MODELS[what]
    verbs = EXPECTED[who][what]
    if "I" in verbs:
        assert policy.inferable(p, m, False) is m
    elif "S" not in verbs:
        with pytest.raises(NotFound):
            policy.inferable(p, m, False)
    else:
        with pytest.raises(PermissionDenied):
            policy.inferable(p, m, False)


def test_seen_without_infer_scope_is_permission_denied() -> None:
    no_scopes = _p("owner", Role.MEMBER, "key")
    m = MODELS["private"]
    assert policy.can_see(no_scopes, m, False)
    assert not policy.can_infer(no_scopes, m, False)
    with pytest.raises(PermissionDenied):
        policy.inferable(no_scopes, m, False)


def test_require() -> None:
    with pytest.raises(Unauthenticated) as u:
        policy.require(ANONYMOUS, INF)
    assert u.value.message == "authentication required"
    with pytest.raises(PermissionDenied) as d:
        policy.require(PRINCIPALS["owner_key_infer"], MAN)
    assert d.value.message == "this needs the 'manage' scope"
    with pytest.raises(PermissionDenied):
        policy.require(PRINCIPALS["owner"], ADM)
    policy.require(PRINCIPALS["owner_key_manage"], INF)  # manage includes infer
    policy.require(PRINCIPALS["admin"], MAN)


def test_require_admin() -> None:
    with pytest.raises(Unauthenticated):
        policy.require_admin(ANONYMOUS)
    for who in ("owner", "owner_key_manage", "admin_key_no_admin"):
        with pytest.raises(PermissionDenied):
            policy.require_admin(PRINCIPALS[who])
    policy.require_admin(PRINCIPALS["admin"])


def test_member_cannot_fake_admin_with_the_scope_alone() -> None:
    fake = _p("owner", Role.MEMBER, "key", ADM)
    other_private = _model("theirs", Visibility.PRIVATE, owner="other")
    assert not policy.can_see(fake, other_private, False)
    with pytest.raises(PermissionDenied):
        policy.require_admin(fake)


def test_system_models_are_read_only_even_for_their_owner() -> None:
    owner = PRINCIPALS["owner"]
    own_system = _model("mine", Visibility.PUBLIC, owner="owner", system=True)
    assert policy.can_see(owner, own_system, False)
    assert not policy.can_manage(owner, own_system)
    with pytest.raises(PermissionDenied):
        policy.manageable(owner, own_system)
    assert policy.can_manage(PRINCIPALS["admin"], own_system)
