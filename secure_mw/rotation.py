"""Key rotation without downtime: encrypt what secure_mw stores under the key ring's first
key, while the application keeps serving (``secure-mw change-key``).

* **Redis** (``session.redis_url``, keys under ``session.redis_key_prefix``): every value
  that is one of our envelopes — a key id of the ring, and it decrypts with its own Redis key
  as associated data, as the session store writes them — and was made by another key (or
  algorithm) is encrypted again. The new value replaces the old one only if the old one is
  still there (a one-key compare-and-set script that keeps the TTL), so a session the app
  changed meanwhile is left as the app wrote it. Keys are walked with SCAN in batches, one
  pipeline of GETs and one of scripts per batch; the SCAN cursor is saved after each batch in
  ``state`` (when given), so an interrupted run resumes where it stopped.
* **SQLite** (``sqlite.path``): the session rows, walked in key order in batches; a row is
  replaced only while it still holds the value read (compare-and-set in one statement), so a
  session the app changed meanwhile is left as the app wrote it.
* **The TOTP secret file** (``local_users.totp_file``): every secret is sealed again, under
  the file's lock, in one atomic write.

Cookies in browsers cannot be reached: keep the old key in the ring until they expire
(docs/crypto.md, "Rotation"). Values that are not ours, or that no key of the ring opens,
are counted and left alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_mw._files import write_secret_file
from secure_mw.crypto import KeyRing
from secure_mw.crypto.envelope import ENVELOPES
from secure_mw.errors import DecryptError

__all__ = ["Progress", "reencrypt_redis", "reencrypt_sqlite", "reencrypt_totp_file"]

# Replace the value of KEYS[1] by ARGV[2] only while it is still ARGV[1], keeping its TTL.
_CAS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""
_ENVELOPES = ENVELOPES  # every algorithm byte the key ring reads (0x01, 0x02, 0x03)


@dataclass
class Progress:
    """What a run did: ``scanned`` keys, ``reencrypted`` values, ``current`` ones already
    under the first key, ``changed`` ones the app rewrote meanwhile (left as they are),
    ``foreign`` values that are not our envelopes or that no key opens."""

    scanned: int = 0
    reencrypted: int = 0
    current: int = 0
    changed: int = 0
    foreign: int = 0
    done: bool = False
    cursor: int = 0

    def line(self) -> str:
        return (f"{self.scanned} scanned, {self.reencrypted} re-encrypted, {self.current} "
                f"already current, {self.changed} changed meanwhile, {self.foreign} not ours")


def _load_state(path: Path | None, prefix: str, key: str) -> Progress:
    if path is None or not path.exists():
        return Progress()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        progress = Progress(
            scanned=int(data["scanned"]), reencrypted=int(data["reencrypted"]),
            current=int(data["current"]), changed=int(data["changed"]),
            foreign=int(data["foreign"]), cursor=int(data["cursor"]),
            done=bool(data.get("done")))
        theirs = (data.get("prefix"), data.get("key"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"state file {str(path)!r} is not one of ours ({exc}); remove it to "
                         "start again") from None
    if theirs != (prefix, key):
        raise ValueError(f"state file {str(path)!r} is of another run (prefix {theirs[0]!r}, "
                         f"key {theirs[1]!r}); remove it to start again")
    return progress


def _save_state(path: Path | None, prefix: str, key: str, progress: Progress) -> None:
    if path is None:
        return
    data = {"prefix": prefix, "key": key, "scanned": progress.scanned,
            "reencrypted": progress.reencrypted, "current": progress.current,
            "changed": progress.changed, "foreign": progress.foreign,
            "cursor": progress.cursor, "done": progress.done}
    write_secret_file(path, json.dumps(data).encode(), overwrite=True)


def reencrypt_redis(keyring: KeyRing, client: Any, prefix: str, *,
                    state: str | os.PathLike[str] | None = None, batch: int = 1000,
                    report: Callable[[Progress], None] | None = None) -> Progress:
    """Encrypt every envelope under ``prefix`` in Redis (``client``: a redis-py client)
    again with the ring's first key; see the module documentation. ``report`` is called
    after each batch; ``state`` makes the run resumable. ``ValueError`` for a state file of
    another run."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    state_path = Path(state) if state is not None else None
    key = keyring.key_ids[0]
    progress = _load_state(state_path, prefix, key)
    if progress.done:
        return progress
    cas = client.register_script(_CAS)
    kids = {bytes.fromhex(k) for k in keyring.key_ids}
    pattern = prefix.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?") \
        .replace("[", "\\[") + "*"
    cursor = progress.cursor
    while True:
        cursor, keys = client.scan(cursor=cursor, match=pattern, count=batch)
        keys = [k if isinstance(k, bytes) else str(k).encode() for k in keys]
        if keys:
            _batch(keyring, client, keys, cas=cas, kids=kids, progress=progress)
        progress.cursor = int(cursor)
        progress.done = progress.cursor == 0
        _save_state(state_path, prefix, key, progress)
        if report is not None:
            report(progress)
        if progress.done:
            return progress


def _batch(keyring: KeyRing, client: Any, keys: list[bytes], *, cas: Any, kids: set[bytes],
           progress: Progress) -> None:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    types = pipe.execute()
    strings = [k for k, t in zip(keys, types, strict=True) if t in (b"string", "string")]
    progress.scanned += len(keys)
    progress.foreign += len(keys) - len(strings)
    if not strings:
        return
    pipe = client.pipeline(transaction=False)
    for key in strings:
        pipe.get(key)
    values = pipe.execute()
    writes: list[tuple[bytes, bytes, bytes]] = []
    for key, value in zip(strings, values, strict=True):
        if value is None:
            continue                                  # expired or deleted meanwhile
        blob = bytes(value)
        if len(blob) < 5 or blob[0] not in _ENVELOPES or blob[1:5] not in kids:
            progress.foreign += 1
            continue
        try:
            plain = keyring.decrypt_bytes(blob, aad=key)
        except DecryptError:
            progress.foreign += 1
            continue
        if not keyring.needs_reencrypt_bytes(blob):
            progress.current += 1
            continue
        writes.append((key, blob, keyring.encrypt_bytes(plain, aad=key)))
    if not writes:
        return
    pipe = client.pipeline(transaction=False)
    for key, old, new in writes:
        cas(keys=[key], args=[old, new], client=pipe)
    for replaced in pipe.execute():
        if replaced:
            progress.reencrypted += 1
        else:
            progress.changed += 1


def reencrypt_sqlite(keyring: KeyRing, db: Any, *, batch: int = 1000,
                     report: Callable[[Progress], None] | None = None) -> Progress:
    """Encrypt every session row of the SQLite store ``db`` (a
    :class:`secure_mw._sqlite.Database`) again with the ring's first key; see the module
    documentation."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    progress = Progress()
    kids = {bytes.fromhex(k) for k in keyring.key_ids}
    last = ""
    while True:
        rows = db.read("SELECT key, value FROM sessions WHERE key > ? ORDER BY key LIMIT ?",
                       (last, batch))
        if not rows:
            break
        last = str(rows[-1][0])
        progress.scanned += len(rows)
        writes = []
        for key, value in rows:
            blob = bytes(value)
            aad = str(key).encode("ascii")
            if len(blob) < 5 or blob[0] not in _ENVELOPES or blob[1:5] not in kids:
                progress.foreign += 1
                continue
            try:
                plain = keyring.decrypt_bytes(blob, aad=aad)
            except DecryptError:
                progress.foreign += 1
                continue
            if not keyring.needs_reencrypt_bytes(blob):
                progress.current += 1
                continue
            writes.append((keyring.encrypt_bytes(plain, aad=aad), key, blob))
        if writes:
            with db.transaction() as conn:
                for new, key, old in writes:
                    if conn.execute("UPDATE sessions SET value = ? WHERE key = ? AND "
                                    "value = ?", (new, key, old)).rowcount:
                        progress.reencrypted += 1
                    else:
                        progress.changed += 1
        if report is not None:
            report(progress)
    progress.done = True
    return progress


def reencrypt_totp_file(keyring: KeyRing, path: str | os.PathLike[str]) -> Progress:
    """Seal every secret of the TOTP secret file ``path`` again with the ring's first key
    (under the file's lock, one atomic write). A secret no key opens is counted as
    ``foreign`` and kept as it is."""
    from secure_mw.login.totp import FileTOTPStore, SecretBox

    progress = Progress()
    if not Path(path).exists():
        progress.done = True
        return progress
    store = FileTOTPStore(path)
    box = SecretBox(keyring)
    with store.edit() as secrets:
        for user, sealed in list(secrets.items()):
            progress.scanned += 1
            try:
                if not keyring.needs_reencrypt(sealed):
                    progress.current += 1
                    continue
                secrets[user] = box.seal(user, box.open(user, sealed))
                progress.reencrypted += 1
            except DecryptError:
                progress.foreign += 1
    progress.done = True
    return progress
