"""A secrets vault: named secrets in one encrypted file (pgagroal's vault, our envelope).

The master key is derived once from a passphrase (PBKDF2-HMAC-SHA256, 600,000 iterations,
a random 16-byte salt kept in the file); each entry is an AES-256-GCM envelope of
:mod:`secure_mw.crypto.envelope` — a fresh random salt per entry, the entry's key
HKDF-SHA256(master, salt), a random nonce — with the entry's name in the associated data, so
an entry moved under another name does not decrypt. A check entry tells a wrong passphrase
from a damaged file. The file is JSON, written 0600 and atomically, under a lock file.

``secure-mw vault init|set|get|list|delete|rekey`` manage it; any ``*_file`` setting may
name an entry, ``client_secret_file = "vault:oidc_client_secret"``, with ``[vault] file``
and the passphrase from ``vault.passphrase_file`` or ``$SECURE_MW_VAULT_PASSPHRASE``
(docs/vault.md).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from secure_mw._files import write_secret_file
from secure_mw.crypto.envelope import ALG_AES256GCM, SymmetricKey
from secure_mw.errors import DecryptError, SecureMWError

__all__ = ["ITERATIONS", "Vault", "VaultError"]

FORMAT: Final = "secure-mw-vault/1"
#: PBKDF2-HMAC-SHA256 iterations of a new vault (OWASP's figure, pgagroal's).
ITERATIONS: Final = 600_000
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_CHECK_AAD: Final = b"secure_mw/vault/v1 check"
_MAX_FILE: Final = 16 * 1024 * 1024


class VaultError(SecureMWError):
    """The vault cannot be used: missing or damaged file, wrong passphrase, unknown entry,
    bad name. The message names the file or the entry, never a secret."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise VaultError(f"{what} is not text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VaultError(f"{what} is not base64") from None


def check_name(name: str) -> str:
    """``name`` when it is a valid entry name (letters, digits, ``_ . -``, at most 128)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise VaultError(f"an entry name is 1 to 128 letters, digits, '_', '.' or '-', not "
                         f"{name!r}")
    return name


def _entry_aad(name: str) -> bytes:
    return b"secure_mw/vault/v1 entry:" + name.encode("ascii")


def _derive(passphrase: bytes, salt: bytes, iterations: int) -> SymmetricKey:
    if not passphrase:
        raise VaultError("the vault passphrase is empty")
    return SymmetricKey(hashlib.pbkdf2_hmac("sha256", passphrase, salt, iterations, 32))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path + ".lock"`` while the vault is changed (writers of
    several processes take turns; readers need none: writes are atomic)."""
    import fcntl

    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Vault:
    """An open vault (its master key derived once). :meth:`create` makes a new file."""

    def __init__(self, path: str | os.PathLike[str], passphrase: str | bytes) -> None:
        self.path = Path(path)
        self._passphrase = passphrase.encode() if isinstance(passphrase, str) else passphrase
        data = self._read()
        self._salt = _unb64(data.get("salt"), f"{self.path}: salt")
        iterations = data.get("iterations")
        if not isinstance(iterations, int) or isinstance(iterations, bool) or \
                not 100_000 <= iterations <= 100_000_000:
            raise VaultError(f"{str(self.path)!r}: iterations must be 100,000 to 100,000,000")
        self._iterations = iterations
        self._key = _derive(self._passphrase, self._salt, iterations)
        try:
            self._key.open(_unb64(data.get("check"), f"{self.path}: check"), _CHECK_AAD)
        except (DecryptError, IndexError):
            raise VaultError(f"{str(self.path)!r}: wrong passphrase (or the file was "
                             "changed)") from None
        self._entries = self._entries_of(data)

    # -- files ----------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], passphrase: str | bytes, *,
               iterations: int = ITERATIONS) -> Vault:
        """A new, empty vault at ``path`` (never over an existing file)."""
        target = Path(path)
        raw = passphrase.encode() if isinstance(passphrase, str) else passphrase
        salt = secrets.token_bytes(16)
        key = _derive(raw, salt, iterations)
        data = {"format": FORMAT, "kdf": "pbkdf2-sha256", "iterations": iterations,
                "salt": _b64(salt), "check": _b64(key.seal(b"", _CHECK_AAD, ALG_AES256GCM)),
                "entries": {}}
        try:
            write_secret_file(target, _dump(data), overwrite=False)
        except FileExistsError:
            raise VaultError(f"{str(target)!r} exists already") from None
        return cls(target, raw)

    def _read(self) -> dict[str, Any]:
        from secure_mw._files import secret_file_problem

        problem = secret_file_problem(self.path)
        if problem and "larger than" not in problem:
            raise VaultError(f"vault {problem.removeprefix('secret file ')}")
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise VaultError(f"vault {str(self.path)!r} cannot be read: {exc.strerror}") \
                from None
        if len(raw) > _MAX_FILE:
            raise VaultError(f"vault {str(self.path)!r} is larger than {_MAX_FILE} bytes")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise VaultError(f"vault {str(self.path)!r} is not a vault (not JSON)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or \
                data.get("kdf") != "pbkdf2-sha256":
            raise VaultError(f"vault {str(self.path)!r} is not a {FORMAT} file")
        return data

    def _entries_of(self, data: dict[str, Any]) -> dict[str, bytes]:
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise VaultError(f"vault {str(self.path)!r}: entries must be an object")
        return {check_name(str(name)): _unb64(value, f"{self.path}: entry {name!r}")
                for name, value in entries.items()}

    def _write(self) -> None:
        data = {"format": FORMAT, "kdf": "pbkdf2-sha256", "iterations": self._iterations,
                "salt": _b64(self._salt),
                "check": _b64(self._key.seal(b"", _CHECK_AAD, ALG_AES256GCM)),
                "entries": {n: _b64(v) for n, v in sorted(self._entries.items())}}
        write_secret_file(self.path, _dump(data), overwrite=True)

    def _reload(self) -> None:
        """Read the entries again (under the lock, before a change: another process may
        have changed the file); the passphrase must still open it."""
        data = self._read()
        if data.get("salt") != _b64(self._salt) or data.get("iterations") != self._iterations:
            fresh = Vault(self.path, self._passphrase)      # rekeyed meanwhile
            self._salt, self._iterations, self._key = fresh._salt, fresh._iterations, fresh._key
        self._entries = self._entries_of(data)

    # -- entries ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> bytes:
        """The secret ``name``; :class:`VaultError` when there is none or it does not
        decrypt under its name."""
        blob = self._entries.get(check_name(name))
        if blob is None:
            raise VaultError(f"vault {str(self.path)!r} has no entry {name!r}")
        try:
            return self._key.open(blob, _entry_aad(name))
        except (DecryptError, IndexError):
            raise VaultError(f"vault {str(self.path)!r}: entry {name!r} does not decrypt "
                             "(changed, or moved from another name)") from None

    def set(self, name: str, value: bytes) -> None:
        """Store (or replace) the secret ``name``."""
        check_name(name)
        with _locked(self.path):
            self._reload()
            self._entries[name] = self._key.seal(value, _entry_aad(name), ALG_AES256GCM)
            self._write()

    def delete(self, name: str) -> bool:
        """Remove ``name``; whether it was there."""
        check_name(name)
        with _locked(self.path):
            self._reload()
            found = self._entries.pop(name, None) is not None
            if found:
                self._write()
        return found

    def rekey(self, passphrase: str | bytes, *, iterations: int | None = None) -> int:
        """Encrypt every entry again under a master key from the new ``passphrase`` (and a
        new salt); how many entries. The file is replaced in one step."""
        raw = passphrase.encode() if isinstance(passphrase, str) else passphrase
        with _locked(self.path):
            self._reload()
            plain = {name: self.get(name) for name in self._entries}
            self._salt = secrets.token_bytes(16)
            self._iterations = iterations or self._iterations
            self._key = _derive(raw, self._salt, self._iterations)
            self._passphrase = raw
            self._entries = {name: self._key.seal(value, _entry_aad(name), ALG_AES256GCM)
                             for name, value in plain.items()}
            self._write()
        return len(plain)


def _dump(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=False) + "\n").encode()
