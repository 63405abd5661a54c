"""RedisSessionStore against a real redis-server (the ``redis_server`` fixture): no mocks."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from secure_mw.crypto.keyring import KeyRing
from secure_mw.errors import ConfigError, DecryptError, StoreUnavailable
from secure_mw.session.redis_store import RedisSessionStore
from secure_mw.settings import SessionSettings
from tests.servers import RedisServer

SID = "k3Jw0Zr8mQyX1vA2bC3dE4fG5hI6jK7lM8nO9pQ0rSt"  # 43 base64url characters, like a cookie
OTHER_SID = "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8Nn7Mm6L"
VALUE = b'{"user":"alice","groups":["admins"],"csrf":"plaintext-marker-0123456789"}'
SAFE_KEY = re.compile(r"[A-Za-z0-9_:\-]+")
FAST = 0.5  # socket timeout in the failure tests, seconds


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def store(redis_server: RedisServer, ring: KeyRing) -> Iterator[RedisSessionStore]:
    s = RedisSessionStore(redis_server.url, keyring=ring, socket_timeout=FAST)
    yield s
    s.close()


def _keys(client: redis.Redis) -> list[str]:
    return [k.decode() if isinstance(k, bytes) else k for k in client.keys("*")]


def _password_url(server: RedisServer) -> str:
    return f"redis://:s3cret@127.0.0.1:{server.port}/0"


# -- round trips ---------------------------------------------------------------------------


def test_round_trip_sync(store: RedisSessionStore, raw: redis.Redis) -> None:
    assert store.load(SID) is None
    store.save(SID, VALUE, 60)
    assert store.load(SID) == VALUE

    keys = _keys(raw)
    assert keys == [store.redis_key(SID)]
    assert SID not in keys[0]
    stored = raw.get(keys[0])
    assert isinstance(stored, bytes)
    assert VALUE not in stored
    assert b"plaintext-marker" not in stored
    assert b"alice" not in stored

    store.delete(SID)
    assert store.load(SID) is None
    assert raw.dbsize() == 0
    store.delete(SID)  # deleting a missing session is fine


def test_round_trip_async(store: RedisSessionStore, raw: redis.Redis) -> None:
    async def run() -> None:
        assert await store.aload(SID) is None
        await store.asave(SID, VALUE, 60)
        assert await store.aload(SID) == VALUE
        stored = raw.get(store.redis_key(SID))
        assert isinstance(stored, bytes)
        assert b"plaintext-marker" not in stored
        await store.adelete(SID)
        assert await store.aload(SID) is None
        await store.aclose()

    asyncio.run(run())
    assert raw.dbsize() == 0


def test_sync_and_async_share_values(store: RedisSessionStore) -> None:
    store.save(SID, VALUE, 60)

    async def run() -> bytes | None:
        value = await store.aload(SID)
        await store.asave(OTHER_SID, b"from asyncio", 60)
        await store.aclose()
        return value

    assert asyncio.run(run()) == VALUE
    assert store.load(OTHER_SID) == b"from asyncio"


def test_key_is_a_hash_of_the_session_id(store: RedisSessionStore) -> None:
    digest = base64.urlsafe_b64encode(hashlib.sha256(SID.encode()).digest()).rstrip(b"=")
    assert store.redis_key(SID) == "secure_mw:session:" + digest.decode()
    assert store.redis_key(SID) != store.redis_key(OTHER_SID)
    for sid in (SID, "", "a" * 5000, "ünïcode ☃", "\udcff lone surrogate", "a\r\nb\x00"):
        key = store.redis_key(sid)
        assert SAFE_KEY.fullmatch(key), key
        assert len(key) == len("secure_mw:session:") + 43
    with pytest.raises(TypeError):
        store.redis_key(b"bytes")  # type: ignore[arg-type]


def test_prefix_is_honoured(redis_server: RedisServer, ring: KeyRing, raw: redis.Redis) -> None:
    a = RedisSessionStore(redis_server.url, keyring=ring, prefix="app-a:")
    b = RedisSessionStore(redis_server.url, keyring=ring, prefix="app-b:")
    try:
        a.save(SID, b"for a", 60)
        b.save(SID, b"for b", 60)
        assert a.load(SID) == b"for a"
        assert b.load(SID) == b"for b"
        keys = sorted(_keys(raw))
        assert keys == sorted([a.redis_key(SID), b.redis_key(SID)])
        assert keys[0].startswith("app-a:session:")
        assert keys[1].startswith("app-b:session:")
        assert all(SAFE_KEY.fullmatch(k) for k in keys)
        # a value moved to the other application's key is bound to its own key
        raw.set(b.redis_key(SID), raw.get(a.redis_key(SID)) or b"")
        with pytest.raises(DecryptError):
            b.load(SID)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("prefix", ["has space:", "tab\t", "new\nline", "é:", "x" * 201])
def test_unsafe_prefix_refused(ring: KeyRing, prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisSessionStore("redis://127.0.0.1:1/0", keyring=ring, prefix=prefix)


# -- time to live --------------------------------------------------------------------------


def test_ttl_is_set_and_touch_extends_it(store: RedisSessionStore, raw: redis.Redis) -> None:
    key = store.redis_key(SID)
    store.save(SID, VALUE, 30)
    assert 29_000 < raw.pttl(key) <= 30_000
    store.touch(SID, 600)
    assert 599_000 < raw.pttl(key) <= 600_000
    assert store.load(SID) == VALUE  # touch keeps the value
    store.save(SID, VALUE, 1.2344)  # rounded up to whole milliseconds
    assert 1_000 < raw.pttl(key) <= 1_235


def test_touch_of_missing_session_creates_nothing(store: RedisSessionStore,
                                                  raw: redis.Redis) -> None:
    store.touch(SID, 60)
    assert raw.exists(store.redis_key(SID)) == 0

    async def run() -> None:
        await store.atouch(SID, 60)
        await store.aclose()

    asyncio.run(run())
    assert raw.dbsize() == 0


@pytest.mark.parametrize("ttl", [0, 0.0, -1, -0.5])
def test_non_positive_ttl_deletes(store: RedisSessionStore, raw: redis.Redis, ttl: float) -> None:
    store.save(SID, VALUE, 60)
    store.save(SID, VALUE, ttl)
    assert raw.dbsize() == 0
    store.save(SID, VALUE, 60)
    store.touch(SID, ttl)
    assert raw.dbsize() == 0


def test_async_ttl_and_touch(store: RedisSessionStore, raw: redis.Redis) -> None:
    key = store.redis_key(SID)

    async def run() -> None:
        await store.asave(SID, VALUE, 45)
        assert 44_000 < raw.pttl(key) <= 45_000
        await store.atouch(SID, 900)
        assert 899_000 < raw.pttl(key) <= 900_000
        await store.asave(SID, VALUE, 0)
        assert raw.exists(key) == 0
        await store.asave(SID, VALUE, 45)
        await store.atouch(SID, -1)
        assert raw.exists(key) == 0
        await store.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("ttl", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_ttl_refused(store: RedisSessionStore, ttl: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        store.save(SID, VALUE, ttl)
    with pytest.raises(ValueError, match="finite"):
        store.touch(SID, ttl)


# -- claims and revocations ---------------------------------------------------------------


def test_claim_release_and_revocation(store: RedisSessionStore, raw: redis.Redis) -> None:
    assert store.claim_once("refreshing:x", 30) is True
    assert store.claim_once("refreshing:x", 30) is False
    store.release("refreshing:x")
    assert store.claim_once("refreshing:x", 30) is True
    assert store.is_revoked(SID) is False
    store.revoke(SID, 120)
    assert store.is_revoked(SID) is True
    store.revoke(OTHER_SID, 0)                   # nothing left to remember
    assert store.is_revoked(OTHER_SID) is False
    keys = _keys(raw)
    revoked = [k for k in keys if ":revoked:" in k]
    assert len(revoked) == 1 and 119_000 < raw.pttl(revoked[0]) <= 120_000
    assert all(SID not in k and SAFE_KEY.fullmatch(k) for k in keys)

    async def run() -> tuple[bool, bool, bool]:
        try:
            await store.arevoke(OTHER_SID, 60)
            await store.arelease("refreshing:x")
            claimed = await store.aclaim_once("refreshing:x", 30)
            return claimed, await store.ais_revoked(OTHER_SID), await store.ais_revoked("x")
        finally:
            await store.aclose()

    assert asyncio.run(run()) == (True, True, False)


# -- integrity -----------------------------------------------------------------------------


def test_value_copied_to_another_session_is_refused(store: RedisSessionStore,
                                                    raw: redis.Redis) -> None:
    store.save(SID, VALUE, 60)
    store.save(OTHER_SID, b"victim", 60)
    raw.set(store.redis_key(OTHER_SID), raw.get(store.redis_key(SID)) or b"")
    with pytest.raises(DecryptError):
        store.load(OTHER_SID)
    assert store.load(SID) == VALUE
    assert raw.dbsize() == 2  # nothing deleted

    async def run() -> None:
        try:
            await store.aload(OTHER_SID)
        finally:
            await store.aclose()

    with pytest.raises(DecryptError):
        asyncio.run(run())


def test_value_of_another_application_does_not_decrypt(redis_server: RedisServer,
                                                       store: RedisSessionStore) -> None:
    other = RedisSessionStore(redis_server.url, keyring=KeyRing.generate())
    other.save(SID, VALUE, 60)
    with pytest.raises(DecryptError) as refused:
        store.load(SID)
    assert VALUE.decode() not in str(refused.value) and SID not in str(refused.value)
    other.close()


def test_tampered_value_is_refused(store: RedisSessionStore, raw: redis.Redis) -> None:
    store.save(SID, VALUE, 60)
    key = store.redis_key(SID)
    good = raw.get(key)
    assert isinstance(good, bytes)
    for position in (0, 3, 10, len(good) // 2, len(good) - 1):
        bad = bytearray(good)
        bad[position] ^= 0x01
        raw.set(key, bytes(bad))
        with pytest.raises(DecryptError):
            store.load(SID)
        assert raw.exists(key) == 1  # not deleted
    for junk in (b"", b"x", good[:-1], good + b"\x00", b"not encrypted at all"):
        raw.set(key, junk)
        with pytest.raises(DecryptError):
            store.load(SID)


def test_older_key_of_a_rotated_ring_still_decrypts(redis_server: RedisServer) -> None:
    old, new = KeyRing.new_key_text(), KeyRing.new_key_text()
    before = RedisSessionStore(redis_server.url, keyring=KeyRing.from_strings([old]))
    after = RedisSessionStore(redis_server.url, keyring=KeyRing.from_strings([new, old]))
    dropped = RedisSessionStore(redis_server.url, keyring=KeyRing.from_strings([new]))
    try:
        before.save(SID, VALUE, 60)
        assert after.load(SID) == VALUE
        with pytest.raises(DecryptError):
            dropped.load(SID)             # key id no longer in the ring
        after.save(OTHER_SID, b"new key", 60)
        assert after.load(OTHER_SID) == b"new key"
        assert dropped.load(OTHER_SID) == b"new key"
        with pytest.raises(DecryptError):
            before.load(OTHER_SID)
    finally:
        for s in (before, after, dropped):
            s.close()


def test_wrong_type_at_key_is_a_store_error(store: RedisSessionStore, raw: redis.Redis) -> None:
    raw.rpush(store.redis_key(SID), b"x")
    with pytest.raises(StoreUnavailable):
        store.load(SID)


# -- failures and recovery -----------------------------------------------------------------


def _assert_unavailable(exc: pytest.ExceptionInfo[StoreUnavailable], server: RedisServer) -> None:
    message = str(exc.value)
    assert message == f"session store unavailable: 127.0.0.1:{server.port}"
    assert exc.value.status == 503
    assert "s3cret" not in message
    assert "s3cret" not in repr(exc.value.__cause__)
    assert SID not in message


def _assert_fails_fast(store: RedisSessionStore, client: Any = None) -> None:
    """What keeps a failure quick (no wall-clock assertion): short socket timeouts and a
    single retry, only after a dropped connection."""
    client = client if client is not None else store._client
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == FAST
    assert client.get_retry()._retries == 1


def test_stopped_server_fails_closed_then_recovers(redis_server: RedisServer,
                                                  store: RedisSessionStore) -> None:
    store.save(SID, VALUE, 60)  # leaves a pooled connection behind
    redis_server.stop()
    for call in (partial(store.load, SID), partial(store.save, SID, VALUE, 60),
                 partial(store.touch, SID, 60), partial(store.delete, SID)):
        with pytest.raises(StoreUnavailable) as exc:
            call()
        _assert_unavailable(exc, redis_server)
    _assert_fails_fast(store)

    redis_server.start()  # same port, same store object
    assert store.load(SID) is None  # the server kept nothing: it has no persistence
    store.save(SID, VALUE, 60)
    assert store.load(SID) == VALUE


def test_restart_between_requests_is_transparent(redis_server: RedisServer,
                                                 store: RedisSessionStore) -> None:
    """A pooled connection left dead by a restart is replaced without an error."""
    store.save(SID, VALUE, 60)
    redis_server.stop()
    redis_server.start()
    store.save(SID, VALUE, 60)
    assert store.load(SID) == VALUE

    async def run() -> bytes | None:
        await store.asave(SID, VALUE, 60)
        redis_server.stop()
        redis_server.start()
        await store.asave(SID, b"after restart", 60)
        value = await store.aload(SID)
        await store.aclose()
        return value

    assert asyncio.run(run()) == b"after restart"


def test_stopped_server_fails_closed_then_recovers_async(redis_server: RedisServer,
                                                        store: RedisSessionStore) -> None:
    async def run() -> None:
        await store.asave(SID, VALUE, 60)
        redis_server.stop()
        for call in (partial(store.aload, SID), partial(store.asave, SID, VALUE, 60),
                     partial(store.atouch, SID, 60), partial(store.adelete, SID)):
            with pytest.raises(StoreUnavailable) as exc:
                await call()
            _assert_unavailable(exc, redis_server)
        _assert_fails_fast(store, store._async_client())
        redis_server.start()
        await store.asave(SID, VALUE, 60)
        assert await store.aload(SID) == VALUE
        await store.aclose()

    asyncio.run(run())


def test_password_never_shown(redis_server: RedisServer, ring: KeyRing) -> None:
    store = RedisSessionStore(_password_url(redis_server), keyring=ring, socket_timeout=FAST,
                              prefix="p:")
    try:
        assert "s3cret" not in repr(store)
        assert repr(store) == (f"RedisSessionStore(server='127.0.0.1:{redis_server.port}', "
                               "prefix='p:')")
        # (the server has no password and accepts any for its default user: HELLO ... AUTH)
        store.save(SID, VALUE, 60)
        assert store.load(SID) == VALUE
        redis_server.stop()
        for call in (partial(store.load, SID), partial(store.save, SID, VALUE, 60),
                     partial(store.delete, SID)):
            with pytest.raises(StoreUnavailable) as exc:
                call()
            _assert_unavailable(exc, redis_server)

        async def run() -> None:
            for acall in (partial(store.aload, SID), partial(store.asave, SID, VALUE, 60),
                          partial(store.adelete, SID)):
                with pytest.raises(StoreUnavailable) as exc:
                    await acall()
                _assert_unavailable(exc, redis_server)
            await store.aclose()

        asyncio.run(run())
    finally:
        store.close()


def test_repr_of_other_urls(ring: KeyRing) -> None:
    tls = RedisSessionStore("rediss://user:s3cret@Redis.Example:6380/2", keyring=ring)
    assert repr(tls) == "RedisSessionStore(server='redis.example:6380', prefix='secure_mw:')"
    assert "s3cret" not in repr(RedisSessionStore("redis://:s3cret@[::1]/0", keyring=ring))
    assert "'[::1]:6379'" in repr(RedisSessionStore("redis://:s3cret@[::1]/0", keyring=ring))
    assert "'localhost:6379'" in repr(RedisSessionStore("redis://", keyring=ring))


def test_unix_socket_url(ring: KeyRing, tmp_path: Path) -> None:
    path = f"{tmp_path}/missing.sock"
    store = RedisSessionStore(f"unix://:s3cret@{path}?db=0", keyring=ring, socket_timeout=FAST)
    assert repr(store) == f"RedisSessionStore(server='unix:{path}', prefix='secure_mw:')"
    with pytest.raises(StoreUnavailable) as exc:
        store.load(SID)
    assert str(exc.value) == f"session store unavailable: unix:{path}"
    assert "s3cret" not in repr(exc.value.__cause__)


@pytest.mark.parametrize("url", ["http://:s3cret@127.0.0.1/", "s3cret", "redis://:s3cret@h:x/0",
                                 "unix://"])
def test_bad_url_refused_without_echo(ring: KeyRing, url: str) -> None:
    with pytest.raises(ValueError) as exc:
        RedisSessionStore(url, keyring=ring)
    assert "s3cret" not in str(exc.value)


def test_tls_files_are_passed_to_redis_py(ring: KeyRing) -> None:
    store = RedisSessionStore("rediss://127.0.0.1:6380/0", keyring=ring,
                              ssl_ca_file="/etc/ca.pem", ssl_cert_file="/etc/c.pem",
                              ssl_key_file="/etc/k.pem", socket_timeout=1.5)
    kwargs = store._client.get_connection_kwargs()
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert kwargs["ssl_certfile"] == "/etc/c.pem"
    assert kwargs["ssl_keyfile"] == "/etc/k.pem"
    assert kwargs["socket_timeout"] == 1.5
    assert kwargs["socket_connect_timeout"] == 1.5
    assert kwargs["health_check_interval"] > 0
    with pytest.raises(ValueError, match="rediss://"):
        RedisSessionStore("redis://127.0.0.1:6380/0", keyring=ring, ssl_ca_file="/etc/ca.pem")


# -- clients, settings, event loops, threads -----------------------------------------------


def test_supplied_clients_are_used_and_left_open(redis_server: RedisServer, ring: KeyRing,
                                                 raw: redis.Redis) -> None:
    store = RedisSessionStore("redis://127.0.0.1:1/0", keyring=ring, client=raw)
    store.save(SID, VALUE, 60)
    assert store.load(SID) == VALUE
    store.close()
    assert raw.ping()

    async def run() -> bytes | None:
        aclient = redis.asyncio.Redis.from_url(redis_server.url)
        astore = RedisSessionStore("redis://127.0.0.1:1/0", keyring=ring, aclient=aclient)
        value = await astore.aload(SID)
        await astore.aclose()
        assert await aclient.ping()
        await aclient.aclose()
        return value

    assert asyncio.run(run()) == VALUE

    text_client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisSessionStore(redis_server.url, keyring=ring, client=text_client)
    text_client.close()


def test_from_settings(redis_server: RedisServer, ring: KeyRing, raw: redis.Redis) -> None:
    settings = SessionSettings(store="redis", redis_url=redis_server.url, redis_key_prefix="s:")
    store = RedisSessionStore.from_settings(settings, ring)
    try:
        store.save(SID, VALUE, 60)
        assert raw.keys("*") == [store.redis_key(SID).encode()]
        assert store.redis_key(SID).startswith("s:session:")
    finally:
        store.close()
    with pytest.raises(ConfigError, match=r"session\.redis_url"):
        RedisSessionStore.from_settings(SessionSettings(), ring)


def test_async_across_event_loops(store: RedisSessionStore) -> None:
    async def write() -> None:
        await store.asave(SID, VALUE, 60)
        await store.aclose()

    async def read() -> bytes | None:
        value = await store.aload(SID)
        await store.aclose()
        return value

    asyncio.run(write())
    assert asyncio.run(read()) == VALUE
    assert asyncio.run(read()) == VALUE


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_async_across_event_loops_without_aclose(store: RedisSessionStore) -> None:
    """Without aclose() a loop's client is left behind; the next loop gets its own."""
    async def write() -> None:
        await store.asave(SID, VALUE, 60)

    async def read() -> bytes | None:
        return await store.aload(SID)

    asyncio.run(write())
    for _ in range(3):
        assert asyncio.run(read()) == VALUE
    assert len(store._aclients) == 1  # clients of closed loops are dropped
    store.close()
    assert store._aclients == {}
    gc.collect()


def test_concurrent_event_loops_in_threads(store: RedisSessionStore) -> None:
    def worker(n: int) -> bytes | None:
        async def run() -> bytes | None:
            await store.asave(f"{SID}{n}", b"v%d" % n, 60)
            value = await store.aload(f"{SID}{n}")
            await store.aclose()
            return value
        return asyncio.run(run())

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(worker, range(8))) == [b"v%d" % n for n in range(8)]


def test_concurrent_threads(store: RedisSessionStore, raw: redis.Redis) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            own = f"{SID[:-2]}{n:02d}"
            for i in range(50):
                store.save(own, b"%d:%d" % (n, i), 60)
                assert store.load(own) == b"%d:%d" % (n, i)
                store.save(SID, b"shared %d" % n, 60)
                shared = store.load(SID)
                assert shared is not None
                assert shared.startswith(b"shared ")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert raw.dbsize() == 9


# -- a record the ring cannot read is not the client's forgery -------------------------------

# The events the shipped fail2ban filter counts (integrations/fail2ban/filter.d/secure-mw.conf).
_BANNING = ("login_failure", "ban", "rate_limited", "csrf_failure", "invalid_session_cookie",
            "invalid_token", "unsafe_redirect", "authorization_denied")


@pytest.mark.parametrize("flavour", ["asgi", "wsgi"])
def test_a_record_of_a_key_removed_from_the_ring_is_not_audited_as_a_forgery(
        flavour: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """Redis store: the client holds only a 256-bit random id, so a record under it that
    does not decrypt (written with a key since removed from the ring) cannot be its forgery.
    One page load of 12 parallel requests after the key left the ring: each is refused and
    audited ``session_record_unreadable``, an event fail2ban does not count. (They were 12
    ``invalid_session_cookie`` lines from the user's address, above the jail's maxretry 10:
    the user was banned.)"""
    import httpx

    from secure_mw import Settings, asgi, wsgi
    from secure_mw.testing import session_cookie
    from tests.apps import serve

    old, new = KeyRing.new_key_text(), KeyRing.new_key_text()

    def settings(key: str) -> Settings:
        return Settings.from_mapping({
            "keys": {"encryption_keys": [key]},
            "session": {"store": "redis", "redis_url": redis_server.url},
            "access_control": {"rules": [{"resources": ["^/"], "policy": "authenticated"}]},
        }, environ={})

    cookie = session_cookie(settings(old), {"sub": "alice"})   # signed in before the change
    module = asgi if flavour == "asgi" else wsgi
    caplog.set_level("INFO", "secure_mw.audit")
    with serve(flavour, lambda inner: module.protect(inner, settings(new))) as base:
        def one(_: int) -> httpx.Response:
            return httpx.get(base + "/x", headers={"Cookie": cookie,
                                                   "Accept": "application/json"})

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(one, range(12)))
    assert {a.status_code for a in answers} == {401}
    assert all(any(c.startswith("__Host-secure_mw_session=;") for c in
                   a.headers.get_list("set-cookie")) for a in answers)   # forgotten
    lines = [r.getMessage() for r in caplog.records if r.name == "secure_mw.audit"]
    counted = [line for line in lines if any(f'"event":"{e}"' in line for e in _BANNING)]
    assert counted == [], f"{len(counted)} fail2ban-counted lines for one page load"
    unreadable = [line for line in lines if '"event":"session_record_unreadable"' in line]
    assert len(unreadable) == 12 and all("does not decrypt" in line for line in unreadable)
    assert cookie.split("=", 1)[1] not in "".join(lines)


def test_a_burst_beyond_the_pool_waits_for_a_connection(redis_server: RedisServer,
                                                        ring: KeyRing) -> None:
    """400 concurrent reads in one event loop: the asyncio pool used to raise
    MaxConnectionsError beyond 100 (300 of 400 got 503 with Redis idle); now each waits for
    a free connection, and at most MAX_CONNECTIONS are opened."""
    from secure_mw._redis import MAX_CONNECTIONS

    store = RedisSessionStore(redis_server.url, keyring=ring, prefix="burst:")
    store.save(SID, b"value", 60)
    monitor = redis.Redis.from_url(redis_server.url)
    before = int(monitor.info("clients")["connected_clients"])

    async def burst() -> tuple[list[Any], int]:
        results = await asyncio.gather(*(store.aload(SID) for _ in range(400)),
                                       return_exceptions=True)
        return results, int(monitor.info("clients")["connected_clients"])

    results, during = asyncio.run(burst())
    assert [r for r in results if r != b"value"] == []
    assert during - before <= MAX_CONNECTIONS + 1      # + the session cache's invalidations
    monitor.close()
    store.close()
