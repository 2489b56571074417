"""Who is calling: the principal an authenticated request (or an anonymous one) acts as."""

from __future__ import annotations

from dataclasses import dataclass

from inferd.core.records import ApiKey, Role, Scope, User

#: What each scope includes besides itself: admin can do everything, manage includes infer.
_IMPLIED: dict[Scope, frozenset[Scope]] = {
    Scope.ADMIN: frozenset({Scope.ADMIN, Scope.MANAGE, Scope.INFER}),
    Scope.MANAGE: frozenset({Scope.MANAGE, Scope.INFER}),
    Scope.INFER: frozenset({Scope.INFER}),
}

_ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    Role.MEMBER: frozenset({Scope.INFER, Scope.MANAGE}),
    Role.ADMIN: frozenset({Scope.INFER, Scope.MANAGE, Scope.ADMIN}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request. `via` is "anonymous", "token" (a JWT session) or "key"."""

    user_id: str | None
    username: str
    role: Role | None
    scopes: frozenset[Scope]
    via: str
    key_id: str | None = None
    #: Effective per-principal quotas; None means the server default.
    rpm_limit: int | None = None
    concurrency_limit: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.user_id is None

    @property
    def is_admin(self) -> bool:
        # Both: an admin's key made with only `infer` must not carry admin powers.
        return self.role == Role.ADMIN and Scope.ADMIN in self.scopes

    def has(self, scope: Scope) -> bool:
        """True when one of the principal's scopes includes `scope`."""
        return any(scope in _IMPLIED.get(held, frozenset()) for held in self.scopes)


ANONYMOUS = Principal(
    user_id=None, username="anonymous", role=None, scopes=frozenset(), via="anonymous"
)


def scopes_for_role(role: Role) -> frozenset[Scope]:
    """Every scope a role may hold: what a logged-in user gets, and the ceiling for their keys."""
    return _ROLE_SCOPES[role]


def for_user(user: User) -> Principal:
    """The principal of a user signed in with a session token (all scopes of the role)."""
    return Principal(
        user_id=user.id,
        username=user.username,
        role=user.role,
        scopes=scopes_for_role(user.role),
        via="token",
        rpm_limit=user.rpm_limit,
        concurrency_limit=user.concurrency_limit,
    )


def for_key(user: User, key: ApiKey) -> Principal:
    """The principal of a request made with `key`, owned by `user`.

    A key never grants more than its owner's role allows: a member's key minted with `admin`
    scope (by a bug, or a role changed after the key was made) is not an admin key.
    """
    return Principal(
        user_id=user.id,
        username=user.username,
        role=user.role,
        scopes=frozenset(key.scopes) & scopes_for_role(user.role),
        via="key",
        key_id=key.id,
        rpm_limit=key.rpm_limit if key.rpm_limit is not None else user.rpm_limit,
        concurrency_limit=user.concurrency_limit,
    )
