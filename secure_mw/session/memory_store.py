"""The default session store: this process's memory, bounded and expiring.

Records are kept as immutable :class:`~secure_mw.session.model.Session` objects (nothing is
at rest outside the process, so nothing is encrypted here). At most ``max_sessions`` are kept;
beyond that the least recently used one is dropped. Expired records are dropped when read and
in small batches on every write, so memory never holds more than the bound. Single-use claims
and revocation marks each expire at their own deadline (a heap orders them) and are bounded by
``max_sessions`` too: beyond it the claim closest to its end goes first, and a mark of the
user who holds the most marks (so one user's sign-outs only ever drop that user's own; the
first drop is logged). Claims can be released.

Such a store is only right for one process. :class:`SiblingWorkers` finds out, from the
requests themselves, whether other worker processes of the same server use one too: the
workers of one server share their parent process and the listening socket a request came
through, so each that holds such a socket registers its pid in a small file named for
(parent pid, listening address, cookie name) under a private directory and reads who else
there still serves on it (docs/sessions.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import logging
import os
import stat
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from secure_mw.session import _listeners
from secure_mw.session.model import Session

__all__ = ["CHECK_INTERVAL", "MemorySessionStore", "SiblingWorkers"]

log = logging.getLogger("secure_mw.session")

_SHARED: dict[str, MemorySessionStore] = {}
_SHARED_LOCK = threading.Lock()


class _Deadlines:
    """Keys that each live until their own deadline; not thread-safe (the store locks)."""

    __slots__ = ("_heap", "_limit", "_until")

    def __init__(self, limit: int) -> None:
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []   # may hold stale entries; rebuilt when big
        self._limit = limit

    def __len__(self) -> int:
        return len(self._until)

    def live(self, key: str, now: float) -> bool:
        deadline = self._until.get(key)
        return deadline is not None and deadline > now

    def add(self, key: str, deadline: float, now: float) -> None:
        self._until[key] = deadline
        heapq.heappush(self._heap, (deadline, key))
        self.sweep(now)

    def discard(self, key: str) -> None:
        self._until.pop(key, None)

    def sweep(self, now: float) -> None:
        heap, until = self._heap, self._until
        while heap and (heap[0][0] <= now or len(until) > self._limit):
            deadline, key = heapq.heappop(heap)
            if until.get(key) == deadline:
                del until[key]
        if len(heap) > 2 * len(until) + 64:    # released or re-added keys left stale entries
            self._heap = [(d, k) for k, d in until.items()]
            heapq.heapify(self._heap)


class _Marks:
    """Revocation marks, each until its own deadline, bounded; not thread-safe (the store
    locks). Beyond the bound the mark closest to its end *of the owner holding the most
    marks* is dropped: a user who signs out again and again evicts only their own marks,
    and another user's mark goes only once every owner is down to one."""

    __slots__ = ("_by_owner", "_count", "_expiry", "_largest", "_limit", "_until")

    def __init__(self, limit: int) -> None:
        self._until: dict[str, tuple[float, str]] = {}     # key -> (deadline, owner)
        self._count: dict[str, int] = {}                   # owner -> marks held
        # Heaps with stale entries (checked against _until/_count when popped, compacted
        # when they grow): every mark by deadline, each owner's by deadline, owners by count.
        self._expiry: list[tuple[float, str]] = []
        self._by_owner: dict[str, list[tuple[float, str]]] = {}
        self._largest: list[tuple[int, str]] = []
        self._limit = limit

    def __len__(self) -> int:
        return len(self._until)

    def live(self, key: str, now: float) -> bool:
        item = self._until.get(key)
        return item is not None and item[0] > now

    def add(self, key: str, deadline: float, owner: str, now: float) -> int:
        """Mark ``key`` until ``deadline``; returns how many other marks the bound dropped."""
        if key in self._until:
            self._drop(key)
        self._until[key] = (deadline, owner)
        heapq.heappush(self._expiry, (deadline, key))
        heapq.heappush(self._by_owner.setdefault(owner, []), (deadline, key))
        count = self._count[owner] = self._count.get(owner, 0) + 1
        heapq.heappush(self._largest, (-count, owner))
        return self._sweep(now)

    def _drop(self, key: str) -> None:
        _deadline, owner = self._until.pop(key)
        count = self._count[owner] - 1
        if count:
            self._count[owner] = count
            heapq.heappush(self._largest, (-count, owner))
            heap = self._by_owner[owner]
            if len(heap) > 2 * count + 8:      # mostly stale: keep what is still marked
                heap[:] = [(d, k) for d, k in heap if self._until.get(k) == (d, owner)]
                heapq.heapify(heap)
        else:
            del self._count[owner]
            del self._by_owner[owner]

    def _sweep(self, now: float) -> int:
        expiry, until = self._expiry, self._until
        while expiry and expiry[0][0] <= now:
            deadline, key = heapq.heappop(expiry)
            item = until.get(key)
            if item is not None and item[0] == deadline:
                self._drop(key)
        evicted = 0
        while len(until) > self._limit:
            self._evict_one()
            evicted += 1
        if len(expiry) > 2 * len(until) + 64:
            self._expiry = [(d, k) for k, (d, _owner) in until.items()]
            heapq.heapify(self._expiry)
        if len(self._largest) > 2 * len(self._count) + 64:
            self._largest = [(-c, o) for o, c in self._count.items()]
            heapq.heapify(self._largest)
        return evicted

    def _evict_one(self) -> None:
        largest = self._largest
        while self._count.get(largest[0][1]) != -largest[0][0]:    # entries of old counts
            heapq.heappop(largest)
        most, owner = -largest[0][0], largest[0][1]
        # That owner's mark closest to its end; when every owner holds one, the closest of all.
        heap = self._by_owner[owner] if most > 1 else self._expiry
        while True:
            deadline, key = heapq.heappop(heap)
            item = self._until.get(key)
            if item is not None and item[0] == deadline and (most == 1 or item[1] == owner):
                break
        self._drop(key)


class MemorySessionStore:
    holds_objects = True
    nonblocking = True   # never waits on I/O: called inline under ASGI

    def __init__(self, *, max_sessions: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        if max_sessions <= 0:
            raise ValueError("max_sessions must be positive")
        self.max_sessions = max_sessions
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, Session]] = OrderedDict()
        self._once = _Deadlines(max_sessions)       # claimed single-use tokens
        self._revoked = _Marks(max_sessions)        # ended sessions (the cookie store)
        self._marks_dropped = 0
        # Back-channel logout: index name (a provider session, a subject) -> session ids;
        # and, for the cookie store, index name -> (mark deadline, when its sessions ended).
        self._index: dict[str, set[str]] = {}
        self._ended: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, name: str, *, max_sessions: int = 100_000) -> MemorySessionStore:
        """The process-wide store for cookie ``name``: every middleware (and
        :func:`secure_mw.testing.session_cookie`) in this process that uses the memory store
        with that cookie name sees the same sessions."""
        with _SHARED_LOCK:
            store = _SHARED.get(name)
            if store is None:
                store = _SHARED[name] = cls(max_sessions=max_sessions)
            return store

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"MemorySessionStore(max_sessions={self.max_sessions})"

    def load(self, session_id: str) -> Session | None:
        with self._lock:
            item = self._items.get(session_id)
            if item is None:
                return None
            if item[0] <= self._clock():
                del self._items[session_id]
                return None
            self._items.move_to_end(session_id)
            return item[1]

    def save(self, session_id: str, session: Session, ttl: float, *,
             only_if_exists: bool = False) -> bool:
        """Keep ``session`` for ``ttl`` seconds; with ``only_if_exists`` a record deleted
        meanwhile (a logout racing this request) stays deleted. Returns whether it was kept."""
        with self._lock:
            if ttl <= 0:
                self._items.pop(session_id, None)
                return False
            now = self._clock()
            if only_if_exists:
                current = self._items.get(session_id)
                if current is None or current[0] <= now:
                    return False
            self._items[session_id] = (now + ttl, session)
            self._items.move_to_end(session_id)
            self._sweep(now)
            return True

    indexes = True   # save(index=...) and end_indexed: back-channel logout

    def save_indexed(self, session_id: str, session: Session, ttl: float,
                     index: Collection[str], keep: float = 0.0) -> bool:
        """:meth:`save` of a new record, listed under each name of ``index`` (its provider
        session, its subject) for :meth:`end_indexed` while it lives (``keep`` is for the
        shared stores, whose lists outlive their records)."""
        with self._lock:
            if ttl <= 0:
                return False
            now = self._clock()
            self._items[session_id] = (now + ttl, session)
            self._items.move_to_end(session_id)
            self._sweep(now)
            for name in index:
                members = self._index.setdefault(name, set())
                members.intersection_update(self._items)    # ended ones leave the index
                members.add(session_id)
            if len(self._index) > 2 * self.max_sessions + 64:
                self._index = {n: m for n, m in self._index.items()
                               if not m.isdisjoint(self._items)}
            return True

    def end_indexed(self, name: str) -> int:
        """Delete every record listed under ``name``; how many there were."""
        with self._lock:
            members = self._index.pop(name, set())
            return sum(self._items.pop(i, None) is not None for i in members)

    def mark_ended(self, name: str, at: float, ttl: float) -> None:
        """Remember for ``ttl`` seconds that every session of ``name`` created up to ``at``
        has ended (the cookie store, whose records the clients hold)."""
        with self._lock:
            now = self._clock()
            old = self._ended.pop(name, None)
            at = max(at, old[1]) if old is not None else at
            self._ended[name] = (max(now + ttl, old[0] if old else 0.0), at)
            while len(self._ended) > self.max_sessions or (
                    self._ended and next(iter(self._ended.values()))[0] <= now):
                self._ended.popitem(last=False)

    def is_ended(self, key: str, names: Collection[str], created: float) -> bool:
        """:meth:`is_revoked` of ``key``, or a :meth:`mark_ended` of one of ``names`` made
        at or after ``created``: one look-up for the cookie store's every request."""
        now = self._clock()
        if self._revoked.live(key, now):
            return True
        ended = self._ended
        for name in names:
            item = ended.get(name)
            if item is not None and item[0] > now and created <= item[1]:
                return True
        return False

    async def asave_indexed(self, session_id: str, session: Session, ttl: float,
                            index: Collection[str], keep: float = 0.0) -> bool:
        return self.save_indexed(session_id, session, ttl, index, keep)

    async def aend_indexed(self, name: str) -> int:
        return self.end_indexed(name)

    async def amark_ended(self, name: str, at: float, ttl: float) -> None:
        self.mark_ended(name, at, ttl)

    async def ais_ended(self, key: str, names: Collection[str], created: float) -> bool:
        return self.is_ended(key, names, created)

    def claim_once(self, token: str, ttl: float) -> bool:
        """True the first time ``token`` is claimed within ``ttl`` seconds (in this process),
        or after the claim was released."""
        with self._lock:
            now = self._clock()
            if self._once.live(token, now):
                return False
            self._once.add(token, now + ttl, now)
            return True

    def release(self, token: str) -> None:
        """Give up a claim (the next :meth:`claim_once` of ``token`` succeeds)."""
        with self._lock:
            self._once.discard(token)

    def revoke(self, key: str, ttl: float, *, owner: str = "") -> None:
        """Remember for ``ttl`` seconds that the session ``key`` names (of the user
        ``owner``) has ended. Beyond ``max_sessions`` marks, one of the user holding the
        most is dropped; the first drop is logged as a warning."""
        with self._lock:
            now = self._clock()
            dropped = 0
            if ttl > 0 and not self._revoked.live(key, now + ttl):
                dropped = self._revoked.add(key, now + ttl, owner, now)
            first = dropped and not self._marks_dropped
            self._marks_dropped += dropped
        if first:
            log.warning(
                "more ended sessions than session.memory_max_sessions (%d) are remembered in "
                "this process: the sign-out of the user with the most was forgotten, so a "
                "copy of that cookie is accepted again until it expires; set "
                "sqlite.path or session.redis_url to keep them in a shared store (this is "
                "logged once)",
                self.max_sessions)

    @property
    def marks_dropped(self) -> int:
        """How many revocation marks the bound has dropped so far."""
        return self._marks_dropped

    def is_revoked(self, key: str) -> bool:
        # One dict look-up, atomic by itself: no lock on the path of every cookie-store read.
        return self._revoked.live(key, self._clock())

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._items.pop(session_id, None)

    def _sweep(self, now: float) -> None:
        items = self._items
        while len(items) > self.max_sessions:
            items.popitem(last=False)
        # Drop a few expired records from the cold end: amortized O(1) per write.
        for _ in range(4):
            if not items:
                break
            key, (deadline, _session) = next(iter(items.items()))
            if deadline > now:
                break
            del items[key]

    async def aload(self, session_id: str) -> Session | None:
        return self.load(session_id)

    async def asave(self, session_id: str, session: Session, ttl: float, *,
                    only_if_exists: bool = False) -> bool:
        return self.save(session_id, session, ttl, only_if_exists=only_if_exists)

    async def aclaim_once(self, token: str, ttl: float) -> bool:
        return self.claim_once(token, ttl)

    async def arelease(self, token: str) -> None:
        self.release(token)

    async def arevoke(self, key: str, ttl: float, *, owner: str = "") -> None:
        self.revoke(key, ttl, owner=owner)

    async def ais_revoked(self, key: str) -> bool:
        return self.is_revoked(key)

    async def adelete(self, session_id: str) -> None:
        self.delete(session_id)


# -- several worker processes on one memory store ------------------------------------------

#: How often (seconds) a worker looks again for siblings after its first request.
CHECK_INTERVAL = 5.0
_MAX_PIDS = 1024
# A tmpfs that read-only containers keep writable; held to the same rules as <tmp>.
_SHARED_MEMORY = Path("/dev/shm")  # noqa: S108
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def registry_directory() -> Path | None:
    """A directory only this user can use: ``$XDG_RUNTIME_DIR/secure-mw``, else
    ``<tmp>/secure-mw-<uid>``, else (Linux) ``/dev/shm/secure-mw-<uid>``, made 0700; None
    when none is safe to use. Never raises: a candidate that exists but is not this user's
    private directory (a symbolic link, another owner, open to others) is skipped with a
    warning naming it, and when none is usable a warning says what is not checked."""
    if not hasattr(os, "getuid"):
        return None
    uid = os.getuid()
    candidates = []
    problems = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        candidates.append(Path(runtime) / "secure-mw")
    try:
        candidates.append(Path(tempfile.gettempdir()) / f"secure-mw-{uid}")
    except (OSError, RuntimeError) as exc:    # no writable temporary directory at all
        problems.append(f"no temporary directory ({getattr(exc, 'strerror', None) or exc})")
    if sys.platform.startswith("linux") and _SHARED_MEMORY.is_dir():
        candidates.append(_SHARED_MEMORY / f"secure-mw-{uid}")
    for directory in candidates:
        problem = _private_directory(directory, uid)
        if problem is None:
            return directory
        problems.append(f"{directory}: {problem}")
    _warn_once("cannot check whether several worker processes use the in-memory session "
               f"store: no private directory for its registry ({'; '.join(problems)}); set "
               "XDG_RUNTIME_DIR to a directory only this user can write")
    return None


def _private_directory(directory: Path, uid: int) -> str | None:
    """None when ``directory`` is (or was just made) a directory of ``uid`` that nobody else
    can use, else what is wrong; one that is there but is not ours is also logged, once."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot be made ({exc.strerror})"
    try:
        info = os.lstat(directory)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid != uid:
        problem = f"is owned by uid {info.st_uid}, not {uid}"
    elif info.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(info.st_mode):04o}, not 0700"
    else:
        return None
    _warn_once(f"{directory} {problem}: not used for the registry of worker processes "
               "(someone else may have made it; remove it, or set XDG_RUNTIME_DIR)")
    return problem


def _process_state(pid: int) -> tuple[bool, int | None]:
    """(alive and not a zombie, its parent pid when the system says)."""
    if pid <= 0:
        return False, None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:     # exists, but another user's: not one of our workers
        return False, None
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True, None       # no /proc (macOS): alive is all we know
    fields = text.rpartition(")")[2].split()
    if len(fields) < 2 or fields[0] in ("Z", "X"):
        return False, None
    try:
        return True, int(fields[1])
    except ValueError:
        return True, None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)            # closing releases the lock


#: The 503 detail of several workers on the default memory store.
REFUSAL = (
    "several worker processes of this server use the in-memory session store (the "
    "default), which keeps sessions in one process only: a login made in one worker is "
    "unknown to the others. The simplest fix on one host: session.store = \"sqlite\" with "
    "sqlite.path (a file every worker shares) and keys.encryption_keys; across hosts, "
    "session.store = \"redis\" with session.redis_url; or run one worker process")


@dataclass(slots=True)
class _Entry:
    """One worker in a registry file: ``pid first last inode fd poller``. ``first`` and
    ``last`` are the file's counter at its first and latest registration; ``inode`` and
    ``fd`` name the listening socket it held and ``poller`` the epoll instance that polled it
    (``-``: not known)."""

    pid: int
    first: int
    last: int
    inode: int | None
    fd: int | None
    poller: int | None

    @classmethod
    def parse(cls, line: str) -> _Entry | None:
        fields = line.split()
        if len(fields) != 6 or not all(f.isdigit() for f in fields[:3]):
            return None
        inode, fd, poller = (int(f) if f.isdigit() else None for f in fields[3:])
        return cls(int(fields[0]), int(fields[1]), int(fields[2]), inode, fd, poller)

    def line(self) -> str:
        return " ".join("-" if v is None else str(v) for v in
                        (self.pid, self.first, self.last, self.inode, self.fd,
                         self.poller)) + "\n"

    def serves(self) -> bool:
        """Whether the process still holds its listening socket and, if it polled it when
        it registered, still polls it (what cannot be read counts as yes)."""
        if self.inode is None:
            return True
        if _listeners.holds(self.pid, self.inode, self.fd) is False:
            return False
        return self.poller is None or \
            _listeners.poller(self.pid, self.inode, self.poller) is not None


class SiblingWorkers:
    """Whether other live worker processes of this server use a memory store for the same
    cookie. :meth:`check` is called with each request's listening address (its port, or a
    socket path); it registers this process at the first request and looks again at most
    every ``interval`` seconds (``clock``), so a request costs one clock read.

    Only a process that listens on the address a request names is checked (an in-process
    test client names a port nobody listens on). Its siblings are the processes of the same
    parent registered for that address that still hold their listening socket (the one they
    inherited, or one sharing the port), still poll it for connections when they did (Linux:
    a worker finishing its last requests after a graceful reload has stopped), and have
    registered again since this one first did (an old worker that takes no new requests is
    not counted).

    ``explicit``: the memory store was chosen on purpose (``session.store = "memory"``, or
    a store object given in code): siblings then cost one warning. Otherwise (the default)
    :meth:`check` returns the message to refuse requests with, and logs it once as an error.
    Without a private registry directory (or ``fcntl``) nothing is checked. :meth:`check`
    never raises.
    """

    def __init__(self, cookie_name: str, *, explicit: bool, directory: Path | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 interval: float | None = None) -> None:
        self.cookie_name = cookie_name
        self.explicit = explicit
        self._directory = directory
        self._clock = clock
        self._interval = interval
        self._next = float("-inf")
        self._refusal: str | None = None
        self._logged: set[str] = set()
        self._lock = threading.Lock()
        self._listeners: dict[str, _listeners.Listener] = {}   # found, by address
        # listener inode -> the epoll instance of this process that polled it when first
        # looked at (None: none did, e.g. a sync worker); looked for once per listener.
        self._pollers: dict[int, int | None] = {}
        self.siblings: tuple[int, ...] = ()

    def check(self, server: str | Callable[[], str]) -> str | None:
        """None to go on, or why this server must not serve (the default store only).
        ``server`` is the request's listening address, or what reads it
        (:meth:`~secure_mw.http.RequestView.listening`: called only when this looks again)."""
        if isinstance(server, str) and not server:
            return None
        if self._clock() < self._next or not self._lock.acquire(blocking=False):
            return self._refusal
        try:
            if not isinstance(server, str):
                server = server()
                if not server:
                    return None
            interval = CHECK_INTERVAL if self._interval is None else self._interval
            self._next = self._clock() + interval
            try:
                siblings = self._look(server)
            except Exception as exc:    # a check that cannot be made never fails a request
                self._once(f"cannot check for other worker processes ({exc!r}); the last "
                           "answer stands", logging.WARNING)
                return self._refusal
            self.siblings = siblings
            if not siblings:
                self._refusal = None
                return None
            pids = ", ".join(str(p) for p in sorted({os.getpid(), *siblings}))
            where = f"port {server}" if server.isdigit() else f"socket {server!r}"
            if self.explicit:
                self._once(
                    f"session.store = \"memory\" while several worker processes of this "
                    f"server (pids {pids}, {where}) serve: each keeps its own sessions, so a "
                    "user is signed out whenever a request reaches another worker; use "
                    "session.store = \"sqlite\" (one host) or \"redis\", or run one "
                    "worker", logging.WARNING)
                return None
            self._refusal = REFUSAL
            self._once(f"refusing requests: {self._refusal} (pids {pids}, {where}; set "
                       "session.store = \"memory\" explicitly to accept this)", logging.ERROR)
            return self._refusal
        finally:
            self._lock.release()

    def _once(self, message: str, level: int) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.log(level, message)

    def _look(self, server: str) -> tuple[int, ...]:
        """This process's siblings for requests to ``server`` (registering it), or () when
        it is not to be checked: no listening socket of its own for ``server``, or one it
        no longer polls (it is shutting down)."""
        if sys.platform == "win32":
            return ()
        listener = _listeners.find_listener(server, hint=self._listeners.get(server))
        if listener is None:
            self._listeners.pop(server, None)
            return ()
        if len(self._listeners) >= 16:
            self._listeners.clear()
        self._listeners[server] = listener
        poller = None
        if listener.inode is not None:
            if listener.inode not in self._pollers:
                if len(self._pollers) >= 16:
                    self._pollers.clear()
                found = _listeners.poller("self", listener.inode)
                self._pollers[listener.inode] = found if found is not None and found >= 0 \
                    else None
            poller = self._pollers[listener.inode]
        directory = self._directory or registry_directory()
        if directory is None:
            return ()
        siblings = self._register(directory, server, listener, poller)
        # Only worth a look when it matters (the epoll fdinfo lists every connection): a
        # worker that no longer polls its listener is shutting down, and is nobody's sibling.
        if siblings and poller is not None and listener.inode is not None \
                and _listeners.poller("self", listener.inode, poller) is None:
            return ()
        return siblings

    def _register(self, directory: Path, server: str, listener: _listeners.Listener,
                  poller: int | None) -> tuple[int, ...]:
        """Put this process in the registry of (parent, listening address, cookie); the live
        siblings there (see the class)."""
        _prune_once(directory)
        me, parent = os.getpid(), os.getppid()
        tag = hashlib.sha256(f"{server}\x00{self.cookie_name}".encode()).hexdigest()[:16]
        path = directory / f"memory-store-{parent}-{tag}"
        try:
            with _locked(path) as fd:
                lines = os.pread(fd, 64 * 1024, 0).decode("ascii", "replace").splitlines()
                counter = int(lines[0][1:]) if lines and lines[0][1:].isdigit() else 0
                counter += 1
                entries = {e.pid: e for e in map(_Entry.parse, lines[1:]) if e is not None}
                mine = entries.pop(me, None)
                first = mine.first if mine is not None and mine.first < counter else counter
                kept, siblings = [], []
                for entry in sorted(entries.values(), key=lambda e: e.pid)[:_MAX_PIDS]:
                    running, ppid = _process_state(entry.pid)
                    if not running or ppid not in (None, parent):
                        continue
                    kept.append(entry)
                    if entry.last > first and entry.serves():
                        siblings.append(entry.pid)
                kept.append(_Entry(me, first, counter, listener.inode, listener.fd, poller))
                data = f"#{counter}\n{''.join(e.line() for e in kept)}".encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
        except OSError as exc:
            self._once(f"cannot check whether several worker processes use the in-memory "
                       f"session store: {path}: {exc.strerror}", logging.WARNING)
            return ()
        return tuple(siblings)


_pruned: set[Path] = set()


def _prune_once(directory: Path) -> None:
    """Remove (once per process) the registries of parents that are gone."""
    if directory in _pruned:
        return
    _pruned.add(directory)
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            name = entry.name
            if not name.startswith("memory-store-"):
                continue
            parent = name[len("memory-store-"):].partition("-")[0]
            if parent.isdigit() and not _process_state(int(parent))[0]:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
