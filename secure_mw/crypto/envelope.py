"""The versioned AEAD envelope.

Binary layout (all parts authenticated; the header is part of the associated data)::

    XChaCha20-Poly1305 (algorithm byte 0x01, the default)
        0x01 | key id (4) | nonce (24, random)                   | ciphertext | tag (16)
    XAES-256-GCM (algorithm byte 0x03, written for "aes-256-gcm")
        0x03 | key id (4) | nonce (24) = N1 (12) | N2 (12, random) | ciphertext | tag (16)
    AES-256-GCM with HKDF entry keys (algorithm byte 0x02, read; KeyRing writes 0x03)
        0x02 | key id (4) | salt (16, random) | nonce (12)       | ciphertext | tag (16)

0x03 is C2SP XAES-256-GCM (c2sp.org/XAES-256-GCM): the AES-256-GCM key is derived from the
master key and N1 by the NIST SP 800-108r1 KDF over one-block AES-256-CMAC, and N2 is the GCM
nonce. A sealing key keeps one N1 for ``XAES_BATCH`` (2**16) entries, each with a random N2,
so no derived key sees more than 2**16 random nonces (collision chance below 2**-65), and an
opener caches the keys of recently seen N1s: the per-entry ``AESGCM`` object (~0.4 µs) that
capped a key-per-entry design at a third of raw AES-GCM is paid once a batch. 0x02 entries
(an HKDF-SHA256 key per entry) stay readable and rotation rewrites them as 0x03; the
associated data binds a ciphertext to its purpose (docs/crypto.md has the reasoning).

The text form is unpadded base64url, suitable for cookies and headers. Every way a
ciphertext can be wrong — a changed byte, a wrong key, wrong associated data, truncation,
oversize, non-canonical or non-base64 text — raises :class:`~secure_mw.errors.DecryptError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl import bindings as _sodium
from nacl.exceptions import CryptoError

from secure_mw._encoding import b64url_decode, b64url_encode
from secure_mw.errors import DecryptError

__all__ = [
    "ALGORITHMS",
    "ALG_AES256GCM",
    "ALG_XAES256GCM",
    "ALG_XCHACHA20POLY1305",
    "DEFAULT_MAX_TOKEN",
    "ENVELOPES",
    "XAES_BATCH",
    "SymmetricKey",
    "XaesKdf",
    "b64decode",
    "b64encode",
]

ALG_XCHACHA20POLY1305: Final = 0x01
#: AES-256-GCM with an HKDF entry key per entry: still read, no longer written by KeyRing.
ALG_AES256GCM: Final = 0x02
ALG_XAES256GCM: Final = 0x03
#: Setting names of the algorithms, as written in ``keys.encryption_algorithm``.
ALGORITHMS: Final = {"xchacha20-poly1305": ALG_XCHACHA20POLY1305, "aes-256-gcm": ALG_XAES256GCM}
#: Every algorithm byte :meth:`SymmetricKey.open` reads.
ENVELOPES: Final = frozenset({ALG_XCHACHA20POLY1305, ALG_AES256GCM, ALG_XAES256GCM})
#: Entries sealed under one derived XAES-256-GCM key (one N1) before a new N1 is drawn.
XAES_BATCH: Final = 1 << 16
_XAES_CACHE: Final = 128  # derived keys kept for opening, per master key

KEY_BYTES: Final = 32
KID_BYTES: Final = 4
TAG_BYTES: Final = 16
_XNONCE: Final = 24
_GCM_SALT: Final = 16
_GCM_NONCE: Final = 12
_X_HEADER: Final = 1 + KID_BYTES + _XNONCE
_G_HEADER: Final = 1 + KID_BYTES + _GCM_SALT + _GCM_NONCE
_N1_END: Final = 1 + KID_BYTES + 12
_GCM_INFO: Final = b"secure_mw/v1/aes-256-gcm entry key"
#: Longest text token accepted by default (characters); larger input is refused unread.
DEFAULT_MAX_TOKEN: Final = 1 << 20

_xencrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
_xdecrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
_urandom = os.urandom
_MASK128: Final = (1 << 128) - 1


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


class XaesKdf:
    """The XAES-256-GCM subkey derivation for one master key: a cached AES-256 ECB
    encryptor and the CMAC subkey K1 folded into the two counter blocks. ``key(n1)``
    gives the AES-256-GCM key for a nonce whose first 12 bytes are ``n1``; its last 12
    bytes are the GCM nonce."""

    __slots__ = ("_block1", "_block2", "_ecb", "_lock")

    def __init__(self, secret: bytes) -> None:
        # ECB here is the raw AES-256 block function the KDF needs, on single blocks.
        ecb = Cipher(algorithms.AES(secret), modes.ECB())  # noqa: S305
        self._ecb: CipherContext = ecb.encryptor()
        self._lock = threading.Lock()  # one cipher context, used from many threads
        big_l = int.from_bytes(self._ecb.update(bytes(16)), "big")
        k1 = ((big_l << 1) & _MASK128) ^ (0x87 if big_l >> 127 else 0)
        # M_i = 0x00 || i || "X" || 0x00 || N[:12]; CMAC of one full block is AES(M_i ^ K1).
        self._block1 = (0x0001_5800 << 96) ^ k1
        self._block2 = (0x0002_5800 << 96) ^ k1

    def key(self, n1: bytes) -> bytes:
        if len(n1) != 12:
            raise ValueError("N1 is the first 12 bytes of a 24-byte nonce")
        half = int.from_bytes(n1, "big")
        blocks = ((self._block1 ^ half).to_bytes(16, "big")
                  + (self._block2 ^ half).to_bytes(16, "big"))
        with self._lock:
            return self._ecb.update(blocks)


class _Xaes:
    """Sealing and opening 0x03 envelopes under one master key (see the module docstring)."""

    __slots__ = ("__weakref__", "_cache", "_epoch", "_kdf", "_kid")

    def __init__(self, secret: bytes, kid: bytes) -> None:
        self._kdf = XaesKdf(secret)
        self._kid = kid
        # alg byte | key id | N1 -> the AESGCM of N1's derived key, oldest first
        self._cache: dict[bytes, AESGCM] = {}
        self._epoch = self._new_epoch()
        _LIVE.add(self)

    def _new_epoch(self) -> tuple[bytes, AESGCM, Iterator[int]]:
        n1 = _urandom(12)
        aead = AESGCM(self._kdf.key(n1))
        head = bytes([ALG_XAES256GCM]) + self._kid + n1
        self._remember(head, aead)
        epoch = (head, aead, itertools.count())
        self._epoch = epoch
        return epoch

    def _remember(self, head: bytes, aead: AESGCM) -> None:
        cache = self._cache
        if len(cache) >= _XAES_CACHE:
            # the oldest (dicts keep insertion order); another thread may evict meanwhile
            with contextlib.suppress(KeyError, StopIteration, RuntimeError):
                del cache[next(iter(cache))]
        cache[head] = aead

    def seal(self, data: bytes, aad: bytes) -> bytes:
        head, aead, used = self._epoch
        if next(used) >= XAES_BATCH:
            head, aead, used = self._new_epoch()
            next(used)
        n2 = _urandom(12)
        header = head + n2
        return header + aead.encrypt(n2, data, header + aad)

    def open_recent(self, blob: bytes, aad: bytes) -> bytes | None:
        """Open ``blob`` when its N1 is one of the cached ones, else None (the fast path
        :class:`~secure_mw.crypto.KeyRing` tries first)."""
        aead = self._cache.get(blob[:_N1_END])
        if aead is None:
            return None
        size = len(blob)
        if size < _X_HEADER + TAG_BYTES:
            raise DecryptError("ciphertext truncated")
        try:
            # a view spares copying long ciphertexts; short ones are cheaper to slice
            return aead.decrypt(blob[_N1_END:_X_HEADER],
                                blob[_X_HEADER:] if size <= 2048 else memoryview(blob)[_X_HEADER:],
                                blob[:_X_HEADER] + aad)
        except InvalidTag:
            raise DecryptError("ciphertext rejected") from None

    def open(self, blob: bytes, aad: bytes) -> bytes:
        opened = self.open_recent(blob, aad)
        if opened is not None:
            return opened
        if len(blob) < _X_HEADER + TAG_BYTES:
            raise DecryptError("ciphertext truncated")
        aead = AESGCM(self._kdf.key(blob[5:_N1_END]))
        try:
            opened = aead.decrypt(blob[_N1_END:_X_HEADER], blob[_X_HEADER:],
                                  blob[:_X_HEADER] + aad)
        except InvalidTag:
            raise DecryptError("ciphertext rejected") from None
        self._remember(blob[:_N1_END], aead)  # only authentic entries take a cache slot
        return opened


_LIVE: weakref.WeakSet[_Xaes] = weakref.WeakSet()


def _new_batches_after_fork() -> None:
    # N2 stays random after a fork, so sharing a batch would be sound; a fresh N1 per
    # process keeps each derived key to one process's XAES_BATCH entries all the same.
    for xaes in list(_LIVE):
        xaes._kdf._lock = threading.Lock()  # a thread of the parent may have held it
        xaes._new_epoch()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_batches_after_fork)


class SymmetricKey:
    """One 256-bit key with its 4-byte key id (derived from the key itself)."""

    __slots__ = ("_xaes", "kid", "secret")

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) != KEY_BYTES:
            raise ValueError(f"an encryption key is exactly {KEY_BYTES} bytes")
        self.secret = secret
        self.kid = hmac.digest(secret, b"secure_mw/v1/key id", hashlib.sha256)[:KID_BYTES]
        self._xaes: _Xaes | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"SymmetricKey(kid={self.kid.hex()})"

    def xaes(self) -> _Xaes:
        """This key's XAES-256-GCM state (made on first use)."""
        xaes = self._xaes
        if xaes is None:
            xaes = self._xaes = _Xaes(self.secret, self.kid)
        return xaes

    # -- binary envelope ------------------------------------------------------------------

    def seal(self, data: bytes, aad: bytes, algorithm: int = ALG_XCHACHA20POLY1305) -> bytes:
        if algorithm == ALG_XAES256GCM:
            return (self._xaes or self.xaes()).seal(data, aad)
        if algorithm == ALG_XCHACHA20POLY1305:
            header = b"\x01" + self.kid + _urandom(_XNONCE)
            return header + _xencrypt(data, header + aad, header[5:], self.secret)
        if algorithm == ALG_AES256GCM:
            salt_nonce = _urandom(_GCM_SALT + _GCM_NONCE)
            header = b"\x02" + self.kid + salt_nonce
            entry_key = self._entry_key(salt_nonce[:_GCM_SALT])
            return header + AESGCM(entry_key).encrypt(salt_nonce[_GCM_SALT:], data, header + aad)
        raise ValueError(f"unknown algorithm {algorithm!r}")

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a binary envelope whose key id is this key's (checked by the caller)."""
        alg = blob[0]
        if alg == ALG_XAES256GCM:
            return (self._xaes or self.xaes()).open(blob, aad)
        try:
            if alg == ALG_XCHACHA20POLY1305:
                if len(blob) < _X_HEADER + TAG_BYTES:
                    raise DecryptError("ciphertext truncated")
                return bytes(_xdecrypt(blob[_X_HEADER:], blob[:_X_HEADER] + aad,
                                       blob[5:_X_HEADER], self.secret))
            if alg == ALG_AES256GCM:
                if len(blob) < _G_HEADER + TAG_BYTES:
                    raise DecryptError("ciphertext truncated")
                entry_key = self._entry_key(blob[5 : 5 + _GCM_SALT])
                return AESGCM(entry_key).decrypt(
                    blob[5 + _GCM_SALT : _G_HEADER], blob[_G_HEADER:], blob[:_G_HEADER] + aad
                )
        except (CryptoError, InvalidTag):
            raise DecryptError("ciphertext rejected") from None
        raise DecryptError("unknown envelope version")

    def _entry_key(self, salt: bytes) -> bytes:
        # RFC 5869 HKDF-SHA256 for one 32-byte block, written with the stdlib's HMAC because
        # it runs once per entry (the cryptography HKDF object costs ~10 µs to set up);
        # tests check it equals primitives.hkdf_sha256.
        prk = hmac.digest(salt, self.secret, hashlib.sha256)
        return hmac.digest(prk, _GCM_INFO + b"\x01", hashlib.sha256)
