"""Users, logins, tokens and API keys: who a caller is, and the bootstrap admin."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inferd.auth import keys
from inferd.auth.limits import RateLimiter
from inferd.auth.passwords import Passwords, check_password
from inferd.auth.policy import require, require_admin
from inferd.auth.principal import ANONYMOUS, Principal, for_key, for_user
from inferd.auth.tokens import TokenIssuer
from inferd.control.audit import Actor, Audit
from inferd.core.errors import (
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from inferd.core.records import ApiKey, Role, Scope, User
from inferd.registry.store import RegistryStore
from inferd.settings import AuthSettings, LimitSettings

log = logging.getLogger("inferd.auth")

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{2,63}$")
#: Fields an admin may change on a user.
USER_FIELDS = {"role", "trusted", "disabled", "rpm_limit", "concurrency_limit",
               "storage_quota_bytes"}  # fmt: skip
BAD_CREDENTIALS = "invalid username or password"


def check_username(username: Any) -> str:
    if not isinstance(username, str) or not _USERNAME.match(username):
        raise InvalidInput(
            "username: 3-64 characters, letters, digits, '_', '.', '-', starting with a "
            "letter or digit"
        )
    return username


def check_user_fields(fields: dict[str, Any]) -> None:
    """Refuse, naming the field, what the store cannot hold: a null role or flag (they have no
    "unset"; a null quota means the server default), a role that is not one. Types are the API's
    request model's job (`UserPatch`)."""
    for name in ("role", "trusted", "disabled"):
        if name in fields and fields[name] is None:
            raise InvalidInput(f"{name}: must not be null")
    if "role" in fields and fields["role"] not in tuple(Role):
        raise InvalidInput("role: must be 'admin' or 'member'")


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


@dataclass(slots=True)
class _Cached:
    until: float
    principal: Principal
    key: ApiKey | None = None


def looks_like_credential(token: str) -> bool:
    """Whether a bearer value is meant as an inferd credential (and so is verified, a bad one
    being a 401): an API key (`inferd_...`, well-formed or not) or a JWT (three dot-separated
    parts). Anything else — `EMPTY`, `sk-no-key-required` — is what clients send when they
    have no key."""
    return token.startswith(keys.PREFIX) or token.count(".") == 2


class Identity:
    """Authenticates callers (JWT or API key, cached briefly) and manages users and keys."""

    def __init__(
        self,
        store: RegistryStore,
        audit: Audit,
        auth: AuthSettings,
        limits: LimitSettings,
        rate: RateLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.audit = audit
        self.settings = auth
        self.limits = limits
        self.rate = rate
        self.clock = clock
        self.passwords = Passwords(auth.argon2_time_cost, auth.argon2_memory_kib)
        self._tokens: TokenIssuer | None = None
        self._cache: dict[str, _Cached] = {}
        self._touched: dict[str, float] = {}

    @property
    def tokens(self) -> TokenIssuer:
        if self._tokens is None:
            raise RuntimeError("Identity.start() has not run")
        return self._tokens

    # ---- start -----------------------------------------------------------------------------

    async def start(self) -> str | None:
        """Load the signing key and make the first admin. Returns a newly generated admin key
        (to print once) or None."""
        cfg = self.settings
        secret = cfg.jwt_secret.get_secret_value() if cfg.jwt_secret else None
        if secret is None:
            secret = await self.store.get_or_create_secret("jwt", secrets.token_urlsafe(48))
        self._tokens = TokenIssuer(
            secret, cfg.issuer, cfg.issuer, cfg.access_token_ttl_s, cfg.refresh_token_ttl_s,
            self.clock,
        )  # fmt: skip
        if await self.store.count_users() > 0:
            return None
        password = cfg.bootstrap_password.get_secret_value() if cfg.bootstrap_password else None
        if password is not None:
            check_password(password)
        pw_hash = await self._hash(password) if password else None
        admin = await self.store.create_user(check_username(cfg.bootstrap_admin), pw_hash,
                                             Role.ADMIN, trusted=True)  # fmt: skip
        given = cfg.bootstrap_key.get_secret_value() if cfg.bootstrap_key else None
        if given is not None:
            prefix = keys.key_prefix(given)
            if prefix is None:
                raise ValueError("auth.bootstrap_key is not an inferd API key (inferd_...)")
            new = keys.NewKey(given, prefix, keys.hash_key(given))
        else:
            new = keys.generate_key()
        await self.store.create_key(admin.id, "bootstrap", new.prefix, new.hash,
                                    frozenset(Scope), None)  # fmt: skip
        await self.audit.record(Actor(for_user(admin)), "user.bootstrap", "user", admin.id)
        return None if given is not None else new.token

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self.passwords.hash, password)

    # ---- authentication --------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        """The caller behind `Authorization: Bearer <jwt|key>` or `X-API-Key`; ANONYMOUS when
        neither is sent. This is the one rule of "no credential" for every route and RPC: a
        value shaped like neither an inferd key nor a JWT (`looks_like_credential`; the
        `api_key="EMPTY"` OpenAI clients must send) is no credential. Anything shaped like one
        is verified, and a bad one raises Unauthenticated (never falls back to anonymous)."""
        token = api_key
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthenticated("the Authorization header must be 'Bearer <token or key>'")
            token = value.strip()
        if token is None or not looks_like_credential(token):
            return ANONYMOUS
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and cached.until > now:
            if cached.key is not None:
                self._check_key_live(cached.key)
            return cached.principal
        until = now + self.settings.credential_cache_s
        if keys.key_prefix(token) is not None:
            principal, key = await self._key_principal(token)
        else:
            principal, exp = await self._token_principal(token)
            key = None
            until = min(until, now + exp - self.clock())  # never past the token's expiry
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = _Cached(until, principal, key)
        return principal

    async def _key_principal(self, token: str) -> tuple[Principal, ApiKey]:
        prefix = keys.key_prefix(token)
        found = await self.store.find_key(prefix) if prefix else None
        if found is None or not keys.verify_key(token, found[1]):
            raise Unauthenticated("invalid API key")
        key = found[0]
        self._check_key_live(key)
        user = await self.store.get_user(key.user_id)
        if user.disabled:
            raise Unauthenticated("invalid API key")
        self._touch(key.id)
        return for_key(user, key), key

    def _check_key_live(self, key: ApiKey) -> None:
        if key.revoked_at is not None:
            raise Unauthenticated("invalid API key")
        if key.expires_at is not None and key.expires_at.timestamp() <= self.clock():
            raise Unauthenticated("API key expired")

    def _touch(self, key_id: str) -> None:
        """Record last use at most once a minute per key, off the request's path."""
        now = time.monotonic()
        if now - self._touched.get(key_id, -1e9) < 60:
            return
        self._touched[key_id] = now
        task = asyncio.get_running_loop().create_task(
            self.store.touch_key(key_id, datetime.now(UTC))
        )
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _token_principal(self, token: str) -> tuple[Principal, int]:
        claims = self.tokens.verify(token, "access")
        try:
            user = await self.store.get_user(claims.sub)
        except NotFound:
            raise Unauthenticated("invalid or expired token") from None
        if user.disabled:
            raise Unauthenticated("invalid or expired token")
        return for_user(user), claims.exp

    def forget_credentials(self, key_id: str | None = None) -> None:
        """Drop cached lookups so a revocation or a user change applies at once on this node."""
        if key_id is None:
            self._cache.clear()
            return
        for token, c in list(self._cache.items()):
            if c.key is not None and c.key.id == key_id:
                del self._cache[token]

    # ---- users -----------------------------------------------------------------------------

    async def register(
        self, actor: Actor, username: str, password: str, role: Role = Role.MEMBER
    ) -> User:
        """Admins create any user; others only a member, and only with open registration."""
        p = actor.principal
        if not p.is_admin:
            if not self.settings.open_registration:
                if p.anonymous:
                    raise Unauthenticated("registration is closed: ask an admin for an account")
                raise PermissionDenied("only admins create users")
            if role != Role.MEMBER:
                raise PermissionDenied("only admins create admins")
        check_username(username)
        check_password(password)
        user = await self.store.create_user(username, await self._hash(password), role)
        await self.audit.record(actor, "user.create", "user", user.id, username=username,
                                role=str(role))  # fmt: skip
        return user

    async def login(self, username: str, password: str, ip: str) -> TokenPair:
        per_min = self.limits.login_attempts_per_minute
        try:
            await self.rate.hit(f"login:user:{username.lower()[:64]}", per_min)
            await self.rate.hit(f"login:ip:{ip}", per_min * 5)
        except RateLimited as e:
            raise RateLimited("too many login attempts; try again later", e.retry_after_s) from e
        found = await self.store.find_user(username) if isinstance(username, str) else None
        if found is None or found[1] is None:
            await asyncio.to_thread(self.passwords.dummy_verify, password)
            raise Unauthenticated(BAD_CREDENTIALS)
        user, pw_hash = found
        assert pw_hash is not None
        ok = await asyncio.to_thread(self.passwords.verify, pw_hash, password)
        if not ok or user.disabled:
            await self.audit.record(Actor(ANONYMOUS, ip), "user.login", "user", user.id,
                                    outcome="denied")  # fmt: skip
            raise Unauthenticated(BAD_CREDENTIALS)
        if self.passwords.needs_rehash(pw_hash):
            await self.store.update_user(user.id, password_hash=await self._hash(password))
        return self._pair(user)

    async def refresh(self, refresh_token: str) -> TokenPair:
        claims = self.tokens.verify(refresh_token, "refresh")
        try:
            user = await self.store.get_user(claims.sub)
        except NotFound:
            raise Unauthenticated("invalid or expired token") from None
        if user.disabled:
            raise Unauthenticated("invalid or expired token")
        return self._pair(user)

    def _pair(self, user: User) -> TokenPair:
        t = self.tokens
        return TokenPair(
            t.issue(user.id, str(user.role), "access"),
            t.issue(user.id, str(user.role), "refresh"),
            self.settings.access_token_ttl_s,
        )

    async def me(self, actor: Actor) -> User:
        require(actor.principal, Scope.INFER)
        assert actor.principal.user_id is not None
        return await self.store.get_user(actor.principal.user_id)

    async def list_users(self, actor: Actor) -> list[User]:
        require_admin(actor.principal)
        return await self.store.list_users()

    async def update_user(self, actor: Actor, user_id: str, fields: dict[str, Any]) -> User:
        require_admin(actor.principal)
        unknown = set(fields) - USER_FIELDS
        if unknown:
            raise InvalidInput(f"{sorted(unknown)[0]}: not a field an admin can set")
        check_user_fields(fields)
        if "role" in fields:
            fields["role"] = Role(fields["role"])
        user = await self.store.update_user(user_id, **fields)
        self.forget_credentials()
        await self.audit.record(actor, "user.update", "user", user_id,
                                fields={k: str(v) for k, v in fields.items()})  # fmt: skip
        return user

    # ---- API keys --------------------------------------------------------------------------

    async def create_key(
        self,
        actor: Actor,
        name: str,
        scopes: frozenset[Scope],
        expires_at: datetime | None = None,
        user_id: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for the caller (or, for admins, another user). The token is returned once."""
        p = actor.principal
        require(p, Scope.MANAGE)
        owner_id = user_id or p.user_id
        assert owner_id is not None
        if owner_id != p.user_id:
            require_admin(p)
            owner = await self.store.get_user(owner_id)
        else:
            owner = await self.store.get_user(owner_id)
        if not scopes:
            raise InvalidInput("scopes: give at least one of infer, manage, admin")
        if Scope.ADMIN in scopes and owner.role != Role.ADMIN:
            raise PermissionDenied("scopes: only admins can hold the 'admin' scope")
        if not p.is_admin and not all(p.has(s) for s in scopes):
            raise PermissionDenied("scopes: a key cannot have more rights than its creator")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise InvalidInput("name: 1-100 characters")
        if expires_at is not None and expires_at.timestamp() <= self.clock():
            raise InvalidInput("expires_at: must be in the future")
        new = keys.generate_key()
        key = await self.store.create_key(owner.id, name, new.prefix, new.hash, scopes,
                                          expires_at)  # fmt: skip
        await self.audit.record(actor, "key.create", "key", key.id, user_id=owner.id,
                                scopes=sorted(scopes))  # fmt: skip
        return key, new.token

    async def list_keys(self, actor: Actor, user_id: str | None = None) -> list[ApiKey]:
        p = actor.principal
        require(p, Scope.MANAGE)
        if user_id is not None and user_id != p.user_id:
            require_admin(p)
        target = user_id or p.user_id
        assert target is not None
        return await self.store.list_keys(target)

    async def revoke_key(self, actor: Actor, key_id: str) -> ApiKey:
        p = actor.principal
        require(p, Scope.MANAGE)
        try:
            key = await self.store.get_key(key_id)
        except NotFound:
            raise NotFound("key not found") from None
        if key.user_id != p.user_id and not p.is_admin:
            raise NotFound("key not found")
        key = await self.store.revoke_key(key.id, datetime.now(UTC))
        self.forget_credentials(key.id)
        await self.audit.record(actor, "key.revoke", "key", key.id)
        return key
