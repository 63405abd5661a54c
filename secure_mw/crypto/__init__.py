"""Encryption at rest: the AEAD envelope, the key ring, passphrase KDFs and passwords.

The safe recipes are the public API (as in ``cryptography``): :class:`KeyRing` for
encrypting data bound to its purpose, :class:`PasswordHasher` for Argon2id passwords.
"""

from secure_mw.crypto.envelope import b64decode, b64encode
from secure_mw.crypto.keyring import PBKDF2_ITERATIONS, KeyRing, derive_master_key
from secure_mw.crypto.passwords import DEFAULT_HASHER, PasswordHasher
from secure_mw.errors import DecryptError

__all__ = [
    "DEFAULT_HASHER",
    "PBKDF2_ITERATIONS",
    "DecryptError",
    "KeyRing",
    "PasswordHasher",
    "b64decode",
    "b64encode",
    "derive_master_key",
]
