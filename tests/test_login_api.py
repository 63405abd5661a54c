"""The JSON sign-in for single-page apps end to end on real servers (uvicorn and a threaded
WSGI server): the same regulation, delay, single-use state and identical failures as the
form, CSRF vectors refused before anything is judged, JSON errors and never a 500, and the
second factor in JSON too."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.guards.regulation import MemoryRegulator
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.session import MemorySessionStore
from tests.apps import FLAVOURS, asgi_inner, browser, uvicorn_server, wsgi_inner, wsgi_server
from tests.test_local_login_e2e import FAST, GATE_TIMEOUT, KEY, counting

API = "/.auth/api/login"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def users(tmp_path: Path) -> UsersFile:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="correct horse", display_name="Alice Example",
              email="alice@example.com", groups=["admins"])
    users.add("bob", password="battery staple")
    users.add("carol", password="plum orchard 42")
    users.set_disabled("carol", True)
    return users


class Recording(LoginDelay):
    """The login delay on a frozen clock with a fixed jitter draw: every attempt's wait is
    recorded instead of slept, so equal waits show equal treatment (no wall clock)."""

    def __init__(self) -> None:
        self.waits: list[tuple[bool, float]] = []

        async def asleep(seconds: float) -> None:
            await asyncio.sleep(0)

        super().__init__(floor=0.2, seed=0.2, jitter=0.1, clock=lambda: 100.0,
                         sleep=lambda s: None, asleep=asleep, rng=lambda: 0.5)

    def _settle(self, started: float, success: bool) -> float:
        wait = super()._settle(started, success)
        self.waits.append((success, wait))
        return wait


@pytest.fixture
def app(flavour: str, users: UsersFile) -> Callable[..., Any]:
    @contextmanager
    def run(sections: dict[str, Any] | None = None, **options: Any) -> Iterator[str]:
        mapping: dict[str, Any] = {"keys": {"encryption_keys": [KEY]},
                                   "local_users": {"file": str(users.path)},
                                   "server": {"trusted_proxies": ["127.0.0.1/32"]}}
        mapping.update(sections or {})
        settings = Settings.from_mapping(mapping, environ={})
        options.setdefault("users", users)
        if settings.session.store != "redis":
            options.setdefault("store", MemorySessionStore())
        options.setdefault("delay", LoginDelay(floor=0.01, seed=0.01, jitter=0.001))
        module = asgi if flavour == "asgi" else wsgi
        inner = asgi_inner() if flavour == "asgi" else wsgi_inner
        server = uvicorn_server if flavour == "asgi" else wsgi_server
        with server(module.protect(inner, settings, **options)) as url:
            yield url

    return run


def state(client: httpx.Client, base: str, **headers: str) -> str:
    got = client.get(base + API, headers=headers)
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    assert got.headers["cache-control"] == "no-store"
    return str(got.json()["state"])


def post(client: httpx.Client, base: str, body: dict[str, Any], **headers: str
         ) -> httpx.Response:
    return client.post(base + API, content=json.dumps(body), headers={**JSON, **headers})


def json_sign_in(client: httpx.Client, base: str, user: str, password: str,
                 **extra: Any) -> httpx.Response:
    return post(client, base, {"state": state(client, base), "username": user,
                               "password": password, **extra})


def audit(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    events = []
    for record in caplog.records:
        if record.name == "secure_mw.audit":
            try:
                event = json.loads(record.getMessage())
            except ValueError:
                continue
            if event.get("event") == name:
                events.append(event)
    return events


def test_json_sign_in_then_the_app_sees_who_it_is(app: Any) -> None:
    with app() as base, browser() as client:
        done = json_sign_in(client, base, "alice", "correct horse", remember_me=True)
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["authenticated"] and body["sub"] == "alice" and body["auth_level"] == 1
        assert body["second_factor_enrolled"] is False and body["return_to"] == "/"
        assert body["csrf_token"] == client.get(base + "/.auth/me").json()["csrf_token"]
        session = next(c for c in done.headers.get_list("set-cookie")
                       if c.startswith("__Host-secure_mw_session="))
        assert "Max-Age=2592000" in session and "HttpOnly" in session
        assert client.get(base + "/hello").json()["sub"] == "alice"


def test_every_failure_gets_the_same_json_answer_and_the_same_wait(
        app: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Unknown user, wrong password, disabled user, banned name: one status, one body (the
    next state aside), and each one waited for the same target (the delay's mechanism on a
    frozen clock: base + the same jitter draw)."""
    caplog.set_level(logging.INFO, logger="secure_mw.audit")
    delay = Recording()
    regulator = MemoryRegulator(max_retries=3, find_time=120, ban_time=300, modes=["pair"])
    with app(regulator=regulator, delay=delay) as base, browser() as client:
        unknown = json_sign_in(client, base, "nobody", "x")
        wrong = json_sign_in(client, base, "alice", "wrong")
        disabled = json_sign_in(client, base, "carol", "plum orchard 42")
        for i in range(3):
            json_sign_in(client, base, "bob", f"guess {i}")
        banned = json_sign_in(client, base, "bob", "battery staple")
    answers = [unknown, wrong, disabled, banned]

    def shape(response: httpx.Response) -> tuple[int, dict[str, Any]]:
        body = response.json()
        assert len(body.pop("state")) > 20
        return response.status_code, body

    assert {json.dumps(shape(r)) for r in answers} == {json.dumps(
        [401, {"error": "invalid_credentials", "message": "Incorrect user name or password."}])}
    assert len(delay.waits) == 7 and {w for ok, w in delay.waits} == {0.25}
    assert not any(ok for ok, _ in delay.waits)
    reasons = [e.get("reason", "") for e in audit(caplog, "login_failure")]
    assert any(r.startswith("banned") for r in reasons)
    assert not any("battery staple" in r.getMessage() for r in caplog.records)


def test_form_and_text_posts_are_refused_before_any_check(
        app: Any, users: UsersFile, caplog: pytest.LogCaptureFixture) -> None:
    """The cross-site vectors a page can send without a CORS preflight (a form post, text/plain
    with a JSON body, multipart) and a request the browser marks cross-site: refused with no
    password checked and nothing claimed; the same state then still works in JSON."""
    counted = counting(users)
    with app(users=counted) as base, browser() as client:
        token = state(client, base)
        fields = {"state": token, "username": "alice", "password": "correct horse"}
        refused = [
            client.post(base + API, data=fields),
            client.post(base + API, content=json.dumps(fields),
                        headers={"Content-Type": "text/plain"}),
            client.post(base + API, files={"state": (None, token)}, data=fields),
            client.post(base + API, content=json.dumps(fields),
                        headers={"Content-Type": "application/x-www-form-urlencoded"}),
            client.post(base + API, content=json.dumps(fields)),
        ]
        cross = post(client, base, fields, **{"Sec-Fetch-Site": "cross-site"})
        assert [r.status_code for r in refused] == [415] * 5 and cross.status_code == 403
        assert {r.json()["error"] for r in refused} == {"unsupported_media_type"}
        assert cross.json()["error"] == "cross_site"
        assert counted.checks == []
        assert client.get(base + "/hello").status_code == 302
        same_site = post(client, base, fields, **{"Sec-Fetch-Site": "same-origin"})
        assert same_site.status_code == 200 and counted.checks == ["correct horse"]
    assert len(audit(caplog, "csrf_failure")) == 6


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b'"x"', b"null", b'{"username": 1, "password": "x", "state": "s"}',
    b'{"username": "a", "username": "b"}', b'{"password": NaN}', b'{"other": "x"}',
    b'{"remember_me": "yes"}', b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000,
    b'{"state": "' + b"A" * 2000 + b'"}', b'{"username": "\\ud800"}'])
def test_malformed_bodies_get_a_json_4xx_never_a_500(app: Any, body: bytes) -> None:
    with app() as base, browser() as client:
        state(client, base)
        got = client.post(base + API, content=body, headers=JSON)
    assert 400 <= got.status_code < 500, got.text
    assert got.headers["content-type"] == "application/json"
    assert got.json()["error"] in ("bad_request", "state_invalid", "invalid_credentials")


def test_a_body_too_large_is_refused(app: Any) -> None:
    with app() as base, browser() as client:
        got = client.post(base + API, content=b'{"password": "' + b"x" * 70_000 + b'"}',
                          headers=JSON)
    assert got.status_code == 413
    assert got.headers["content-type"] == "application/json", got.text   # not a page
    assert got.json()["error"] == "too_large"


def test_the_state_works_once_and_only_with_its_cookie(app: Any) -> None:
    with app() as base, browser() as client, browser() as other:
        token = state(client, base)
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        body = {"state": token, "username": "alice", "password": "wrong"}
        first = post(client, base, body)
        # the very request again, its cookie included (the browser's cookie no longer
        # holds the state): claimed once in the store, so refused
        replay = httpx.post(base + API, content=json.dumps(body),
                            headers={**JSON, "Cookie": cookie})
        again = post(client, base, body)
        assert first.status_code == 401 and replay.status_code == 400
        assert replay.json()["error"] == "state_used"
        assert again.status_code == 400 and again.json()["error"] == "state_invalid"
        stolen = post(other, base, {**body, "state": state(client, base),
                                    "password": "correct horse"})
        assert stolen.status_code == 400 and stolen.json()["error"] == "state_invalid"
        # every refusal hands out the next state: the app retries without another GET
        retry = post(client, base, {"state": first.json()["state"], "username": "alice",
                                    "password": "correct horse"})
        assert retry.status_code == 200


def test_other_methods_get_405(app: Any) -> None:
    with app() as base, browser() as client:
        got = client.put(base + API, content=b"{}", headers=JSON)
        assert got.status_code == 405 and got.headers["allow"] == "GET, POST"
        assert got.json() == {"error": "method_not_allowed"}


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_fifty_parallel_wrong_json_attempts_then_the_right_one(
        app: Any, users: UsersFile, store: str, request: pytest.FixtureRequest) -> None:
    """50 wrong passwords for one name at once on the JSON endpoint, then the right one:
    exactly max_retries (3) are checked, held until all three are in so they truly overlap;
    the rest are refused, and the right one is banned."""
    counted = counting(users, hold=3)
    sections: dict[str, Any] = {}
    if store == "redis":
        url = request.getfixturevalue("redis_server").url
        # 50 requests at once on a loaded machine can keep the event loop from reading a
        # reply within the guards' 0.5 s default: that is a 503 (fail closed), not what
        # this test is about, so the commands get more time.
        sections = {"redis": {"url": url, "command_timeout": 5.0},
                    "session": {"store": "redis"}}
    with app(sections, users=counted) as base:
        clients = [browser() for _ in range(50)]
        tokens = [state(c, base) for c in clients]

        def guess(i: int) -> int:
            return post(clients[i], base, {"state": tokens[i], "username": "alice",
                                           "password": f"guess {i}"}).status_code

        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(guess, range(50)))
        with browser() as client:
            last = json_sign_in(client, base, "alice", "correct horse")
            assert last.status_code == 401
            assert client.get(base + "/hello").status_code == 302
        for c in clients:
            c.close()
    assert len(counted.checks) == 3 and "correct horse" not in counted.checks
    assert set(statuses) <= {401, 429} and statuses.count(401) >= 3


def test_too_many_at_once_get_429_with_retry_after(app: Any, users: UsersFile) -> None:
    counted = counting(users, hold=10**6)
    with app(users=counted, regulator=MemoryRegulator(max_retries=1)) as base, \
            ThreadPoolExecutor(1) as pool, browser() as c1, browser() as c2:
        first = pool.submit(json_sign_in, c1, base, "alice", "correct horse")
        assert counted.entered.wait(GATE_TIMEOUT)
        busy = json_sign_in(c2, base, "alice", "correct horse")
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"] == "too_many_attempts" and busy.json()["state"]
        counted.opened.set()
        assert first.result().status_code == 200
    assert counted.checks == ["correct horse"]


def test_second_factor_in_json(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    from secure_mw.login.totp import TOTP, TOTPStore
    from tests.clock import Clock

    clock = Clock()
    totp = TOTP(issuer="secure_mw tests", clock=clock)
    store = TOTPStore()
    url = "/.auth/api/2fa"
    with app(totp=totp, totp_store=store) as base, browser() as client:
        assert client.get(base + url).status_code == 401
        signed = json_sign_in(client, base, "alice", "correct horse").json()
        csrf = signed["csrf_token"]
        one_factor = client.cookies.get("__Host-secure_mw_session")
        enrol = client.get(base + url).json()
        assert enrol["enrolled"] is False and enrol["otpauth_uri"].startswith("otpauth://")
        body = {"enrol": enrol["enrol"], "code": totp.code(enrol["secret"])}
        no_token = client.post(base + url, content=json.dumps(body), headers=JSON)
        assert no_token.status_code == 403 and no_token.json()["error"] == "csrf"
        as_form = client.post(base + url, data=body, headers={"X-CSRF-Token": csrf})
        assert as_form.status_code == 415
        wrong = client.post(base + url, content=json.dumps({**body, "code": "000000"}),
                            headers={**JSON, "X-CSRF-Token": csrf})
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_code"
        assert store.get("alice") is None
        done = client.post(base + url, content=json.dumps(body),
                           headers={**JSON, "X-CSRF-Token": csrf})
        assert done.status_code == 200 and done.json()["auth_level"] == 2, done.text
        assert store.get("alice") is not None
        assert client.cookies.get("__Host-secure_mw_session") != one_factor
        assert client.get(base + "/.auth/me").json()["auth_level"] == 2
        assert client.get(base + url).json() == {"enrolled": True, "auth_level": 2}
        # next time: a code only, and the one just used is refused
        client.cookies.clear()
        again = json_sign_in(client, base, "alice", "correct horse").json()
        assert again["second_factor_enrolled"] is True
        assert client.get(base + url).json() == {"enrolled": True, "auth_level": 1}
        replay = client.post(base + url, content=json.dumps({"code": body["code"]}),
                             headers={**JSON, "X-CSRF-Token": again["csrf_token"]})
        assert replay.status_code == 401
    assert audit(caplog, "csrf_failure")


def test_gunicorn_workers_share_the_json_budget(tmp_path: Path, redis_server: Any) -> None:
    """gunicorn, 2 workers of 8 threads, sessions and regulation in Redis: 30 parallel wrong
    JSON attempts (each on a fresh connection, so on either worker) are checked 3 times —
    the pair's budget — counted by the audit lines of a checked password."""
    pytest.importorskip("gunicorn")
    import os
    import sys

    from tests.servers import ServerProcess, free_port

    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="correct horse")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update({"PYTHONUNBUFFERED": "1", "E2E_WORKER_CHECK_INTERVAL": "0",
                "SECURE_MW_KEYS__ENCRYPTION_KEYS": json.dumps([KEY]),
                "SECURE_MW_LOCAL_USERS__FILE": str(users.path),
                "SECURE_MW_SESSION__STORE": "redis",
                "SECURE_MW_SESSION__REDIS_URL": redis_server.url})
    log = tmp_path / "gunicorn.log"
    with ServerProcess([sys.executable, "-m", "gunicorn", "-w", "2", "--threads", "8",
                        "-b", f"127.0.0.1:{port}", "tests.e2e_app:wsgi_app()"],
                       port=port, env=env, log=log) as server:
        base = server.url

        def guess(i: int) -> int:
            with browser() as client:
                return json_sign_in(client, base, "alice", f"guess {i}").status_code

        with ThreadPoolExecutor(30) as pool:
            statuses = list(pool.map(guess, range(30)))
        text = server.log()
    assert set(statuses) <= {401, 429}, statuses
    assert text.count('"reason":"invalid credentials"') == 3, text[-3000:]
    assert "Traceback" not in text
