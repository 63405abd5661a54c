"""The versioned AEAD envelope.

Binary layout (all parts authenticated; the header is part of the associated data)::

    XChaCha20-Poly1305 (algorithm byte 0x01, the default)
        0x01 | key id (4) | nonce (24, random)              | ciphertext | tag (16)
    AES-256-GCM, two-step keys (algorithm byte 0x02)
        0x02 | key id (4) | salt (16, random) | nonce (12)  | ciphertext | tag (16)

For AES-256-GCM each entry's key is HKDF-SHA256(master key, salt, info) with a fresh random
16-byte salt, so random 96-bit nonces never accumulate under one key (the scheme pgagroal
uses for its vault, with HKDF in place of a single PBKDF2 round).

The associated data given by the caller binds a ciphertext to its purpose (a cookie name,
a store key, a record and field): decrypting it under any other purpose fails.

The text form is unpadded base64url, suitable for cookies and headers. Every way a
ciphertext can be wrong — a changed byte, a wrong key, wrong associated data, truncation,
oversize, non-canonical or non-base64 text — raises :class:`~secure_mw.errors.DecryptError`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Final

from nacl import bindings as _sodium
from nacl.exceptions import CryptoError

from secure_mw._encoding import b64url_decode, b64url_encode
from secure_mw.errors import DecryptError

__all__ = [
    "ALGORITHMS",
    "ALG_AES256GCM",
    "ALG_XCHACHA20POLY1305",
    "DEFAULT_MAX_TOKEN",
    "SymmetricKey",
    "b64decode",
    "b64encode",
]

ALG_XCHACHA20POLY1305: Final = 0x01
ALG_AES256GCM: Final = 0x02
#: Setting names of the algorithms, as written in ``keys.encryption_algorithm``.
ALGORITHMS: Final = {"xchacha20-poly1305": ALG_XCHACHA20POLY1305, "aes-256-gcm": ALG_AES256GCM}

KEY_BYTES: Final = 32
KID_BYTES: Final = 4
TAG_BYTES: Final = 16
_XNONCE: Final = 24
_GCM_SALT: Final = 16
_GCM_NONCE: Final = 12
_X_HEADER: Final = 1 + KID_BYTES + _XNONCE
_G_HEADER: Final = 1 + KID_BYTES + _GCM_SALT + _GCM_NONCE
_GCM_INFO: Final = b"secure_mw/v1/aes-256-gcm entry key"
#: Longest text token accepted by default (characters); larger input is refused unread.
DEFAULT_MAX_TOKEN: Final = 1 << 20

_xencrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
_xdecrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt


b64encode = b64url_encode


def b64decode(text: str | bytes, *, max_length: int = DEFAULT_MAX_TOKEN) -> bytes:
    """Strict unpadded base64url of at most ``max_length`` characters (checked before
    decoding); raises :class:`DecryptError`, so a changed character never decodes to the
    same bytes."""
    if not isinstance(text, str | bytes | bytearray | memoryview):
        raise DecryptError("token is not text")
    if len(text) > max_length:
        raise DecryptError("token too long")
    try:
        return b64url_decode(text)
    except ValueError:
        raise DecryptError("token is not base64url") from None


class SymmetricKey:
    """One 256-bit key with its 4-byte key id (derived from the key itself)."""

    __slots__ = ("kid", "secret")

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) != KEY_BYTES:
            raise ValueError(f"an encryption key is exactly {KEY_BYTES} bytes")
        self.secret = secret
        self.kid = hmac.digest(secret, b"secure_mw/v1/key id", hashlib.sha256)[:KID_BYTES]

    def __repr__(self) -> str:  # never show the secret
        return f"SymmetricKey(kid={self.kid.hex()})"

    # -- binary envelope ------------------------------------------------------------------

    def seal(self, data: bytes, aad: bytes, algorithm: int = ALG_XCHACHA20POLY1305) -> bytes:
        if algorithm == ALG_XCHACHA20POLY1305:
            header = b"\x01" + self.kid + os.urandom(_XNONCE)
            return header + _xencrypt(data, header + aad, header[5:], self.secret)
        if algorithm == ALG_AES256GCM:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            salt_nonce = os.urandom(_GCM_SALT + _GCM_NONCE)
            header = b"\x02" + self.kid + salt_nonce
            entry_key = self._entry_key(salt_nonce[:_GCM_SALT])
            return header + AESGCM(entry_key).encrypt(salt_nonce[_GCM_SALT:], data, header + aad)
        raise ValueError(f"unknown algorithm {algorithm!r}")

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a binary envelope whose key id is this key's (checked by the caller)."""
        alg = blob[0]
        try:
            if alg == ALG_XCHACHA20POLY1305:
                if len(blob) < _X_HEADER + TAG_BYTES:
                    raise DecryptError("ciphertext truncated")
                return bytes(_xdecrypt(blob[_X_HEADER:], blob[:_X_HEADER] + aad,
                                       blob[5:_X_HEADER], self.secret))
            if alg == ALG_AES256GCM:
                from cryptography.exceptions import InvalidTag
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM

                if len(blob) < _G_HEADER + TAG_BYTES:
                    raise DecryptError("ciphertext truncated")
                entry_key = self._entry_key(blob[5 : 5 + _GCM_SALT])
                try:
                    return AESGCM(entry_key).decrypt(
                        blob[5 + _GCM_SALT : _G_HEADER], blob[_G_HEADER:], blob[:_G_HEADER] + aad
                    )
                except InvalidTag:
                    raise DecryptError("ciphertext rejected") from None
        except CryptoError:
            raise DecryptError("ciphertext rejected") from None
        raise DecryptError("unknown envelope version")

    def _entry_key(self, salt: bytes) -> bytes:
        # RFC 5869 HKDF-SHA256 for one 32-byte block, written with the stdlib's HMAC because
        # it runs once per entry (the cryptography HKDF object costs ~10 µs to set up);
        # tests check it equals primitives.hkdf_sha256.
        prk = hmac.digest(salt, self.secret, hashlib.sha256)
        return hmac.digest(prk, _GCM_INFO + b"\x01", hashlib.sha256)
