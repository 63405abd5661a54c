"""The built-in password login end to end on real servers, both flavours: the login form,
sessions, the same answer for every kind of failure, bans, remember-me, logout, and the
upgrade of an outdated password hash."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.guards.regulation import MemoryRegulator, RedisRegulator
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.session import MemorySessionStore
from tests.apps import FLAVOURS, asgi_inner, browser, uvicorn_server, wsgi_inner, wsgi_server
from tests.redis_faults import FAULTS, fault
from tests.servers import RedisServer

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
WEAKER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def users(tmp_path: Path) -> UsersFile:
    path = tmp_path / "users.toml"
    users = UsersFile(path, hasher=FAST)
    users.add("alice", password="correct horse", display_name="Alice Example",
              email="alice@example.com", groups=["admins", "staff"])
    users.add("bob", password="battery staple", email="bob@example.com")
    users.add("carol", password="plum orchard 42")
    users.set_disabled("carol", True)
    return users


KEY = KeyRing.new_key_text()


@pytest.fixture
def app(flavour: str, users: UsersFile) -> Callable[..., Any]:
    """app(sections=None, **options): protect() around the test app with the built-in
    login, on a real server; X-Forwarded-For from the test (loopback) is believed.
    ``sections`` adds settings (with a Redis session store, no memory store is given)."""
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


def form_state(page: str) -> str:
    match = re.search(r'name="state" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def sign_in(client: httpx.Client, base: str, user: str, password: str, *,
            path: str = "/hello", remember: bool = False,
            ip: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": ip} if ip else {}
    first = client.get(base + path, headers=headers)
    assert first.status_code == 302
    form = client.get(base + first.headers["location"], headers=headers)
    assert form.status_code == 200
    data = {"state": form_state(form.text), "username": user, "password": password}
    if remember:
        data["remember_me"] = "1"
    return client.post(base + "/.auth/login", data=data, headers=headers)


def test_the_login_form_is_plain_accessible_html(app: Any) -> None:
    with app() as base, browser() as client:
        form = client.get(base + "/.auth/login?rd=/x")
    assert form.status_code == 200
    text = form.text
    assert '<label for="username">' in text and '<label for="password">' in text
    assert 'autocomplete="current-password"' in text and "<script" not in text
    assert "default-src 'none'" in form.headers["content-security-policy"]
    assert form.headers["x-frame-options"] == "DENY"          # the guards wrap it too
    assert any(c.startswith("__Host-secure_mw_session_login=")
               for c in form.headers.get_list("set-cookie"))


def test_sign_in_then_the_app_sees_who_it_is(app: Any,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with app() as base, browser() as client:
        done = sign_in(client, base, "alice", "correct horse")
        assert done.status_code == 303 and done.headers["location"] == "/hello"
        who = client.get(base + "/hello").json()
        assert who["sub"] == "alice" and who["groups"] == ["admins", "staff"]
        assert who["email"] == "alice@example.com" and who["name"] == "Alice Example"
        me = client.get(base + "/.auth/me").json()
        assert me["authenticated"] and me["sub"] == "alice"
        csrf = me["csrf_token"]
        out = client.post(base + "/.auth/logout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/.auth/logged-out"
        assert client.get(base + "/hello").status_code == 302
    lines = [r.getMessage() for r in caplog.records if r.name == "secure_mw.audit"]
    assert not any("correct horse" in line for line in lines)


def test_every_failure_gets_the_same_answer(app: Any, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    def shape(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, re.sub(r'value="[^"]+"', 'value=""', response.text)

    regulator = MemoryRegulator(max_retries=100, find_time=120, ban_time=300)
    with app(regulator=regulator) as base, browser() as client:
        unknown = sign_in(client, base, "nobody", "x")
        wrong = sign_in(client, base, "alice", "wrong")
        disabled = sign_in(client, base, "carol", "plum orchard 42")
        empty = sign_in(client, base, "", "")
    assert shape(unknown) == shape(wrong) == shape(disabled) == shape(empty)
    assert unknown.status_code == 401 and "Incorrect user name or password." in unknown.text


def test_repeated_failures_ban_and_a_ban_looks_like_a_wrong_password(app: Any) -> None:
    def shape(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, re.sub(r'value="[^"]+"', 'value=""', response.text)

    regulator = MemoryRegulator(max_retries=3, find_time=120, ban_time=300, modes=["pair"])
    with app(regulator=regulator) as base, browser() as client:
        wrong = [sign_in(client, base, "bob", f"guess {i}") for i in range(3)]
        banned = sign_in(client, base, "bob", "battery staple")
        assert shape(banned) == shape(wrong[-1])
        assert client.get(base + "/hello").status_code == 302       # not signed in
        assert sign_in(client, base, "alice", "correct horse").status_code == 303


def test_a_forged_or_reused_form_is_refused(app: Any) -> None:
    with app() as base, browser() as client:
        forged = client.post(base + "/.auth/login", data={
            "state": "forged", "username": "alice", "password": "correct horse"})
        assert forged.status_code == 400
        form = client.get(base + "/.auth/login")
        data = {"state": form_state(form.text), "username": "alice",
                "password": "correct horse"}
        assert client.post(base + "/.auth/login", data=data).status_code == 303
        assert client.post(base + "/.auth/login", data=data).status_code == 400


def test_remember_me_and_a_new_session_id_at_login(app: Any) -> None:
    with app() as base, browser() as client:
        first = sign_in(client, base, "alice", "correct horse")
        before = client.cookies.get("__Host-secure_mw_session")
        form = client.get(base + "/.auth/login")
        second = client.post(base + "/.auth/login", data={
            "state": form_state(form.text), "username": "alice", "password": "correct horse",
            "remember_me": "1"})
        after = client.cookies.get("__Host-secure_mw_session")
        assert first.status_code == second.status_code == 303
        assert before != after
        line = next(c for c in second.headers.get_list("set-cookie")
                    if c.startswith("__Host-secure_mw_session="))
        assert "Max-Age=2592000" in line
        stale = httpx.get(base + "/hello", headers={
            "Cookie": f"__Host-secure_mw_session={before}", "Accept": "application/json"})
        assert stale.status_code == 401


def test_an_outdated_hash_is_upgraded_after_a_successful_login(app: Any, users: UsersFile
                                                                ) -> None:
    users.set_hash("bob", WEAKER.hash("battery staple"))
    weak = users.get("bob")
    assert weak is not None and users.needs_rehash(weak)
    with app() as base, browser() as client:
        assert sign_in(client, base, "bob", "battery staple").status_code == 303
    users.reload()
    upgraded = users.get("bob")
    assert upgraded is not None and not users.needs_rehash(upgraded)
    assert FAST.verify(upgraded.password_hash, "battery staple")
    assert json.dumps(upgraded.groups) == "[]"


def test_totp_enrolment_then_two_step_sign_in(app: Any) -> None:
    from secure_mw.login.totp import TOTP, TOTPStore
    from tests.clock import Clock

    clock = Clock()
    totp = TOTP(issuer="secure_mw tests", clock=clock)
    secrets_store = TOTPStore()
    with app(totp=totp, totp_store=secrets_store) as base, browser() as client:
        sign_in(client, base, "alice", "correct horse")
        one_factor = client.cookies.get("__Host-secure_mw_session")
        assert client.get(base + "/.auth/me").json()["auth_level"] == 1
        page = client.get(base + "/.auth/2fa?rd=/admin")
        assert page.status_code == 200 and "<svg" in page.text and "<script" not in page.text
        secret = re.search(r"Or type the key: <code>([A-Z2-7]+)</code>", page.text)
        enrol = re.search(r'name="enrol" value="([^"]+)"', page.text)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert secret and enrol and csrf
        wrong = client.post(base + "/.auth/2fa?rd=/admin", data={
            "csrf": csrf.group(1), "enrol": enrol.group(1), "code": "000000"})
        assert wrong.status_code == 401 and secrets_store.get("alice") is None
        done = client.post(base + "/.auth/2fa?rd=/admin", data={
            "csrf": csrf.group(1), "enrol": enrol.group(1),
            "code": totp.code(secret.group(1))})
        assert done.status_code == 303 and done.headers["location"] == "/admin"
        assert secrets_store.get("alice") is not None          # enrolled, sealed
        assert secret.group(1) not in str(secrets_store.get("alice"))
        me = client.get(base + "/.auth/me").json()
        assert me["auth_level"] == 2
        assert client.cookies.get("__Host-secure_mw_session") != one_factor   # rotated
        assert httpx.get(base + "/.auth/me", headers={
            "Cookie": f"__Host-secure_mw_session={one_factor}"}).status_code == 401
        # A later sign-in asks for a code; the same code cannot be used twice.
        used = totp.code(secret.group(1))
        csrf_token = client.get(base + "/.auth/me").json()["csrf_token"]
        client.post(base + "/.auth/logout", data={"csrf": csrf_token})
        sign_in(client, base, "alice", "correct horse")
        page = client.get(base + "/.auth/2fa")
        assert "<svg" not in page.text and 'name="code"' in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        replay = client.post(base + "/.auth/2fa", data={"csrf": csrf.group(1), "code": used})
        assert replay.status_code == 401
        clock.advance(30)
        fresh = client.post(base + "/.auth/2fa", data={
            "csrf": csrf.group(1), "code": totp.code(secret.group(1))})
        assert fresh.status_code == 303
        assert client.get(base + "/.auth/me").json()["auth_level"] == 2


def test_a_failed_attempt_sets_the_form_cookie_once(app: Any) -> None:
    """A browser keeps only the last of two Set-Cookie headers for one name: the page after
    a failure must carry exactly one, holding the new form's token (found by the browser
    test: the retry then failed with "form expired")."""
    with app() as base, browser() as client:
        failed = sign_in(client, base, "alice", "wrong")
        lines = [c for c in failed.headers.get_list("set-cookie")
                 if c.startswith("__Host-secure_mw_session_login=")]
        assert len(lines) == 1
        retry = client.post(base + "/.auth/login", data={
            "state": form_state(failed.text), "username": "alice",
            "password": "correct horse"})
        assert retry.status_code == 303



# -- sessions follow the users file (changed by `secure-mw users` in another process) -------

CHANGES = {
    "delete": (("delete", "alice", "--yes"), "", "user deleted"),
    "disable": (("disable", "alice"), "", "user disabled"),
    "passwd": (("passwd", "alice"), "lantern quarry 17\n", "sessions revoked in the users file"),
    "end-sessions": (("end-sessions", "alice"), "", "sessions revoked in the users file"),
}


def users_cli(path: Path, *args: str, stdin: str = "") -> None:
    """`secure-mw users ACTION ... --file path`, as the administrator would run it."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "SECURE_MW_USERS_FILE"}
    environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-m", "secure_mw.cli", "users", args[0], "--file",
                           str(path), *args[1:]], input=stdin, capture_output=True,
                          text=True, timeout=120, env=environ)
    assert done.returncode == 0, done.stderr


class Stats:
    """Counts the ``stat`` calls the users file makes on its path (each look at the file
    is exactly one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        import secure_mw.login.users as module

        self.count = 0
        real = module._signature

        def counting(target: Any) -> Any:
            if Path(target) == path:
                self.count += 1
            return real(target)

        monkeypatch.setattr(module, "_signature", counting)


@contextmanager
def following(flavour: str, path: Path, clock: Any, *, interval: str = "5m",
              store: str = "memory", rules: bool = False) -> Iterator[str]:
    """A real server of ``flavour`` whose login reads ``path``, on the injected clock."""
    from secure_mw.login.users import DEFAULT_POLICY

    config: dict[str, Any] = {
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "local_users": {"file": str(path), "refresh_interval": interval},
        "session": {"inactivity": "1h", "expiration": "1d", "store": store}}
    if rules:
        config["access_control"] = {"default_policy": "deny", "rules": [
            {"resources": ["^/admin"], "subject": "group:admins", "policy": "authenticated"},
            {"resources": ["^/admin"], "policy": "deny"},
            {"policy": "authenticated"}]}
    settings = Settings.from_mapping(config, environ={})
    options: dict[str, Any] = {
        "users": UsersFile(path, hasher=FAST, policy=DEFAULT_POLICY),
        "clock": clock, "delay": LoginDelay(floor=0.01, seed=0.01, jitter=0.001)}
    if store == "memory":
        options["store"] = MemorySessionStore(clock=clock)
    module = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(module.protect(inner, settings, **options)) as url:
        yield url


def people(tmp_path: Path) -> Path:
    path = tmp_path / "users.toml"
    users = UsersFile(path, hasher=FAST)
    users.add("alice", password="correct horse", email="alice@example.com",
              groups=["admins"])
    users.add("bob", password="battery staple", display_name="Bob")
    return path


def audit_events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records
            if r.name == "secure_mw.audit" and f'"event":"{name}"' in r.getMessage()]


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_user_gone_from_the_file_loses_the_session_within_the_interval(
    flavour: str, tmp_path: Path, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.clock import Clock

    path = people(tmp_path)
    clock = Clock()
    args, stdin, reason = CHANGES[change]
    with following(flavour, path, clock) as base, browser() as client:
        assert sign_in(client, base, "alice", "correct horse").status_code == 303
        cookie = client.cookies.get("__Host-secure_mw_session")
        assert client.get(base + "/hello").json()["sub"] == "alice"
        users_cli(path, *args, stdin=stdin)
        clock.advance(299)                    # within the interval: not looked at yet
        assert client.get(base + "/hello").status_code == 200
        clock.advance(2)
        # Many requests of the session at once, all due: not one gets through.
        jar = {"Cookie": f"__Host-secure_mw_session={cookie}", "Accept": "application/json"}
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: httpx.get(base + "/hello", headers=jar).status_code,
                                     range(16)))
        assert statuses == [401] * 16
        ended = client.get(base + "/hello")
        assert ended.status_code == 302 and ended.headers["location"] == "/.auth/login?rd=/hello"
        assert client.get(base + "/.auth/me").json() == {"authenticated": False}
        # and the server-side record is gone: the old cookie is unknown now
        assert httpx.get(base + "/hello", headers=jar).status_code == 401
    events = audit_events(caplog, "session_ended")
    assert events and {(e["user"], e["reason"]) for e in events} == {("alice", reason)}
    assert not any("correct horse" in r.getMessage() or "lantern" in r.getMessage()
                   for r in caplog.records)


def test_passwd_keep_sessions_keeps_them(flavour: str, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    from tests.clock import Clock

    path = people(tmp_path)
    clock = Clock()
    with following(flavour, path, clock) as base, browser() as client:
        sign_in(client, base, "alice", "correct horse")
        users_cli(path, "passwd", "alice", "--keep-sessions", stdin="lantern quarry 17\n")
        clock.advance(301)
        assert client.get(base + "/hello").json()["sub"] == "alice"
        # a new sign-in takes the new password
        with browser() as other:
            assert sign_in(other, base, "alice", "lantern quarry 17").status_code == 303
    assert audit_events(caplog, "session_ended") == []


@pytest.mark.parametrize("store", ["memory", "cookie"])
def test_changed_groups_reach_the_rules_and_the_app(
    flavour: str, tmp_path: Path, store: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.clock import Clock

    caplog.set_level(logging.INFO, "secure_mw.audit")
    path = people(tmp_path)
    clock = Clock()
    stats = Stats(monkeypatch, path)
    with following(flavour, path, clock, store=store, rules=True) as base, \
            browser() as client:
        sign_in(client, base, "bob", "battery staple")
        assert client.get(base + "/admin").status_code == 403
        users_cli(path, "set-groups", "bob", "admins", "staff")
        users_cli(path, "set-email", "bob", "bob@example.org")
        assert client.get(base + "/admin").status_code == 403      # not due yet
        clock.advance(301)
        looked = stats.count
        admitted = client.get(base + "/admin")                     # the rules see it now
        assert admitted.status_code == 200
        assert admitted.json()["groups"] == ["admins", "staff"]
        assert admitted.json()["email"] == "bob@example.org"
        assert stats.count == looked + 1
        if store == "cookie":    # the record travels in the cookie: written back
            assert any(c.startswith("__Host-secure_mw_session=")
                       for c in admitted.headers.get_list("set-cookie"))
        for _ in range(5):       # and the next requests of the interval look at nothing
            assert client.get(base + "/admin").status_code == 200
        assert stats.count == looked + 1
        users_cli(path, "set-groups", "bob", "--none")
        clock.advance(301)
        assert client.get(base + "/admin").status_code == 403
        assert client.get(base + "/hello").json()["groups"] == []
    updated = audit_events(caplog, "session_updated")
    assert [e["reason"] for e in updated] == ["email, groups changed in the users file",
                                              "groups changed in the users file"]
    assert audit_events(caplog, "session_ended") == []


def test_groups_too_many_for_the_cookie_end_the_session_with_a_clear_page(
    flavour: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Cookie store: the users file gives Alice 256 long groups instead of "admins". The
    updated session does not fit in the cookie: it ends for every copy (``session_ended``
    naming the reason) with a page naming the fix, instead of answering 503 at every request
    of the old cookie and never ending it."""
    from tests.clock import Clock

    path = people(tmp_path)
    clock = Clock()
    with following(flavour, path, clock, store="cookie", rules=True) as base, \
            browser() as client:
        sign_in(client, base, "alice", "correct horse")
        assert client.get(base + "/admin").status_code == 200
        copy = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar
                         if c.name.startswith("__Host-secure_mw_session"))
        UsersFile(path, hasher=FAST).update("alice", groups=[      # ~32 KB of groups
            f"group-{i:04d}-{'x' * 110}" for i in range(256)])
        clock.advance(301)
        page = client.get(base + "/admin")
        assert page.status_code == 503 and "session.store" in page.text \
            and "users file" in page.text
        assert any(c.startswith("__Host-secure_mw_session=;")
                   for c in page.headers.get_list("set-cookie"))
        api = {"Cookie": copy, "Accept": "application/json"}
        for _ in range(3):
            clock.advance(60)
            assert httpx.get(base + "/admin", headers=api).status_code == 401
    ended = audit_events(caplog, "session_ended")
    assert len(ended) == 1 and "too large for the cookie store" in ended[0]["reason"]


def test_always_looks_at_every_request(flavour: str, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.clock import Clock

    path = people(tmp_path)
    clock = Clock()
    stats = Stats(monkeypatch, path)
    with following(flavour, path, clock, interval="always", store="cookie",
                   rules=True) as base, browser() as client:
        sign_in(client, base, "bob", "battery staple")
        looked = stats.count
        for _ in range(3):       # nothing changed: nothing is written back either
            answer = client.get(base + "/hello")
            assert answer.status_code == 200 and "set-cookie" not in answer.headers
        assert stats.count == looked + 3
        users_cli(path, "set-groups", "bob", "admins")
        assert client.get(base + "/admin").status_code == 200      # no clock advance
        users_cli(path, "disable", "bob")
        ended = client.get(base + "/admin", headers={"Accept": "application/json"})
        assert ended.status_code == 401
    assert [e["reason"] for e in audit_events(caplog, "session_ended")] == ["user disabled"]


def test_always_can_be_written_as_zero(tmp_path: Path) -> None:
    settings = Settings.from_mapping({"local_users": {"refresh_interval": 0}}, environ={})
    assert settings.local_users.refresh_interval == 0.0
    assert Settings.from_mapping({"local_users": {"refresh_interval": "ALWAYS"}},
                                 environ={}).local_users.refresh_interval == 0.0
    assert Settings.from_mapping({}, environ={
        "SECURE_MW_LOCAL_USERS__REFRESH_INTERVAL": "90s"}).local_users.refresh_interval == 90


def test_a_check_time_ahead_of_this_clock_is_due(flavour: str, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A session recorded by a process whose clock runs ahead (or before this one was set
    back) is looked at again rather than trusted until this clock catches up."""
    from tests.clock import Clock

    path = people(tmp_path)
    clock = Clock()
    with following(flavour, path, clock) as base, browser() as client:
        sign_in(client, base, "alice", "correct horse")
        UsersFile(path, hasher=FAST).set_disabled("alice", True)
        clock.advance(-60)
        assert client.get(base + "/hello").status_code == 302
    assert [e["reason"] for e in audit_events(caplog, "session_ended")] == ["user disabled"]
# -- attacks on the sign-in form --------------------------------------------------------------


class CountingUsers(UsersFile):
    """The users file, counting password checks; the first ``hold`` checks wait until that
    many are in (so they overlap), or until ``opened`` is set."""

    def __init__(self, *args: Any, hold: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checks: list[str] = []
        self.hold = hold
        self.entered = threading.Event()
        self.opened = threading.Event()
        if hold == 0:
            self.opened.set()
        self._count_lock = threading.Lock()

    def verify(self, username: str, password: str) -> Any:
        with self._count_lock:
            self.checks.append(password)
            if len(self.checks) >= self.hold:
                self.opened.set()
        self.entered.set()
        self.opened.wait(GATE_TIMEOUT)
        return super().verify(username, password)


GATE_TIMEOUT = 20.0      # a safety net only: a hold that never fills lets checks through


def counting(users: UsersFile, hold: int = 0) -> CountingUsers:
    return CountingUsers(users.path, hasher=FAST, hold=hold)


def fresh_form(base: str, ip: str | None = None) -> tuple[httpx.Client, str]:
    client = browser()
    page = client.get(base + "/.auth/login",
                      headers={"X-Forwarded-For": ip} if ip else {})
    return client, form_state(page.text)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_fifty_parallel_wrong_passwords_then_the_right_one(
        app: Any, users: UsersFile, store: str, request: pytest.FixtureRequest) -> None:
    """The attack: 50 wrong passwords for one user at once, then the right one. Before:
    every guess was checked (51 with real Argon2 parameters under ASGI) and the right one
    got a session; now exactly max_retries are checked (held until all three are in, so
    they truly overlap), the rest refused, and the right one is banned."""
    counted = counting(users, hold=3)
    sections: dict[str, Any] = {}
    if store == "redis":
        url = request.getfixturevalue("redis_server").url
        sections = {"session": {"store": "redis", "redis_url": url}}
    with app(sections, users=counted) as base:
        forms = [fresh_form(base) for _ in range(50)]

        def post(i: int) -> int:
            client, state = forms[i]
            return client.post(base + "/.auth/login", data={
                "state": state, "username": "alice", "password": f"guess {i}"}).status_code

        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(post, range(50)))
        client, state = fresh_form(base)
        last = client.post(base + "/.auth/login", data={
            "state": state, "username": "alice", "password": "correct horse"})
        assert last.status_code == 401
        assert client.get(base + "/hello").status_code == 302     # no session
        for c, _ in forms:
            c.close()
        client.close()
    assert len(counted.checks) == 3 and "correct horse" not in counted.checks
    assert set(statuses) <= {401, 429} and 303 not in statuses


def test_too_many_attempts_at_once_get_429(app: Any, users: UsersFile) -> None:
    counted = counting(users, hold=10**6)
    regulator = MemoryRegulator(max_retries=1)
    with app(users=counted, regulator=regulator) as base, ThreadPoolExecutor(1) as pool:
        c1, s1 = fresh_form(base)
        first = pool.submit(c1.post, base + "/.auth/login", data={
            "state": s1, "username": "alice", "password": "correct horse"})
        assert counted.entered.wait(GATE_TIMEOUT)
        c2, s2 = fresh_form(base)
        busy = c2.post(base + "/.auth/login", data={
            "state": s2, "username": "alice", "password": "correct horse"})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert "Too many sign-in attempts" in busy.text and form_state(busy.text)
        counted.opened.set()
        assert first.result().status_code == 303
        c1.close()
        c2.close()
    assert counted.checks == ["correct horse"]


def redis_sections(request: pytest.FixtureRequest, store: str) -> dict[str, Any]:
    if store != "redis":
        return {}
    url = request.getfixturevalue("redis_server").url
    return {"session": {"store": "redis", "redis_url": url}}


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_owner_signs_in_after_an_attack_from_another_address(
        app: Any, store: str, request: pytest.FixtureRequest) -> None:
    """Before: three wrong passwords from anywhere banned the name for five minutes."""
    with app(redis_sections(request, store)) as base, browser() as attacker, \
            browser() as owner:
        for i in range(4):
            assert sign_in(attacker, base, "alice", f"guess {i}",
                           ip="198.51.100.7").status_code == 401
        assert sign_in(owner, base, "alice", "correct horse",
                       ip="203.0.113.5").status_code == 303
        assert owner.get(base + "/hello").json()["sub"] == "alice"


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_device_cookie_lets_the_owner_past_a_ban_of_her_name(
        app: Any, store: str, request: pytest.FixtureRequest) -> None:
    with app(redis_sections(request, store)) as base, browser() as owner:
        assert sign_in(owner, base, "alice", "correct horse",
                       ip="203.0.113.5").status_code == 303
        assert owner.cookies.get("__Host-secure_mw_session_device")
        for n in range(4):                  # four addresses use up the name's budget
            with browser() as attacker:
                for i in range(3):
                    sign_in(attacker, base, "alice", f"guess {n}.{i}", ip=f"198.51.100.{n}")
        with browser() as stranger:         # the right password, without the device cookie
            assert sign_in(stranger, base, "alice", "correct horse",
                           ip="203.0.113.5").status_code == 401
        page = owner.get(base + "/.auth/login", headers={"X-Forwarded-For": "203.0.113.5"})
        again = owner.post(base + "/.auth/login", headers={"X-Forwarded-For": "203.0.113.5"},
                           data={"state": form_state(page.text), "username": "alice",
                                 "password": "correct horse"})
        assert again.status_code == 303


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_sign_in_post_works_once(app: Any, users: UsersFile, store: str,
                                   request: pytest.FixtureRequest) -> None:
    """Before: the same POST (state + login cookie) made a new session each time. With
    Redis, the replays go to two servers (two processes of one app) in turn."""
    counted = counting(users)
    sections = redis_sections(request, store)
    with app(sections, users=counted) as base, app(sections, users=counted) as other:
        bases = [base, other] if store == "redis" else [base]
        client, state = fresh_form(base)
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        client.close()
        turn = iter(range(10**6))

        def replay(password: str) -> httpx.Response:
            target = bases[next(turn) % len(bases)]
            return httpx.post(target + "/.auth/login", headers={"Cookie": cookie}, data={
                "state": state, "username": "alice", "password": password})

        statuses = [replay("correct horse").status_code for _ in range(5)]
        assert statuses == [303, 400, 400, 400, 400]
        client, state = fresh_form(base)            # a failed attempt is spent too
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        client.close()
        assert replay("wrong").status_code == 401
        again = replay("correct horse")
        assert again.status_code == 400 and "already used" in again.text
        client, state = fresh_form(base)            # and in parallel
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        client.close()
        with ThreadPoolExecutor(10) as pool:
            parallel = list(pool.map(lambda _: replay("correct horse").status_code,
                                     range(10)))
        assert sorted(parallel) == [303] + [400] * 9
    assert counted.checks == ["correct horse", "wrong", "correct horse"]


@pytest.mark.parametrize("kind", FAULTS)
def test_regulation_that_cannot_answer_refuses_the_sign_in(
        app: Any, redis_server: RedisServer, kind: str) -> None:
    regulator = RedisRegulator(redis_server.url)
    try:
        with app(regulator=regulator) as base, browser() as client:
            with fault(redis_server, kind):
                down = sign_in(client, base, "alice", "correct horse")
            assert down.status_code == 503 and down.headers["retry-after"] == "5"
            assert client.get(base + "/hello").status_code == 302     # no session
            assert sign_in(client, base, "alice", "correct horse").status_code == 303
    finally:
        regulator.close()


def test_two_apps_on_one_redis_keep_bans_and_keys_apart(
        app: Any, redis_server: RedisServer) -> None:
    def sections(prefix: str) -> dict[str, Any]:
        return {"session": {"store": "redis", "redis_url": redis_server.url,
                            "redis_key_prefix": prefix}}

    with app(sections("appA:")) as a, app(sections("appB:")) as b, \
            browser() as on_a, browser() as on_b:
        for i in range(3):
            assert sign_in(on_a, a, "bob", f"guess {i}").status_code == 401
        assert sign_in(on_a, a, "bob", "battery staple").status_code == 401   # banned on A
        assert sign_in(on_b, b, "bob", "battery staple").status_code == 303   # not on B
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        keys = raw.keys("*")
    finally:
        raw.close()
    assert keys and all(k.startswith(("appA:", "appB:")) for k in keys)
    assert any(k.startswith("appA:reg:") for k in keys)


# -- the outside review of regulation and the users file ---------------------------------------


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


DEVICE = "__Host-secure_mw_session_device"


def _cookie_names(response: httpx.Response) -> set[str]:
    return {c.split("=", 1)[0] for c in response.headers.get_list("set-cookie")}


def test_second_factor_codes_are_limited_by_the_user_budget(app: Any) -> None:
    """The password step issued the device cookie, and a code attempt with a device cookie
    was regulated by that device alone: each new password login minted a fresh budget (40
    logins, 160 wrong codes: 120 checked). Now the device cookie comes once every factor
    passed, codes count towards the user's budgets (10), and a password success of a user
    with a second factor clears nothing."""
    from secure_mw.login.totp import TOTP, TOTPStore
    from tests.clock import Clock

    checked: list[str] = []

    class Counting(TOTP):
        def verify(self, secret: str, code: str) -> int | None:
            checked.append(str(code))
            return super().verify(secret, code)

    totp = Counting(issuer="secure_mw tests", clock=Clock())
    with app(totp=totp, totp_store=TOTPStore()) as base:
        with browser() as owner:
            first = sign_in(owner, base, "alice", "correct horse", ip="203.0.113.1")
            assert first.status_code == 303 and DEVICE in _cookie_names(first)  # no 2fa yet
            page = owner.get(base + "/.auth/2fa", headers={"X-Forwarded-For": "203.0.113.1"})
            secret = re.search(r"Or type the key: <code>([A-Z2-7]+)</code>", page.text)
            enrol = re.search(r'name="enrol" value="([^"]+)"', page.text)
            assert secret and enrol
            done = owner.post(base + "/.auth/2fa", headers={"X-Forwarded-For": "203.0.113.1"},
                              data={"csrf": _csrf(page.text), "enrol": enrol.group(1),
                                    "code": totp.code(secret.group(1))})
            assert done.status_code == 303 and DEVICE in _cookie_names(done)
        checked.clear()
        right = totp.code(secret.group(1))
        wrong = (f"{n:06d}" for n in range(10**6) if f"{n:06d}" != right)
        statuses = []
        for r in range(6):                    # a fresh browser and address each round
            ip = f"198.51.100.{r}"
            with browser() as attacker:
                signed = sign_in(attacker, base, "alice", "correct horse", ip=ip)
                statuses.append(signed.status_code)
                if signed.status_code != 303:
                    continue
                assert DEVICE not in _cookie_names(signed)     # a first factor only
                csrf = _csrf(attacker.get(base + "/.auth/2fa",
                                          headers={"X-Forwarded-For": ip}).text)
                for _ in range(3):
                    attacker.post(base + "/.auth/2fa", headers={"X-Forwarded-For": ip},
                                  data={"csrf": csrf, "code": next(wrong)})
    assert len(checked) == 10
    assert statuses[:4] == [303] * 4 and statuses[4:] == [401, 401]   # the name is banned


def test_a_full_table_of_mostly_finished_subjects_still_admits(app: Any) -> None:
    """64 pairs banned (empty passwords: no Argon2 at all), the table filled with
    throw-away failures; once those are finished the owner's sign-in from a new address got
    503 (the memory regulator looked at its 64 oldest subjects only). Shown with
    max_subjects=100 instead of 100,000: the same mechanism."""
    from tests.clock import Clock

    clock = Clock()
    regulator = MemoryRegulator(max_subjects=100, clock=clock)

    def post(client: httpx.Client, base: str, user: str, password: str, ip: str) -> int:
        headers = {"X-Forwarded-For": ip}
        page = client.get(base + "/.auth/login", headers=headers)
        return client.post(base + "/.auth/login", headers=headers, data={
            "state": form_state(page.text), "username": user,
            "password": password}).status_code

    with app(regulator=regulator) as base, browser() as client:
        for n in range(64):
            for _ in range(3):
                post(client, base, f"victim{n}", "", f"2001:db8:0:{n // 6:x}::1")
        n = 0
        while len(regulator._tables["pair"]) < 100:
            post(client, base, f"filler{n}", "", f"2001:db8:1:{n // 19:x}::1")
            n += 1
        clock.advance(90)                      # every filler is finished; the bans hold
        assert post(client, base, "alice", "correct horse", "198.51.100.20") == 303


@pytest.mark.parametrize("store", ["memory", "cookie"])
def test_a_user_deleted_and_added_again_gets_nothing_of_the_old_one(
        flavour: str, tmp_path: Path, store: str, caplog: pytest.LogCaptureFixture) -> None:
    """``users delete bob`` then ``users add bob`` (another person, other groups) within
    refresh_interval: the old bob's session went on as the new bob's, groups included.
    ``add`` sets sessions_not_before now; the old bob's device cookie is ignored too."""
    from tests.clock import Clock

    path = people(tmp_path)
    clock = Clock()
    with following(flavour, path, clock, store=store) as base, browser() as old_bob:
        signed = sign_in(old_bob, base, "bob", "battery staple")
        assert signed.status_code == 303 and DEVICE in _cookie_names(signed)
        old_device = old_bob.cookies.get(DEVICE)
        users_cli(path, "delete", "bob", "--yes")
        users_cli(path, "add", "bob", "--group", "admins", stdin="a new person's pw 42\n")
        clock.advance(301)                     # the session's check is due
        answer = old_bob.get(base + "/hello", headers={"Accept": "application/json"})
        assert answer.status_code == 401
        # The new bob's name under a ban (ten wrong passwords from four addresses): the old
        # bob's device cookie does not let that browser past it, a new one's would.
        for n in range(4):
            with browser() as attacker:
                for _ in range(3):
                    sign_in(attacker, base, "bob", "wrong", ip=f"198.51.100.{n}")
        with browser() as stale:
            stale.cookies.set(DEVICE, old_device, domain="127.0.0.1")
            assert sign_in(stale, base, "bob", "a new person's pw 42",
                           ip="203.0.113.5").status_code == 401
    events = audit_events(caplog, "session_ended")
    assert [e["reason"] for e in events] == ["sessions revoked in the users file"]


def test_an_overlong_name_is_refused_before_it_is_regulated(app: Any) -> None:
    """A 15,000-character name was regulated and kept whole in the memory regulator's
    keys (2,000 such attempts: 67 MB). Names are capped as the login guard caps them."""
    regulator = MemoryRegulator()
    with app(regulator=regulator) as base, browser() as client:
        page = client.get(base + "/.auth/login")
        answer = client.post(base + "/.auth/login", data={
            "state": form_state(page.text), "username": "n" * 15000, "password": ""})
        assert answer.status_code == 400 and "at most 256 characters" in answer.text
        page = client.get(base + "/.auth/login")
        fits = client.post(base + "/.auth/login", data={
            "state": form_state(page.text), "username": "n" * 256, "password": "x"})
        assert fits.status_code == 401
    longest = max((len(k) for t in regulator._tables.values() for k in t), default=0)
    assert 256 <= longest <= 320
