"""LoginGuardMiddleware end to end on real servers, both flavours: bans after repeated
failures (memory and a real redis-server shared by two app instances), a banned attempt
answered exactly like a wrong password without reaching the app, parallel guesses that
cannot outrun the ban, and the login delay on every exit path."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.guards.regulation import MemoryRegulator, RedisRegulator
from secure_mw.guards.timing import LoginDelay
from tests.apps import FLAVOURS, uvicorn_server, wsgi_server
from tests.servers import RedisServer

USERS = {"alice": "correct horse", "bob": "battery staple"}


class LoginApp:
    """A login endpoint of the kind users write: 200 or 401, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.passwords: list[str] = []
        self._lock = threading.Lock()

    @property
    def guesses(self) -> list[str]:
        """The passwords the app was asked to check, decoys (a banned attempt's stand-in:
        32 random characters) left out."""
        return [p for p in self.passwords if len(p) != 32]

    def judge(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        if "json" in content_type:
            data = json.loads(body.removeprefix(b"\xef\xbb\xbf") or b"{}")
        else:
            data = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        with self._lock:
            self.calls += 1
            self.passwords.append(str(data.get("password")))
        known = USERS.get(data.get("username", ""))
        if known is not None and known == data.get("password"):
            return 200, b'{"welcome": true}'
        return 401, b'{"error": "invalid username or password"}'

    async def asgi(self, scope: dict[str, Any], receive: Callable[..., Any],
                   send: Callable[..., Any]) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode()
        status, out = self.judge(body, content_type)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"x-login", b"v1"),
            (b"set-cookie", b"tracking=1")]})
        await send({"type": "http.response.body", "body": out})

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        status, out = self.judge(body, environ.get("CONTENT_TYPE", ""))
        start_response(f"{status} {'OK' if status == 200 else 'Unauthorized'}", [
            ("Content-Type", "application/json"), ("X-Login", "v1"),
            ("Set-Cookie", "tracking=1")])
        return [out]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def fast_delay() -> LoginDelay:
    return LoginDelay(floor=0.03, seed=0.03, jitter=0.001)


@pytest.fixture
def guarded(flavour: str) -> Callable[..., Any]:
    module = asgi if flavour == "asgi" else wsgi

    @contextmanager
    def run(login: LoginApp, **options: Any) -> Iterator[str]:
        options.setdefault("delay", fast_delay())
        inner = login.asgi if flavour == "asgi" else login.wsgi
        app = module.LoginGuardMiddleware(inner, settings=Settings(), **options)
        server = uvicorn_server if flavour == "asgi" else wsgi_server
        with server(app) as url:
            yield url

    return run


def attempt(base: str, user: str, password: str, *, as_json: bool = False) -> httpx.Response:
    if as_json:
        return httpx.post(base + "/login", json={"username": user, "password": password})
    return httpx.post(base + "/login", data={"username": user, "password": password})


def comparable(response: httpx.Response) -> tuple[int, str, bytes, list[tuple[str, str]]]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in ("date",)]
    return response.status_code, response.reason_phrase, response.content, sorted(headers)


def test_a_ban_answers_exactly_like_a_wrong_password(guarded: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    login = LoginApp()
    regulator = MemoryRegulator(max_retries=3, find_time=120, ban_time=300, modes=["user"])
    with guarded(login, regulator=regulator) as base:
        assert attempt(base, "alice", "correct horse").status_code == 200
        wrong = [attempt(base, "alice", f"guess {i}") for i in range(3)]
        assert [w.status_code for w in wrong] == [401, 401, 401]
        banned = attempt(base, "alice", "correct horse")       # right password, banned
        assert comparable(banned) == comparable(wrong[-1])
        assert "correct horse" not in login.passwords[1:]       # the app saw a decoy instead
        assert login.guesses == ["correct horse", "guess 0", "guess 1", "guess 2"]
        assert attempt(base, "bob", "battery staple").status_code == 200   # others unaffected
    events = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "secure_mw.audit"]
    bans = [e for e in events if e["event"] == "ban"]
    assert len(bans) == 1 and bans[0]["user"] == "alice" and bans[0]["reason"] == "user"
    failures = [e for e in events if e["event"] == "login_failure"]
    assert len(failures) == 4 and failures[-1]["reason"] == "banned (user)"
    assert not any("correct horse" in r.getMessage() for r in caplog.records)


def test_an_address_is_banned_across_user_names(guarded: Any) -> None:
    login = LoginApp()
    regulator = MemoryRegulator(max_retries=3, find_time=120, ban_time=300, modes=["ip"])
    with guarded(login, regulator=regulator) as base:
        for user in ("carol", "dave", "erin"):
            assert attempt(base, user, "x").status_code == 401
        assert attempt(base, "bob", "battery staple").status_code == 401   # the address


def test_parallel_guesses_cannot_outrun_the_ban(guarded: Any) -> None:
    login = LoginApp()
    regulator = MemoryRegulator(max_retries=3, find_time=120, ban_time=300, modes=["user"])
    with guarded(login, regulator=regulator) as base, ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda i: attempt(base, "bob", f"guess {i}").status_code,
                                 range(12)))
    assert statuses == [401] * 12
    assert len(login.guesses) == 3     # only max_retries guesses reached the app


def test_json_logins_are_regulated_too(guarded: Any) -> None:
    login = LoginApp()
    regulator = MemoryRegulator(max_retries=2, find_time=120, ban_time=300, modes=["user"])
    with guarded(login, regulator=regulator) as base:
        for _ in range(2):
            assert attempt(base, "alice", "no", as_json=True).status_code == 401
        assert attempt(base, "alice", "correct horse", as_json=True).status_code == 401
        assert login.guesses == ["no", "no"]


def test_every_exit_path_waits_for_the_login_delay(guarded: Any) -> None:
    login = LoginApp()
    regulator = MemoryRegulator(max_retries=1, find_time=120, ban_time=300, modes=["user"])
    delay = LoginDelay(floor=0.08, seed=0.08, jitter=0.001)
    with guarded(login, regulator=regulator, delay=delay) as base:
        for user, password in (("nobody", "x"), ("alice", "wrong"), ("alice", "banned now")):
            started = time.monotonic()
            assert attempt(base, user, password).status_code == 401
            assert time.monotonic() - started >= 0.08


def test_a_ban_is_shared_through_redis(flavour: str, redis_server: RedisServer) -> None:
    login_a, login_b = LoginApp(), LoginApp()
    module = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server

    def build(login: LoginApp) -> Any:
        regulator = RedisRegulator(redis_server.url, max_retries=3, find_time=120,
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
        redis_server.stop()
        down = attempt(a, "bob", "battery staple")
        assert down.status_code == 503                        # fail closed
        redis_server.start()


def test_attempts_whose_user_name_the_guard_cannot_be_sure_of_are_refused(
        guarded: Any) -> None:
    login = LoginApp()
    regulator = MemoryRegulator(max_retries=2, find_time=120, ban_time=300, modes=["user"])
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
