"""LoginGuardMiddleware end to end on real servers, both flavours: bans after repeated
failures (memory and a real redis-server shared by two app instances), a banned attempt
answered exactly like a wrong password without reaching the app, parallel guesses that
cannot outrun the budget, the owner let through where it is safe (pair budget, device
cookie), fail closed when Redis cannot answer, one key prefix per app, and the login delay
on every exit path."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import redis

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.errors import ConfigError
from secure_mw.guards.regulation import MemoryRegulator, RedisRegulator
from secure_mw.guards.timing import LoginDelay
from tests.apps import FLAVOURS, uvicorn_server, wsgi_server
from tests.clock import Clock
from tests.redis_faults import FAULTS, fault
from tests.servers import RedisServer, ServerProcess, free_port

USERS = {"alice": "correct horse", "bob": "battery staple", "ivan": "ivan pw"}
#: A safety net only: a gate that never fills lets its evaluations through after this.
GATE_TIMEOUT = 20.0
DEVICE = "__Host-secure_mw_session_device"


class Gate:
    """Holds each evaluation of a real password (not a decoy) until ``parties`` of them are
    in, so they overlap (0: no holding). ``entered`` is set by the first to arrive."""

    def __init__(self, parties: int = 0) -> None:
        self.parties = parties
        self.arrived = 0
        self._lock = threading.Lock()
        self.opened = threading.Event()
        self.entered = threading.Event()
        if parties == 0:
            self.opened.set()

    def arrive(self) -> None:
        with self._lock:
            self.arrived += 1
            if self.arrived >= self.parties:
                self.opened.set()
        self.entered.set()

    def wait(self) -> None:
        self.opened.wait(GATE_TIMEOUT)

    async def await_open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.wait)


#: How the login answers a wrong password: (status, headers), JSON 401 by default.
Failure = tuple[int, list[tuple[str, str]]]
JSON_401: Failure = (401, [("Content-Type", "application/json")])


class LoginApp:
    """A login endpoint of the kind users write: 200 or 401 (or ``failure``), counting its
    calls; ``users`` (default :data:`USERS`) compares names exactly, as a dict does."""

    def __init__(self, gate: Gate | None = None,
                 after_judging: Callable[[], None] | None = None, *,
                 failure: Failure = JSON_401, users: dict[str, str] | None = None,
                 raise_on: str | None = None) -> None:
        self.calls = 0
        self.passwords: list[str] = []
        self.paths: list[str] = []
        self.gate = gate or Gate()
        self.after_judging = after_judging
        self.failure = failure
        self.users = USERS if users is None else users
        self.raise_on = raise_on
        self._lock = threading.Lock()

    @property
    def guesses(self) -> list[str]:
        """The passwords the app was asked to check, decoys (a banned attempt's stand-in:
        32 random characters) left out."""
        return [p for p in self.passwords if len(p) != 32]

    @staticmethod
    def _data(body: bytes, content_type: str) -> dict[str, Any]:
        if "json" in content_type:
            return dict(json.loads(body.removeprefix(b"\xef\xbb\xbf") or b"{}"))
        return {k: v[0] for k, v in parse_qs(body.decode()).items()}

    def judge(self, data: dict[str, Any], path: str = "/login"
              ) -> tuple[int, list[tuple[str, str]], bytes]:
        with self._lock:
            self.calls += 1
            self.passwords.append(str(data.get("password")))
            self.paths.append(path)
        if self.raise_on is not None and data.get("password") == self.raise_on:
            raise RuntimeError("the login app failed")
        if self.after_judging is not None:
            self.after_judging()
        known = self.users.get(data.get("username", ""))
        extra = [("X-Login", "v1"), ("Set-Cookie", "tracking=1")]
        if known is not None and known == data.get("password"):
            return 200, [("Content-Type", "application/json"), *extra], b'{"welcome": true}'
        status, headers = self.failure
        return status, [*headers, *extra], b'{"error": "invalid username or password"}'

    def _real(self, data: dict[str, Any]) -> bool:
        return len(str(data.get("password"))) != 32

    async def asgi(self, scope: dict[str, Any], receive: Callable[..., Any],
                   send: Callable[..., Any]) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        data = self._data(body, dict(scope["headers"]).get(b"content-type", b"").decode())
        if self._real(data):
            self.gate.arrive()
            await self.gate.await_open()
        status, headers, out = self.judge(data, scope["path"])
        await send({"type": "http.response.start", "status": status, "headers": [
            (k.lower().encode(), v.encode()) for k, v in headers]})
        await send({"type": "http.response.body", "body": out})

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = self._data(environ["wsgi.input"].read(length), environ.get("CONTENT_TYPE", ""))
        if self._real(data):
            self.gate.arrive()
            self.gate.wait()
        status, headers, out = self.judge(data, environ.get("PATH_INFO", ""))
        start_response(f"{status} {'OK' if status == 200 else 'Unauthorized'}", headers)
        return [out]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Sleeps:
    """The waits a LoginDelay asked for, instead of waiting (the clock never moves, so
    each attempt waits exactly floor + jitter * 0)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def recorded_delay(sleeps: Sleeps, floor: float = 0.08) -> LoginDelay:
    return LoginDelay(floor=floor, seed=floor, jitter=0.05, clock=Clock(0.0),
                      sleep=sleeps.sleep, asleep=sleeps.asleep, rng=lambda: 0.0)


def fast_delay() -> LoginDelay:
    return recorded_delay(Sleeps())


def app_settings(**sections: Any) -> Settings:
    base: dict[str, Any] = {"keys": {"encryption_keys": [KEY]},
                            "server": {"trusted_proxies": ["127.0.0.1/32"]}}
    base.update(sections)
    return Settings.from_mapping(base, environ={})


KEY = KeyRing.new_key_text()


@pytest.fixture
def guarded(flavour: str) -> Callable[..., Any]:
    """guarded(login, settings=..., **options): the login app behind the guard, behind a
    ClientAddressMiddleware that believes X-Forwarded-For from the test (loopback)."""
    module = asgi if flavour == "asgi" else wsgi

    @contextmanager
    def run(login: LoginApp, *, settings: Settings | None = None,
            **options: Any) -> Iterator[str]:
        options.setdefault("delay", fast_delay())
        inner = login.asgi if flavour == "asgi" else login.wsgi
        settings = settings or app_settings()
        app = module.LoginGuardMiddleware(inner, settings=settings, **options)
        app = module.ClientAddressMiddleware(app, trusted_proxies=["127.0.0.1/32"])
        server = uvicorn_server if flavour == "asgi" else wsgi_server
        with server(app) as url:
            yield url

    return run


def attempt(base: str, user: str, password: str, *, as_json: bool = False,
            ip: str = "192.0.2.10", device: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": ip}
    if device:
        headers["Cookie"] = f"{DEVICE}={device}"
    if as_json:
        return httpx.post(base + "/login", json={"username": user, "password": password},
                          headers=headers, timeout=30)
    return httpx.post(base + "/login", data={"username": user, "password": password},
                      headers=headers, timeout=30)


def device_cookie(response: httpx.Response) -> str | None:
    for line in response.headers.get_list("set-cookie"):
        if line.startswith(f"{DEVICE}="):
            return line.split(";", 1)[0].split("=", 1)[1]
    return None


def comparable(response: httpx.Response) -> tuple[int, str, bytes, list[tuple[str, str]]]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in ("date",)]
    return response.status_code, response.reason_phrase, response.content, sorted(headers)


def audit_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "secure_mw.audit"]


# -- bans -----------------------------------------------------------------------------------


def test_a_ban_answers_exactly_like_a_wrong_password(guarded: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    login = LoginApp()
    regulator = MemoryRegulator(max_retries=3, find_time=120, ban_time=300, modes=["pair"])
    with guarded(login, regulator=regulator) as base:
        assert attempt(base, "alice", "correct horse").status_code == 200
        wrong = [attempt(base, "alice", f"guess {i}") for i in range(3)]
        assert [w.status_code for w in wrong] == [401, 401, 401]
        banned = attempt(base, "alice", "correct horse")       # right password, banned
        assert comparable(banned) == comparable(wrong[-1])
        assert "correct horse" not in login.passwords[1:]       # the app saw a decoy instead
        assert login.guesses == ["correct horse", "guess 0", "guess 1", "guess 2"]
        assert attempt(base, "bob", "battery staple").status_code == 200   # others unaffected
    events = audit_events(caplog)
    bans = [e for e in events if e["event"] == "ban"]
    assert len(bans) == 1 and bans[0]["user"] == "alice" and bans[0]["reason"] == "pair"
    failures = [e for e in events if e["event"] == "login_failure"]
    assert len(failures) == 4 and failures[-1]["reason"] == "banned (pair)"
    assert not any("correct horse" in r.getMessage() for r in caplog.records)


def test_an_address_is_banned_across_user_names(guarded: Any) -> None:
    login = LoginApp()
    regulator = MemoryRegulator(ip_max_retries=3, find_time=120, ban_time=300, modes=["ip"])
    with guarded(login, regulator=regulator) as base:
        for user in ("carol", "dave", "erin"):
            assert attempt(base, user, "x").status_code == 401
        assert attempt(base, "bob", "battery staple").status_code == 401   # the address
        assert attempt(base, "bob", "battery staple", ip="192.0.2.99").status_code == 200


def test_json_logins_are_regulated_too(guarded: Any) -> None:
    login = LoginApp()
    regulator = MemoryRegulator(max_retries=2, find_time=120, ban_time=300, modes=["pair"])
    with guarded(login, regulator=regulator) as base:
        for _ in range(2):
            assert attempt(base, "alice", "no", as_json=True).status_code == 401
        assert attempt(base, "alice", "correct horse", as_json=True).status_code == 401
        assert login.guesses == ["no", "no"]


# -- A: parallel guesses ----------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_fifty_parallel_guesses_get_three_evaluations_and_no_session(
        flavour: str, store: str, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture) -> None:
    """The attack: 50 wrong passwords at once (over two processes sharing Redis), then the
    right one. Before: every guess was judged (or, with Redis, more than max_retries) and
    the right one could get in; now exactly max_retries are judged — held by the app until
    all three are in, so they truly overlap — the rest are refused."""
    module = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    gate = Gate(parties=3)
    login = LoginApp(gate)
    if store == "memory":
        settings = app_settings()
        shared = MemoryRegulator.from_settings(settings.regulation)
        builds = [shared]
    else:
        url = request.getfixturevalue("redis_server").url
        settings = app_settings(session={"store": "redis", "redis_url": url})
        builds = [None, None]        # each app builds its own regulator from the settings

    def build(regulator: Any) -> Any:
        inner = login.asgi if flavour == "asgi" else login.wsgi
        options: dict[str, Any] = {"delay": fast_delay()}
        if regulator is not None:
            options["regulator"] = regulator
        app = module.LoginGuardMiddleware(inner, settings=settings, **options)
        return module.ClientAddressMiddleware(app, trusted_proxies=["127.0.0.1/32"])

    with ExitStack() as stack:
        bases = [stack.enter_context(server(build(r))) for r in builds]
        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(
                lambda i: attempt(bases[i % len(bases)], "alice", f"guess {i}").status_code,
                range(50)))
        last = attempt(bases[0], "alice", "correct horse")
    assert len(login.guesses) == 3                  # only max_retries guesses were judged
    assert set(statuses) <= {401, 429} and statuses.count(401) >= 3
    assert last.status_code == 401 and "correct horse" not in login.guesses
    assert 200 not in statuses
    events = audit_events(caplog)
    assert [e["reason"] for e in events if e["event"] == "ban"] == ["pair"]


def test_attempts_beyond_the_budget_get_429_at_once(guarded: Any) -> None:
    """The waiting limit docs/guards.md describes: none. While the budget is in flight, the
    next attempt is refused at once with 429 and Retry-After, not queued."""
    gate = Gate(parties=10**6)            # holds the first evaluation until opened
    login = LoginApp(gate)
    regulator = MemoryRegulator(max_retries=1)
    with guarded(login, regulator=regulator) as base, ThreadPoolExecutor(1) as pool:
        first = pool.submit(attempt, base, "alice", "correct horse")
        assert gate.entered.wait(GATE_TIMEOUT)
        second = attempt(base, "alice", "correct horse")
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert second.json() == {"error": "too_many_attempts"}
        gate.opened.set()
        assert first.result().status_code == 200
        assert attempt(base, "alice", "correct horse").status_code == 200
    assert login.guesses == ["correct horse", "correct horse"]


# -- B: the owner gets through --------------------------------------------------------------


def store_settings(request: pytest.FixtureRequest, store: str) -> Settings:
    if store != "redis":
        return app_settings()
    url = request.getfixturevalue("redis_server").url
    return app_settings(session={"store": "redis", "redis_url": url})


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_owner_logs_in_from_her_address_after_an_attack_from_another(
        guarded: Any, store: str, request: pytest.FixtureRequest) -> None:
    """Before: three wrong guesses from anywhere banned the name, so the owner's right
    password was refused for five minutes."""
    login = LoginApp()
    with guarded(login, settings=store_settings(request, store)) as base:
        for i in range(3):
            assert attempt(base, "alice", f"guess {i}", ip="198.51.100.7").status_code == 401
        assert attempt(base, "alice", "x", ip="198.51.100.7").status_code == 401   # banned
        assert attempt(base, "alice", "correct horse", ip="203.0.113.5").status_code == 200
    assert login.guesses == ["guess 0", "guess 1", "guess 2", "correct horse"]


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_device_cookie_passes_a_ban_of_the_user_name(guarded: Any, store: str,
                                                       request: pytest.FixtureRequest) -> None:
    login = LoginApp()
    with guarded(login, settings=store_settings(request, store)) as base:
        first = attempt(base, "alice", "correct horse", ip="203.0.113.5")
        device = device_cookie(first)
        assert first.status_code == 200 and device
        line = next(c for c in first.headers.get_list("set-cookie") if c.startswith(DEVICE))
        assert "HttpOnly" in line and "Secure" in line and "SameSite=Strict" in line
        # An attacker with four addresses uses up the name's budget of 10: banned by name.
        for n in range(4):
            for i in range(3):
                attempt(base, "alice", f"guess {n}.{i}", ip=f"198.51.100.{n}")
        assert attempt(base, "alice", "correct horse", ip="203.0.113.6").status_code == 401
        # The owner's browser, with the device cookie, is regulated by its own counter.
        again = attempt(base, "alice", "correct horse", ip="203.0.113.6", device=device)
        assert again.status_code == 200 and device_cookie(again)
        # A forged cookie is ignored: the name's ban applies.
        assert attempt(base, "alice", "correct horse", ip="203.0.113.6",
                       device="forged").status_code == 401
    assert login.guesses.count("correct horse") == 2


# -- D: fail closed ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FAULTS)
def test_redis_that_cannot_answer_fails_closed(guarded: Any, redis_server: RedisServer,
                                               kind: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    login = LoginApp()
    settings = app_settings(session={"store": "redis", "redis_url": redis_server.url})
    with guarded(login, settings=settings) as base:
        assert attempt(base, "alice", "wrong").status_code == 401
        with fault(redis_server, kind):
            down = attempt(base, "bob", "battery staple")
        assert down.status_code == 503 and down.headers["retry-after"] == "5"
        assert attempt(base, "bob", "battery staple").status_code == 200
    assert login.guesses == ["wrong", "battery staple"]      # never judged without the store
    events = [e for e in audit_events(caplog) if e["event"] == "regulation_unavailable"]
    assert len(events) == 1 and events[0]["outcome"] == "refused"


def test_a_failure_that_cannot_be_recorded_is_refused(guarded: Any,
                                                      redis_server: RedisServer) -> None:
    """Redis fills up between the reservation and the app's answer: the failure cannot be
    counted, so the attempt gets 503, not the app's answer; its reservation keeps counting
    until find_time has passed."""
    client = redis.Redis.from_url(redis_server.url)

    def fill_up() -> None:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")

    login = LoginApp(after_judging=fill_up)
    settings = app_settings(session={"store": "redis", "redis_url": redis_server.url},
                            regulation={"max_retries": 1})
    try:
        with guarded(login, settings=settings) as base:
            assert attempt(base, "alice", "wrong").status_code == 503
            client.config_set("maxmemory", "0")
            login.after_judging = None
            again = attempt(base, "alice", "correct horse")
            assert again.status_code == 429            # the first still holds the budget
    finally:
        client.config_set("maxmemory", "0")
        client.close()


def test_a_success_that_cannot_be_recorded_stands(guarded: Any, redis_server: RedisServer,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Redis stops taking writes between the reservation and the app's answer: the login
    stands (its reservation expires with find_time), and the miss is audited."""
    client = redis.Redis.from_url(redis_server.url)

    def pause_writes() -> None:
        client.execute_command("CLIENT", "PAUSE", "600000", "WRITE")

    login = LoginApp(after_judging=pause_writes)
    settings = app_settings(session={"store": "redis", "redis_url": redis_server.url})
    try:
        with guarded(login, settings=settings) as base:
            ok = attempt(base, "alice", "correct horse")
            assert ok.status_code == 200 and ok.json() == {"welcome": True}
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
        client.close()
    events = [e for e in audit_events(caplog) if e["event"] == "regulation_unavailable"]
    assert [(e["step"], e["outcome"]) for e in events] == [("succeed", "unrecorded")]


# -- E: one prefix per app --------------------------------------------------------------------


def test_two_apps_on_one_redis_keep_their_bans_apart(guarded: Any,
                                                     redis_server: RedisServer) -> None:
    """Before: the prefix applied to sessions only, so a ban on one app banned the user on
    every app sharing the Redis."""
    def settings(prefix: str) -> Settings:
        return app_settings(session={"store": "redis", "redis_url": redis_server.url,
                                     "redis_key_prefix": prefix},
                            regulation={"modes": ["user"], "user_max_retries": 3})

    login_a, login_b = LoginApp(), LoginApp()
    with guarded(login_a, settings=settings("appA:")) as a, \
            guarded(login_b, settings=settings("appB:")) as b:
        for i in range(3):
            assert attempt(a, "ivan", f"guess {i}").status_code == 401
        assert attempt(a, "ivan", "ivan pw").status_code == 401      # banned on A
        assert attempt(b, "ivan", "ivan pw").status_code == 200      # not on B
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        keys = client.keys("*")
    finally:
        client.close()
    assert keys and all(k.startswith(("appA:reg:", "appB:reg:")) for k in keys)


def test_a_ban_is_shared_through_redis(flavour: str, redis_server: RedisServer) -> None:
    login_a, login_b = LoginApp(), LoginApp()
    module = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server

    def build(login: LoginApp) -> Any:
        regulator = RedisRegulator(redis_server.url, user_max_retries=3, find_time=120,
                                   ban_time=300, modes=["user"])
        inner = login.asgi if flavour == "asgi" else login.wsgi
        return module.LoginGuardMiddleware(inner, settings=Settings(), regulator=regulator,
                                           delay=fast_delay())

    with server(build(login_a)) as a, server(build(login_b)) as b:
        assert attempt(a, "alice", "1").status_code == 401
        assert attempt(b, "alice", "2").status_code == 401
        assert attempt(a, "alice", "3").status_code == 401
        assert attempt(b, "alice", "correct horse").status_code == 401   # banned on b too
        assert login_b.guesses == ["2"]


# -- the delay and bad input ----------------------------------------------------------------


def test_every_exit_path_waits_for_the_login_delay(guarded: Any) -> None:
    """Each attempt asks the delay to wait out its time (the delay's clock is injected and
    never moves, so every wait is exactly the floor): unknown user, wrong password, banned,
    and a name the guard refuses."""
    sleeps = Sleeps()
    login = LoginApp()
    regulator = MemoryRegulator(max_retries=1, find_time=120, ban_time=300, modes=["pair"])
    with guarded(login, regulator=regulator, delay=recorded_delay(sleeps)) as base:
        for user, password in (("nobody", "x"), ("alice", "wrong"), ("alice", "banned now")):
            assert attempt(base, user, password).status_code == 401
        assert httpx.post(base + "/login", data={"password": "x"}).status_code == 400
    assert sleeps.waits == [0.08] * 4


def test_attempts_whose_user_name_the_guard_cannot_be_sure_of_are_refused(
        guarded: Any) -> None:
    login = LoginApp()
    regulator = MemoryRegulator(max_retries=2, find_time=120, ban_time=300, modes=["pair"])
    with guarded(login, regulator=regulator) as base:
        twice = httpx.post(base + "/login", content=b"username=decoy&username=alice&password=x",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert twice.status_code == 400
        missing = httpx.post(base + "/login", data={"password": "x"})
        assert missing.status_code == 400
        multipart = httpx.post(base + "/login", files={"username": (None, "alice"),
                                                       "password": (None, "x")})
        assert multipart.status_code == 415
        duplicate_json = httpx.post(base + "/login", content=b'{"username":"d","username":"alice"}',
                                    headers={"Content-Type": "application/json"})
        assert duplicate_json.status_code == 400
        huge = httpx.post(base + "/login", data={"username": "alice", "password": "x" * 70000})
        assert huge.status_code == 413
        assert login.calls == 0
        # One name however it is spelled: fullwidth letters, case, spaces.
        for spelling in ("\uff41\uff4c\uff49\uff43\uff45", " ALICE "):
            assert attempt(base, spelling, "wrong").status_code == 401
        assert attempt(base, "alice", "correct horse").status_code == 401   # banned
        calls = login.calls
        bom = httpx.post(base + "/login", content=b'\xef\xbb\xbf{"username":"bob",'
                         b'"password":"x"}',
                         headers={"Content-Type": "application/vnd.api+json"})
        assert bom.status_code == 401 and login.calls == calls + 1   # read, judged, counted


def test_the_login_path_cannot_be_spelled_around_the_guard(guarded: Any) -> None:
    """POST //login, /./login and /x/../login reach the same login as /login (the
    authorization layer hands the app the normalized path): the guard counts them all."""
    from tests.apps import raw_request

    login = LoginApp()
    form = {"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": "192.0.2.10"}
    with guarded(login) as base:
        for target in ("//login", "/./login", "/x/../login"):
            status, _ = raw_request(base, "POST", target, headers=form,
                                    body=b"username=bob&password=wrong")
            assert status == 401, target
        status, _ = raw_request(base, "POST", "/login", headers=form,
                                body=b"username=bob&password=battery+staple")
        assert status in (401, 429)       # the pair's budget of 3 is spent: not judged
    assert login.guesses == ["wrong", "wrong", "wrong"]


# -- the verdict fails closed -------------------------------------------------------------


@pytest.mark.parametrize("failure", [
    (400, [("Content-Type", "application/json")]),          # FastAPI's OAuth2 tutorial
    (422, [("Content-Type", "application/json")]),
    (500, [("Content-Type", "application/json")]),
    (429, [("Content-Type", "application/json")]),
    (200, [("Content-Type", "text/html; charset=utf-8")]),   # Django's LoginView: the form
    (302, [("Location", "/login?error=1")]),                 # a redirect back to the form
    (303, [("Location", "http://127.0.0.1/login")]),
], ids=["400", "422", "500", "429", "200-html", "302-to-login", "303-absolute-to-login"])
def test_any_answer_but_a_success_counts_as_a_failure(guarded: Any, failure: Failure) -> None:
    """The outside review: 30 wrong passwords answered 400, 422, 500 or 200 were all judged
    (only 401/403 counted). Now an attempt is a success only when the answer is one of
    success_statuses and not the login form again; everything else is a failure."""
    login = LoginApp(failure=failure)
    with guarded(login) as base:
        statuses = [attempt(base, "alice", f"guess {i}").status_code for i in range(10)]
        owner = attempt(base, "alice", "correct horse", ip="203.0.113.5")
    assert len([g for g in login.guesses if g.startswith("guess")]) == 3
    assert set(statuses) == {failure[0]}              # the app's own answer, decoys included
    assert owner.status_code == 200 and device_cookie(owner)


@pytest.mark.parametrize("success", [
    (302, "/account", "text/html"), (303, "https://app.example/next", ""),
    (201, "", "application/json"), (204, "", "")])
def test_a_success_is_a_success_status_that_is_not_the_form(guarded: Any,
                                                            success: tuple[int, str, str]
                                                            ) -> None:
    status, location, content_type = success

    class Answering(LoginApp):
        def judge(self, data: dict[str, Any], path: str = "/login"
                  ) -> tuple[int, list[tuple[str, str]], bytes]:
            got, headers, body = super().judge(data, path)
            if b"welcome" not in body:
                return got, headers, body
            extra = [("Location", location)] if location else []
            extra += [("Content-Type", content_type)] if content_type else []
            return status, extra, b"" if status == 204 else body

    for folded in (False, True):
        login = Answering(failure=(200, [("Content-Type", "text/html")]))
        settings = app_settings(regulation={"names_folded": folded})
        with guarded(login, settings=settings) as base:
            for i in range(2):
                assert attempt(base, "alice", f"guess {i}").status_code == 200   # failures
            ok = attempt(base, "alice", "correct horse")
            assert ok.status_code == status and device_cookie(ok)
            for i in range(3):
                attempt(base, "alice", f"again {i}")
        # The app's names compare as the guard folds them: the success cleared the pair's
        # two failures, three more are judged; otherwise (the default) they stand.
        assert len(login.guesses) == (6 if folded else 4)


def test_success_statuses_are_configured(guarded: Any) -> None:
    """An app that answers a successful login 200 with a page must say so — or answer with
    a redirect; with ``success_statuses = [302]`` a JSON 200 counts as a failure too."""
    login = LoginApp()
    settings = app_settings(regulation={"success_statuses": [302]})
    with guarded(login, settings=settings) as base:
        for _ in range(3):
            assert attempt(base, "alice", "correct horse").status_code == 200
        assert attempt(base, "alice", "correct horse").status_code == 401   # banned
    assert login.guesses == ["correct horse"] * 3
    with pytest.raises(ConfigError, match=r"regulation\.success_statuses"):
        app_settings(regulation={"success_statuses": [200, 401]})


# -- the query string -----------------------------------------------------------------------


def test_credentials_in_the_query_string_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    """A Flask login reading ``request.values`` takes the query string first; the guard read
    only the body, and a banned attempt's decoy replaced only the body's password: 31 of 31
    guesses at alice were checked. Such an attempt is now refused (400) before the app."""
    from flask import Flask, request

    checked: list[str] = []
    app = Flask(__name__)

    @app.post("/login")
    def login() -> tuple[str, int]:
        user, password = request.values.get("username"), request.values.get("password", "")
        if len(password) != 32:
            checked.append(password)
        if user == "alice" and password == "correct horse":
            return "welcome", 200
        return "invalid", 401

    from urllib.parse import urlencode

    guarded_app = wsgi.LoginGuardMiddleware(app, settings=app_settings(), delay=fast_delay())
    with wsgi_server(guarded_app) as base:
        answers = []
        for i in range(30):
            query = urlencode({"username": "alice", "password": f"guess {i}"})
            answers.append(httpx.post(f"{base}/login?{query}", data={
                "username": f"decoy{i % 5}", "password": "x"}).status_code)
        only_password = httpx.post(f"{base}/login?password=guess", data={
            "username": "alice", "password": "x"})
        padded = httpx.post(f"{base}/login?" + "&".join(f"f{n}=1" for n in range(80)),
                            data={"username": "alice", "password": "x"})
        harmless = httpx.post(f"{base}/login?next=/account", data={
            "username": "alice", "password": "correct horse"})
    assert set(answers) == {400} and only_password.status_code == 400
    assert padded.status_code == 400
    assert harmless.status_code == 200
    assert checked == ["correct horse"]
    reasons = {e.get("reason") for e in audit_events(caplog) if e["event"] == "login_failure"}
    assert "credentials in the query string (username)" in reasons
    assert "credentials in the query string (password)" in reasons


def test_credentials_in_the_query_string_are_refused_by_both_flavours(guarded: Any) -> None:
    login = LoginApp()
    with guarded(login) as base:
        answer = httpx.post(base + "/login?username=alice", data={"username": "alice",
                                                                  "password": "x"})
        assert answer.status_code == 400 and answer.json() == {"error": "bad_request"}
    assert login.calls == 0


# -- the app raises, the request is cancelled -------------------------------------------------


def test_an_exception_in_the_app_counts_as_a_failure(flavour: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Before: the reservation stayed unsettled (no login_failure line for fail2ban) and
    held the budget for find_time — ten such requests gave the owner 429 for two minutes."""
    module = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    regulator = MemoryRegulator(clock=Clock())
    login = LoginApp(raise_on="boom")
    app = module.LoginGuardMiddleware(login.asgi if flavour == "asgi" else login.wsgi,
                                      settings=app_settings(), regulator=regulator,
                                      delay=fast_delay())
    app = module.ClientAddressMiddleware(app, trusted_proxies=["127.0.0.1/32"])
    with server(app) as base:
        statuses = [attempt(base, "alice", "boom", ip=f"198.51.100.{i}").status_code
                    for i in range(3)]
        owner = attempt(base, "alice", "correct horse", ip="203.0.113.1")
    assert statuses == [500, 500, 500] and owner.status_code == 200
    pending = sum(len(s.pending) for t in regulator._tables.values() for s in t.values())
    assert pending == 0
    failures = [e for e in audit_events(caplog) if e["event"] == "login_failure"]
    assert [e["reason"] for e in failures] == ["the application raised before answering"] * 3
    assert {e["remote_ip"] for e in failures} == {f"198.51.100.{i}" for i in range(3)}


def test_a_cancelled_attempt_is_settled_as_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    """A timeout middleware (or a server cancelling on disconnect) cancels the task between
    reserve and settle: the attempt counts as a failure, and the cancellation goes on."""
    regulator = MemoryRegulator(clock=Clock())
    started_key = "test.started"

    async def stuck_login(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        scope[started_key].set()
        await asyncio.Event().wait()          # never answers: cancelled from outside

    guard = asgi.LoginGuardMiddleware(stuck_login, settings=app_settings(),
                                      regulator=regulator, delay=fast_delay())
    cancelled: list[bool] = []

    async def cancelling(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        scope[started_key] = started = asyncio.Event()
        task = asyncio.ensure_future(guard(scope, receive, send))
        await started.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled.append(True)
        await send({"type": "http.response.start", "status": 504, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with uvicorn_server(cancelling) as base:
        for _ in range(3):
            assert httpx.post(base + "/login", data={"username": "alice",
                                                     "password": "x"}).status_code == 504
        banned = httpx.post(base + "/login", data={"username": "alice", "password": "x"})
    assert cancelled == [True] * 4          # the banned one reached the app too (a decoy)
    pending = sum(len(s.pending) for t in regulator._tables.values() for s in t.values())
    assert pending == 0
    reasons = [e["reason"] for e in audit_events(caplog) if e["event"] == "login_failure"]
    assert reasons[:3] == ["the application cancelled before answering"] * 3
    assert reasons[3] == "banned (pair)" and banned.status_code == 504


# -- device cookies: exact names, one application ------------------------------------------------


def test_own_account_device_cookies_give_no_extra_guesses(guarded: Any) -> None:
    """An app whose names are case-sensitive (a dict): the attacker's own ``ALICE`` earned
    device cookies naming ``alice``, each a fresh budget, and its successes cleared alice's
    failures. 5 rounds of a login of their own, then 3 guesses with the cookie, each round
    from another address: 15 judged before, the name's 10 now."""
    users = {**USERS, "ALICE": "attacker's own"}
    login = LoginApp(users=users)
    with guarded(login) as base:
        for r in range(5):
            ip = f"198.51.100.{r}"
            own = attempt(base, "ALICE", "attacker's own", ip=ip)
            device = device_cookie(own) if own.status_code == 200 else None
            for i in range(3):
                attempt(base, "alice", f"guess {r}.{i}", ip=ip, device=device)
        assert attempt(base, "alice", "correct horse", ip="203.0.113.9").status_code == 401
    assert len([g for g in login.guesses if g.startswith("guess")]) == 10


@pytest.mark.parametrize("prefixes", [("appA:", "appB:"), ("secure_mw:", "secure_mw:")],
                         ids=["two-prefixes", "one-prefix"])
def test_a_device_cookie_of_another_app_gives_no_extra_guesses(
        guarded: Any, prefixes: tuple[str, str]) -> None:
    """Two apps with the same key ring and cookie name: cookies minted on A (where the
    attacker's alice is their own) were valid for B's alice. With its own key prefix B
    ignores them (the pair's 3 guesses); with the same prefix they still count under the
    name's total of device attempts (10)."""
    on_a, on_b = LoginApp(), LoginApp()
    sa, sb = (app_settings(session={"redis_key_prefix": p}) for p in prefixes)
    with guarded(on_a, settings=sa) as a, guarded(on_b, settings=sb) as b:
        for r in range(5):
            device = device_cookie(attempt(a, "alice", "correct horse"))
            assert device
            for i in range(3):
                attempt(b, "alice", f"g{r}.{i}", device=device)
    assert len(on_b.guesses) == (3 if prefixes[0] != prefixes[1] else 10)


# -- the login path as the app routes it -----------------------------------------------------


@pytest.mark.parametrize("target", ["/./login", "/x/../login", "//login"])
def test_a_dot_segment_path_behind_access_rules_is_regulated(flavour: str, target: str,
                                                             tmp_path: Any) -> None:
    """The outside review's finding 1 (fixed by RequestView.route_path): with access rules
    the app receives the normalized path, so the guard must count /./login as /login."""
    from tests.apps import raw_request

    settings = app_settings(local_users={"file": str(tmp_path / "users.toml")},
                            session={"store": "memory"}, regulation={"paths": ["/login"]},
                            access_control={"default_policy": "authenticated", "rules": [
                                {"resources": ["^/login$"], "policy": "bypass"}]})
    login = LoginApp()
    module = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with server(module.protect(login.asgi if flavour == "asgi" else login.wsgi,
                               settings)) as base:
        for i in range(10):
            raw_request(base, "POST", target, headers=form,
                        body=f"username=alice&password=guess+{i}".encode())
    assert set(login.paths) == {"/login"}
    assert len(login.guesses) == 3


# -- several worker processes, Unix sockets ---------------------------------------------------


PY = sys.executable
BYPASS = json.dumps([{"resources": ["^/"], "policy": "bypass"}])


def login_command(server: str, workers: int, *, port: int = 0,
                  uds: Path | None = None) -> list[str]:
    """A real server with ``workers`` processes for tests.e2e_app's counting login."""
    if server == "uvicorn":
        bind = ["--uds", str(uds)] if uds else ["--host", "127.0.0.1", "--port", str(port)]
        return [PY, "-m", "uvicorn", "--factory", "tests.e2e_app:login_asgi_app", *bind,
                "--workers", str(workers), "--log-level", "warning", "--lifespan", "off",
                "--no-proxy-headers"]
    pytest.importorskip("gunicorn")
    bind_to = f"unix:{uds}" if uds else f"127.0.0.1:{port}"
    return [PY, "-m", "gunicorn", "-w", str(workers), "-b", bind_to, "--log-level",
            "warning", "tests.e2e_app:login_wsgi_app()"]


def login_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update({"E2E_COUNT_FILE": str(tmp_path / "checked.txt"), "PYTHONUNBUFFERED": "1",
                "E2E_WORKER_CHECK_INTERVAL": "0", "E2E_FAST_LOGIN_DELAY": "1",
                "SECURE_MW_KEYS__ENCRYPTION_KEYS": json.dumps([KEY]),
                "SECURE_MW_LOCAL_USERS__FILE": str(tmp_path / "users.toml"),
                "SECURE_MW_REGULATION__PATHS": json.dumps(["/login"]),
                "SECURE_MW_ACCESS_CONTROL__RULES": BYPASS,
                "SECURE_MW_SESSION__STORE": "cookie", **extra})
    (tmp_path / "checked.txt").touch()
    return env


def checked(tmp_path: Path) -> list[str]:
    return (tmp_path / "checked.txt").read_text(encoding="utf-8").splitlines()


def guess_on(base: str, n: int, client: httpx.Client | None = None, *, user: str = "alice",
             ip: str | None = None) -> int:
    headers = {"X-Forwarded-For": ip} if ip else {}
    if client is not None:
        return client.post("/login", data={"username": user, "password": f"guess {n}"},
                           headers=headers).status_code
    with httpx.Client(timeout=60) as fresh:    # a connection of its own: any worker
        return fresh.post(base + "/login", data={"username": user,
                                                 "password": f"guess {n}"}).status_code


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_workers_share_one_budget_with_cookie_sessions(server: str, tmp_path: Path,
                                                       redis_server: RedisServer) -> None:
    """The outside review: with cookie sessions and session.redis_url set, each of 4
    workers kept its own budget (200 parallel + 40 sequential guesses: 12 judged). With a
    Redis URL the budget is shared: the pair's 3, however many workers."""
    port = free_port()
    env = login_env(tmp_path, SECURE_MW_SESSION__REDIS_URL=redis_server.url)
    with ServerProcess(login_command(server, 4, port=port), port=port, env=env,
                       log=tmp_path / "server.log") as process:
        with ThreadPoolExecutor(30) as pool:
            statuses = list(pool.map(lambda n: guess_on(process.url, n), range(60)))
        statuses += [guess_on(process.url, 100 + n) for n in range(20)]
    lines = checked(tmp_path)
    assert len(lines) == 3, lines
    assert set(statuses) <= {401, 429}
    assert "kept in this process's memory" not in process.log()


def test_workers_without_redis_say_so(tmp_path: Path) -> None:
    """Without a Redis URL the budgets are per worker (documented), and a worker that sees
    siblings says so once."""
    port = free_port()
    with ServerProcess(login_command("gunicorn", 4, port=port), port=port,
                       env=login_env(tmp_path), log=tmp_path / "server.log") as process:
        with ThreadPoolExecutor(30) as pool:
            list(pool.map(lambda n: guess_on(process.url, n), range(60)))
        log = process.log()
    assert "login regulation (budgets and bans) and used TOTP codes are kept in this " \
           "process's memory while several worker processes" in log
    assert "Set sqlite.path to keep them in a file every worker of this host shares" in log
    assert 3 <= len(checked(tmp_path)) <= 12


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_attempts_over_a_unix_socket_have_an_address_budget(server: str,
                                                            tmp_path: Path) -> None:
    """Behind a Unix socket the peer has no address: the pair and address budgets were
    skipped, one client sprayed 60 names, all 60 judged. Such attempts now share one
    address budget (20), with a warning; trusting the socket's proxy ("unix") gives each
    client its own (from X-Forwarded-For)."""
    for trusted in (False, True):
        run = tmp_path / ("trusted" if trusted else "untrusted")
        run.mkdir()
        sock = run / "app.sock"
        extra = {"SECURE_MW_SERVER__TRUSTED_PROXIES": json.dumps(["unix"])} if trusted else {}
        with ServerProcess(login_command(server, 1, uds=sock), uds=sock,
                           env=login_env(run, **extra), log=run / "server.log") as process, \
                httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                             base_url="http://localhost", timeout=30) as client:
            answers = [guess_on("", n, client, user=f"user{n}", ip="198.51.100.7")
                       for n in range(30)]
            others = [guess_on("", n, client, user=f"other{n}", ip="198.51.100.8")
                      for n in range(5)]
            log = process.log()
        if trusted:
            assert len(checked(run)) == 25            # 20 from .7, 5 from .8
            assert '"remote_ip":"198.51.100.7"' in log and "without a client address" not in log
        else:
            assert len(checked(run)) == 20            # one shared budget for everyone
            assert answers.count(401) == 30 and others == [401] * 5    # banned: decoys
            assert "without a client address" in log and 'server.trusted_proxies' in log
