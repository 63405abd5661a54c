"""The users database of the built-in password login: one TOML file.

::

    [users.alice]
    display_name = "Alice Example"
    email = "alice@example.com"
    groups = ["admins", "staff"]
    password = "$argon2id$v=19$m=65536,t=3,p=4$..."
    disabled = false
    sessions_not_before = 2026-01-02T03:04:05.678901Z   # optional

* ``password`` (an Argon2id PHC string) is required; the other keys default to ``""``,
  ``[]`` and ``false``; ``sessions_not_before`` (an offset date-time, set by ``secure-mw
  users add``, ``passwd`` and ``end-sessions``) ends the sessions that began before it. Any other
  key, a value of the wrong type, a hash of another scheme, a user name with control
  characters or longer than :data:`MAX_USERNAME`, or two names that are the same user once
  normalized (:func:`normalize_username`) make the file invalid;
  :class:`UsersFileError` (a :class:`~secure_mw.errors.ConfigError`) names every problem by
  its key (``users.alice.password``) and never shows a hash.
* The file holds password hashes, so it is treated as a secret file: one readable or
  writable by group or others is refused.
* :class:`UsersFile` notices a changed file (device, inode, size, mtime, ctime, mode) on a
  lookup, at most every ``check_interval`` seconds (``lookup_now`` and ``verify``: now); while
  the file's last change is too recent for its time stamps to tell two versions apart, its
  content digest is compared too. A broken new version is logged and the last good one kept;
  so is a file that disappears, and one changed a moment ago that is empty or cut short
  (being written in place). A file missing at start-up is an empty database.
* New passwords (:meth:`UsersFile.add`, :meth:`UsersFile.set_password`) must satisfy a
  :class:`~secure_mw.login.policy.PasswordPolicy`.
* Writers (``secure-mw users``, rehash after a successful login) take an exclusive
  ``flock`` on ``<file>.lock``, read the current file, change it and replace it atomically
  (a 0600 temporary file in the same directory, fsync, rename). The file is written in a
  canonical form: comments other than the header are not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import hashlib
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar

from secure_mw._files import read_secret_file
from secure_mw.crypto.passwords import DEFAULT_HASHER, PasswordHasher
from secure_mw.errors import ConfigError, ConfigProblem, SecureMWError
from secure_mw.identity import normalize_username
from secure_mw.login.policy import PasswordPolicy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_POLICY",
    "MAX_USERNAME",
    "UnknownUserError",
    "User",
    "UserExistsError",
    "UsersFile",
    "UsersFileError",
    "normalize_username",
]

#: Longest user name accepted (in characters, as written in the file).
MAX_USERNAME: Final = 128
MAX_DISPLAY_NAME: Final = 256
MAX_EMAIL: Final = 254
MAX_GROUP: Final = 128
MAX_GROUPS: Final = 256
MAX_HASH: Final = 512

_KEYS: Final = ("display_name", "email", "groups", "password", "disabled",
                 "sessions_not_before")
#: A file changed less than this many seconds before it was looked at may change again
#: without its time stamps moving (their granularity): its content is compared too.
RACY_SECONDS: Final = 2.0
_PHC: Final = re.compile(
    r"\$argon2id\$(?:v=[0-9]{1,3}\$)?m=[0-9]{1,10},t=[0-9]{1,10},p=[0-9]{1,3}"
    r"\$[A-Za-z0-9+/]{8,}\$[A-Za-z0-9+/]{16,}"
)
_SCHEME: Final = re.compile(r"\$([A-Za-z0-9-]{1,16})\$")
_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
# In display names, e-mail addresses and groups (which may end up in headers and logs):
# control characters (C0, DEL, C1), surrogates, line/paragraph separators and the
# bidirectional marks, overrides and isolates.
_UNSAFE_TEXT: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
# In user names, stricter: every control, format (invisible), surrogate or separator code
# point other than the plain space.
_UNSAFE_NAME_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_HEADER: Final = (
    "# Users of the secure_mw built-in password login: one [users.NAME] table per user.\n"
    "# Managed with `secure-mw users add|passwd|delete|set-groups|disable|list|...`, which\n"
    "# rewrite this file (comments other than this header are not kept). Keep it 0600.\n"
)

#: The policy a :class:`UsersFile` applies unless given another (at least 12 characters, the
#: built-in rules, no list).
DEFAULT_POLICY: Final = PasswordPolicy()

_T = TypeVar("_T")
_Signature = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class User:
    """One user of the file. ``username`` is the name as written in the file."""

    username: str
    display_name: str
    email: str
    groups: tuple[str, ...]
    password_hash: str = field(repr=False)
    disabled: bool = False
    #: Sessions that began before this time (seconds since the epoch; 0: none) are ended.
    sessions_not_before: float = 0.0


class UsersFileError(ConfigError):
    """The users file cannot be used; ``problems`` name each key (``users.alice.email``)."""

    def __init__(self, path: str, problems: Iterable[ConfigProblem | str]) -> None:
        super().__init__(problems)
        self.path = path
        self.args = (f"users file {path!r}: {self.args[0]}",)

    def one_line(self) -> str:
        """Every problem on one line (for a log record)."""
        return "; ".join(str(p) for p in self.problems)


class UserExistsError(SecureMWError, ValueError):
    """``add`` was asked for a user name that is already taken (after normalization)."""


class UnknownUserError(SecureMWError, LookupError):
    """A writer was asked to change a user that is not in the file."""

    def __str__(self) -> str:  # LookupError would show the repr of its argument
        return str(self.args[0]) if self.args else "unknown user"


# -- TOML text ----------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string; anything not printable is escaped."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[ch])
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _toml_string(name)


def _shown(name: str) -> str:
    """A user name or key as shown in a message: TOML-quoted when needed, cut when long."""
    if len(name) > 64:
        name = name[:64] + "…"
    return _toml_key(name)


def _shown_repr(name: object) -> str:
    """A name from a caller, as shown in an error: its repr, cut when long."""
    text = repr(name)
    return text if len(text) <= 80 else text[:80] + "…"


def _toml_instant(seconds: float) -> str:
    """``seconds`` since the epoch as a TOML offset date-time in UTC, to the microsecond."""
    when = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dump(users: Iterable[User]) -> str:
    """The file for ``users``, in order (TOML that :func:`_parse` reads back as it was)."""
    parts = [_HEADER]
    for user in users:
        groups = ", ".join(_toml_string(g) for g in user.groups)
        revoked = (f"sessions_not_before = {_toml_instant(user.sessions_not_before)}\n"
                   if user.sessions_not_before else "")
        parts.append(
            f"\n[users.{_toml_key(user.username)}]\n"
            f"display_name = {_toml_string(user.display_name)}\n"
            f"email = {_toml_string(user.email)}\n"
            f"groups = [{groups}]\n"
            f"password = {_toml_string(user.password_hash)}\n"
            f"disabled = {'true' if user.disabled else 'false'}\n{revoked}"
        )
    if len(parts) == 1:
        parts.append("\n[users]\n")
    return "".join(parts)


# -- validation ---------------------------------------------------------------------------


def _username_problem(name: str) -> str | None:
    if not name:
        return "a user name must not be empty"
    if len(name) > MAX_USERNAME:
        return f"a user name is at most {MAX_USERNAME} characters"
    if any(unicodedata.category(ch) in _UNSAFE_NAME_CATEGORIES for ch in name):
        return "a user name must not contain control or invisible characters"
    if name != name.strip():
        return "a user name must not begin or end with white space"
    if not normalize_username(name):
        return "a user name must not be empty"
    return None


def _text_problem(value: object, limit: int) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    if len(value) > limit:
        return f"must be at most {limit} characters"
    if _UNSAFE_TEXT.search(value):
        return "must not contain control characters, line separators or bidirectional marks"
    return None


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _hash_problem(value: object) -> str | None:
    """Why ``value`` is not a usable Argon2id PHC string (never quoting the value)."""
    if not isinstance(value, str):
        return f"must be an Argon2id hash string, not {_type_name(value)}"
    if len(value) <= MAX_HASH and _PHC.fullmatch(value):
        return None
    scheme = _SCHEME.match(value)
    if scheme and scheme.group(1) != "argon2id":
        what = f"is a ${scheme.group(1)}$ hash, not Argon2id"
    else:
        what = "is not an Argon2id PHC string"
    return (f"{what}: only $argon2id$v=19$m=…,t=…,p=…$salt$hash is accepted (make one "
            "with `secure-mw users passwd NAME` or `secure-mw hash-password`)")


def _build_user(
    name: str, entry: object, where: str, *, require_password: bool = True
) -> tuple[User | None, list[ConfigProblem]]:
    """The :class:`User` for one ``[users.NAME]`` table, or the problems found in it."""
    problems: list[ConfigProblem] = []
    name_problem = _username_problem(name)
    if name_problem:
        problems.append(ConfigProblem(where, name_problem))
    if not isinstance(entry, Mapping):
        problems.append(ConfigProblem(where, f"must be a table of user attributes, not "
                                             f"{_type_name(entry)}"))
        return None, problems
    for key in entry:
        if key not in _KEYS:
            problems.append(ConfigProblem(f"{where}.{_shown(str(key))}",
                                          f"unknown key (expected {', '.join(_KEYS)})"))

    def text(key: str, limit: int) -> str:
        value = entry.get(key, "")
        problem = _text_problem(value, limit)
        if problem:
            problems.append(ConfigProblem(f"{where}.{key}", problem))
            return ""
        return str(value)

    display_name = text("display_name", MAX_DISPLAY_NAME)
    email = text("email", MAX_EMAIL)
    if email and not _EMAIL.fullmatch(email):
        problems.append(ConfigProblem(f"{where}.email",
                                      "must be an e-mail address like name@example.org"))

    groups: list[str] = []
    raw_groups = entry.get("groups", [])
    if not isinstance(raw_groups, list | tuple):
        problems.append(ConfigProblem(f"{where}.groups", f"must be an array of strings, not "
                                                         f"{_type_name(raw_groups)}"))
    elif len(raw_groups) > MAX_GROUPS:
        problems.append(ConfigProblem(f"{where}.groups", f"at most {MAX_GROUPS} groups"))
    else:
        for i, group in enumerate(raw_groups):
            problem = _text_problem(group, MAX_GROUP)
            if problem is None:
                if not group or group != group.strip():
                    problem = "must not be empty or begin or end with white space"
                elif "," in group:
                    problem = "must not contain a comma (groups are sent comma-separated)"
                elif group in groups:
                    problem = "is listed twice"
            if problem:
                problems.append(ConfigProblem(f"{where}.groups[{i}]", problem))
            else:
                groups.append(group)

    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        problems.append(ConfigProblem(f"{where}.disabled",
                                      f"must be true or false, not {_type_name(disabled)}"))
        disabled = False

    not_before = 0.0
    raw_not_before = entry.get("sessions_not_before")
    if raw_not_before is not None:
        if isinstance(raw_not_before, datetime.datetime) and raw_not_before.tzinfo is not None:
            not_before = raw_not_before.timestamp()
        elif isinstance(raw_not_before, int | float) and not isinstance(raw_not_before, bool) \
                and 0 <= raw_not_before < 2**40:
            not_before = float(raw_not_before)   # seconds since the epoch (the API's form)
        else:
            problems.append(ConfigProblem(f"{where}.sessions_not_before",
                                          "must be a date and time with its offset, like "
                                          "2026-01-02T03:04:05Z"))

    password_hash = ""
    if "password" in entry:
        problem = _hash_problem(entry["password"])
        if problem:
            problems.append(ConfigProblem(f"{where}.password", problem))
        else:
            password_hash = entry["password"]
    elif require_password:
        problems.append(ConfigProblem(f"{where}.password", "is required: an Argon2id hash "
                                      "(`secure-mw users passwd NAME` sets one)"))
    if problems:
        return None, problems
    return User(name, display_name, email, tuple(groups), password_hash, disabled,
                not_before), []


def _parse(text: str) -> tuple[dict[str, User], list[ConfigProblem]]:
    """Users by name as written, in file order, and every problem found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # names a line and column, never a value
        return {}, [ConfigProblem("", f"not valid TOML: {exc}")]
    except RecursionError:
        return {}, [ConfigProblem("", "nested too deeply")]
    problems: list[ConfigProblem] = []
    for key in data:
        if key != "users":
            problems.append(ConfigProblem(_shown(key), "unknown key (the file holds only "
                                                       "[users.NAME] tables)"))
    raw: Any = data.get("users", {})
    if not isinstance(raw, dict):
        problems.append(ConfigProblem("users", "must be a table of [users.NAME] tables"))
        raw = {}
    users: dict[str, User] = {}
    seen: dict[str, str] = {}
    for name, entry in raw.items():
        where = f"users.{_shown(name)}"
        user, found = _build_user(name, entry, where)
        problems.extend(found)
        if _username_problem(name):
            continue
        norm = normalize_username(name)
        if norm in seen:
            problems.append(ConfigProblem(where, f"is the same user as users."
                                                 f"{_shown(seen[norm])} (names are compared "
                                                 "ignoring case, width and surrounding space)"))
        else:
            seen[norm] = name
            if user is not None:
                users[name] = user
    return users, problems


# -- files --------------------------------------------------------------------------------


def _signature(path: str | os.PathLike[str]) -> _Signature | None:
    """What tells one version of the file from the next; ``None`` when it does not exist.
    The ctime moves at every write, rename and chmod (and cannot be set back)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return (-1, exc.errno or 0)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _changed_at(signature: _Signature | None) -> float | None:
    """When the version with ``signature`` was last changed (seconds since the epoch)."""
    if signature is None or len(signature) < 6:
        return None
    return max(signature[3], signature[4]) / 1e9


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to a 0600 temporary file next to ``target``, fsync it and rename it
    over ``target`` (keeping the previous owner when we are allowed to)."""
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):  # root editing the app's file
                    os.fchown(fh.fileno(), old.st_uid, old.st_gid)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (created 0600, left in place): writers in
    other processes and, as each call opens its own descriptor, other threads wait."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@dataclass(frozen=True)
class _State:
    users: dict[str, User]  # by name as written, in file order
    by_key: dict[str, User]  # by normalized name

    @classmethod
    def of(cls, users: dict[str, User]) -> _State:
        return cls(dict(users), {normalize_username(n): u for n, u in users.items()})


class UsersFile:
    """The users file at ``path``, loaded now and reloaded when it changes.

    A file that is invalid at start-up raises :class:`UsersFileError`; one missing is an
    empty database (logged). ``clock`` (default :func:`time.monotonic`) paces the checks
    for a new version: at most one ``stat`` every ``check_interval`` seconds (the session
    check, :meth:`lookup_now`, looks when it is asked). ``policy`` is what new passwords must
    satisfy (``None``: only the hasher's limits); ``wall_clock`` stamps
    ``sessions_not_before`` and judges whether a file's time stamps can be trusted yet.

    :meth:`verify` costs one Argon2id verification (tens of milliseconds, CPU-bound): an
    async app should call it in a worker thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hasher: PasswordHasher = DEFAULT_HASHER,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = 2.0,
        logger: logging.Logger | None = None,
        policy: PasswordPolicy | None = DEFAULT_POLICY,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = Path(path)
        self._hasher = hasher
        self._clock = clock
        self._wall = wall_clock
        self._check_interval = check_interval
        self._logger = logger or logging.getLogger("secure_mw.login")
        self.policy = policy
        self._lock = threading.Lock()  # one reload or write at a time in this object
        self._dummy: str | None = None
        self._state = _State.of({})
        # The version we hold: its signature, the digest of its bytes (of a broken version
        # too, so it is neither parsed nor logged twice), and whether its time stamps are old
        # enough that any later change must move them.
        self._seen: _Signature | None = None
        self._digest = b""
        self._trusted = True
        self._writing = b""     # the digest of the version last taken as being written
        self._checked_at = clock()
        signature = _signature(self._path)
        if signature is None:
            self._logger.warning(
                "users file %r does not exist: nobody can log in with a password until it "
                "is created (`secure-mw users add --file %s NAME`)", str(self._path),
                str(self._path))
        else:
            raw = self._read()
            self._state = _State.of(self._load(raw))
            self._hold(signature, raw)
            self._logger.info("users file %r: %d users", str(self._path),
                              len(self._state.users))

    @property
    def path(self) -> Path:
        return self._path

    # -- reading ----------------------------------------------------------------------

    def get(self, username: str) -> User | None:
        """The user called ``username`` (compared after :func:`normalize_username`), or
        ``None``. Picks up a new version of the file first, when it is time to look."""
        self._maybe_reload()
        return self._known(username)

    def lookup_now(self, username: str) -> User | None:
        """The user as the file says now: one ``stat``, and a read when the file changed or
        its last change is too recent to trust its time stamps. Waits for a reload or write
        of another thread to finish (it may block: under asyncio use :meth:`alookup_now`)."""
        with self._lock:
            self._checked_at = self._clock()
            self._look()
        return self._known(username)

    async def alookup_now(self, username: str) -> User | None:
        """:meth:`lookup_now` for asyncio: the ``stat`` runs inline; a read, or a wait for
        another thread, in a worker thread."""
        if self._trusted and _signature(self._path) == self._seen:
            return self._known(username)   # _state is published before _seen (see _look)
        return await asyncio.to_thread(self.lookup_now, username)

    def users(self) -> list[User]:
        """Every user, in file order."""
        self._maybe_reload()
        return list(self._state.users.values())

    def verify(self, username: str, password: str) -> User | None:
        """The user, when ``password`` is theirs and they are not disabled; else ``None``.

        Exactly one Argon2id verification runs whatever the outcome (for an unknown user,
        against a dummy hash made with this hasher's parameters), and a disabled user's
        password is checked too, so the time taken does not tell which case it was. The
        hash comparison itself is constant-time (libargon2). The file is looked at now
        (:meth:`lookup_now`), so a user deleted or disabled a moment ago cannot log in."""
        user = self.lookup_now(username)
        phc = user.password_hash if user is not None else self._dummy_hash()
        matches = self._hasher.verify(phc, password)
        if user is None or not matches or user.disabled:
            return None
        return user

    @property
    def hasher(self) -> PasswordHasher:
        """The hasher this file verifies and hashes with."""
        return self._hasher

    def needs_rehash(self, user: User) -> bool:
        """True when ``user``'s hash was made with other parameters than this hasher's
        (upgrade it with :meth:`set_hash` after a successful login)."""
        return self._hasher.needs_rehash(user.password_hash)

    def reload(self) -> None:
        """Read the file now; raises :class:`UsersFileError` (keeping the current users)
        when it is invalid. A missing file leaves the current users in place."""
        with self._lock:
            self._checked_at = self._clock()
            signature = _signature(self._path)
            if signature is None:
                self._seen, self._trusted = None, True
                return
            raw = self._read()
            self._state = _State.of(self._load(raw))
            self._hold(signature, raw)

    # -- writing ----------------------------------------------------------------------

    def add(
        self,
        username: str,
        *,
        password: str,
        display_name: str = "",
        email: str = "",
        groups: Iterable[str] = (),
    ) -> User:
        """Add a user; :class:`UserExistsError` when the name is taken, ``ValueError`` when
        an attribute is invalid, :class:`~secure_mw.login.policy.PasswordPolicyError` when
        the policy refuses the password. ``sessions_not_before`` is set to now, so nothing
        of an earlier user of the same name (a session, a device cookie) passes to this
        one."""
        entry = {"display_name": display_name, "email": email, "groups": list(groups)}
        draft, problems = _build_user(username, entry, f"users.{_shown(username)}",
                                      require_password=False)
        if draft is None:
            raise ValueError("; ".join(str(p) for p in problems))
        self._maybe_reload(force=True)
        self._refuse_existing(self._state.users, username)  # before the costly hash
        if self.policy is not None:
            self.policy.check(password, username=username, email=email)
        # A session (or a device cookie) of an earlier user of this name began before now:
        # it must not pass to the new one.
        user = replace(draft, password_hash=self._hasher.hash(password),
                       sessions_not_before=self._wall())

        def change(users: dict[str, User]) -> User:
            self._refuse_existing(users, username)
            users[username] = user
            return user

        self._modify(change)
        self._logger.info("users file %r: added user %r", str(self._path), username)
        return user

    def set_password(self, username: str, password: str, *, end_sessions: bool = True) -> None:
        """Store a new hash of ``password`` for ``username``; with ``end_sessions`` (the
        default) the sessions that began before now end too (``sessions_not_before``)."""
        self._maybe_reload(force=True)
        user = self._state.users[self._existing(self._state.users, username)]
        if self.policy is not None:   # before the costly hash
            self.policy.check(password, username=user.username, email=user.email)
        phc = self._hasher.hash(password)
        changes: dict[str, Any] = {"password_hash": phc}
        if end_sessions:
            changes["sessions_not_before"] = self._wall()
        name = self._modify(lambda users: self._update(users, username, **changes))
        self._logger.info("users file %r: new password for %r", str(self._path), name)

    def set_disabled(self, username: str, disabled: bool) -> None:
        """Disable (or enable again) ``username``: a disabled user cannot log in, and their
        sessions end at their next check."""
        name = self._modify(lambda users: self._update(users, username, disabled=disabled))
        self._logger.info("users file %r: %s user %r", str(self._path),
                          "disabled" if disabled else "enabled", name)

    def update(self, username: str, *, display_name: str | None = None,
               email: str | None = None, groups: Iterable[str] | None = None) -> User:
        """Change the given attributes of ``username`` (``ValueError`` when one is invalid,
        naming its key); returns the user as written."""
        def change(users: dict[str, User]) -> User:
            name = self._existing(users, username)
            old = users[name]
            entry = {"display_name": old.display_name if display_name is None else display_name,
                     "email": old.email if email is None else email,
                     "groups": list(old.groups if groups is None else groups)}
            draft, problems = _build_user(name, entry, f"users.{_shown(name)}",
                                          require_password=False)
            if draft is None:
                raise ValueError("; ".join(str(p) for p in problems))
            users[name] = replace(old, display_name=draft.display_name, email=draft.email,
                                  groups=draft.groups)
            return users[name]

        user = self._modify(change)
        self._logger.info("users file %r: updated user %r", str(self._path), user.username)
        return user

    def end_sessions(self, username: str) -> None:
        """End every session of ``username`` that began before now, at its next check."""
        now = self._wall()
        name = self._modify(lambda users: self._update(users, username,
                                                       sessions_not_before=now))
        self._logger.info("users file %r: ended the sessions of %r", str(self._path), name)

    def delete(self, username: str) -> User:
        """Remove ``username`` from the file (their sessions end at their next check);
        returns the user removed."""
        def change(users: dict[str, User]) -> User:
            return users.pop(self._existing(users, username))

        user = self._modify(change)
        self._logger.info("users file %r: deleted user %r", str(self._path), user.username)
        return user

    def set_hash(self, username: str, password_hash: str, *, expected: str | None = None) -> bool:
        """Store ``password_hash`` (an Argon2id PHC string) for ``username``.

        For rehash-on-login pass ``expected=user.password_hash``: nothing is written (and
        ``False`` returned) when the stored hash changed meanwhile, so a password set by an
        administrator in between is not overwritten by the old one. Sessions are not ended:
        the password is the same."""
        problem = _hash_problem(password_hash)
        if problem:
            raise ValueError(f"users.{_shown(username)}.password: {problem}")

        def change(users: dict[str, User]) -> bool:
            name = self._existing(users, username)
            if expected is not None and users[name].password_hash != expected:
                return False
            self._update(users, name, password_hash=password_hash)
            return True

        written = self._modify(change)
        if written:
            self._logger.info("users file %r: new hash for %r", str(self._path), username)
        return written

    # -- internals --------------------------------------------------------------------

    def _known(self, username: str) -> User | None:
        if not isinstance(username, str) or len(username) > 4 * MAX_USERNAME:
            return None
        return self._state.by_key.get(normalize_username(username))

    def _dummy_hash(self) -> str:
        if self._dummy is None:  # a race only makes two equivalent dummies
            self._dummy = self._hasher.hash(secrets.token_urlsafe(24))
        return self._dummy

    def _read(self) -> bytes:
        try:
            return read_secret_file(self._path)
        except ConfigError as exc:
            raise UsersFileError(str(self._path), exc.problems) from None

    def _load(self, raw: bytes | None = None) -> dict[str, User]:
        path = str(self._path)
        if raw is None:
            raw = self._read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsersFileError(path, ["the file is not UTF-8 text"]) from None
        users, problems = _parse(text)
        if problems:
            raise UsersFileError(path, problems)
        return users

    def _hold(self, signature: _Signature | None, raw: bytes) -> None:
        """Remember that the version with ``signature`` holds ``raw``."""
        self._seen = signature
        self._digest = hashlib.sha256(raw).digest()
        changed = _changed_at(signature)
        self._trusted = changed is not None and self._wall() - changed >= RACY_SECONDS

    def _maybe_reload(self, *, force: bool = False) -> None:
        """Look for a new version when it is time (or now, with ``force``)."""
        now = self._clock()
        if not force and now - self._checked_at < self._check_interval:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is reloading or writing: use what we have
        try:
            self._checked_at = now
            self._look()
        finally:
            self._lock.release()

    def _look(self) -> None:
        """Pick up a new version of the file, if there is one (with the lock held)."""
        signature = _signature(self._path)
        if signature == self._seen and self._trusted:
            return
        path, count = str(self._path), len(self._state.users)
        if signature is None:
            if self._seen is not None:
                self._logger.warning("users file %r has disappeared: keeping the last good "
                                     "version (%d users)", path, count)
            self._seen, self._trusted = None, True
            return
        fresh = signature != self._seen
        try:
            raw = self._read()
        except UsersFileError as exc:
            if fresh:
                self._logger.warning("users file %r changed but cannot be used, keeping the "
                                     "last good version (%d users): %s", path, count,
                                     exc.one_line())
            self._seen, self._trusted = signature, False
            return
        if hashlib.sha256(raw).digest() != self._digest:   # else a touch, or seen before
            if self._being_written(signature, raw):
                # Keep the last good version, and read the file again at the next look.
                self._seen, self._trusted = signature, False
                return
            try:
                users = self._load(raw)
            except UsersFileError as exc:
                self._logger.warning("users file %r changed but cannot be used, keeping the "
                                     "last good version (%d users): %s", path, count,
                                     exc.one_line())
            else:
                self._state = _State.of(users)
                self._logger.info("users file %r reloaded: %d users", path, len(users))
        # Last: alookup_now reads _state without the lock once _seen matches the file.
        self._hold(signature, raw)

    def _being_written(self, signature: _Signature | None, raw: bytes) -> bool:
        """Whether a new version changed a moment ago (less than :data:`RACY_SECONDS`) is
        empty or does not end with a line break: an editor that truncates the file, then
        writes it in place, shows such a version in between. It is not used until it is
        older than that (or complete); logged once."""
        changed = _changed_at(signature)
        if changed is None or self._wall() - changed >= RACY_SECONDS:
            return False
        if raw.strip() and raw.endswith(b"\n"):
            return False
        digest = hashlib.sha256(raw).digest()
        if digest != self._writing:
            self._writing = digest
            self._logger.warning(
                "users file %r changed a moment ago and is %s: taken as being written, "
                "keeping the last good version (%d users) until it is complete",
                str(self._path), "empty" if not raw.strip() else "cut short",
                len(self._state.users))
        return True

    def _modify(self, change: Callable[[dict[str, User]], _T]) -> _T:
        """Run ``change`` on the current file's users and write the result back, with the
        in-process lock and the file lock held (nothing is written when nothing changed)."""
        target = Path(os.path.realpath(self._path))  # replace a symlink's target, not it
        with self._lock, _exclusive(target.with_name(target.name + ".lock")):
            exists = _signature(target) is not None
            raw = self._read() if exists else b""
            users = self._load(raw) if exists else {}
            before = list(users.items())
            result = change(users)
            if not exists or list(users.items()) != before:
                raw = _dump(users.values()).encode("utf-8")
                _replace_atomically(target, raw)
            self._state = _State.of(users)
            self._hold(_signature(self._path), raw)
            self._checked_at = self._clock()
        return result

    def _existing(self, users: Mapping[str, User], username: str) -> str:
        """The name as written of the user ``username`` designates."""
        if isinstance(username, str) and len(username) <= 4 * MAX_USERNAME:
            key = normalize_username(username)
            for name in users:
                if normalize_username(name) == key:
                    return name
        raise UnknownUserError(f"no user {_shown_repr(username)} in {str(self._path)!r}")

    def _refuse_existing(self, users: Mapping[str, User], username: str) -> None:
        with contextlib.suppress(UnknownUserError):
            name = self._existing(users, username)
            raise UserExistsError(f"user {name!r} already exists in {str(self._path)!r}")

    def _update(self, users: dict[str, User], username: str, **changes: Any) -> str:
        name = self._existing(users, username)
        users[name] = replace(users[name], **changes)
        return name
