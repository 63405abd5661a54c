"""Session lifecycle: read the cookie, find the record, enforce its lifetime, write it back.

The cookie holds either the session id (memory and Redis stores) or the whole encrypted
record (cookie store). Reading never raises for a bad cookie — it reports why there is no
session — and raises :class:`~secure_mw.errors.StoreUnavailable` only when the store cannot be
reached (the caller fails closed). A destroyed session stays ended: server-side its record is
deleted; with the cookie store, whose record the client keeps, it is marked revoked until it
would have expired (in this process's memory, or in Redis when ``session.redis_url`` is set).
"""

from __future__ import annotations

import hmac
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from secure_mw._driver import Flow, Op
from secure_mw._encoding import StrictJSONError, loads_strict
from secure_mw.crypto import KeyRing
from secure_mw.errors import DecryptError, SecureMWError, SessionTooLarge
from secure_mw.http import Reply, RequestView, html_reply, json_reply
from secure_mw.session.cookies import (
    CookieJarSpec,
    chunk_name,
    chunk_names,
    chunk_names_present,
    join_chunks,
    split_chunks,
)
from secure_mw.session.memory_store import MemorySessionStore, SiblingWorkers
from secure_mw.session.model import Session, new_session_id
from secure_mw.settings import SessionSettings, SqliteSettings

__all__ = ["RecordUnreadable", "SessionManager", "SessionRead", "SessionStore", "index_name",
           "index_names"]

_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")
# A revocation outlives the session's own end by this much (clocks of processes differ).
REVOCATION_MARGIN = 60.0


def index_name(kind: str, client_id: str, value: str) -> str:
    """The index under which sessions of one provider session (``kind="sid"``) or subject
    (``"sub"``) of OpenID client ``client_id`` are listed; stores hash it."""
    return f"{kind}\x00{client_id}\x00{value}"


def index_names(session: Session) -> tuple[str, ...]:
    """The indexes an OpenID session is listed under: its provider session (``sid`` of its
    id_token, when there was one) and its subject."""
    if session.source != "oidc":
        return ()
    tokens = session.tokens
    client_id = str(tokens.get("cid", ""))
    sid = tokens.get("ps")
    if isinstance(sid, str) and sid:
        return index_name("sid", client_id, sid), index_name("sub", client_id, session.sub)
    # No provider session to end it by: a logout token naming a sid of this subject ends
    # it too ("nosid"), rather than nothing.
    return (index_name("sub", client_id, session.sub),
            index_name("nosid", client_id, session.sub))


class SessionStore(Protocol):
    """A server-side store (memory or Redis); see the two implementations."""

    def load(self, session_id: str) -> Any: ...
    def save(self, session_id: str, value: Any, ttl: float, *,
             only_if_exists: bool = False) -> bool: ...
    def delete(self, session_id: str) -> None: ...
    def claim_once(self, token: str, ttl: float) -> bool: ...
    def release(self, token: str) -> None: ...
    async def aload(self, session_id: str) -> Any: ...
    async def asave(self, session_id: str, value: Any, ttl: float, *,
                    only_if_exists: bool = False) -> bool: ...
    async def adelete(self, session_id: str) -> None: ...
    async def aclaim_once(self, token: str, ttl: float) -> bool: ...
    async def arelease(self, token: str) -> None: ...


class MarkStore(SessionStore, Protocol):
    """Where the cookie store remembers ended sessions (the memory or the Redis store)."""

    def revoke(self, key: str, ttl: float, *, owner: str = "") -> None: ...
    def is_revoked(self, key: str) -> bool: ...
    async def arevoke(self, key: str, ttl: float, *, owner: str = "") -> None: ...
    async def ais_revoked(self, key: str) -> bool: ...


@dataclass(slots=True)
class SessionRead:
    """The outcome of reading a request's session cookie."""

    session: Session | None
    problem: str | None = None        # why a cookie the client sent gave no session
    suspicious: bool = False          # the cookie was malformed or forged (worth an audit line)
    sent: list[str] = field(default_factory=list)   # our cookie names the client sent


class RecordUnreadable(SecureMWError, ValueError):
    """A server-side record that does not decrypt or parse, or names another session: the
    store's problem (a key removed from the ring, another application on the same prefix),
    never the client's, who only holds a random id and cannot have forged the record."""


class _LRU:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[str | bytes, Session] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str | bytes) -> Session | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str | bytes, value: Session) -> None:
        with self._lock:
            self._items[key] = value
            if len(self._items) > self._size:
                self._items.popitem(last=False)


class SessionManager:
    """Creates, reads, refreshes and destroys sessions for one application."""

    def __init__(self, settings: SessionSettings, *, keyring: KeyRing,
                 store: SessionStore | None = None, clock: Callable[[], float] = time.time,
                 secure: bool = True,
                 on_refused: Callable[[RequestView, str], None] | None = None,
                 on_unreadable: Callable[[RequestView, str], None] | None = None,
                 sqlite: SqliteSettings | None = None) -> None:
        """``sqlite``: the ``[sqlite]`` section, for ``session.store = "sqlite"`` (and, with
        the cookie store and no Redis URL, where its sign-outs are kept)."""
        self.settings = settings
        self.keyring = keyring
        self.clock = clock
        self.cookie_mode = settings.store == "cookie"
        chosen = store is not None or settings.store_explicit
        # Called for a cookie that was refused as malformed or forged (an audit line).
        self.on_refused = on_refused
        # Called for a server-side record that cannot be read (see RecordUnreadable).
        self.on_unreadable = on_unreadable
        if store is None and not self.cookie_mode:
            if settings.store == "redis":
                from secure_mw.session.redis_store import RedisSessionStore

                store = RedisSessionStore.from_settings(settings, keyring)
            elif settings.store == "sqlite":
                store = _sqlite_store(sqlite, keyring)
            elif clock is time.time:
                store = MemorySessionStore.shared(settings.cookie_name,
                                                  max_sessions=settings.memory_max_sessions)
            else:   # an injected clock (tests): a store of its own that uses it
                store = MemorySessionStore(max_sessions=settings.memory_max_sessions,
                                           clock=clock)
        self.store = store
        # A store of this process only: find out whether sibling workers use one too.
        self.workers = SiblingWorkers(settings.cookie_name, explicit=chosen) \
            if isinstance(store, MemorySessionStore) else None
        self._objects = bool(getattr(store, "holds_objects", False))
        # Records already decoded, by their exact authenticated form (the cookie value, or
        # the plaintext a bytes store decrypted); lifetimes are still checked every time.
        self._decoded = _LRU(4096)
        # Where single-use tokens (a login's state) and refresh claims are remembered: the
        # session store; with the cookie store, Redis when a URL is set, else this process's
        # memory. With the cookie store the same place remembers ended sessions.
        marks: MarkStore | None = None
        if store is not None:
            self._once: SessionStore = store
        elif settings.redis_url:
            from secure_mw.session.redis_store import RedisSessionStore

            marks = RedisSessionStore.from_settings(settings, keyring)
            self._once = marks
        elif sqlite is not None and sqlite.path:
            marks = _sqlite_store(sqlite, keyring)
            self._once = marks
        elif clock is time.time:
            marks = MemorySessionStore.shared(settings.cookie_name,
                                              max_sessions=settings.memory_max_sessions)
            self._once = marks
        else:
            marks = MemorySessionStore(max_sessions=settings.memory_max_sessions, clock=clock)
            self._once = marks
        self._revocations = marks
        self._revocations_inline = getattr(marks, "nonblocking", False) is True
        # Marks store that also knows provider sessions and subjects signed out (back-channel
        # logout); a mark store of your own without them keeps session marks only.
        self._ended_marks = marks is not None and hasattr(marks, "is_ended")
        # The longest a session lives: how long a sign-out of a whole provider session or
        # subject must be remembered for cookie-store sessions.
        self.longest = max(settings.expiration, settings.remember_me) + REVOCATION_MARGIN
        # Where records every process must see are kept (rotations): a bytes store.
        self._shared: SessionStore | None = (
            self._once if not getattr(self._once, "holds_objects", False) else None)
        self.jar = CookieJarSpec(secure=secure, domain=settings.cookie_domain,
                                 same_site=settings.same_site.capitalize())
        self.cookie_name = self.jar.name(settings.cookie_name)
        self._chunk_names = chunk_names(self.cookie_name)
        self._other_chunks = frozenset(self._chunk_names) - {self.cookie_name}
        # read_warm() can answer: records are objects this process holds, read without
        # waiting, with no marks of ended sessions to look up (server-side stores have none).
        self._warm_reads = (not self.cookie_mode and self._objects and self._revocations is None
                            and getattr(store, "nonblocking", False) is True)
        self._aad = f"secure_mw/session:{self.cookie_name}".encode()
        # Write back the last-active time at most this often (not on every request).
        self.touch_interval = min(60.0, settings.inactivity / 10)

    def __repr__(self) -> str:
        store = "cookie" if self.store is None else self.store
        return f"SessionManager(store={store!r}, cookie={self.cookie_name!r})"

    def worker_refusal(self, view: RequestView) -> Reply | None:
        """503 when several worker processes of this server use the in-memory store that
        nobody chose (see :class:`~secure_mw.session.memory_store.SiblingWorkers`); with
        ``session.store = "memory"`` set on purpose, a warning only."""
        if self.workers is None:
            return None
        problem = self.workers.check(view.listener())
        if problem is None:
            return None
        if view.wants_html:
            return html_reply(503, "Service misconfigured", problem)
        return json_reply(503, {"error": "session_store_misconfigured", "detail": problem})

    # -- creating -------------------------------------------------------------------------

    def new(self, *, claims: Mapping[str, Any], auth_level: int = 1, source: str = "oidc",
            remember: bool = False, tokens: Mapping[str, Any] | None = None) -> Session:
        """A new session with a fresh id (the id is never carried over from an old one)."""
        now = self.clock()
        remember = remember and self.settings.remember_me > 0
        lifetime = self.settings.remember_me if remember else self.settings.expiration
        return Session(id=new_session_id(), claims=dict(claims), auth_level=auth_level,
                       source=source, created=now, last_active=now, expires=now + lifetime,
                       remember=remember, tokens=dict(tokens or {}))

    def rotate(self, session: Session, **changes: Any) -> Session:
        """The same session under a new id (at a change of auth level)."""
        return session.evolve(id=new_session_id(), **changes)

    # -- reading --------------------------------------------------------------------------

    def read(self, view: RequestView) -> Flow[SessionRead]:
        cookies = view.cookies
        if self.cookie_name not in cookies and (
                not self.cookie_mode or not any(n in cookies for n in self._chunk_names)):
            return SessionRead(None)
        sent = chunk_names_present(cookies, self.cookie_name, self._chunk_names)
        if not sent:
            return SessionRead(None)
        raw = join_chunks(cookies, self.cookie_name) if self.cookie_mode \
            else cookies.get(self.cookie_name)
        if not raw:
            return self._refused(view, "incomplete session cookie", sent)
        if self.cookie_mode:
            cached = self._decoded.get(raw)
            if cached is not None:
                session = cached
            else:
                try:
                    session = Session.from_bytes(self.keyring.decrypt(raw, self._aad))
                except (DecryptError, ValueError):
                    return self._refused(view, "session cookie does not decrypt", sent)
                self._decoded.put(raw, session)
        else:
            if len(sent) != 1 or not _SESSION_ID.fullmatch(raw):
                return self._refused(view, "malformed session cookie", sent)
            try:
                found = yield from self.load(raw)
            except RecordUnreadable as exc:
                if self.on_unreadable is not None:
                    self.on_unreadable(view, str(exc))
                return SessionRead(None, str(exc), False, sent)
            if found is None:
                return SessionRead(None, "unknown or expired session", False, sent)
            session = found
        reason = session.expired_reason(self.clock(), self.settings.inactivity)
        if reason is not None:
            if self.store is not None:
                yield Op(self.store.delete, self.store.adelete, session.id)
            return SessionRead(None, f"session {reason}", False, sent)
        marks = self._revocations
        names = index_names(session) if marks is not None and self._ended_marks else ()
        if names and marks is not None:
            # The session's own mark and those of its provider session and subject: one
            # look-up (one MGET in Redis).
            created = session.created
            if self._revocations_inline:
                revoked = marks.is_ended(session.id, names, created)  # type: ignore[attr-defined]
            else:
                revoked = yield Op(marks.is_ended, marks.ais_ended,  # type: ignore[attr-defined]
                                   session.id, names, created)
            if revoked:
                return SessionRead(None, "session ended (signed out or refused)", False, sent)
        elif marks is not None:
            if self._revocations_inline:
                revoked = marks.is_revoked(session.id)
            else:
                revoked = yield Op(marks.is_revoked, marks.ais_revoked, session.id)
            if revoked:
                return SessionRead(None, "session ended (signed out or refused)", False, sent)
        return SessionRead(session, None, False, sent)

    def read_warm(self, view: RequestView) -> Session | None:
        """The live session of ``view`` without a flow, when reading it waits for nothing and
        leaves nothing to write or audit: a well-formed id, alone, naming a record the
        in-memory store holds, neither expired nor inactive. ``None`` in every other case (no
        cookie, a malformed one, an unknown or ended session, a store that waits):
        :meth:`read` then decides, audits and deletes, as it always does."""
        raw = self.warm_id(view)
        return None if raw is None else self.warm_record(raw)

    def warm_id(self, view: RequestView) -> str | None:
        """The part of :meth:`read_warm` that depends on the ``Cookie`` header alone: the
        well-formed session id it sends by itself (no chunks of a cookie-store session),
        or ``None``."""
        if not self._warm_reads:
            return None
        cookies = view.cookies
        raw = cookies.get(self.cookie_name)
        if raw is None or not _SESSION_ID.fullmatch(raw) \
                or not self._other_chunks.isdisjoint(cookies):
            return None
        return raw

    def warm_record(self, session_id: str) -> Session | None:
        """The part of :meth:`read_warm` asked again on every request: the in-memory store's
        live record of the id :meth:`warm_id` found, neither expired nor inactive now."""
        session: Session | None = self.store.load(session_id)  # type: ignore[union-attr]
        if session is None or not hmac.compare_digest(session.id, session_id) or \
                session.expired_reason(self.clock(), self.settings.inactivity) is not None:
            return None
        return session

    def _refused(self, view: RequestView, problem: str, sent: list[str]) -> SessionRead:
        if self.on_refused is not None:
            self.on_refused(view, problem)
        return SessionRead(None, problem, True, sent)

    def load(self, session_id: str) -> Flow[Session | None]:
        """The stored record of ``session_id`` (server-side stores only); a record that
        cannot be read raises :class:`RecordUnreadable` (a :class:`ValueError`)."""
        assert self.store is not None
        try:
            record = yield Op(self.store.load, self.store.aload, session_id)
        except DecryptError:     # written with other keys (another app's, a retired one)
            raise RecordUnreadable("session record does not decrypt") from None
        if record is None:
            return None
        session: Session
        if self._objects:
            session = record
        else:
            cached = self._decoded.get(record)
            if cached is not None:
                session = cached
            else:
                try:
                    session = Session.from_bytes(record)
                except ValueError:
                    raise RecordUnreadable("session record is corrupt") from None
                self._decoded.put(record, session)
        if not hmac.compare_digest(session.id, session_id):
            raise RecordUnreadable("session record under the wrong key")
        return session

    def keep(self, name: str, data: dict[str, Any], ttl: float) -> Flow[None]:
        """Keep ``data`` under ``name`` for ``ttl`` seconds where every process sees it (Redis,
        encrypted: the session store, or with the cookie store ``session.redis_url``); a
        no-op for stores that live in one process."""
        shared = self._shared
        if shared is None:
            return None
        value = json.dumps(data, separators=(",", ":")).encode()
        yield Op(shared.save, shared.asave, name, value, ttl)
        return None

    def recall(self, name: str) -> Flow[dict[str, Any] | None]:
        """What :meth:`keep` kept under ``name``, if anything."""
        shared = self._shared
        if shared is None:
            return None
        try:
            raw = yield Op(shared.load, shared.aload, name)
        except DecryptError:
            return None
        if raw is None:
            return None
        try:
            data = loads_strict(raw)
        except StrictJSONError:
            return None
        return data if isinstance(data, dict) else None

    def claim_once(self, token: str, ttl: float) -> Flow[bool]:
        """True the first time ``token`` is presented within ``ttl`` seconds (or since it was
        released)."""
        claimed = yield Op(self._once.claim_once, self._once.aclaim_once, token, ttl)
        return bool(claimed)

    def release(self, token: str) -> Flow[None]:
        """Give up a claim of ``token``; only its holder, while the claim lasts. (A store of
        your own without ``release`` lets the claim run out instead.)"""
        once = self._once
        if not hasattr(once, "release"):
            return None
        yield Op(once.release, once.arelease, token)
        return None

    def revoke(self, session: Session) -> Flow[None]:
        """Remember that ``session`` has ended, until it would have expired anyway (the
        cookie store; a server-side record is simply deleted)."""
        marks = self._revocations
        if marks is None:
            return None
        ttl = session.expires - self.clock() + REVOCATION_MARGIN
        yield Op(marks.revoke, marks.arevoke, session.id, ttl, owner=session.sub)
        return None

    @property
    def can_end_all(self) -> bool:
        """Whether :meth:`end_all` works with these stores (a store of your own may keep no
        index of sessions by provider session and subject)."""
        if self.store is not None:
            return bool(getattr(self.store, "indexes", False))
        return self._revocations is not None and self._ended_marks

    def end_all(self, name: str) -> Flow[int | None]:
        """End every session listed under the index ``name`` (:func:`index_name`): delete
        the records of a server-side store, or with the cookie store mark every session of
        that name created until now as ended. Returns how many records were deleted
        (``None`` with the cookie store, which cannot count them). A server-side store of
        your own without an index raises :class:`TypeError`."""
        if self.store is not None:
            store: Any = self.store
            if not getattr(store, "indexes", False):
                raise TypeError(f"{type(store).__name__} keeps no index of sessions by "
                                "provider session or subject (back-channel logout)")
            ended = yield Op(store.end_indexed, store.aend_indexed, name)
            return int(ended)
        marks: Any = self._revocations
        if marks is None or not self._ended_marks:
            raise TypeError("the cookie store's marks keep no ended provider sessions")
        # A provider never gives an ended sid again: every session of it is over, whatever
        # the clocks of the instance that made it (a subject's later sign-ins are not).
        at = self.clock() + (self.longest if name.startswith("sid\x00") else 0.0)
        yield Op(marks.mark_ended, marks.amark_ended, name, at, self.longest)
        return None

    def needs_touch(self, session: Session) -> bool:
        return self.clock() - session.last_active >= self.touch_interval

    # -- writing --------------------------------------------------------------------------

    def save(self, session: Session, *, sent: list[str] | None = None,
             new: bool = False) -> Flow[list[str] | None]:
        """Store ``session`` (server side or in the cookie); returns Set-Cookie values.

        An update (``new=False``) of a server-side record that was deleted meanwhile — a
        logout racing this request — is not written and returns ``None``: the session is over.
        """
        now = self.clock()
        ttl = session.ends_at(self.settings.inactivity) - now
        max_age = round(session.expires - now) if session.remember else None
        if self.cookie_mode:
            token = self.keyring.encrypt(session.to_bytes(), self._aad)
            try:
                parts = split_chunks(token)
            except ValueError:
                raise SessionTooLarge("the session is too large for the cookie store "
                                      "(use the redis store)") from None
            headers = [self.jar.set(chunk_name(self.cookie_name, i), part, max_age=max_age)
                       for i, part in enumerate(parts)]
            names = {chunk_name(self.cookie_name, i) for i in range(len(parts))}
            headers += [self.jar.delete(n) for n in sent or () if n not in names]
            return headers
        assert self.store is not None
        value: Any = session if self._objects else session.to_bytes()
        index = index_names(session) if new and getattr(self.store, "indexes", False) else ()
        if index:   # listed under its provider session and subject (back-channel logout)
            store: Any = self.store
            written = yield Op(store.save_indexed, store.asave_indexed, session.id, value,
                               ttl, index, self.longest)
        else:
            written = yield Op(self.store.save, self.store.asave, session.id, value, ttl,
                               only_if_exists=not new)
        if not written:
            return None
        return [self.jar.set(self.cookie_name, session.id, max_age=max_age)]

    def destroy(self, session: Session | None, *, sent: list[str] | None = None
                ) -> Flow[list[str]]:
        """End ``session`` for good (delete its server-side record, or mark it revoked with
        the cookie store) and expire every cookie of ours the client sent."""
        if session is not None:
            if self.store is not None:
                yield Op(self.store.delete, self.store.adelete, session.id)
            else:
                yield from self.revoke(session)
        return [self.jar.delete(n) for n in (sent or [self.cookie_name])]

    def forget(self, sent: list[str]) -> list[str]:
        """Set-Cookie values that expire the cookies of a session that is no more."""
        return [self.jar.delete(n) for n in sent]


def _sqlite_store(sqlite: SqliteSettings | None, keyring: KeyRing) -> Any:
    """The session store in the ``[sqlite]`` file (ConfigError when it cannot be used)."""
    from secure_mw._sqlite import database_from_settings
    from secure_mw.session.sqlite_store import SqliteSessionStore

    return SqliteSessionStore(database_from_settings(sqlite or SqliteSettings()),
                              keyring=keyring)
