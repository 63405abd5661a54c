"""LoginGuardMiddleware end to end on real servers, both flavours: bans after repeated
failures (memory and a real redis-server shared by two app instances), a banned attempt
answered exactly like a wrong password without reaching the app, parallel guesses that
cannot outrun the budget, the owner let through where it is safe (pair budget, device
cookie), fail closed when Redis cannot answer, one key prefix per app, and the login delay
on every exit path."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import redis

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.guards.regulation import MemoryRegulator, RedisRegulator
from secure_mw.guards.timing import LoginDelay
from tests.apps import FLAVOURS, uvicorn_server, wsgi_server
from tests.clock import Clock
from tests.redis_faults import FAULTS, fault
from tests.servers import RedisServer

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


class LoginApp:
    """A login endpoint of the kind users write: 200 or 401, counting its calls."""

    def __init__(self, gate: Gate | None = None,
                 after_judging: Callable[[], None] | None = None) -> None:
        self.calls = 0
        self.passwords: list[str] = []
        self.gate = gate or Gate()
        self.after_judging = after_judging
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

    def judge(self, data: dict[str, Any]) -> tuple[int, bytes]:
        with self._lock:
            self.calls += 1
            self.passwords.append(str(data.get("password")))
        if self.after_judging is not None:
            self.after_judging()
        known = USERS.get(data.get("username", ""))
        if known is not None and known == data.get("password"):
            return 200, b'{"welcome": true}'
        return 401, b'{"error": "invalid username or password"}'

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
        status, out = self.judge(data)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"x-login", b"v1"),
            (b"set-cookie", b"tracking=1")]})
        await send({"type": "http.response.body", "body": out})

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = self._data(environ["wsgi.input"].read(length), environ.get("CONTENT_TYPE", ""))
        if self._real(data):
            self.gate.arrive()
            self.gate.wait()
        status, out = self.judge(data)
        start_response(f"{status} {'OK' if status == 200 else 'Unauthorized'}", [
            ("Content-Type", "application/json"), ("X-Login", "v1"),
            ("Set-Cookie", "tracking=1")])
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
