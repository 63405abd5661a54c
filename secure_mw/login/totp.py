"""Time-based one-time passwords (RFC 6238) as a second login factor.

::

    totp = TOTP(issuer="Example")
    secret = TOTP.new_secret()                          # show once, with the QR code
    svg = totp.qr_svg(secret, "alice@example.org")      # serve with Cache-Control: no-store
    store.set("alice", box.seal("alice", secret))       # encrypted at rest, bound to alice
    ...
    secret = box.open("alice", store.get("alice"))      # DecryptError when moved or changed
    if check_code(totp, used, "alice", secret, form_code):
        ...  # second factor passed

* **Codes** are RFC 6238 (HOTP of the time step, RFC 4226), computed by ``pyotp``: SHA1, 6
  digits and a 30 s period by default (what every authenticator app supports); SHA256 and
  SHA512, 7 or 8 digits and other periods are accepted and written into the provisioning
  URI. :meth:`TOTP.verify` accepts the steps ``window`` either side of the current one
  (clock drift; ``window=1`` by default), compares every candidate with
  :func:`hmac.compare_digest` (all of them, without stopping at a match) and returns the
  matched step. A code is ASCII digits of exactly ``digits`` characters once surrounding
  whitespace and inner spaces (``"123 456"``) are removed; anything else is refused without
  an exception.
* **Replay** (RFC 6238 section 5.2): :func:`check_code` claims the matched step for the user
  in a :class:`UsedCodes` (this process) or :class:`RedisUsedCodes` (every process sharing
  the server: ``SET NX PX``, atomic), remembered until the step has left the window, plus
  one period of margin for clocks that differ. A step already claimed is refused, and the
  steps before the one accepted are claimed too, so an older code still inside the window
  (seen over a shoulder, or captured by a phishing proxy) is refused once a newer one was
  used. Redis keys carry a SHA-256 of the user name, never the name.
* **Secrets** are 160 random bits in base32 (RFC 4226 requires at least 128, which is the
  shortest secret accepted here). :class:`SecretBox` encrypts them with the key ring, bound
  to their user by associated data: a sealed secret copied to another user's record, or
  changed, raises :class:`~secure_mw.errors.DecryptError`.
* **Storage**: :class:`TOTPStore` keeps ``{user name: sealed secret}`` in memory;
  :class:`FileTOTPStore` in a JSON file of mode 0600, rewritten atomically (temporary file
  and ``os.replace``) under an advisory lock (``flock`` of ``PATH.lock``, mode 0600) and
  read again when it changed (inode, size or modification time). The file is a
  secret file (at most 1 MiB: several thousand users); a file that vanishes or stops
  parsing while the process runs raises :class:`~secure_mw.errors.StoreUnavailable`
  (fail closed: a user must not lose their second factor to a deleted file).
* **QR codes** (``segno``) are inline SVG with presentation attributes only: no
  ``<script>``, no ``<style>`` element, no ``style`` attribute, no external resource, so
  they render under ``default-src 'none'`` (CSP does not govern presentation attributes
  such as ``fill``). They contain the secret: serve the page that shows them with
  ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import heapq
import hmac
import io
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import quote

import pyotp
import segno

from secure_mw._encoding import StrictJSONError, loads_strict
from secure_mw._files import read_secret_file, write_secret_file
from secure_mw.crypto.keyring import KeyRing
from secure_mw.errors import ConfigError, ConfigProblem, DecryptError, StoreUnavailable

if TYPE_CHECKING:
    from secure_mw.login.totp_redis import RedisUsedCodes
    from secure_mw.settings import Settings

try:  # POSIX; elsewhere the file store serializes writers within one process only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "TOTP",
    "FileTOTPStore",
    "RedisUsedCodes",
    "SecretBox",
    "TOTPStore",
    "UsedCodeStore",
    "UsedCodes",
    "acheck_code",
    "check_code",
    "used_codes_from_settings",
]

_DIGESTS: Final[dict[str, Callable[..., Any]]] = {
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
}
#: Bytes of a new secret (160 bits, the RFC 4226 recommendation) and the shortest accepted.
SECRET_BYTES: Final = 20
MIN_SECRET_BYTES: Final = 16
#: Longest code text looked at; longer input is refused before any other work.
_MAX_CODE_TEXT: Final = 64
_DIGITS: Final = frozenset("0123456789")
_WHITESPACE: Final = " \t\r\n"
_AAD_PREFIX: Final = b"secure_mw/v1/totp secret\x00"


def _secret_text(secret: object) -> str:
    """``secret`` as canonical base32 (upper case, unpadded); ValueError when it is not
    base32 of at least 128 bits."""
    if not isinstance(secret, str):
        raise ValueError("a TOTP secret is a base32 string")
    text = secret.strip().replace(" ", "").rstrip("=").upper()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("a TOTP secret is a base32 string") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"a TOTP secret has at least {MIN_SECRET_BYTES * 8} bits")
    return text


def _positive_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}")
    return value


class TOTP:
    """RFC 6238 codes for one issuer; see the module docstring."""

    __slots__ = ("_clock", "_digest", "algorithm", "digits", "issuer", "period", "window")

    def __init__(self, *, issuer: str, digits: int = 6, period: int = 30, window: int = 1,
                 algorithm: str = "SHA1", clock: Callable[[], float] = time.time) -> None:
        if not isinstance(issuer, str) or not issuer.strip():
            raise ValueError("issuer must be a non-empty string")
        if not isinstance(algorithm, str) or algorithm.upper() not in _DIGESTS:
            raise ValueError(f"algorithm must be one of {sorted(_DIGESTS)}")
        self.issuer = issuer
        self.digits = _positive_int("digits", digits, 6, 8)
        self.period = _positive_int("period", period, 1, 300)
        self.window = _positive_int("window", window, 0, 10)
        self.algorithm = algorithm.upper()
        self._digest = _DIGESTS[self.algorithm]
        self._clock = clock

    def __repr__(self) -> str:
        return (f"TOTP(issuer={self.issuer!r}, digits={self.digits}, period={self.period}, "
                f"window={self.window}, algorithm={self.algorithm!r})")

    @staticmethod
    def new_secret() -> str:
        """A fresh random secret: 160 bits in base32 (32 characters, no padding)."""
        return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")

    # -- time steps and codes -----------------------------------------------------------------

    def step(self, at: float | None = None) -> int:
        """The time step of ``at`` (the clock's now by default)."""
        now = self._clock() if at is None else at
        return math.floor(now / self.period)

    def code(self, secret: str, step: int | None = None) -> str:
        """The code of ``step`` (the current one by default); ValueError for a bad secret."""
        text = _secret_text(secret)
        counter = self.step() if step is None else step
        if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
            raise ValueError("a time step is a non-negative integer")
        return self._hotp(text).generate_otp(counter)

    def _hotp(self, text: str) -> pyotp.HOTP:
        return pyotp.HOTP(text, digits=self.digits, digest=self._digest)

    def _normalize(self, code: object) -> str | None:
        if not isinstance(code, str) or len(code) > _MAX_CODE_TEXT:
            return None
        candidate = code.strip(_WHITESPACE).replace(" ", "")
        if len(candidate) != self.digits or not _DIGITS.issuperset(candidate):
            return None
        return candidate

    def verify(self, secret: str, code: str) -> int | None:
        """The time step ``code`` belongs to within the window, or None. ``code`` may be any
        object: anything but the right number of ASCII digits is refused, never raised
        about. A malformed ``secret`` raises ValueError (it comes from the store)."""
        hotp = self._hotp(_secret_text(secret))
        candidate = self._normalize(code)
        if candidate is None:
            return None
        given = candidate.encode("ascii")
        now = self.step()
        matched: int | None = None
        for step in self._candidates(now):
            expected = hotp.generate_otp(step).encode("ascii")
            # Every candidate is compared, in constant time, whether or not one matched.
            if hmac.compare_digest(expected, given) and matched is None:
                matched = step
        return matched

    def _candidates(self, now: int) -> Iterator[int]:
        """The steps accepted at step ``now``, nearest first."""
        yield from (s for s in (now,) if s >= 0)
        for offset in range(1, self.window + 1):
            yield from (s for s in (now - offset, now + offset) if s >= 0)

    def replay_ttl(self, step: int) -> float:
        """Seconds ``step`` must be remembered as used: until it leaves the window, plus one
        period for clocks that differ between processes."""
        return max((step + self.window + 2) * self.period - self._clock(), 0.001)

    def earlier_steps(self, step: int) -> range:
        """The steps before ``step`` that are still accepted now (claimed along with it)."""
        return range(max(self.step() - self.window, 0), step)

    # -- enrolment ----------------------------------------------------------------------------

    def provisioning_uri(self, secret: str, account: str) -> str:
        """The ``otpauth://totp/`` URI authenticator apps read (Key URI Format), every
        field percent-encoded as UTF-8."""
        if not isinstance(account, str) or not account.strip():
            raise ValueError("account must be a non-empty string")
        label = f"{quote(self.issuer, safe='')}:{quote(account, safe='')}"
        params = (("secret", _secret_text(secret)), ("issuer", self.issuer),
                  ("algorithm", self.algorithm), ("digits", str(self.digits)),
                  ("period", str(self.period)))
        query = "&".join(f"{name}={quote(value, safe='')}" for name, value in params)
        return f"otpauth://totp/{label}?{query}"

    def qr_svg(self, secret: str, account: str, *, scale: int = 4) -> str:
        """The provisioning URI as an inline SVG QR code (with ``xmlns``, a ``<title>`` and a
        white background; presentation attributes only, so a strict CSP needs nothing)."""
        scale = _positive_int("scale", scale, 1, 40)
        qr = segno.make_qr(self.provisioning_uri(secret, account), error="m")
        out = io.BytesIO()
        qr.save(out, kind="svg", xmldecl=False, svgns=True, nl=False, scale=scale,
                dark="#000", light="#fff", svgclass="secure-mw-totp-qr", lineclass=None,
                title=f"{self.issuer} two-step login setup")
        return out.getvalue().decode("utf-8")


# -------------------------------------------------------------------------------------------
# secrets at rest


def _aad(username: str) -> bytes:
    if not isinstance(username, str):
        raise TypeError("username must be a string")
    return _AAD_PREFIX + username.encode("utf-8", "surrogatepass")


class SecretBox:
    """TOTP secrets encrypted by a :class:`KeyRing`, bound to their user name."""

    __slots__ = ("_keyring",)

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def seal(self, username: str, secret: str) -> str:
        """The encrypted text form of ``secret`` for ``username``."""
        return self._keyring.encrypt(_secret_text(secret).encode("ascii"), aad=_aad(username))

    def open(self, username: str, token: str) -> str:
        """The secret sealed for ``username``; DecryptError when ``token`` was changed, made
        for another user, or by a key no longer in the ring."""
        raw = self._keyring.decrypt(token, aad=_aad(username))
        try:
            return _secret_text(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise DecryptError("not a TOTP secret") from None


# -------------------------------------------------------------------------------------------
# replay


class UsedCodeStore(Protocol):
    """What :func:`check_code` needs: claim a (user, step) pair once."""

    def claim(self, username: str, step: int, ttl: float) -> bool: ...
    async def aclaim(self, username: str, step: int, ttl: float) -> bool: ...


def _check_claim(username: object, step: object, ttl: object) -> None:
    if not isinstance(username, str):
        raise TypeError("username must be a string")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError("a time step is a non-negative integer")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise ValueError("ttl must be a finite number of seconds")


class UsedCodes:
    """Claimed (user, step) pairs in this process, each forgotten when its time to live
    ends. At most ``max_entries`` are held; when that many are live a claim raises
    StoreUnavailable rather than forget one (which would allow a replay)."""

    __slots__ = ("_clock", "_expiries", "_lock", "_max_entries", "_until")
    nonblocking = True   # never waits on I/O: called inline under ASGI

    def __init__(self, *, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self._max_entries = _positive_int("max_entries", max_entries, 1, 1 << 40)
        self._clock = clock
        self._lock = threading.Lock()
        self._until: dict[tuple[str, int], float] = {}
        self._expiries: list[tuple[float, tuple[str, int]]] = []   # a heap, soonest first

    def __len__(self) -> int:
        return len(self._until)

    def __repr__(self) -> str:
        return f"UsedCodes(entries={len(self._until)}, max={self._max_entries})"

    def claim(self, username: str, step: int, ttl: float) -> bool:
        """True the first time (``username``, ``step``) is claimed within ``ttl`` seconds."""
        _check_claim(username, step, ttl)
        key = (username, step)
        with self._lock:
            now = self._clock()
            while self._expiries and self._expiries[0][0] <= now:
                until, old = heapq.heappop(self._expiries)
                if self._until.get(old) == until:
                    del self._until[old]
            if key in self._until:
                return False
            if len(self._until) >= self._max_entries:
                raise StoreUnavailable("TOTP replay store full")
            until = now + max(ttl, 0.001)
            self._until[key] = until
            heapq.heappush(self._expiries, (until, key))
            return True

    async def aclaim(self, username: str, step: int, ttl: float) -> bool:
        return self.claim(username, step, ttl)


def used_codes_from_settings(settings: Settings) -> UsedCodeStore:
    """Where used codes are remembered: in Redis whenever a Redis URL is configured
    (``rate_limits.redis_url``, else ``session.redis_url``, as regulation), so a code used
    in one process is refused by all (keys under ``session.redis_key_prefix``); else in the
    ``[sqlite]`` file when its path is set; else in this process."""
    session = settings.session
    url = settings.rate_limits.redis_url or session.redis_url
    if url:
        from secure_mw.login.totp_redis import RedisUsedCodes

        return RedisUsedCodes(url, prefix=session.redis_key_prefix)
    if settings.sqlite.path:
        from secure_mw._sqlite import database_from_settings
        from secure_mw.login.totp_sqlite import SqliteUsedCodes

        return SqliteUsedCodes(database_from_settings(settings.sqlite))
    return UsedCodes()


def check_code(totp: TOTP, used: UsedCodeStore, username: str, secret: str,
               code: str) -> bool:
    """True when ``code`` is valid now and its step was not used before by ``username``;
    the step (and the earlier steps still in the window) are then claimed."""
    step = totp.verify(secret, code)
    if step is None or not used.claim(username, step, totp.replay_ttl(step)):
        return False
    for earlier in totp.earlier_steps(step):
        used.claim(username, earlier, totp.replay_ttl(earlier))
    return True


async def acheck_code(totp: TOTP, used: UsedCodeStore, username: str, secret: str,
                      code: str) -> bool:
    """:func:`check_code` for asyncio."""
    step = totp.verify(secret, code)
    if step is None or not await used.aclaim(username, step, totp.replay_ttl(step)):
        return False
    for earlier in totp.earlier_steps(step):
        await used.aclaim(username, earlier, totp.replay_ttl(earlier))
    return True


# -------------------------------------------------------------------------------------------
# enrolled secrets


def _check_user(username: object) -> None:
    if not isinstance(username, str):
        raise TypeError("username must be a string")


def _check_entry(username: object, sealed: object) -> None:
    _check_user(username)
    if not isinstance(sealed, str):
        raise TypeError("a sealed secret is a string (SecretBox.seal)")


class TOTPStore:
    """Enrolled users' sealed secrets in this process's memory."""

    nonblocking = True   # never waits on I/O: called inline under ASGI

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._secrets)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(users={len(self._secrets)})"

    def get(self, username: str) -> str | None:
        """The sealed secret of ``username``, or None when not enrolled."""
        _check_user(username)
        with self._lock:
            return self._secrets.get(username)

    def set(self, username: str, sealed: str) -> None:
        _check_entry(username, sealed)
        with self._lock:
            self._secrets[username] = sealed

    def delete(self, username: str) -> bool:
        """Forget ``username``'s secret; whether there was one."""
        _check_user(username)
        with self._lock:
            return self._secrets.pop(username, None) is not None

    async def aget(self, username: str) -> str | None:
        return self.get(username)

    async def aset(self, username: str, sealed: str) -> None:
        self.set(username, sealed)

    async def adelete(self, username: str) -> bool:
        return self.delete(username)


def _parse_secrets(data: bytes, where: str) -> dict[str, str]:
    try:
        value = loads_strict(data)
    except StrictJSONError as exc:
        raise ConfigError([ConfigProblem(where, str(exc))]) from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError([ConfigProblem(where, "must be a JSON object of user name to "
                                                "sealed secret")])
    return value


class FileTOTPStore(TOTPStore):
    """Sealed secrets in a JSON file (``{"user": "sealed secret", ...}``, mode 0600),
    shared by the processes that use the same path; see the module docstring."""

    nonblocking = False   # reads and writes a file

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self._path = Path(path)
        self._where = f"TOTP secret file {str(self._path)!r}"
        self._stamp: tuple[int, int, int] | None = None
        self._refresh(at_start=True)

    def __repr__(self) -> str:
        return f"FileTOTPStore(path={str(self._path)!r}, users={len(self._secrets)})"

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self, *, at_start: bool = False) -> None:
        """Read the file again when it changed (call with the lock held)."""
        try:
            stamp = self._stat()
            if stamp is None:
                if self._stamp is not None:
                    raise ConfigError([ConfigProblem(self._where, "has vanished")])
                self._secrets = {}
                return
            if stamp == self._stamp:
                return
            data = read_secret_file(self._path, key=self._where)
            self._secrets = _parse_secrets(data, self._where)
            self._stamp = stamp
        except (ConfigError, OSError) as exc:
            if at_start:
                raise
            raise StoreUnavailable("TOTP secret file unreadable") from exc

    def edit(self) -> contextlib.AbstractContextManager[dict[str, str]]:
        """Change many entries at once (``with store.edit() as secrets: ...``): the file's
        current secrets, written back atomically, under its lock, on leaving."""
        return self._writing()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, str]]:
        """The current secrets to change, written back atomically on exit."""
        lock_path = self._path.with_name(self._path.name + ".lock")
        with self._lock:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                             0o600)
            except OSError as exc:
                raise StoreUnavailable("TOTP secret file not writable") from exc
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                self._refresh()
                changed = dict(self._secrets)
                yield changed
                if changed != self._secrets:
                    text = json.dumps(changed, ensure_ascii=True, sort_keys=True, indent=1)
                    try:
                        write_secret_file(self._path, text.encode("ascii") + b"\n",
                                          overwrite=True)
                    except OSError as exc:
                        raise StoreUnavailable("TOTP secret file not writable") from exc
                    self._secrets = changed
                    self._stamp = self._stat()
            finally:
                os.close(fd)   # releases the lock

    def get(self, username: str) -> str | None:
        _check_user(username)
        with self._lock:
            self._refresh()
            return self._secrets.get(username)

    def set(self, username: str, sealed: str) -> None:
        _check_entry(username, sealed)
        with self._writing() as changed:
            changed[username] = sealed

    def delete(self, username: str) -> bool:
        _check_user(username)
        with self._writing() as changed:
            return changed.pop(username, None) is not None


def __getattr__(name: str) -> Any:
    # The Redis engine lives in its own module (redis-py is an optional dependency).
    if name == "RedisUsedCodes":
        from secure_mw.login.totp_redis import RedisUsedCodes

        return RedisUsedCodes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
