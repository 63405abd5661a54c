"""The ``[redis]`` section: one server, a real Redis Cluster (three masters made with
``redis-cli --cluster create``) and a real Sentinel (a master, a replica and a sentinel).
Every Redis-backed store works on each; two application instances (one ASGI on uvicorn, one
WSGI) share sessions, sign-outs and rate limits through a Cluster and through a Sentinel; a
Sentinel failover under concurrent load loses no session and answers no 500."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from secure_mw import Settings, asgi, wsgi
from secure_mw._redis import RedisClients, Topology, server_label
from secure_mw.crypto import KeyRing
from secure_mw.errors import ConfigError
from secure_mw.guards.ratelimit_redis import RedisRateLimiter
from secure_mw.guards.regulation import Refusal, Reservation
from secure_mw.guards.regulation_redis import RedisRegulator
from secure_mw.login.totp_redis import RedisUsedCodes
from secure_mw.session.redis_store import RedisSessionStore
from secure_mw.settings import parse_rate_limit
from secure_mw.testing import session_cookie
from tests.apps import serve
from tests.servers import RedisCluster, RedisSentinel

KEY = KeyRing.new_key_text()
API = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    started = RedisCluster()
    try:
        started.start()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinel]:
    started = RedisSentinel()
    try:
        started.start()
        yield started
    finally:
        started.stop()


# -- the section and its URLs (no server) ------------------------------------------------------


def _settings(redis_section: dict[str, Any], **more: Any) -> Settings:
    return Settings.from_mapping({"redis": redis_section, **more}, environ={})


def test_the_section_gives_every_store_its_url() -> None:
    s = _settings({"url": "redis://10.0.0.7:7000/0", "cluster": True, "command_timeout": 0.3,
                   "connect_timeout": 0.2, "pool_size": 16},
                  session={"store": "redis"}, rate_limits={"store": "redis"},
                  keys={"encryption_keys": [KEY]})
    assert s.session.redis_url is not None
    topology = Topology.parse(s.session.redis_url)
    assert (topology.kind, topology.label) == ("cluster", "cluster 10.0.0.7:7000")
    assert topology.options == {"socket_timeout": 0.3, "socket_connect_timeout": 0.2,
                                "max_connections": 16}


def test_a_section_url_of_its_own_wins() -> None:
    s = _settings({"url": "redis://shared:6379/0"},
                  session={"redis_url": "redis://own:6379/1"})
    assert s.session.redis_url == "redis://own:6379/1"


def test_sentinel_url_carries_credentials_but_never_shows_them() -> None:
    s = _settings({"sentinel_master": "main", "sentinel_nodes": ["s1:26379", "s2:26380"],
                   "url": "rediss://:pa55@/3", "sentinel_password": "sent1nel"})
    url = s.session.redis_url
    assert url is not None
    topology = Topology.parse(url)
    assert topology.kind == "sentinel" and topology.master == "main"
    assert topology.nodes == (("s1", 26379), ("s2", 26380))
    assert topology.tls and topology.options["sentinel_password"] == "sent1nel"
    for shown in (repr(topology), server_label(url), repr(s), s.summary()):
        assert "pa55" not in shown and "sent1nel" not in shown


@pytest.mark.parametrize(("section", "where", "says"), [
    ({"cluster": True}, "redis.url", "required"),
    ({"url": "redis://h", "cluster": True, "sentinel_master": "m", "sentinel_nodes": ["a:1"]},
     "redis.cluster", "not both"),
    ({"sentinel_master": "m"}, "redis.sentinel_nodes", "required"),
    ({"sentinel_nodes": ["a:1"], "url": "redis://h"}, "redis.sentinel_master", "required"),
    ({"sentinel_nodes": ["nohost"], "sentinel_master": "m"}, "redis.sentinel_nodes",
     "host:port"),
    ({"sentinel_master": "m", "sentinel_nodes": ["a:1"], "url": "redis://master:6379"},
     "redis.url", "without a host"),
    ({"url": "http://h"}, "redis.url", "must start with"),
    ({"url": "redis+cluster://h:1"}, "redis.url", "cluster and sentinel_master say"),
    ({"url": "unix:///run/redis.sock", "cluster": True}, "redis.url", "Unix socket"),
    ({"url": "redis://h", "ca_file": "/etc/hostname"}, "redis.ca_file", "rediss://"),
    ({"url": "rediss://h", "cert_file": "/etc/hostname"}, "redis.key_file", "together"),
    ({"url": "redis://h", "command_timeout": 0}, "redis.command_timeout", ""),
])
def test_a_wrong_section_is_refused_at_start_up(section: dict[str, Any], where: str,
                                                 says: str) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(section)
    text = str(info.value)
    assert where in text and says in text, text


def test_without_any_redis_a_redis_store_names_the_section() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"session": {"store": "redis"},
                               "keys": {"encryption_keys": [KEY]}}, environ={})
    assert "[redis] section" in str(info.value)


def test_tuning_parameters_must_be_numbers() -> None:
    for bad in ("redis://h?socket_timeout=soon", "redis://h?max_connections=0"):
        with pytest.raises(ValueError):
            Topology.parse(bad)


# -- every store on a real Cluster -------------------------------------------------------------


def _owners(cluster: RedisCluster, keys: list[str]) -> set[int]:
    return {cluster.slot_owner(k) for k in keys}


def test_sessions_claims_and_marks_on_a_cluster(cluster: RedisCluster) -> None:
    store = RedisSessionStore(cluster.url, keyring=KeyRing.from_strings([KEY]),
                              prefix="t1:")
    keys = [f"s{i}" for i in range(30)]
    for key in keys:
        assert store.save(key, b"value of " + key.encode(), 60)
    assert all(store.load(k) == b"value of " + k.encode() for k in keys)
    # Spread over the masters: this really is a Cluster, not one node.
    assert len(_owners(cluster, [store.redis_key(k) for k in keys])) == 3
    assert store.claim_once("nonce-1", 60) and not store.claim_once("nonce-1", 60)
    store.revoke("s1", 60, owner="alice")
    assert store.is_revoked("s1") and not store.is_revoked("s2")
    store.delete("s0")
    assert store.load("s0") is None

    async def run() -> None:
        assert await store.asave("a1", b"async", 60)
        assert await store.aload("a1") == b"async"
        assert await store.aclaim_once("nonce-2", 60)
        assert not await store.aclaim_once("nonce-2", 60)
        await store.aclose()

    asyncio.run(run())
    store.close()


def test_back_channel_logout_lists_and_marks_on_a_cluster(cluster: RedisCluster) -> None:
    from secure_mw.session.manager import index_name

    store = RedisSessionStore(cluster.url, keyring=KeyRing.from_strings([KEY]),
                              prefix="bcl:")
    sub = index_name("sub", "app", "alice")
    ids = [f"session-{i}" for i in range(12)]
    for i, session_id in enumerate(ids):
        assert store.save_indexed(session_id, b"v", 60,
                                  (index_name("sid", "app", f"p{i % 2}"), sub), 3600)
    # The records are spread over the masters; each list is one key (one slot) ...
    assert len(_owners(cluster, [store.redis_key(i) for i in ids])) == 3
    assert store._index_key(sub).count("{") == 1
    # ... and emptying one ends its records wherever they live.
    assert store.end_indexed(index_name("sid", "app", "p0")) == 6
    assert [store.load(i) is None for i in ids] == [i % 2 == 0 for i in range(12)]
    assert asyncio.run(store.aend_indexed(sub)) == 6
    assert all(store.load(i) is None for i in ids)

    async def run() -> None:
        for session_id in ids:
            assert await store.asave_indexed(session_id, b"v", 60, (sub,), 3600)
        assert await store.aend_indexed(sub) == 12
        assert await store.aload(ids[0]) is None
        bob = index_name("sub", "app", "bob")
        await store.amark_ended(bob, 100.0, 60)
        assert await store.ais_ended("s", (bob,), 99.0)
        await store.aclose()

    asyncio.run(run())
    # The ended marks of one client share a slot: sid and sub read together.
    marks = [store._ended_key(index_name(k, "app", v)) for k, v in
             (("sid", "p0"), ("sub", "alice"), ("sub", "bob"))]
    assert len({cluster.slot_owner(k) for k in marks}) == 1
    store.mark_ended(index_name("sid", "app", "p0"), 100.0, 60)
    assert store.is_ended("s", (index_name("sid", "app", "p0"), sub), 50.0)
    assert not store.is_ended("s", (index_name("sid", "app", "p1"), sub), 50.0)
    store.close()


def test_rate_limits_share_one_slot_per_key_on_a_cluster(cluster: RedisCluster) -> None:
    """A key with several limits is one script over several Redis keys: they share a hash
    tag, so the Cluster runs it on one node (a CROSSSLOT error would be a 503)."""
    limits = parse_rate_limit("3/second") + parse_rate_limit("5/minute") + \
        parse_rate_limit("7/hour")
    one, other = RedisRateLimiter(cluster.url, prefix="t2:"), \
        RedisRateLimiter(cluster.url, prefix="t2:")
    assert len(set(one.redis_keys("client", limits))) == 3
    assert len(_owners(cluster, one.redis_keys("client", limits))) == 1
    barrier = threading.Barrier(8)

    def hit(limiter: RedisRateLimiter) -> bool:
        barrier.wait()
        return limiter.hit("client", limits).allowed

    with ThreadPoolExecutor(8) as pool:
        allowed = list(pool.map(hit, [one, other] * 4))
    assert allowed.count(True) == 3
    spread = {cluster.slot_owner(one.redis_keys(f"k{i}", limits)[0]) for i in range(30)}
    assert len(spread) == 3
    assert asyncio.run(other.ahit("fresh", limits)).allowed
    one.close()
    other.close()


def test_regulation_bans_and_the_bans_command_on_a_cluster(cluster: RedisCluster) -> None:
    regulator = RedisRegulator(cluster.url, prefix="t3:", max_retries=2, find_time=60,
                               ban_time=300, modes=("user",), user_max_retries=2,
                               ip_max_retries=100)
    users = [f"u{i}" for i in range(12)]
    for user in users:
        for _ in range(2):
            reservation = regulator.reserve(user=user, ip=None)
            assert isinstance(reservation, Reservation)
            regulator.fail(reservation)
        refused = regulator.reserve(user=user, ip=None)
        assert isinstance(refused, Refusal) and refused.reason == "banned"
    # `secure-mw bans list` scans every master, wherever each user's hash landed.
    assert len([e for e in regulator.bans() if e.kind == "user"]) == 12
    owners = {cluster.slot_owner(regulator.redis_key(s))
              for user in users for s in regulator.policy.subjects(user, None)}
    assert len(owners) > 1
    assert regulator.lift(user="u3") >= 1
    assert isinstance(regulator.reserve(user="u3", ip=None), Reservation)
    assert len([e for e in regulator.bans() if e.kind == "user"]) == 11
    regulator.close()


def test_used_totp_codes_on_a_cluster(cluster: RedisCluster) -> None:
    used = RedisUsedCodes(cluster.url, prefix="t4:")
    assert used.claim("alice", 123, 90) and not used.claim("alice", 123, 90)
    assert used.claim("bob", 123, 90)
    used.close()


def test_change_key_re_encrypts_every_node_of_a_cluster(cluster: RedisCluster,
                                                       tmp_path: Path) -> None:
    old = KeyRing.from_strings([KEY])
    store = RedisSessionStore(cluster.url, keyring=old, prefix="t5:")
    for i in range(40):
        store.save(f"r{i}", f"record {i}".encode(), 600)
    assert len(_owners(cluster, [store.redis_key(f"r{i}") for i in range(40)])) == 3
    new_key = KeyRing.new_key_text()
    config = tmp_path / "secure-mw.toml"
    config.write_text(f'[keys]\nencryption_keys = ["{new_key}", "{KEY}"]\n'
                      f'[redis]\nurl = "redis://127.0.0.1:{cluster.ports[0]}/0"\n'
                      'cluster = true\n'
                      '[session]\nstore = "redis"\nredis_key_prefix = "t5:"\n'
                      f'[local_users]\ntotp_file = "{tmp_path / "totp.json"}"\n')
    config.chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "secure_mw.cli", "change-key", "--config",
                             str(config), "--state", str(tmp_path / "state.json")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    counts = [int(n) for n in re.findall(r"(\d+) re-encrypted", result.stderr)]
    assert len(counts) == 3 and sum(counts) == 40, result.stderr    # one line per master
    assert new_key not in result.stderr and KEY not in result.stderr
    assert len(list(tmp_path.glob("state.json.127.0.0.1-*"))) == 3
    only_new = RedisSessionStore(cluster.url, keyring=KeyRing.from_strings([new_key]),
                                 prefix="t5:")
    assert all(only_new.load(f"r{i}") == f"record {i}".encode() for i in range(40))
    store.close()
    only_new.close()


# -- two application instances sharing a Cluster, a Sentinel ---------------------------------


def _app_settings(url: str, prefix: str) -> Settings:
    topology = Topology.parse(url)
    section: dict[str, Any] = {"command_timeout": 1.0}
    if topology.kind == "cluster":
        section.update(url=f"redis://{topology.label.split()[1]}/0", cluster=True)
    else:
        section.update(sentinel_master=topology.master,
                       sentinel_nodes=[f"{h}:{p}" for h, p in topology.nodes])
    return Settings.from_mapping({
        "redis": section,
        "keys": {"encryption_keys": [KEY]},
        "session": {"store": "redis", "redis_key_prefix": prefix},
        "rate_limits": {"store": "redis", "rules": [
            {"key": "ip", "limit": "20/minute", "paths": ["^/limited"]}]},
        "access_control": {"default_policy": "deny", "rules": [
            {"resources": ["^/limited"], "policy": "bypass"},
            {"policy": "authenticated"}]},
    }, environ={})


@contextmanager
def two_instances(url: str, prefix: str) -> Iterator[tuple[Settings, str, str]]:
    """One ASGI instance on uvicorn and one WSGI instance, each with its own stack (nothing
    in common but the Redis behind them)."""
    with ExitStack() as stack:
        first = _app_settings(url, prefix)
        one = stack.enter_context(serve("asgi", lambda inner: asgi.protect(inner, first)))
        other = stack.enter_context(serve(
            "wsgi", lambda inner: wsgi.protect(inner, _app_settings(url, prefix))))
        yield first, one, other


def _sign_out(base: str, cookie: str) -> None:
    with httpx.Client(headers={"Cookie": cookie}) as client:
        csrf = client.get(base + "/.auth/me", headers=API).json()["csrf_token"]
        ended = client.post(base + "/.auth/logout", data={"csrf": csrf})
    assert ended.status_code == 303, ended.text


def _shared_behaviour(url: str, prefix: str) -> None:
    with two_instances(url, prefix) as (settings, one, other):
        cookie = session_cookie(settings, {"sub": "alice"})
        for base in (one, other):
            answer = httpx.get(base + "/secret", headers={**API, "Cookie": cookie})
            assert answer.status_code == 200 and answer.json()["sub"] == "alice"
        _sign_out(one, cookie)
        assert httpx.get(other + "/secret", headers={**API, "Cookie": cookie}).status_code \
            == 401
        # 50 parallel requests spread over both instances: exactly the limit gets through.
        barrier = threading.Barrier(10)

        def burst(i: int) -> list[int]:
            barrier.wait()
            base = one if i % 2 else other
            with httpx.Client(timeout=30) as client:
                return [client.get(base + "/limited", headers=API).status_code
                        for _ in range(5)]

        with ThreadPoolExecutor(10) as pool:
            statuses = Counter(s for chunk in pool.map(burst, range(10)) for s in chunk)
        assert statuses == {200: 20, 429: 30}, statuses


@pytest.mark.slow
def test_two_instances_share_sessions_sign_outs_and_limits_on_a_cluster(
        cluster: RedisCluster) -> None:
    _shared_behaviour(cluster.url, "e2e1:")


@pytest.mark.slow
def test_two_instances_share_sessions_sign_outs_and_limits_on_a_sentinel(
        sentinel: RedisSentinel) -> None:
    _shared_behaviour(sentinel.url, "e2e2:")


@pytest.mark.slow
def test_a_sentinel_failover_under_load_loses_no_session_and_answers_no_500(
        sentinel: RedisSentinel) -> None:
    with two_instances(sentinel.url, "fo:") as (settings, one, other):
        cookies = [session_cookie(settings, {"sub": f"user{i}"}) for i in range(8)]
        # Every session is on the replica too before the failover (WAIT: replication done).
        master = redis.Redis(port=sentinel.master())
        assert master.execute_command("WAIT", 1, 5000) == 1
        master.close()
        stop = threading.Event()
        seen: Counter[int] = Counter()
        wrong: list[str] = []

        def load(i: int) -> None:
            base = one if i % 2 else other
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    answer = client.get(base + "/secret",
                                        headers={**API, "Cookie": cookies[i]})
                    seen[answer.status_code] += 1
                    if answer.status_code == 200 and answer.json()["sub"] != f"user{i}":
                        wrong.append(answer.text)
                    if answer.status_code == 503:
                        assert answer.headers.get("retry-after", "").isdigit()

        with ThreadPoolExecutor(8) as pool:
            running = [pool.submit(load, i) for i in range(8)]
            try:
                sentinel.failover()
            finally:
                stop.set()
            for future in running:
                future.result()
        assert set(seen) <= {200, 503}, seen
        assert not wrong
        # After the failover every session is served by the promoted replica, at once or
        # after the one reconnection each instance makes.
        for i, cookie in enumerate(cookies):
            for base in (one, other):
                answers = [httpx.get(base + "/secret", headers={**API, "Cookie": cookie})
                           for _ in range(2)]
                assert answers[-1].status_code == 200, [a.status_code for a in answers]
                assert answers[-1].json()["sub"] == f"user{i}"
        assert sentinel.master() == sentinel.replica_port


def test_a_store_error_names_the_topology_not_the_url(cluster: RedisCluster) -> None:
    clients = RedisClients(cluster.url.replace(str(cluster.ports[0]), "1"), what="probe",
                           prefix="", socket_timeout=0.2, client=None, aclient=None)
    assert re.fullmatch(r"RedisClients\(server='cluster 127\.0\.0\.1:1', prefix=''\)",
                        repr(clients))


@pytest.mark.parametrize("flavour", ["asgi", "wsgi"])
def test_an_unreachable_cluster_at_start_up_answers_503_never_500(flavour: str) -> None:
    """A Cluster client connects as it is made: the stack must start anyway and each request
    fail closed until the cluster answers."""
    from tests.servers import free_port

    url = f"redis+cluster://127.0.0.1:{free_port()}/0"
    settings = _app_settings(url, "down:")
    import secrets

    cookie = f"__Host-secure_mw_session={secrets.token_urlsafe(32)}"   # a well-formed id
    module: Any = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.protect(inner, settings)) as base:
        answer = httpx.get(base + "/secret", headers={**API, "Cookie": cookie}, timeout=30)
        assert answer.status_code == 503, answer.text
        assert answer.headers.get("retry-after", "").isdigit()
        # The rate-limit rule follows its fail_open choice (true unless it protects
        # credentials): served, unlimited, while its store is down.
        assert httpx.get(base + "/limited", headers=API, timeout=30).status_code == 200
