"""Signed session tokens (JWT, HS256): short-lived access tokens and longer refresh tokens.

Verification is strict on purpose: one algorithm, one key id, no key material taken from the token
itself, and the token's kind must match its use. Every failure looks the same to the caller, so an
attacker learns nothing from the error about which check failed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from inferd.core.errors import Unauthenticated

ALGORITHM = "HS256"
#: The id of the one signing key. A token naming another key (or a path, or a URL) is refused
#: before anything else is looked at, so `kid` can never steer which key verifies it.
KEY_ID = "k1"
#: Clock skew tolerated between nodes, in seconds.
LEEWAY_S = 5
#: Header fields that point at key material outside the server; the server has exactly one key.
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c")
_REQUIRED = ("exp", "iat", "sub", "iss", "aud", "typ", "jti", "role")
#: Far above any token this issuer makes; decoding a megabyte of base64 is work for nothing.
_MAX_TOKEN_CHARS = 8192
_GENERIC = "invalid or expired token"

TokenKind = Literal["access", "refresh"]


@dataclass(frozen=True)
class Claims:
    """The verified contents of a token. `kind` is the token's `typ` claim."""

    sub: str
    role: str
    kind: str
    jti: str
    exp: int
    iat: int


class TokenIssuer:
    """Issues and verifies HS256 JWTs with one server secret and an injected clock."""

    def __init__(
        self,
        secret: str,
        issuer: str = "inferd",
        audience: str = "inferd",
        access_ttl_s: int = 900,
        refresh_ttl_s: int = 14 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
        if len(secret.encode()) < 32:
            raise ValueError("the token secret must be at least 32 bytes")
        if access_ttl_s <= 0 or refresh_ttl_s <= 0:
            raise ValueError("token lifetimes must be positive")
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._ttl = {"access": access_ttl_s, "refresh": refresh_ttl_s}
        self._clock = clock

    def issue(self, user_id: str, role: str, kind: TokenKind) -> str:
        """A signed token of `kind` for `user_id`, valid from now for that kind's lifetime."""
        if kind not in self._ttl:
            raise ValueError(f"unknown token kind {kind!r}")
        now = int(self._clock())
        payload = {
            "sub": user_id,
            "role": role,
            "typ": kind,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "nbf": now,
            "exp": now + self._ttl[kind],
            "iss": self._issuer,
            "aud": self._audience,
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM, headers={"kid": KEY_ID})

    def verify(self, token: str, kind: TokenKind) -> Claims:
        """The claims of a valid token of `kind`; `Unauthenticated` for anything else."""
        try:
            return self._verify(token, kind)
        except Unauthenticated:
            raise
        except Exception:
            # Whatever the library or a malformed claim raised: never echo it (it may quote the
            # token), and never let a bad token become a 500.
            raise Unauthenticated(_GENERIC) from None

    def _verify(self, token: str, kind: TokenKind) -> Claims:
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthenticated(_GENERIC)
        header = jwt.get_unverified_header(token)
        if header.get("alg") != ALGORITHM or header.get("kid") != KEY_ID:
            raise Unauthenticated(_GENERIC)
        if any(name in header for name in _FORBIDDEN_HEADERS):
            raise Unauthenticated(_GENERIC)
        payload: dict[str, Any] = jwt.decode(
            token,
            self._secret,
            algorithms=[ALGORITHM],
            audience=self._audience,
            issuer=self._issuer,
            # PyJWT reads the wall clock itself; the time checks are done below with ours.
            options={
                "require": list(_REQUIRED),
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": True,
                "verify_iss": True,
                "strict_aud": True,
            },
        )
        exp, iat = _int_claim(payload, "exp"), _int_claim(payload, "iat")
        now = self._clock()
        if now >= exp + LEEWAY_S:
            raise Unauthenticated(_GENERIC)
        if iat > now + LEEWAY_S:
            raise Unauthenticated(_GENERIC)
        if "nbf" in payload and _int_claim(payload, "nbf") > now + LEEWAY_S:
            raise Unauthenticated(_GENERIC)
        sub, role, typ, jti = (payload.get(name) for name in ("sub", "role", "typ", "jti"))
        if not all(isinstance(v, str) and v for v in (sub, role, typ, jti)):
            raise Unauthenticated(_GENERIC)
        # A refresh token must never open the API, and an access token must never mint sessions.
        if typ != kind:
            raise Unauthenticated(_GENERIC)
        return Claims(sub=str(sub), role=str(role), kind=str(typ), jti=str(jti), exp=exp, iat=iat)


def _int_claim(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name)
    # bool is an int in Python; `"exp": true` is not a time.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated(_GENERIC)
    return int(value)
