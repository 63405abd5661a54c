"""The exception hierarchy of secure_mw.

Every error the package raises on purpose derives from :class:`SecureMWError`.
Request paths map them to a status code (see :attr:`SecureMWError.status`), so an
unexpected input yields a 4xx or a 503, never a 500.

Messages never contain a secret, a token, a password or a cookie value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "DecryptError",
    "ExpiredToken",
    "InvalidToken",
    "KeyNotFound",
    "SecureMWError",
    "SessionTooLarge",
    "StoreUnavailable",
]


class SecureMWError(Exception):
    """Root of every error secure_mw raises on purpose."""

    #: HTTP status a request path answers with when this error reaches it.
    status: int = 400


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in the configuration: where it is and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(SecureMWError, ValueError):
    """The configuration is invalid. Holds every problem found, each with its key path."""

    status = 500  # never raised at request time: configuration is checked at start-up

    def __init__(self, problems: Iterable[ConfigProblem | str]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(
            p if isinstance(p, ConfigProblem) else ConfigProblem("", p) for p in problems
        )
        #: For configuration files: what could be built despite the problems (invalid values
        #: replaced by defaults), so that later checks can still run; None otherwise.
        self.partial: object | None = None
        count = len(self.problems)
        head = "1 configuration problem" if count == 1 else f"{count} configuration problems"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class DecryptError(SecureMWError):
    """A ciphertext could not be authenticated: tampered, truncated, wrong key or context.

    The message is deliberately generic; the reason is for the audit log only.
    """

    status = 400

    def __init__(self, reason: str = "ciphertext rejected") -> None:
        self.reason = reason
        super().__init__(reason)


class KeyNotFound(DecryptError):
    """The ciphertext names a key id that is not in the key ring."""


class InvalidToken(SecureMWError):
    """A token (JWT, assertion) was refused. ``reason`` is safe to log; the token is not."""

    status = 401

    def __init__(self, reason: str = "invalid token") -> None:
        self.reason = reason
        super().__init__(reason)


class ExpiredToken(InvalidToken):
    """The token's ``exp`` is in the past (beyond the leeway)."""


class StoreUnavailable(SecureMWError):
    """A backing store (Redis, an identity provider, a JWKS endpoint) cannot be reached.

    Identity decisions fail closed with 503 when this is raised.
    """

    status = 503


class SessionTooLarge(StoreUnavailable):
    """A session does not fit in the cookie store (a profile with hundreds of groups). A
    :class:`StoreUnavailable`, so that whoever does not handle it fails closed; the session
    gate ends the session and names the fix (the Redis store, fewer groups)."""
