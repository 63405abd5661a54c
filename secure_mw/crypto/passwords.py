"""Argon2id password hashing with Authelia's defaults, on argon2-cffi.

Defaults: t=3 iterations, m=64 MiB, p=4 lanes, 32-byte hash, 16-byte salt, PHC strings
(``$argon2id$v=19$m=65536,t=3,p=4$...``). :meth:`PasswordHasher.needs_rehash` tells
when a stored hash was made with other parameters, so it can be upgraded after a
successful login.
"""

from __future__ import annotations

from typing import Final

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["DEFAULT_HASHER", "PasswordHasher"]

TIME_COST: Final = 3
MEMORY_COST_KIB: Final = 64 * 1024
PARALLELISM: Final = 4
HASH_LEN: Final = 32
SALT_LEN: Final = 16
#: Longest password accepted; longer input is refused before hashing (a DoS guard).
MAX_PASSWORD_BYTES: Final = 1024


class PasswordHasher:
    """Hash and verify passwords. ``verify`` returns a bool and never raises on bad input."""

    def __init__(
        self,
        *,
        time_cost: int = TIME_COST,
        memory_cost: int = MEMORY_COST_KIB,
        parallelism: int = PARALLELISM,
        hash_len: int = HASH_LEN,
        salt_len: int = SALT_LEN,
    ) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism,
            hash_len=hash_len, salt_len=salt_len, type=argon2.Type.ID,
        )

    def hash(self, password: str) -> str:
        """A PHC string for ``password``."""
        if not isinstance(password, str) or not password:
            raise ValueError("a password is a non-empty string")
        if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
            raise ValueError(f"a password is at most {MAX_PASSWORD_BYTES} bytes")
        return self._hasher.hash(password)

    def verify(self, phc: str, password: str) -> bool:
        """True when ``password`` matches ``phc`` (compared in constant time by libargon2).

        Only Argon2id hashes are accepted: an argon2i/argon2d string is refused."""
        if not isinstance(password, str) or not isinstance(phc, str):  # untyped callers
            return False  # type: ignore[unreachable]
        if not phc.startswith("$argon2id$"):
            return False
        if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
            return False
        try:
            return self._hasher.verify(phc, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
            return False

    def needs_rehash(self, phc: str) -> bool:
        """True when ``phc`` was made with parameters other than this hasher's."""
        if not isinstance(phc, str):  # untyped callers
            return True  # type: ignore[unreachable]
        try:
            return self._hasher.check_needs_rehash(phc)
        except (InvalidHashError, ValueError):
            return True


DEFAULT_HASHER: Final = PasswordHasher()
