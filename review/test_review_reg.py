"""Reproductions of the outside review of reserve-then-settle regulation and of the users
file (policy, sessions that follow it). Each test asserts the secure behaviour and is a
strict xfail: it fails today; a fix makes it pass (then drop the marker). Real servers
(uvicorn, werkzeug's threaded server, gunicorn), both flavours where both apply.

Run: .venv/bin/python -m pytest review/test_review_reg.py -q
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from review import common
from review.common import CountingLogin, raw_post
from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.guards.regulation import MemoryRegulator
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.login.policy import PasswordPolicy
from secure_mw.session import MemorySessionStore
from tests.apps import (
    FLAVOURS,
    asgi_inner,
    browser,
    uvicorn_server,
    wsgi_inner,
    wsgi_server,
)
from tests.clock import Clock

KEY = KeyRing.new_key_text()
FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
DEVICE = "__Host-secure_mw_session_device"
PASSWORD = "correct horse battery"


def xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def fast_delay() -> LoginDelay:
    return LoginDelay(floor=0.001, seed=0.001, jitter=0.0)


def guarded(flavour: str, login: CountingLogin, settings: Settings | None = None,
            **options: Any) -> Any:
    settings = settings or Settings.from_mapping({"keys": {"encryption_keys": [KEY]}},
                                                 environ={})
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = login.asgi if flavour == "asgi" else login.wsgi
    options.setdefault("paths", ["/login"])
    app = module.LoginGuardMiddleware(inner, settings=settings, delay=fast_delay(), **options)
    app = module.ClientAddressMiddleware(app, trusted_proxies=["127.0.0.1/32"])
    return (uvicorn_server if flavour == "asgi" else wsgi_server)(app)


def device_of(response: httpx.Response) -> str:
    return next(c.split(";", 1)[0].split("=", 1)[1]
                for c in response.headers.get_list("set-cookie") if c.startswith(DEVICE))


# -- 1. the guard matches the raw path, the app routes the normalized one ---------------------


@xfail("LoginGuardMiddleware compares regulation.paths with the path as sent; with access "
       "rules the app receives the normalized path (layers.py LoginGuardLayer.applies)")
@pytest.mark.parametrize("target", ["/./login", "/x/../login"])
def test_a_dot_segment_path_is_regulated_like_the_login(flavour: str, target: str,
                                                         tmp_path: Path) -> None:
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "local_users": {"file": str(tmp_path / "users.toml")},
        "session": {"store": "memory"},
        "regulation": {"paths": ["/login"]},
        "access_control": {"default_policy": "authenticated",
                           "rules": [{"resources": ["^/login$"], "policy": "bypass"}]}},
        environ={})
    login = CountingLogin()
    module: Any = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(module.protect(login.asgi if flavour == "asgi" else login.wsgi,
                               settings)) as base:
        for i in range(10):
            raw_post(base, target, {"username": "alice", "password": f"guess {i}"})
    assert set(login.paths) == {"/login"}
    assert len(login.checks) <= 3


# -- 2. an answer that is neither 401/403 nor 2xx/3xx frees the budget ------------------------


@xfail("any status other than failure_statuses and 2xx/3xx releases the reservation "
       "(layers.py LoginGuardLayer.settle): FastAPI's OAuth2 tutorial answers 400")
@pytest.mark.parametrize("status", [400, 422, 500])
def test_a_wrong_password_answered_400_still_counts(flavour: str, status: int) -> None:
    login = CountingLogin(fail_status=status)
    with guarded(flavour, login, paths=["/token"]) as base:
        for i in range(10):
            httpx.post(base + "/token", data={"username": "alice", "password": f"g{i}"})
    assert len(login.checks) <= 3


# -- 3. a device cookie minted by a login of one's own replaces every budget -----------------


@xfail("the device cookie names the folded name; a case-sensitive app's ALICE mints "
       "cookies valid for alice, each a fresh budget (attempts.py, regulation.py subjects)")
def test_own_account_device_cookies_give_no_extra_guesses(flavour: str) -> None:
    common.USERS["ALICE"] = "attacker's own password"
    login = CountingLogin()
    try:
        with guarded(flavour, login) as base:
            for r in range(5):
                own = httpx.post(base + "/login", data={
                    "username": "ALICE", "password": "attacker's own password"})
                device = device_of(own)
                for i in range(3):
                    httpx.post(base + "/login", data={"username": "alice",
                                                      "password": f"guess {r}.{i}"},
                               headers={"Cookie": f"{DEVICE}={device}"})
    finally:
        del common.USERS["ALICE"]
    assert len([p for p in login.checks if p.startswith("guess")]) <= 10


@xfail("a device cookie is bound to the cookie name and key ring only: another app with "
       "the same keys accepts it (attempts.py DeviceCookies._aad)")
def test_a_device_cookie_of_another_app_is_ignored(flavour: str) -> None:
    on_a, on_b = CountingLogin(), CountingLogin()
    with guarded(flavour, on_a) as a, guarded(flavour, on_b) as b:
        for r in range(5):
            device = device_of(httpx.post(a + "/login", data={"username": "alice",
                                                              "password": PASSWORD}))
            for i in range(3):
                httpx.post(b + "/login", data={"username": "alice", "password": f"g{r}.{i}"},
                           headers={"Cookie": f"{DEVICE}={device}"})
    assert len(on_b.checks) <= 10


# -- 4. the second factor: a fresh device per password login ---------------------------------


def _sign_in(client: httpx.Client, base: str, user: str, password: str) -> int:
    page = client.get(base + "/.auth/login")
    state = re.search(r'name="state" value="([^"]+)"', page.text)
    assert state, page.text
    return client.post(base + "/.auth/login", data={
        "state": state.group(1), "username": user, "password": password}).status_code


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


@xfail("the password step issues the device cookie, and a device attempt at /.auth/2fa is "
       "regulated by that device alone (login/core.py _local_login, _second_factor)")
def test_totp_codes_are_limited_by_the_user_budget(flavour: str, tmp_path: Path) -> None:
    from secure_mw.login.totp import TOTP, TOTPStore

    checked: list[str] = []

    class Counting(TOTP):
        def verify(self, secret: str, code: str) -> int | None:
            checked.append(str(code))
            return super().verify(secret, code)

    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password=PASSWORD)
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "local_users": {"file": str(users.path)}}, environ={})
    totp = Counting(issuer="review", clock=Clock())
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = module.protect(inner, settings, users=users, totp=totp, totp_store=TOTPStore(),
                         store=MemorySessionStore(), delay=fast_delay())
    with server(app) as base:
        with browser() as owner:
            assert _sign_in(owner, base, "alice", PASSWORD) == 303
            page = owner.get(base + "/.auth/2fa")
            secret = re.search(r"Or type the key: <code>([A-Z2-7]+)</code>", page.text)
            enrol = re.search(r'name="enrol" value="([^"]+)"', page.text)
            assert secret and enrol
            assert owner.post(base + "/.auth/2fa", data={
                "csrf": _csrf(page.text), "enrol": enrol.group(1),
                "code": totp.code(secret.group(1))}).status_code == 303
        checked.clear()
        right = totp.code(secret.group(1))
        wrong = (f"{n:06d}" for n in range(10**6) if f"{n:06d}" != right)
        for _ in range(6):
            with browser() as attacker:
                assert _sign_in(attacker, base, "alice", PASSWORD) == 303
                csrf = _csrf(attacker.get(base + "/.auth/2fa").text)
                for _ in range(3):
                    attacker.post(base + "/.auth/2fa", data={"csrf": csrf,
                                                             "code": next(wrong)})
    assert len(checked) <= 10


# -- 5. regulation in memory while several workers serve --------------------------------------


@xfail("regulator_from_settings keeps regulation in each process unless session.store is "
       "redis, even with a Redis URL set; no sibling-worker check (regulation.py)")
def test_workers_share_one_budget_with_the_cookie_store(redis_server: Any) -> None:
    from review.probe_workers import run

    pytest.importorskip("gunicorn")
    assert run("gunicorn", 4, "cookie", redis_server.url, parallel=60,
               sequential=20) <= 3


# -- 6. the memory regulator refuses while most of its table is finished ----------------------


@xfail("MemoryRegulator._room looks at the 64 least recently used subjects only; bans age "
       "to the front (regulation.py _room)")
def test_a_full_table_of_mostly_finished_subjects_still_admits(flavour: str,
                                                               tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password=PASSWORD)
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "local_users": {"file": str(users.path)},
                                      "server": {"trusted_proxies": ["127.0.0.1/32"]}},
                                     environ={})
    clock = Clock()
    regulator = MemoryRegulator(max_subjects=100, clock=clock)
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server

    def post(c: httpx.Client, base: str, user: str, password: str, ip: str) -> int:
        page = c.get(base + "/.auth/login", headers={"X-Forwarded-For": ip})
        state = re.search(r'name="state" value="([^"]+)"', page.text)
        assert state
        return c.post(base + "/.auth/login", headers={"X-Forwarded-For": ip}, data={
            "state": state.group(1), "username": user, "password": password}).status_code

    with server(module.protect(inner, settings, users=users, regulator=regulator,
                               store=MemorySessionStore(), delay=fast_delay())) as base, \
            browser() as c:
        for n in range(64):                        # 64 pairs banned (empty passwords)
            for _ in range(3):
                post(c, base, f"victim{n}", "", f"2001:db8:0:{n // 6:x}::1")
        n = 0
        while len(regulator._tables["pair"]) < 100:    # then throw-away failures
            post(c, base, f"filler{n}", "", f"2001:db8:1:{n // 19:x}::1")
            n += 1
        clock.advance(90)                          # every filler is finished now
        assert post(c, base, "alice", PASSWORD, "198.51.100.20") == 303


# -- 7. a deleted user's session and a user added again under the name -----------------------


@xfail("users add does not set sessions_not_before, and sessions are bound to the name "
       "only (users.py UsersFile.add, login/core.py _follow_users)")
def test_a_deleted_users_session_does_not_pass_to_a_new_user_of_the_name(
        flavour: str, tmp_path: Path) -> None:
    from review.probe_users_readd import run

    assert run(flavour, "memory", readd=True) == 401


# -- 8. an exception in the app leaves the reservation unsettled ------------------------------


@xfail("LoginGuardMiddleware settles only on an answer; an exception leaves the reservation "
       "pending for find_time, without a login_failure line (asgi/guards.py, wsgi/guards.py)")
def test_an_app_exception_settles_the_reservation(flavour: str) -> None:
    clock = Clock()
    regulator = MemoryRegulator(clock=clock)
    login = CountingLogin(raise_on=lambda data: data.get("password") == "boom")
    with guarded(flavour, login, regulator=regulator) as base:
        for i in range(3):
            httpx.post(base + "/login", data={"username": "alice", "password": "boom"},
                       headers={"X-Forwarded-For": f"198.51.100.{i}"})
    pending = sum(len(s.pending) for t in regulator._tables.values() for s in t.values())
    assert pending == 0


@xfail("a cancelled ASGI task (a timeout middleware, a server that cancels on disconnect) "
       "between reserve and settle leaves the reservation pending (asgi/guards.py)")
def test_a_cancelled_attempt_is_settled() -> None:
    import asyncio

    clock = Clock()
    regulator = MemoryRegulator(clock=clock)
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]}}, environ={})

    async def slow_login(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await asyncio.sleep(5)      # never reached: the outer timeout cancels first

    guard = asgi.LoginGuardMiddleware(slow_login, settings=settings, paths=["/login"],
                                      regulator=regulator, delay=fast_delay())

    async def with_timeout(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await asyncio.wait_for(guard(scope, receive, send), 0.2)
        except asyncio.TimeoutError:
            await send({"type": "http.response.start", "status": 504, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    with uvicorn_server(with_timeout) as base:
        for _ in range(3):
            assert httpx.post(base + "/login", data={"username": "alice",
                                                     "password": "x"}).status_code == 504
    pending = sum(len(s.pending) for t in regulator._tables.values() for s in t.values())
    assert pending == 0


# -- 9. a Flask login reading request.values ---------------------------------------------------


@xfail("the guard reads the body only; a login reading request.values takes the query "
       "string first, also for a banned attempt's password (layers.py _fields, decoy_body)")
def test_credentials_in_the_query_string_are_refused() -> None:
    from review import probe_flask_values

    probe_flask_values.checked.clear()
    assert probe_flask_values.main() == 0


# -- 10. no client address: no address budget ----------------------------------------------------


@xfail("an attempt without a client address (Unix socket) skips the pair and address "
       "budgets (regulation.py _Policy.subjects), and no socket peer can be trusted")
def test_attempts_without_an_address_share_an_address_budget() -> None:
    from review.probe_no_address import run

    assert run("uvicorn") <= 20


@xfail("the built-in login regulates any name up to the form's 16 kB and the memory "
       "regulator keeps it whole in its keys: ~33 kB a failed attempt (login/core.py)")
def test_an_overlong_name_is_not_kept_whole(flavour: str, tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password=PASSWORD)
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "local_users": {"file": str(users.path)}}, environ={})
    regulator = MemoryRegulator(clock=Clock())
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(module.protect(inner, settings, users=users, regulator=regulator,
                               store=MemorySessionStore(), delay=fast_delay())) as base, \
            browser() as client:
        page = client.get(base + "/.auth/login")
        state = re.search(r'name="state" value="([^"]+)"', page.text)
        assert state
        answer = client.post(base + "/.auth/login", data={
            "state": state.group(1), "username": "n" * 15000, "password": ""})
        assert answer.status_code in (400, 401)
    longest = max((len(k) for t in regulator._tables.values() for k in t), default=0)
    assert longest <= 1024


# -- 11. the password policy ---------------------------------------------------------------------


@xfail("length counts code points after NFKC: U+FDFA is 18 (policy.py problems)")
def test_one_code_point_is_not_twelve_characters() -> None:
    assert PasswordPolicy().problems("\ufdfa")


@xfail("invisible (Cf) characters count as characters and distinct ones (policy.py)")
def test_invisible_characters_do_not_make_a_password_long() -> None:
    assert PasswordPolicy().problems("a\u200b\u200c\u200d\u2060aaaaaaa")


@xfail("the blocklist comparison keeps soft hyphens and zero-width characters, and strips "
       "only ASCII digits, punctuation and spaces (policy.py _AROUND)")
@pytest.mark.parametrize("password", ["pass\u00adword1234", "password\u200b1234",
                                      "password\u0663\u0663\u0663\u0663",
                                      "password\u00a1\u00a1\u00a1\u00a1"])
def test_a_listed_password_with_unicode_decoration_is_refused(password: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("password\n")
    assert PasswordPolicy(blocklist_file=fh.name).problems(password)


# -- 12. secure-mw bans lift with an empty name ----------------------------------------------


@xfail("bans lift --user '' reports 'lifted 0 ban(s) of address None' and exits 0 "
       "(cli.py _bans): an empty name should be a usage error")
def test_bans_lift_refuses_an_empty_name(redis_server: Any) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update({"SECURE_MW_SESSION__STORE": "redis",
                "SECURE_MW_SESSION__REDIS_URL": redis_server.url,
                "SECURE_MW_KEYS__ENCRYPTION_KEYS": json.dumps([KEY])})
    done = subprocess.run([sys.executable, "-m", "secure_mw.cli", "bans", "lift", "--user",
                           ""], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert done.returncode == 2, (done.returncode, done.stderr)
