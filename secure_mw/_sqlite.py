"""What every SQLite-backed store shares: one database file that every worker process of a
host opens, with the standard library's :mod:`sqlite3`.

:class:`Database` opens the file 0600 (its ``-wal`` and ``-shm`` files take the same mode)
in a private directory, in WAL mode with a short ``busy_timeout``, and keeps one connection
per thread and process: a connection opened before a fork is never used (nor closed) by the
child. Reads are single statements in autocommit mode; a read-modify-write (a counter, a
ban) runs in ``BEGIN IMMEDIATE``, so it is atomic across processes. Expired rows are
deleted in bounded batches (:data:`PURGE_BATCH` rows a table, through the expiry index) at
most every :data:`PURGE_INTERVAL` seconds per process, after a write: never a full scan on
a request. Every failure — locked past the timeout, read-only, corrupt, missing — raises
:class:`~secure_mw.errors.StoreUnavailable` naming only the file (the caller fails closed
with 503). Layout and rationale: docs/stores.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from secure_mw.errors import ConfigError, ConfigProblem, StoreUnavailable

if TYPE_CHECKING:
    from secure_mw.settings import SqliteSettings

__all__ = ["PURGE_BATCH", "PURGE_INTERVAL", "Database", "database", "database_from_settings",
           "ttl_seconds"]

_log = logging.getLogger("secure_mw.sqlite")

#: Rows of each table deleted by one purge, at most.
PURGE_BATCH: Final = 256
#: Seconds between two purges in one process.
PURGE_INTERVAL: Final = 1.0
#: The schema's version (``PRAGMA user_version``); 2 added the back-channel logout tables.
SCHEMA_VERSION: Final = 2
#: Tables with an ``expires`` column (seconds since the epoch) and an index on it.
TABLES: Final = ("sessions", "marks", "ratelimit", "regulation", "session_index", "ended")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires);
CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS marks_expires ON marks (expires);
CREATE TABLE IF NOT EXISTS ratelimit (
    key TEXT PRIMARY KEY, tats TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ratelimit_expires ON ratelimit (expires);
CREATE TABLE IF NOT EXISTS regulation (
    key TEXT PRIMARY KEY, state TEXT NOT NULL, ban REAL NOT NULL, label TEXT NOT NULL,
    expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS regulation_expires ON regulation (expires);
CREATE TABLE IF NOT EXISTS session_index (
    key TEXT NOT NULL, session TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (key, session)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS session_index_expires ON session_index (expires);
CREATE TABLE IF NOT EXISTS ended (
    key TEXT PRIMARY KEY, at REAL NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ended_expires ON ended (expires);
"""

#: Errors that mean "the database cannot answer".
ERRORS: Final = (sqlite3.Error, OSError)
#: SQLITE_BUSY and SQLITE_LOCKED: another connection holds the lock.
_BUSY_CODES: Final = (5, 6)

_T = TypeVar("_T")


class _Busy(StoreUnavailable):
    """An attempt without waiting found the lock taken (then made again in a thread)."""

# Connections of a parent process found in a forked child: kept referenced so that they are
# never closed (or finalized) by the child, which does not own their locks.
_inherited: list[sqlite3.Connection] = []


def ttl_seconds(ttl: float) -> float | None:
    """A TTL as a float of seconds; None when ``ttl <= 0``."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError("ttl must be a number of seconds")
    if not math.isfinite(ttl):
        raise ValueError("ttl must be finite")
    return float(ttl) if ttl > 0 else None


def _directory_problem(directory: Path) -> str | None:
    """None when ``directory`` is (or was just made, 0700) a directory of this user that
    nobody else may write, else what is wrong."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"its directory {str(directory)!r} cannot be made ({exc.strerror})"
    try:
        info = os.stat(directory)
    except OSError as exc:
        return f"its directory {str(directory)!r} cannot be read ({exc.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return f"{str(directory)!r} is not a directory"
    if hasattr(os, "getuid") and info.st_uid not in (os.getuid(), 0):
        return f"its directory {str(directory)!r} is owned by uid {info.st_uid}"
    if info.st_mode & 0o022:        # even sticky (/tmp): others could plant its -wal file
        return (f"its directory {str(directory)!r} has mode {stat.S_IMODE(info.st_mode):04o}: "
                "others could replace the database or plant its journal (chmod 700)")
    return None


def _file_problem(path: Path) -> str | None:
    """Create ``path`` 0600 when missing; None when it is a regular file of this user that
    nobody else can read or write, else what is wrong."""
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(f"{path}{suffix}")
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            if suffix:
                continue
            try:
                fd = os.open(candidate, os.O_RDWR | os.O_CREAT | os.O_EXCL
                             | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                             0o600)
            except FileExistsError:     # another worker made it meanwhile
                info = os.lstat(candidate)
            except OSError as exc:
                return f"{str(candidate)!r} cannot be created ({exc.strerror})"
            else:
                os.close(fd)
                continue
        except OSError as exc:
            return f"{str(candidate)!r} cannot be read ({exc.strerror})"
        if stat.S_ISLNK(info.st_mode):
            return f"{str(candidate)!r} is a symbolic link"
        if not stat.S_ISREG(info.st_mode):
            return f"{str(candidate)!r} is not a regular file"
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            return f"{str(candidate)!r} is owned by uid {info.st_uid}, not {os.getuid()}"
        if info.st_mode & 0o077:
            return (f"{str(candidate)!r} has mode {stat.S_IMODE(info.st_mode):04o}: sessions "
                    f"and counters must not be open to group or others (chmod 600)")
    return None


def _set_up(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """WAL mode and the current schema on ``conn``'s file (already so: nothing changes).
    The switch to WAL is retried while another connection holds the file, for the busy
    timeout (at least a second): SQLite answers it with "locked" at once."""
    deadline = time.monotonic() + max(busy_timeout, 1.0)
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            break
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _BUSY_CODES \
                    or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
    if not mode or str(mode[0]).lower() != "wal":
        raise sqlite3.OperationalError("WAL mode refused")
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            # every statement is IF NOT EXISTS: a version-1 file gains the new tables.
            # One statement at a time: executescript() would COMMIT first
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} is not {SCHEMA_VERSION}")


class Database:
    """One SQLite file shared by the processes of a host; see the module docstring.

    ``busy_timeout``: seconds a statement waits for another process's write lock before the
    store counts as unavailable. ``clock``: the time expiries are compared with (Unix time,
    the same in every process of the host)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        if not (isinstance(busy_timeout, int | float) and not isinstance(busy_timeout, bool)
                and 0 < busy_timeout <= 60):
            raise ValueError("busy_timeout must be a number of seconds in (0, 60]")
        self.path = Path(os.path.abspath(path))
        self.busy_timeout = float(busy_timeout)
        self.clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._next_purge = 0.0
        self._label = str(self.path)

    def __repr__(self) -> str:
        return f"Database({self._label!r})"

    # -- opening ----------------------------------------------------------------------------

    def check(self) -> None:
        """Open the file now (creating it and its schema): a :class:`ConfigError` naming
        ``sqlite.path`` when it cannot be used."""
        problem = _directory_problem(self.path.parent) or _file_problem(self.path)
        if problem is None:
            try:
                self._connection()
            except StoreUnavailable:
                problem = self._last_problem
        if problem is not None:
            raise ConfigError([ConfigProblem("sqlite.path",
                                             f"the database {problem}")])

    _last_problem = "cannot be opened"

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        problem = _directory_problem(self.path.parent) or _file_problem(self.path)
        if problem is not None:
            self._last_problem = problem
            _log.error("sqlite store %s unusable: %s", self._label, problem)
            raise StoreUnavailable(f"sqlite store unavailable: {self._label}")
        conn = None
        try:
            conn = sqlite3.connect(self.path, timeout=busy_timeout,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode").fetchone()
            if not mode or str(mode[0]).lower() != "wal" or \
                    conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                with self._setting_up():
                    _set_up(conn, busy_timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
        except ERRORS as exc:
            if conn is not None:
                with contextlib.suppress(*ERRORS):
                    conn.close()
            self._last_problem = f"{str(self.path)!r} cannot be used ({exc})"
            raise self.unavailable(exc) from exc
        return conn

    @contextlib.contextmanager
    def _setting_up(self) -> Iterator[None]:
        """One process at a time turns a new (or older) file into WAL mode with the
        schema: ``flock`` on ``<file>.lock`` (0600, left in place) beside it. Without it,
        workers started together raced for the switch to WAL, which SQLite refuses at once
        as locked, without waiting the busy timeout (6 processes on a new file: 5 of 120
        failed to start)."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT
                     | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)    # closing the descriptor releases the lock

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection; while :meth:`call` tries without waiting, the one
        with no busy timeout. One opened by a parent before a fork is never used."""
        local = self._local
        name = "nowait" if getattr(local, "trying", False) else "conn"
        conn: sqlite3.Connection | None = getattr(local, name, None)
        pid = os.getpid()
        if conn is not None and getattr(local, f"{name}_pid", None) == pid:
            return conn
        if conn is not None:            # opened before a fork: the parent's
            _inherited.append(conn)
        setattr(local, name, None)
        conn = self._open(0.0 if name == "nowait" else self.busy_timeout)
        setattr(local, name, conn)
        setattr(local, f"{name}_pid", pid)
        return conn

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        if getattr(self._local, "trying", False) and \
                getattr(exc, "sqlite_errorcode", None) in _BUSY_CODES:
            return _Busy(f"sqlite store busy: {self._label}")
        _log.warning("sqlite store %s: %s: %s", self._label, type(exc).__name__, exc)
        return StoreUnavailable(f"sqlite store unavailable: {self._label}")

    async def call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)`` for asyncio: first inline without waiting for a lock
        (microseconds on a local disk); when another process holds the lock, again in a
        worker thread that waits up to ``busy_timeout`` — the event loop never waits on
        another process. A busy attempt changed nothing (the lock comes first)."""
        local = self._local
        local.trying = True
        try:
            return fn(*args, **kwargs)
        except _Busy:
            pass
        finally:
            local.trying = False
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- statements -------------------------------------------------------------------------

    def read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one statement (autocommit: no lock held after it)."""
        try:
            return self._connection().execute(sql, args).fetchall()
        except ERRORS as exc:
            raise self.unavailable(exc) from exc

    def write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run one writing statement (atomic by itself); the number of rows it changed."""
        try:
            changed = self._connection().execute(sql, args).rowcount
        except ERRORS as exc:
            raise self.unavailable(exc) from exc
        self._maybe_purge()
        return changed

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: the write lock is taken first, so what is read
        inside is not changed by another process before the commit (ROLLBACK on error)."""
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except ERRORS as exc:
            raise self.unavailable(exc) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except ERRORS as exc:
            with contextlib.suppress(*ERRORS):
                conn.execute("ROLLBACK")
            raise self.unavailable(exc) from exc
        except BaseException:
            with contextlib.suppress(*ERRORS):
                conn.execute("ROLLBACK")
            raise
        self._maybe_purge()

    # -- purging ----------------------------------------------------------------------------

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now < self._next_purge or not self._lock.acquire(blocking=False):
            return
        try:
            self._next_purge = now + PURGE_INTERVAL
            self.purge()
        except StoreUnavailable:
            pass                      # logged; the next interval tries again
        finally:
            self._lock.release()

    def purge(self, batch: int = PURGE_BATCH) -> int:
        """Delete at most ``batch`` expired rows of each table (oldest expiry first, by the
        index); the number deleted."""
        now = self.clock()
        deleted = 0
        try:
            conn = self._connection()
            for table in TABLES:
                deleted += conn.execute(
                    f"DELETE FROM {table} WHERE key IN (SELECT key FROM {table} "  # noqa: S608
                    "WHERE expires <= ? ORDER BY expires LIMIT ?)", (now, batch)).rowcount
        except ERRORS as exc:
            raise self.unavailable(exc) from exc
        return deleted

    def close(self) -> None:
        """Close this thread's connections (they reopen when used again)."""
        for name in ("conn", "nowait"):
            conn = getattr(self._local, name, None)
            if conn is not None and getattr(self._local, f"{name}_pid", None) == os.getpid():
                with contextlib.suppress(*ERRORS):
                    conn.close()
            setattr(self._local, name, None)


_SHARED: dict[tuple[str, float], Database] = {}
_SHARED_LOCK = threading.Lock()


def database(path: str | os.PathLike[str], *, busy_timeout: float = 0.5) -> Database:
    """The process-wide :class:`Database` of ``path``, checked (ConfigError) on first use:
    every store of the application (sessions, limits, regulation, TOTP codes) shares it."""
    key = (os.path.abspath(path), float(busy_timeout))
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            found = Database(path, busy_timeout=busy_timeout)
            found.check()
            _SHARED[key] = found
        return found


def database_from_settings(settings: SqliteSettings) -> Database:
    """The shared :class:`Database` of ``[sqlite]`` (``path`` must be set)."""
    if not settings.path:
        raise ConfigError([ConfigProblem("sqlite.path", "required for a sqlite store")])
    return database(settings.path, busy_timeout=settings.busy_timeout)
