"""Session values at rest in a shared store (Redis, SQLite): sealed with the key ring, the
store's key as associated data, so a value moved under another key does not open."""

from __future__ import annotations

import logging

from secure_mw.crypto import KeyRing
from secure_mw.errors import DecryptError

__all__ = ["open_value", "seal_value"]

_log = logging.getLogger("secure_mw.session")


def open_value(keyring: KeyRing, key: str, blob: object) -> bytes:
    """The plaintext of ``blob`` stored under ``key``; :class:`DecryptError` (without the
    reason, which is logged at debug level) when it is not authentic."""
    if not isinstance(blob, bytes):
        _log.debug("session value rejected: not bytes")
        raise DecryptError("the stored value does not decrypt")
    try:
        return keyring.decrypt_bytes(blob, aad=key.encode("ascii"))
    except DecryptError as exc:
        _log.debug("session value rejected: %s", exc.reason)
        raise DecryptError("the stored value does not decrypt") from None


def seal_value(keyring: KeyRing, key: str, value: bytes) -> bytes:
    """``value`` encrypted under the ring's first key, bound to ``key``."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError("a session value must be bytes")
    return keyring.encrypt_bytes(bytes(value), aad=key.encode("ascii"))
