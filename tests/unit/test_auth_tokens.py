"""JWT issue/verify, and the forgeries and mix-ups verification must refuse.

Every forged token below is otherwise valid (signed with the server secret where the attack allows
it), so each test fails if the one check it targets is missing.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from inferd.auth.tokens import KEY_ID, Claims, TokenIssuer
from inferd.core.errors import Unauthenticated

SECRET = "s" * 64
T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def issuer(clock: FakeClock) -> TokenIssuer:
    return TokenIssuer(SECRET, access_ttl_s=900, refresh_ttl_s=3600, clock=clock)


def payload(**changes: Any) -> dict[str, Any]:
    """A payload exactly like the issuer's, with `changes` applied (None deletes a claim)."""
    now = int(T0)
    claims: dict[str, Any] = {
        "sub": "u1",
        "role": "member",
        "typ": "access",
        "jti": "j1",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "iss": "inferd",
        "aud": "inferd",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def forge(
    claims: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
    key: Any = SECRET,
    alg: str = "HS256",
) -> str:
    all_headers = {"kid": KEY_ID, **(headers or {})}
    return jwt.encode(claims or payload(), key, algorithm=alg, headers=all_headers)


def b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def refused(issuer: TokenIssuer, token: str, kind: Any = "access") -> None:
    with pytest.raises(Unauthenticated) as e:
        issuer.verify(token, kind)
    assert e.value.message == "invalid or expired token"
    assert token not in str(e.value)


def test_round_trip(issuer: TokenIssuer) -> None:
    token = issuer.issue("u1", "admin", "access")
    claims = issuer.verify(token, "access")
    assert claims == Claims(
        sub="u1", role="admin", kind="access", jti=claims.jti, exp=int(T0) + 900, iat=int(T0)
    )
    assert len(claims.jti) >= 16
    assert issuer.verify(issuer.issue("u1", "admin", "access"), "access").jti != claims.jti
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    assert header["kid"] == KEY_ID
    body = jwt.decode(token, options={"verify_signature": False})
    assert body["iss"] == "inferd" and body["aud"] == "inferd" and body["typ"] == "access"
    assert body["nbf"] == int(T0)


def test_refresh_round_trip_uses_its_own_lifetime(issuer: TokenIssuer) -> None:
    claims = issuer.verify(issuer.issue("u1", "member", "refresh"), "refresh")
    assert claims.kind == "refresh"
    assert claims.exp == int(T0) + 3600


def test_forged_payload_helper_is_accepted_as_is(issuer: TokenIssuer) -> None:
    # The baseline every forgery below departs from by one thing.
    assert issuer.verify(forge(), "access").sub == "u1"


def test_alg_none_is_refused(issuer: TokenIssuer) -> None:
    token = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': KEY_ID})}.{b64(payload())}."
    refused(issuer, token)


def test_other_secret_is_refused(issuer: TokenIssuer) -> None:
    refused(issuer, forge(key="o" * 64))


def test_expired_is_refused_after_leeway(issuer: TokenIssuer, clock: FakeClock) -> None:
    token = issuer.issue("u1", "member", "access")
    clock.now = T0 + 900 + 3  # within the 5 s leeway
    assert issuer.verify(token, "access").sub == "u1"
    clock.now = T0 + 900 + 6
    refused(issuer, token)


def test_future_nbf_is_refused(issuer: TokenIssuer) -> None:
    refused(issuer, forge(payload(nbf=int(T0) + 60)))
    assert issuer.verify(forge(payload(nbf=int(T0) + 3)), "access")  # skew within leeway


def test_future_iat_is_refused(issuer: TokenIssuer) -> None:
    refused(issuer, forge(payload(iat=int(T0) + 60)))


def test_token_from_the_future_becomes_valid_with_time(
    issuer: TokenIssuer, clock: FakeClock
) -> None:
    clock.now = T0 - 3600
    token = issuer.issue("u1", "member", "access")
    clock.now = T0
    refused(issuer, token)  # expired: the injected clock, not the wall clock, decides


def test_wrong_audience_is_refused(issuer: TokenIssuer) -> None:
    refused(issuer, forge(payload(aud="someone-else")))
    refused(issuer, forge(payload(aud=["someone-else"])))


def test_wrong_issuer_is_refused(issuer: TokenIssuer) -> None:
    refused(issuer, forge(payload(iss="evil")))


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "iss", "aud", "typ", "jti", "role"])
def test_missing_required_claim_is_refused(issuer: TokenIssuer, claim: str) -> None:
    refused(issuer, forge(payload(**{claim: None})))


@pytest.mark.parametrize(
    "changes",
    [{"exp": "never"}, {"exp": True}, {"sub": 7}, {"role": ["admin"]}, {"jti": ""}, {"nbf": "x"}],
)
def test_malformed_claims_are_refused(issuer: TokenIssuer, changes: dict[str, Any]) -> None:
    refused(issuer, forge(payload(**changes)))


def test_tampered_payload_is_refused(issuer: TokenIssuer) -> None:
    token = issuer.issue("u1", "member", "access")
    header, _body, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["role"] = "admin"
    refused(issuer, f"{header}.{b64(claims)}.{signature}")


def test_kid_path_is_refused(issuer: TokenIssuer) -> None:
    refused(issuer, forge(headers={"kid": "../../dev/null"}))


def test_missing_kid_is_refused(issuer: TokenIssuer) -> None:
    token = jwt.encode(payload(), SECRET, algorithm="HS256")
    refused(issuer, token)


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c"])
def test_key_location_headers_are_refused(issuer: TokenIssuer, name: str) -> None:
    value: Any = {"kty": "oct", "k": "AA"} if name == "jwk" else "https://evil.example/keys"
    if name == "x5c":
        value = ["MIIB"]
    refused(issuer, forge(headers={name: value}))


def test_refresh_token_is_not_an_access_token(issuer: TokenIssuer) -> None:
    refused(issuer, issuer.issue("u1", "member", "refresh"), "access")


def test_access_token_is_not_a_refresh_token(issuer: TokenIssuer) -> None:
    refused(issuer, issuer.issue("u1", "member", "access"), "refresh")


def test_rs256_token_is_refused(issuer: TokenIssuer) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(issuer, forge(key=private, alg="RS256"))


def test_hs512_with_the_right_secret_is_refused(issuer: TokenIssuer) -> None:
    refused(issuer, forge(alg="HS512"))


@pytest.mark.parametrize("garbage", ["", "garbage", "a.b.c", "....", "x" * 10_000, None, b"bytes"])
def test_garbage_is_refused(issuer: TokenIssuer, garbage: Any) -> None:
    with pytest.raises(Unauthenticated) as e:
        issuer.verify(garbage, "access")
    assert e.value.message == "invalid or expired token"


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenIssuer("x" * 31)
    TokenIssuer("x" * 32)


def test_issue_refuses_an_unknown_kind(issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError):
        issuer.issue("u1", "member", "session")  # type: ignore[arg-type]
