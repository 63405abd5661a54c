"""SqliteSessionStore and the shared database file: the session-store protocol run against
Redis and SQLite alike, then what only a file has — its mode, its directory, two processes
(two connections) on it, a fork, a lock held by another process, a read-only or corrupt
file — and the bounded purge. Real files, a real redis-server, real child processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from secure_mw import _sqlite
from secure_mw._sqlite import Database, database
from secure_mw.crypto.keyring import KeyRing
from secure_mw.errors import ConfigError, DecryptError, StoreUnavailable
from secure_mw.login.totp_sqlite import SqliteUsedCodes
from secure_mw.session.sqlite_store import SqliteSessionStore, hashed
from tests.clock import Clock
from tests.servers import RedisServer

SID = "k3Jw0Zr8mQyX1vA2bC3dE4fG5hI6jK7lM8nO9pQ0rSt"
OTHER_SID = "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8Nn7Mm6L"
VALUE = b'{"user":"alice","csrf":"plaintext-marker-0123456789"}'


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture
def db(tmp_path: Path) -> Database:
    found = Database(tmp_path / "data" / "store.sqlite3")
    found.check()
    return found


@pytest.fixture(params=["redis", "sqlite"])
def store(request: pytest.FixtureRequest, ring: KeyRing, tmp_path: Path) -> Iterator[Any]:
    """A bytes session store of either shared engine: the same protocol, the same answers."""
    if request.param == "sqlite":
        found = Database(tmp_path / "s.sqlite3")
        found.check()
        yield SqliteSessionStore(found, keyring=ring)
        return
    from secure_mw.session.redis_store import RedisSessionStore

    server: RedisServer = request.getfixturevalue("redis_server")
    s = RedisSessionStore(server.url, keyring=ring, socket_timeout=0.5)
    yield s
    s.close()


# -- the protocol, both engines ------------------------------------------------------------


def test_round_trip_sync_and_async(store: Any) -> None:
    assert store.load(SID) is None
    assert store.save(SID, VALUE, 60) is True
    assert store.load(SID) == VALUE
    assert asyncio.run(store.aload(SID)) == VALUE
    assert asyncio.run(store.asave(OTHER_SID, b"x", 60)) is True
    assert store.load(OTHER_SID) == b"x"
    store.delete(SID)
    asyncio.run(store.adelete(OTHER_SID))
    assert store.load(SID) is None and store.load(OTHER_SID) is None
    store.delete(SID)           # deleting a missing session is fine


def test_an_update_of_a_deleted_session_stays_deleted(store: Any) -> None:
    assert store.save(SID, VALUE, 60, only_if_exists=True) is False
    assert store.load(SID) is None
    store.save(SID, VALUE, 60)
    assert store.save(SID, b"newer", 60, only_if_exists=True) is True
    assert store.load(SID) == b"newer"


@pytest.mark.parametrize("ttl", [0, -1])
def test_non_positive_ttl_deletes(store: Any, ttl: float) -> None:
    store.save(SID, VALUE, 60)
    assert store.save(SID, VALUE, ttl) is False
    assert store.load(SID) is None


@pytest.mark.parametrize("ttl", [float("nan"), float("inf")])
def test_non_finite_ttl_refused(store: Any, ttl: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        store.save(SID, VALUE, ttl)


def test_claim_release_and_revocation(store: Any) -> None:
    assert store.claim_once("state-1", 60) is True
    assert store.claim_once("state-1", 60) is False
    store.release("state-1")
    assert asyncio.run(store.aclaim_once("state-1", 60)) is True
    assert store.is_revoked(SID) is False
    store.revoke(SID, 60, owner="alice")
    assert store.is_revoked(SID) is True and asyncio.run(store.ais_revoked(SID)) is True
    store.revoke(OTHER_SID, 0)
    assert store.is_revoked(OTHER_SID) is False


def test_sessions_listed_by_provider_session_and_subject_end_together(store: Any) -> None:
    from secure_mw.session.manager import index_name

    sid, sub = index_name("sid", "app", "p-1"), index_name("sub", "app", "alice")
    other = index_name("sid", "app", "p-2")
    assert store.save_indexed(SID, VALUE, 60, (sid, sub), 3600) is True
    assert asyncio.run(store.asave_indexed(OTHER_SID, VALUE, 60, (other, sub), 3600)) is True
    third = "T" * 43
    assert store.save_indexed(third, VALUE, 60, (index_name("sub", "app", "bob"),), 3600)
    assert store.end_indexed(sid) == 1
    assert store.load(SID) is None and store.load(OTHER_SID) == VALUE
    assert store.end_indexed(sid) == 0                       # the list went with it
    assert asyncio.run(store.aend_indexed(sub)) == 1         # SID was already gone
    assert store.load(OTHER_SID) is None and store.load(third) == VALUE
    assert store.save_indexed(SID, VALUE, 0, (sid,), 3600) is False


def test_ended_marks_end_sessions_created_before_them(store: Any) -> None:
    from secure_mw.session.manager import index_name

    sid, sub = index_name("sid", "app", "p-1"), index_name("sub", "app", "alice")
    assert store.is_ended(SID, (sid, sub), 1000.0) is False
    store.mark_ended(sid, 1000.0, 60)
    assert store.is_ended(SID, (sid, sub), 1000.0) is True          # created until then
    assert store.is_ended(SID, (sid, sub), 1000.5) is False         # a later sign-in
    assert asyncio.run(store.ais_ended(SID, (sub,), 999.0)) is False   # another name
    asyncio.run(store.amark_ended(sub, 2000.0, 60))
    assert store.is_ended(SID, (sub,), 1500.0) is True
    store.revoke(OTHER_SID, 60)
    assert store.is_ended(OTHER_SID, (), 0.0) is True               # its own mark too
    assert store.is_ended(OTHER_SID, (index_name("sid", "other", "p-1"),), 3000.0) is True
    assert store.is_ended(SID, (index_name("sid", "other", "p-1"),), 0.0) is False


def _start_on(path: str, barrier: Any, answers: Any) -> None:
    """A worker process starting: it opens the store's file (Database.check at start-up)."""
    barrier.wait()
    try:
        Database(path).check()
        answers.put("ok")
    except ConfigError as exc:
        answers.put(str(exc))


def test_workers_started_together_all_open_a_new_file(tmp_path: Path) -> None:
    """gunicorn's workers (without --preload) open the file as they start, all at once.
    Switching a new file to WAL mode is refused at once as "database is locked" while
    another connection does the same (the busy timeout does not apply): before the set-up
    was serialized, 5 of 120 such starts failed, and gunicorn shuts down when a worker
    cannot boot. 25 rounds of 6 processes on a new file: every one opens it."""
    context = multiprocessing.get_context("fork")
    failures: list[str] = []
    for round_ in range(25):
        directory = tmp_path / f"round-{round_}"
        directory.mkdir(mode=0o700)
        barrier, answers = context.Barrier(6), context.Queue()
        processes = [context.Process(target=_start_on, args=(
            str(directory / "s.sqlite3"), barrier, answers)) for _ in range(6)]
        for process in processes:
            process.start()
        failures += [a for a in (answers.get(timeout=60) for _ in processes) if a != "ok"]
        for process in processes:
            process.join(timeout=60)
    assert failures == []
    assert stat.S_IMODE(os.stat(tmp_path / "round-0" / "s.sqlite3.lock").st_mode) == 0o600


def test_a_version_1_file_gains_the_logout_tables(tmp_path: Path, ring: KeyRing) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE sessions (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                 "expires REAL NOT NULL) WITHOUT ROWID")
    conn.execute("CREATE TABLE marks (key TEXT PRIMARY KEY, expires REAL NOT NULL) "
                 "WITHOUT ROWID")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    os.chmod(path, 0o600)
    found = Database(path)
    found.check()
    store = SqliteSessionStore(found, keyring=ring)
    assert store.save_indexed(SID, VALUE, 60, ("n",), 60) and store.end_indexed("n") == 1
    assert found.read("PRAGMA user_version")[0][0] == _sqlite.SCHEMA_VERSION == 2


def test_a_value_under_another_key_or_ring_does_not_decrypt(store: Any,
                                                           tmp_path: Path) -> None:
    store.save(SID, VALUE, 60)
    if isinstance(store, SqliteSessionStore):
        store.db.write("UPDATE sessions SET key = ? WHERE key = ?",
                       (hashed("session", OTHER_SID), hashed("session", SID)))
    else:
        store._client.rename(store.redis_key(SID), store.redis_key(OTHER_SID))
    with pytest.raises(DecryptError):
        store.load(OTHER_SID)


def test_concurrent_claims_have_one_winner(store: Any) -> None:
    barrier = threading.Barrier(16)

    def claim(_: int) -> bool:
        barrier.wait()
        return bool(store.claim_once("refresh-lock", 30))

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(claim, range(16))) == 1


# -- at rest ---------------------------------------------------------------------------------


def test_nothing_secret_is_at_rest(db: Database, ring: KeyRing) -> None:
    store = SqliteSessionStore(db, keyring=ring)
    store.save(SID, VALUE, 60)
    store.claim_once("the-state-value", 60)
    store.revoke(OTHER_SID, 60)
    SqliteUsedCodes(db).claim("alice", 123, 30)
    blob = b"".join(p.read_bytes() for p in db.path.parent.iterdir())
    for secret in (SID.encode(), OTHER_SID.encode(), b"plaintext-marker", b"alice",
                   b"the-state-value"):
        assert secret not in blob


def test_the_file_and_its_journal_are_private(tmp_path: Path, ring: KeyRing) -> None:
    old = os.umask(0)            # a permissive umask changes nothing
    try:
        found = Database(tmp_path / "new" / "store.sqlite3")
        found.check()
        SqliteSessionStore(found, keyring=ring).save(SID, VALUE, 60)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700
    for name in ("store.sqlite3", "store.sqlite3-wal", "store.sqlite3-shm"):
        assert stat.S_IMODE(os.stat(tmp_path / "new" / name).st_mode) == 0o600, name
    assert found.read("PRAGMA journal_mode")[0][0] == "wal"


def test_a_file_open_to_others_is_refused_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    path.touch(0o644)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"sqlite\.path: .*mode 0644"):
        Database(path).check()


def test_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.touch(0o600)
    (tmp_path / "store.sqlite3").symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        Database(tmp_path / "store.sqlite3").check()


def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ConfigError, match="others could replace"):
        Database(shared / "store.sqlite3").check()


# -- several processes -------------------------------------------------------------------------


def test_two_connections_see_one_store(tmp_path: Path, ring: KeyRing) -> None:
    path = tmp_path / "s.sqlite3"
    a, b = Database(path), Database(path)
    a.check()
    first, second = SqliteSessionStore(a, keyring=ring), SqliteSessionStore(b, keyring=ring)
    first.save(SID, VALUE, 60)
    assert second.load(SID) == VALUE
    second.delete(SID)
    assert first.load(SID) is None
    assert first.claim_once("t", 60) and not second.claim_once("t", 60)


def test_a_forked_child_opens_its_own_connection(db: Database, ring: KeyRing) -> None:
    store = SqliteSessionStore(db, keyring=ring)
    store.save(SID, VALUE, 60)
    parent_conn = db._connection()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_fork_child, args=(db, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    used, claimed = queue.get(timeout=5)
    assert used is False and claimed is True
    assert db._connection() is parent_conn          # the parent's is untouched
    assert store.claim_once("forked-claim", 60) is False


def _fork_child(db: Database, queue: Any) -> None:
    inherited = getattr(db._local, "conn", None)
    conn = db._connection()
    claimed = SqliteSessionStore(db, keyring=KeyRing.generate()).claim_once("forked-claim",
                                                                             60)
    queue.put((conn is inherited, claimed))


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@pytest.fixture
def locked(db: Database) -> Iterator[subprocess.Popen[str]]:
    """Another process holding an exclusive transaction on the file."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db.path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    yield holder
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(10)


def test_a_lock_held_by_another_process_fails_closed(tmp_path: Path, ring: KeyRing,
                                                     locked: subprocess.Popen[str],
                                                     db: Database) -> None:
    quick = Database(db.path, busy_timeout=0.05)
    store = SqliteSessionStore(quick, keyring=ring)
    with pytest.raises(StoreUnavailable) as info:
        store.save(SID, VALUE, 60)
    assert str(info.value) == f"sqlite store unavailable: {db.path}"
    with pytest.raises(StoreUnavailable):
        asyncio.run(store.aclaim_once("x", 60))


def test_the_event_loop_is_not_held_by_a_locked_write(tmp_path: Path, ring: KeyRing,
                                                      locked: subprocess.Popen[str],
                                                      db: Database) -> None:
    """A write waiting for another process's lock runs in a thread: the loop keeps
    serving (a ticker task runs while the write waits)."""
    store = SqliteSessionStore(Database(db.path, busy_timeout=0.3), keyring=ring)
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        with pytest.raises(StoreUnavailable):
            await store.asave(SID, VALUE, 60)
        stop.set()
        await task

    asyncio.run(main())
    assert ticks > 10


def test_a_read_only_file_fails_closed(db: Database, ring: KeyRing) -> None:
    """A file the process may no longer write (chmod 400; as root, which writes any file,
    the immutable attribute): writes 503, never a fallback."""
    SqliteSessionStore(db, keyring=ring).save(SID, VALUE, 60)
    db.close()
    immutable = os.geteuid() == 0
    if immutable:
        if shutil.which("chattr") is None:
            pytest.skip("root without chattr: no way to make the file read-only")
        made = subprocess.run(["chattr", "+i", str(db.path)], capture_output=True, check=False)
        if made.returncode:
            pytest.skip(f"chattr +i refused here: {made.stderr!r}")
    else:
        os.chmod(db.path, 0o400)
    try:
        fresh = Database(db.path)
        with pytest.raises(StoreUnavailable):
            SqliteSessionStore(fresh, keyring=ring).save(OTHER_SID, VALUE, 60)
        with pytest.raises(StoreUnavailable):
            SqliteUsedCodes(fresh).claim("alice", 1, 30)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(db.path)], check=True)
        os.chmod(db.path, 0o600)


def test_a_read_only_database_fails_closed(db: Database, ring: KeyRing) -> None:
    """Another process's connection answers "readonly" (as a file on a read-only mount)."""
    store = SqliteSessionStore(db, keyring=ring)
    store.save(SID, VALUE, 60)
    db._connection().execute("PRAGMA query_only = ON")
    with pytest.raises(StoreUnavailable):
        store.save(OTHER_SID, VALUE, 60)
    with pytest.raises(StoreUnavailable):
        SqliteUsedCodes(db).claim("alice", 1, 30)
    assert store.load(SID) == VALUE           # reads still answer


def test_a_corrupt_file_is_a_config_error_then_unavailable(tmp_path: Path,
                                                           ring: KeyRing) -> None:
    path = tmp_path / "store.sqlite3"
    path.write_bytes(b"this is not a database " * 400)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match=r"sqlite\.path: .*not a database"):
        Database(path).check()
    found = Database(tmp_path / "good.sqlite3")
    found.check()
    store = SqliteSessionStore(found, keyring=ring)
    store.save(SID, VALUE, 60)
    found.close()
    with open(found.path, "r+b") as fh:        # the header overwritten while in service
        fh.write(b"garbage" * 20)
    with pytest.raises(StoreUnavailable):
        store.load(SID)


# -- expiry and purge ------------------------------------------------------------------------------


def test_expired_rows_are_not_read_and_are_purged_in_batches(tmp_path: Path,
                                                             ring: KeyRing) -> None:
    clock = Clock(1_700_000_000.0)
    found = Database(tmp_path / "s.sqlite3", clock=clock)
    found.check()
    store = SqliteSessionStore(found, keyring=ring)
    for n in range(600):
        store.claim_once(f"t{n}", 10)
    store.save(SID, VALUE, 10)
    clock.advance(10)
    assert store.load(SID) is None and store.claim_once("t1", 10) is True
    assert found.purge(batch=256) == 256 + 1       # marks, then the session
    assert found.purge(batch=256) == 256
    assert found.read("SELECT count(*) FROM marks")[0][0] == 600 - 512   # 87 old, t1 anew


def test_a_write_purges_at_most_once_an_interval(tmp_path: Path, ring: KeyRing,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(1_700_000_000.0)
    found = Database(tmp_path / "s.sqlite3", clock=clock)
    found.check()
    store = SqliteSessionStore(found, keyring=ring)
    calls: list[int] = []
    real = found.purge
    monkeypatch.setattr(found, "purge", lambda batch=256: calls.append(batch) or real(batch))
    for n in range(50):
        store.claim_once(f"t{n}", 10)
    assert len(calls) == 1


def test_settings_validate_the_sqlite_section(tmp_path: Path) -> None:
    from secure_mw.settings import Settings

    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"session": {"store": "sqlite",
                                           "redis_url": "redis://127.0.0.1/0"},
                               "rate_limits": {"store": "sqlite"},
                               "sqlite": {"busy_timeout": "2m"}}, environ={})
    text = str(info.value)
    assert "sqlite.path: required when session.store = 'sqlite'" in text
    assert "sqlite.path: required when rate_limits.store = 'sqlite'" in text
    assert "session.redis_url: not used with session.store = 'sqlite'" in text
    assert "sqlite.busy_timeout" in text
    assert "keys.encryption_keys: required when session.store = 'sqlite'" in text


def test_one_database_per_file_in_a_process(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    assert database(path) is database(str(path))
    assert database(path).read("PRAGMA user_version")[0][0] == _sqlite.SCHEMA_VERSION


def test_the_settings_choose_sqlite_for_every_store(tmp_path: Path) -> None:
    from secure_mw.guards.ratelimit import limiter_from_settings
    from secure_mw.guards.ratelimit_sqlite import SqliteRateLimiter
    from secure_mw.guards.regulation import regulator_from_settings
    from secure_mw.guards.regulation_sqlite import SqliteRegulator
    from secure_mw.login.totp import used_codes_from_settings
    from secure_mw.session.manager import SessionManager
    from secure_mw.settings import Settings

    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "session": {"store": "sqlite"},
        "sqlite": {"path": str(tmp_path / "s.sqlite3")}}, environ={})
    ring = KeyRing.from_settings(settings.keys)
    manager = SessionManager(settings.session, keyring=ring, sqlite=settings.sqlite)
    assert isinstance(manager.store, SqliteSessionStore) and manager.workers is None
    assert isinstance(regulator_from_settings(settings), SqliteRegulator)
    assert isinstance(used_codes_from_settings(settings), SqliteUsedCodes)
    assert isinstance(limiter_from_settings(settings.rate_limits, sqlite=settings.sqlite),
                      SqliteRateLimiter)


def test_the_cookie_store_keeps_sign_outs_in_the_sqlite_file(tmp_path: Path) -> None:
    """Two managers (two workers) with the cookie store and [sqlite] path: a session ended
    at one is refused at the other."""
    from secure_mw._driver import run_sync
    from secure_mw.http import RequestView
    from secure_mw.session.manager import SessionManager
    from secure_mw.settings import Settings

    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "session": {"store": "cookie"},
        "sqlite": {"path": str(tmp_path / "s.sqlite3")}}, environ={})
    ring = KeyRing.from_settings(settings.keys)
    one, two = (SessionManager(settings.session, keyring=ring, sqlite=settings.sqlite)
                for _ in range(2))
    session = one.new(claims={"sub": "alice"})
    cookies = run_sync(one.save(session, new=True))
    assert cookies
    name, _, value = cookies[0].split(";", 1)[0].partition("=")

    def view() -> RequestView:
        return RequestView(method="GET", scheme="https", host="app.example", path="/",
                           query_string="", headers={"cookie": f"{name}={value}"},
                           client="")

    assert run_sync(two.read(view())).session is not None
    run_sync(one.destroy(session))
    assert run_sync(two.read(view())).session is None


def test_asyncio_calls_run_inline_unless_another_process_holds_the_lock(
        db: Database, ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncontended, a write costs no thread hop; with the lock taken by another process the
    inline attempt gives up at once (nothing written) and a worker thread waits instead."""
    store = SqliteSessionStore(Database(db.path, busy_timeout=0.2), keyring=ring)
    hops: list[str] = []
    real = asyncio.to_thread

    async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", "?"))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    assert asyncio.run(store.asave(SID, VALUE, 60)) is True
    assert asyncio.run(store.aload(SID)) == VALUE and hops == []
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db.path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert asyncio.run(store.aload(SID)) == VALUE and hops == []   # WAL: reads go on
        with pytest.raises(StoreUnavailable):
            asyncio.run(store.asave(OTHER_SID, VALUE, 60))
        assert hops == ["save"]
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)
    assert asyncio.run(store.asave(OTHER_SID, VALUE, 60)) is True and hops == ["save"]


def test_a_sticky_shared_directory_is_refused_too(tmp_path: Path) -> None:
    shared = tmp_path / "tmp-like"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(ConfigError, match="plant its journal"):
        Database(shared / "store.sqlite3").check()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_failed_end_of_listed_sessions_leaves_them_for_the_retry(
        redis_server: RedisServer, ring: KeyRing, flavour: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis: the records are deleted before they leave the list. A connection lost while
    deleting them answers StoreUnavailable (the provider gets 503) and the provider's retry
    still ends every one (the list was emptied first before: the retry found nothing, 200)."""
    import redis
    import redis.asyncio

    from secure_mw.errors import StoreUnavailable
    from secure_mw.session.manager import index_name
    from secure_mw.session.redis_store import RedisSessionStore

    store = RedisSessionStore(redis_server.url, keyring=ring, socket_timeout=0.5)
    sid = index_name("sid", "app", f"p-{flavour}")
    assert store.save_indexed(SID, VALUE, 60, (sid,), 3600)
    pipeline = redis.asyncio.client.Pipeline if flavour == "async" else redis.client.Pipeline
    real = pipeline.execute

    def lost(self: Any, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(pipeline, "execute", real)      # once
        raise redis.ConnectionError("connection reset by peer")

    async def alost(self: Any, *args: Any, **kwargs: Any) -> Any:
        return lost(self)

    monkeypatch.setattr(pipeline, "execute", alost if flavour == "async" else lost)

    def end() -> int:
        return asyncio.run(store.aend_indexed(sid)) if flavour == "async" \
            else store.end_indexed(sid)

    with pytest.raises(StoreUnavailable):
        end()
    assert store.load(SID) == VALUE
    assert end() == 1 and store.load(SID) is None
    assert end() == 0
    store.close()


def test_an_ended_mark_only_moves_later(store: Any) -> None:
    """Two logouts of one name from instances whose clocks differ: the later time stays,
    so the second cannot bring back sessions the first ended (as memory and SQLite keep)."""
    from secure_mw.session.manager import index_name

    name = index_name("sub", "app", "alice")
    store.mark_ended(name, 1000.0, 60)
    asyncio.run(store.amark_ended(name, 900.0, 60))        # a slower clock, later
    assert store.is_ended(OTHER_SID, [name], 950.0) is True
    store.mark_ended(name, 1100.0, 60)
    assert store.is_ended(OTHER_SID, [name], 1050.0) is True
    assert store.is_ended(OTHER_SID, [name], 1200.0) is False


def test_a_users_list_of_sessions_drops_the_long_expired(
        redis_server: RedisServer, ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis: one user signing in again and again (a script, a bot) lists each session; the
    members whose sessions cannot be alive any more (their lifetime and a 10-minute margin
    for other clocks) leave the list as a new one comes, so it never grows without bound."""
    import redis

    import secure_mw.session.redis_store as module
    from secure_mw.session.manager import index_name

    now = [1_900_000_000.0]
    monkeypatch.setattr(module.time, "time", lambda: now[0])
    store = module.RedisSessionStore(redis_server.url, keyring=ring, socket_timeout=0.5)
    sub = index_name("sub", "app", "busy")
    for i in range(200):
        assert store.save_indexed(f"{i:043d}", VALUE, 60, (sub,), 3600)
    raw = redis.Redis.from_url(redis_server.url)
    key = store._index_key(sub)
    assert raw.zcard(key) == 200
    now[0] += 3600 + 5 * 60          # past their lifetime, within the margin: all kept
    assert store.save_indexed("A" * 43, VALUE, 60, (sub,), 3600)
    assert raw.zcard(key) == 201
    now[0] += 6 * 60                  # past the margin too: only the live one stays
    assert store.save_indexed("B" * 43, VALUE, 60, (sub,), 3600)
    assert raw.zcard(key) == 2
    assert store.end_indexed(sub) == 2 and raw.zcard(key) == 0
    raw.close()
    store.close()
