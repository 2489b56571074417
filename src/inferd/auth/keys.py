"""API keys: `inferd_<id>_<secret>`, shown once, stored as a SHA-256 digest.

The id is a lookup handle (stored in clear as the key's `prefix`, shown in listings); the secret
is what proves possession. Both use letters and digits only, so the two underscores are the only
separators and a key parses one way.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

PREFIX = "inferd_"
ID_LENGTH = 8
#: 43 base62 characters ≈ 256 bits; anything under 32 characters is not a key this server made.
SECRET_LENGTH = 43
_MIN_SECRET, _MAX_SECRET = 32, 128
_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(
    rf"{PREFIX}([A-Za-z0-9]{{{ID_LENGTH}}})_[A-Za-z0-9]{{{_MIN_SECRET},{_MAX_SECRET}}}",
    re.ASCII,
)


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: `token` goes to the user once; `prefix` and `hash` go to the database."""

    token: str
    prefix: str
    hash: str


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def hash_key(token: str) -> str:
    """The digest stored for `token`: SHA-256, hex."""
    # A fast hash is right here, unlike for passwords: a key carries ~256 random bits, so nobody
    # can guess it from its digest whatever the hash speed, while argon2 would put tens of
    # milliseconds of CPU on every API call. argon2 is for low-entropy, human-chosen passwords.
    return hashlib.sha256(token.encode()).hexdigest()


def generate_key() -> NewKey:
    """A new random key with its lookup prefix and the digest to store."""
    prefix = PREFIX + _random(ID_LENGTH)
    token = f"{prefix}_{_random(SECRET_LENGTH)}"
    return NewKey(token=token, prefix=prefix, hash=hash_key(token))


def key_prefix(token: str) -> str | None:
    """`inferd_<id>` of a well-formed key, None for anything that is not one."""
    if not isinstance(token, str):
        return None
    match = _KEY_RE.fullmatch(token)
    return None if match is None else PREFIX + match.group(1)


def verify_key(token: str, stored_hash: str) -> bool:
    """True when `token` is a well-formed key whose digest is `stored_hash` (constant time)."""
    if key_prefix(token) is None or not isinstance(stored_hash, str):
        return False
    # Bytes, not str: compare_digest refuses non-ASCII str, and a corrupt row must not raise.
    return hmac.compare_digest(hash_key(token).encode(), stored_hash.encode())
