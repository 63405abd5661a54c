"""Thin, typed wrappers around the primitives the envelope uses.

These are the only places secure_mw calls libsodium (PyNaCl) or ``cryptography`` for
symmetric encryption and key derivation; the known-answer tests exercise exactly these
functions. They raise the libraries' own exceptions; :mod:`secure_mw.crypto.envelope`
turns every failure into :class:`~secure_mw.errors.DecryptError`.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings as _sodium

__all__ = [
    "AESGCM_NONCE_BYTES",
    "KEY_BYTES",
    "TAG_BYTES",
    "XCHACHA_NONCE_BYTES",
    "aes256gcm_decrypt",
    "aes256gcm_encrypt",
    "chacha20poly1305_decrypt",
    "chacha20poly1305_encrypt",
    "hkdf_sha256",
    "pbkdf2_sha1",
    "pbkdf2_sha256",
    "scrypt",
    "xchacha20poly1305_decrypt",
    "xchacha20poly1305_encrypt",
]

KEY_BYTES = 32
TAG_BYTES = 16
XCHACHA_NONCE_BYTES = 24
AESGCM_NONCE_BYTES = 12

xchacha20poly1305_encrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
xchacha20poly1305_decrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt



def chacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """RFC 8439 ChaCha20-Poly1305 (96-bit nonce); returns ciphertext || tag."""
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def chacha20poly1305_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)


def aes256gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM (any key size the library accepts; the envelope uses 256 bits)."""
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def aes256gcm_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(nonce, ciphertext, aad)


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int = KEY_BYTES) -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def pbkdf2_sha256(password: bytes, salt: bytes, iterations: int, length: int = KEY_BYTES) -> bytes:
    """PBKDF2-HMAC-SHA256 (RFC 8018)."""
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations, length)


def pbkdf2_sha1(password: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    """PBKDF2-HMAC-SHA1, present only so the RFC 6070 vectors can check the construction."""
    return hashlib.pbkdf2_hmac("sha1", password, salt, iterations, length)


def scrypt(
    password: bytes, salt: bytes, *, n: int = 2**17, r: int = 8, p: int = 1, length: int = KEY_BYTES
) -> bytes:
    """RFC 7914 scrypt. Defaults follow current OWASP guidance (N=2^17, r=8, p=1)."""
    maxmem = min(128 * r * (n + p + 2) + 1024 * 1024, 2**31 - 1)
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=maxmem)
