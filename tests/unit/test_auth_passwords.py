"""Password rules and argon2id hashing (small costs: these tests check behaviour, not strength)."""

from __future__ import annotations

from typing import Any

import pytest

from inferd.auth.passwords import Passwords, check_password
from inferd.core.errors import InvalidInput


@pytest.fixture
def pw() -> Passwords:
    return Passwords(time_cost=1, memory_cost_kib=8, parallelism=1)


@pytest.mark.parametrize(
    "bad", ["", "short", "x" * 7, "x" * 1025, None, 12345678, b"bytes-password"]
)
def test_check_password_refuses_and_names_the_field(bad: Any) -> None:
    with pytest.raises(InvalidInput) as e:
        check_password(bad)
    assert "password" in e.value.message


@pytest.mark.parametrize("good", ["x" * 8, "x" * 1024, "correct horse battery staple"])
def test_check_password_accepts_8_to_1024(good: str) -> None:
    check_password(good)


def test_hash_is_argon2id_salted_and_verifies(pw: Passwords) -> None:
    h1, h2 = pw.hash("s3cret-pass"), pw.hash("s3cret-pass")
    assert h1.startswith("$argon2id$")
    assert h1 != h2  # a fresh salt every time
    assert pw.verify(h1, "s3cret-pass")
    assert pw.verify(h2, "s3cret-pass")
    assert not pw.verify(h1, "s3cret-pasS")


def test_hash_refuses_a_bad_password(pw: Passwords) -> None:
    with pytest.raises(InvalidInput):
        pw.hash("short")


@pytest.mark.parametrize(
    "stored",
    ["", "garbage", "$argon2id$v=19$m=8,t=1,p=1$zz$zz", "$2b$12$abcdefghijklmnopqrstuv"],
)
def test_verify_is_false_for_a_malformed_hash(pw: Passwords, stored: str) -> None:
    assert pw.verify(stored, "s3cret-pass") is False


def test_verify_is_false_for_a_truncated_hash(pw: Passwords) -> None:
    assert pw.verify(pw.hash("s3cret-pass")[:-4], "s3cret-pass") is False


def test_verify_is_false_not_raising_for_odd_passwords(pw: Passwords) -> None:
    h = pw.hash("s3cret-pass")
    assert pw.verify(h, None) is False  # type: ignore[arg-type]
    assert pw.verify(h, "x" * 5000) is False


def test_needs_rehash_follows_the_parameters(pw: Passwords) -> None:
    h = pw.hash("s3cret-pass")
    assert pw.needs_rehash(h) is False
    stronger = Passwords(time_cost=2, memory_cost_kib=16, parallelism=1)
    assert stronger.needs_rehash(h) is True
    assert pw.needs_rehash("garbage") is True


class _SpyHasher:
    """Delegates to the real hasher and records each verify's stored hash."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.verified: list[str] = []

    def verify(self, stored: str, password: str) -> bool:
        self.verified.append(stored)
        return bool(self.real.verify(stored, password))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_dummy_verify_does_a_real_verify_against_one_fixed_hash(pw: Passwords) -> None:
    spy = _SpyHasher(pw._hasher)
    pw._hasher = spy  # type: ignore[assignment]
    assert pw.dummy_verify("whatever-pass") is False
    assert pw.dummy_verify("another-pass") is False
    # The same argon2 work as a real login: one verify each, against one hash made once with
    # this instance's cost parameters (so its timing matches a real user's hash).
    assert len(spy.verified) == 2
    assert spy.verified[0] == spy.verified[1]
    assert spy.verified[0].startswith("$argon2id$v=19$m=8,t=1,p=1$")
