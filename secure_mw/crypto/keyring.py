"""KeyRing: the first key encrypts, every listed key decrypts (chosen by key id).

::

    ring = KeyRing.generate()
    token = ring.encrypt(b"data", aad=b"cookie:secure_mw_session")
    ring.decrypt(token, aad=b"cookie:secure_mw_session")     # b"data"

Keys come from settings (base64url strings), from a key file (one key a line, mode 0600),
or from a passphrase: PBKDF2-HMAC-SHA256 with 600,000 iterations, or scrypt, salted with a
per-installation salt file, derived exactly once per process and cached.

Rotation: put a new key first and keep the old ones listed; :meth:`KeyRing.reencrypt`
moves a ciphertext to the first key, :meth:`KeyRing.needs_reencrypt` says whether it must.
:meth:`KeyRing.derive` gives, per key, a secret for another purpose (HKDF-SHA256 with a
purpose label), the same in every process that holds the same ring.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, Literal

from secure_mw._files import read_secret_file, write_secret_file
from secure_mw.crypto.envelope import (
    ALG_XAES256GCM,
    ALGORITHMS,
    DEFAULT_MAX_TOKEN,
    KEY_BYTES,
    KID_BYTES,
    SymmetricKey,
    b64decode,
    b64encode,
)
from secure_mw.crypto.primitives import hkdf_sha256, pbkdf2_sha256, scrypt
from secure_mw.errors import ConfigError, ConfigProblem, DecryptError, KeyNotFound

__all__ = ["PBKDF2_ITERATIONS", "KeyRing", "derive_master_key"]

PBKDF2_ITERATIONS: Final = 600_000
SALT_BYTES: Final = 16
KDF = Literal["pbkdf2", "scrypt"]

_derived: dict[tuple[bytes, bytes, str], bytes] = {}
_derive_lock = threading.Lock()


def derive_master_key(passphrase: str | bytes, salt: bytes, *, kdf: KDF = "pbkdf2") -> bytes:
    """The master key for ``passphrase`` and ``salt``, derived once per process and cached.

    The cache is keyed by a SHA-256 digest of the passphrase, never the passphrase itself."""
    secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    if not secret:
        raise ConfigError([ConfigProblem("keys.encryption_passphrase", "is empty")])
    if len(salt) < SALT_BYTES:
        raise ConfigError([ConfigProblem("keys.encryption_salt_file",
                                         f"salt must be at least {SALT_BYTES} bytes")])
    cache_key = (hashlib.sha256(secret).digest(), salt, kdf)
    with _derive_lock:
        key = _derived.get(cache_key)
        if key is None:
            if kdf == "pbkdf2":
                key = pbkdf2_sha256(secret, salt, PBKDF2_ITERATIONS, KEY_BYTES)
            elif kdf == "scrypt":
                key = scrypt(secret, salt)
            else:
                raise ValueError(f"unknown KDF {kdf!r}")
            _derived[cache_key] = key
        return key


def _load_or_create_salt(path: Path) -> bytes:
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # created by a concurrent process
            write_secret_file(path, os.urandom(SALT_BYTES).hex().encode() + b"\n")
    text = read_secret_file(path, key="keys.encryption_salt_file").strip()
    try:
        salt = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError([ConfigProblem("keys.encryption_salt_file",
                                         f"{str(path)!r} does not hold a hex salt")]) from None
    return salt


def _parse_key(text: str, where: str) -> SymmetricKey:
    try:
        raw = b64decode(text.strip())
    except DecryptError:
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ConfigError([ConfigProblem(
            where, f"is not a base64url-encoded {KEY_BYTES}-byte key "
                   "(make one with `secure-mw gen-keys --encryption FILE`)"
        )])
    return SymmetricKey(raw)


class KeyRing:
    """An ordered set of 256-bit keys; see the module docstring."""

    __slots__ = ("_algorithm", "_by_kid", "_keys", "_max_token", "_primary", "_xaes")

    def __init__(
        self,
        keys: Sequence[SymmetricKey | bytes],
        *,
        algorithm: str = "xchacha20-poly1305",
        max_token: int = DEFAULT_MAX_TOKEN,
    ) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}")
        objs = tuple(k if isinstance(k, SymmetricKey) else SymmetricKey(k) for k in keys)
        by_kid: dict[bytes, SymmetricKey] = {}
        for k in objs:
            if k.kid in by_kid:
                raise ValueError(f"two keys in the ring share key id {k.kid.hex()} "
                                 "(a key listed twice?)")
            by_kid[k.kid] = k
        self._keys = objs
        self._primary = objs[0]
        self._by_kid = by_kid
        self._algorithm = ALGORITHMS[algorithm]
        self._max_token = max_token
        # XAES-256-GCM: the encrypting key's sealing batch and cache of recent N1 keys
        self._xaes = self._primary.xaes() if self._algorithm == ALG_XAES256GCM else None

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def generate(cls, *, algorithm: str = "xchacha20-poly1305") -> KeyRing:
        """A ring with one fresh random key."""
        return cls([os.urandom(KEY_BYTES)], algorithm=algorithm)

    @staticmethod
    def new_key_text() -> str:
        """A fresh random key in the text form key files and settings use."""
        return b64encode(os.urandom(KEY_BYTES))

    @classmethod
    def from_strings(
        cls, keys: Iterable[str], *, algorithm: str = "xchacha20-poly1305",
        where: str = "keys.encryption_keys",
    ) -> KeyRing:
        return cls._from_located(
            [(f"{where}[{i}]", k) for i, k in enumerate(keys)], algorithm, where
        )

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, algorithm: str = "xchacha20-poly1305"
    ) -> KeyRing:
        """One base64url key per line (``#`` comments allowed); the file must be 0600."""
        text = read_secret_file(path, key="keys.encryption_keys_file").decode("ascii", "replace")
        located = [(f"key file {str(path)!r} line {n}", line)
                   for n, line in enumerate(text.splitlines(), start=1)
                   if line.strip() and not line.lstrip().startswith("#")]
        return cls._from_located(located, algorithm, f"key file {str(path)!r}")

    @classmethod
    def _from_located(
        cls, located: list[tuple[str, str]], algorithm: str, where: str
    ) -> KeyRing:
        problems: list[ConfigProblem] = []
        parsed: list[SymmetricKey] = []
        seen: set[bytes] = set()
        for place, text in located:
            try:
                key = _parse_key(text, place)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            if key.kid in seen:
                problems.append(ConfigProblem(place, "repeats a key listed above"))
                continue
            seen.add(key.kid)
            parsed.append(key)
        if not located:
            problems.append(ConfigProblem(where, "holds no key"))
        if problems:
            raise ConfigError(problems)
        return cls(parsed, algorithm=algorithm)

    @classmethod
    def from_passphrase(
        cls,
        passphrase: str | bytes,
        salt_file: str | os.PathLike[str],
        *,
        kdf: KDF = "pbkdf2",
        algorithm: str = "xchacha20-poly1305",
    ) -> KeyRing:
        """Derive the master key (once per process) from a passphrase and a salt file,
        creating the salt file (0600, 16 random bytes) on first use."""
        salt = _load_or_create_salt(Path(salt_file))
        return cls([derive_master_key(passphrase, salt, kdf=kdf)], algorithm=algorithm)

    @classmethod
    def from_settings(cls, keys: object) -> KeyRing:
        """From :class:`secure_mw.settings.KeysSettings`; a random ring when none is set."""
        from secure_mw.settings import KeysSettings

        assert isinstance(keys, KeysSettings)
        alg = keys.encryption_algorithm
        if keys.encryption_keys:
            return cls.from_strings(keys.encryption_keys, algorithm=alg)
        if keys.encryption_passphrase and keys.encryption_salt_file:
            kdf: KDF = "scrypt" if keys.encryption_kdf == "scrypt" else "pbkdf2"
            return cls.from_passphrase(keys.encryption_passphrase, keys.encryption_salt_file,
                                       kdf=kdf, algorithm=alg)
        return cls.generate(algorithm=alg)

    # -- use ------------------------------------------------------------------------------

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Hex key ids, the encrypting key first."""
        return tuple(k.kid.hex() for k in self._keys)

    def derive(self, purpose: str, length: int = KEY_BYTES) -> tuple[bytes, ...]:
        """One secret of ``length`` bytes per key of the ring (the encrypting key's first),
        derived with HKDF-SHA256 under the label ``purpose``: deterministic, so every
        process with the same ring derives the same secrets, and independent of the
        encryption keys themselves and of any other purpose."""
        if not purpose or not isinstance(purpose, str):
            raise ValueError("purpose must be a non-empty string")
        if not 16 <= length <= 255 * 32:
            raise ValueError("length must be between 16 and 8160 bytes")
        info = b"secure_mw/v1/derive\x00" + purpose.encode("utf-8")
        return tuple(hkdf_sha256(k.secret, salt=None, info=info, length=length)
                     for k in self._keys)

    def encrypt_bytes(self, data: bytes, aad: bytes = b"") -> bytes:
        """Encrypt to the binary envelope (for stores that keep bytes, such as Redis)."""
        if self._xaes is not None:
            return self._xaes.seal(data, aad)
        return self._primary.seal(data, aad, self._algorithm)

    def decrypt_bytes(self, blob: bytes, aad: bytes = b"") -> bytes:
        if not isinstance(blob, bytes):
            raise DecryptError("ciphertext is not bytes")
        if self._xaes is not None and (opened := self._xaes.open_recent(blob, aad)) is not None:
            return opened
        if len(blob) < 1 + KID_BYTES:
            raise DecryptError("ciphertext truncated")
        key = self._by_kid.get(blob[1 : 1 + KID_BYTES])
        if key is None:
            raise KeyNotFound("no key in the ring has this key id")
        return key.open(blob, aad)

    def encrypt(self, data: bytes, aad: bytes = b"") -> str:
        """Encrypt to the base64url text form (for cookies and headers)."""
        return b64encode(self.encrypt_bytes(data, aad))

    def decrypt(self, token: str | bytes, aad: bytes = b"") -> bytes:
        """Decrypt the text form; every failure raises :class:`DecryptError`."""
        if not isinstance(aad, bytes):
            raise TypeError("aad must be bytes")
        return self.decrypt_bytes(b64decode(token, max_length=self._max_token), aad)

    def needs_reencrypt(self, token: str | bytes) -> bool:
        """True when ``token`` was not made by the encrypting key with the ring's algorithm."""
        blob = b64decode(token, max_length=self._max_token)
        return len(blob) < 5 or blob[0] != self._algorithm or blob[1:5] != self._primary.kid

    def needs_reencrypt_bytes(self, blob: bytes) -> bool:
        """:meth:`needs_reencrypt` for the binary envelope (:meth:`encrypt_bytes`)."""
        return len(blob) < 5 or blob[0] != self._algorithm or blob[1:5] != self._primary.kid

    def reencrypt(self, token: str | bytes, aad: bytes = b"") -> str:
        """Decrypt with whichever key made ``token`` and encrypt again with the first key."""
        return self.encrypt(self.decrypt(token, aad), aad)

    def __repr__(self) -> str:
        alg = next(n for n, v in ALGORITHMS.items() if v == self._algorithm)
        return f"KeyRing(keys={list(self.key_ids)}, algorithm={alg!r})"


