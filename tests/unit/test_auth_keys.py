"""API key format, lookup prefix and digest check."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from inferd.auth.keys import PREFIX, generate_key, hash_key, key_prefix, verify_key


def test_generated_key_format_prefix_and_hash() -> None:
    new = generate_key()
    assert re.fullmatch(r"inferd_[A-Za-z0-9]{8}_[A-Za-z0-9]{32,}", new.token)
    assert new.token.startswith(PREFIX)
    assert new.prefix == new.token[: len("inferd_") + 8]
    assert new.hash == hashlib.sha256(new.token.encode()).hexdigest()
    assert hash_key(new.token) == new.hash
    assert key_prefix(new.token) == new.prefix


def test_keys_are_random() -> None:
    made = [generate_key() for _ in range(200)]
    assert len({k.token for k in made}) == 200
    assert len({k.prefix for k in made}) == 200
    # ~256 bits of secret: 43 characters of base62.
    assert all(len(k.token.rsplit("_", 1)[1]) >= 43 for k in made)


def test_verify_key() -> None:
    new = generate_key()
    assert verify_key(new.token, new.hash)
    other = generate_key()
    assert not verify_key(other.token, new.hash)
    flipped = new.token[:-1] + ("A" if new.token[-1] != "A" else "B")
    assert not verify_key(flipped, new.hash)
    assert not verify_key(new.token, new.hash.upper())
    assert not verify_key(new.token, "")
    assert not verify_key(new.token, "é" * 64)  # a corrupt row: False, not a TypeError


def test_verify_key_refuses_a_malformed_token_even_with_its_digest() -> None:
    junk = "not-a-key"
    assert not verify_key(junk, hashlib.sha256(junk.encode()).hexdigest())


@pytest.mark.parametrize(
    "token",
    [
        "",
        "inferd_",
        "inferd_abcd1234",
        "inferd_abcd1234_",
        "inferd_abcd1234_" + "a" * 31,  # secret too short
        "inferd_abc123_" + "a" * 40,  # id too short
        "inferd_abcd12345_" + "a" * 40,  # id too long
        "inferd_abcd_234_" + "a" * 40,  # underscore inside the id
        "inferd_abcd1234_" + "a" * 20 + "_" + "a" * 20,  # a third separator
        "inferd_abcd1234_" + "a" * 20 + "-" + "a" * 20,
        "sk_abcd1234_" + "a" * 40,
        "INFERD_abcd1234_" + "a" * 40,
        "inferd_abcd1234_" + "a" * 40 + "\n",
        "inferd_abcd1234_" + "a" * 500,
        "inferd_abcd\u0661\u0662\u0663\u0664_" + "a" * 40,  # non-ASCII digits
        None,
        12345,
    ],
)
def test_key_prefix_is_none_for_non_keys(token: Any) -> None:
    assert key_prefix(token) is None


def test_key_prefix_of_a_well_formed_key() -> None:
    assert key_prefix("inferd_Ab3dE6gH_" + "x" * 40) == "inferd_Ab3dE6gH"
