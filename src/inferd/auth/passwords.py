"""Password rules and argon2id hashing.

Hashing is deliberately slow (tens of milliseconds at the default cost): callers on the event loop
run `hash`, `verify` and `dummy_verify` in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import secrets
import threading

from argon2 import PasswordHasher, Type
from argon2.exceptions import Argon2Error, InvalidHashError

from inferd.core.errors import InvalidInput

MIN_LENGTH = 8
#: argon2 digests any length, but an unbounded password is a cheap way to make the server work.
MAX_LENGTH = 1024


def check_password(password: str) -> None:
    """Raise `InvalidInput` naming `password` unless it is a str of 8..1024 characters."""
    if not isinstance(password, str):
        raise InvalidInput("'password' must be a string")
    if len(password) < MIN_LENGTH:
        raise InvalidInput(f"'password' must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise InvalidInput(f"'password' must be at most {MAX_LENGTH} characters")


class Passwords:
    """argon2id password hashing with the cost fixed at construction (tests pass small costs)."""

    def __init__(
        self, time_cost: int = 3, memory_cost_kib: int = 65536, parallelism: int = 1
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost_kib,
            parallelism=parallelism,
            type=Type.ID,
        )
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()

    def hash(self, password: str) -> str:
        """The encoded argon2id hash (salt and parameters included) of a checked password."""
        check_password(password)
        return self._hasher.hash(password)

    def verify(self, stored_hash: str, password: str) -> bool:
        """True when `password` matches; False on a mismatch, a malformed hash or a bad password."""
        if not isinstance(password, str) or len(password) > MAX_LENGTH:
            # Refusing an over-long password early only reveals its length, never a user.
            return False
        try:
            return self._hasher.verify(stored_hash, password)
        except (Argon2Error, InvalidHashError, TypeError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with other parameters (or cannot be read) than these."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True

    def dummy_verify(self, password: str) -> bool:
        """Spend what `verify` spends, for a user that does not exist; always False.

        Without it a login for an unknown username answers faster than one for a real user, so
        timing alone would tell an attacker which usernames exist.
        """
        self.verify(self._fixed_hash(), password)
        return False

    def _fixed_hash(self) -> str:
        if self._dummy_hash is None:
            with self._dummy_lock:
                if self._dummy_hash is None:
                    # A random password nobody knows: the dummy can never match by accident.
                    self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))
        return self._dummy_hash
