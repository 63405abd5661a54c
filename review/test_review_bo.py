"""The outside review of the boundary (Host allow-list, UTF-8 paths, ES256, redirects,
derived signing key, multi-worker detection) and OpenID relying-party changes.

Every test here reproduces a finding of the review and is a strict xfail: it fails today and
starts passing (XPASS, which strict makes a failure) once the finding is fixed, so whoever
fixes one removes its mark. Real servers, a real redis-server and the real provider of
integrations/idp; injected clocks, no sleeping for time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.session import MemorySessionStore
from secure_mw.session.model import Session
from tests.apps import FLAVOURS, browser, serve
from tests.clock import Clock
from tests.idp import IdPServer, dev_login
from tests.servers import RedisServer, ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SECRET = "review-client-secret-for-tests-only"
KEY = KeyRing.new_key_text()
SESSION = "__Host-secure_mw_session"
ACCESS_TTL = 120
APP_PORTS = [free_port() for _ in range(3)]
USERS = [{"sub": "bob", "password": "bob-pw", "email": "bob@example.com",
          "email_verified": True, "name": "Bob", "groups": ["staff"]}]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _client(**extra: Any) -> dict[str, Any]:
    uris = [f"http://127.0.0.1:{p}" for p in APP_PORTS]
    return {"client_id": "app", "client_secret": SECRET,
            "redirect_uris": [f"{u}/.auth/callback" for u in uris],
            "post_logout_redirect_uris": [f"{u}/.auth/logged-out" for u in uris],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"], **extra}


@pytest.fixture(scope="module")
def fixed_rt_idp() -> Iterator[IdPServer]:
    """A provider that returns the same refresh token at every refresh (no rotation), as
    Google, Auth0 and Okta do by default."""
    server = IdPServer(clients=[_client()], users=USERS, ttl={"AccessToken": ACCESS_TTL},
                       rotate_refresh_tokens=False)
    server.start()
    yield server
    server.stop()


def _settings(idp: IdPServer, store: str, redis_url: str | None = None,
              **extra: Any) -> Settings:
    session: dict[str, Any] = {"store": store, "inactivity": "10m"}
    if redis_url:
        session["redis_url"] = redis_url
    return Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]}, "session": session,
        "oidc": {"issuer": idp.issuer, "client_id": "app", "client_secret": SECRET,
                 "scopes": ["openid", "profile", "email", "groups"], **extra}}, environ={})


def _login(client: httpx.Client, base: str, idp: IdPServer) -> None:
    first = client.get(base + "/x")
    assert first.status_code == 302, first.text
    start = client.get(base + first.headers["location"])
    done = client.get(dev_login(client, start.headers["location"], username="bob",
                                password="bob-pw"))
    assert done.status_code == 302, done.text


# -- F1: a provider that does not rotate refresh tokens ---------------------------------------


@pytest.mark.xfail(strict=True, reason="F1: the rotation record of the first refresh, keyed "
                   "by the unchanged refresh token, is reused instead of refreshing again")
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_provider_that_keeps_its_refresh_token_is_refreshed_more_than_once(
        fixed_rt_idp: IdPServer, flavour: str, store: str,
        request: pytest.FixtureRequest) -> None:
    """Login, refresh once (the provider answers the same refresh token), then the new
    access token is due and then ends: the session must refresh again. Today the first
    refresh's rotation record (kept an hour, keyed by the refresh token) is taken for the
    result of this one: no refresh grant, the session keeps an access token that has ended,
    userinfo is called at every request with it, and on the real clock the session ends
    when the provider stops accepting it (review/probes/nonrotating_realtime.py: 30 s after
    login with 8 s access tokens)."""
    clock = Clock()
    if store == "redis":
        from secure_mw.session.redis_store import RedisSessionStore

        redis_url = request.getfixturevalue("redis_server").url
        settings = _settings(fixed_rt_idp, "redis", redis_url)
        records: Any = RedisSessionStore(redis_url, keyring=KeyRing.from_strings([KEY]))
        options: dict[str, Any] = {}
    else:
        settings = _settings(fixed_rt_idp, "memory")
        records = MemorySessionStore(clock=clock)
        options = {"store": records}
    module = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.protect(inner, settings, clock=clock, **options),
               port=APP_PORTS[0]) as base, browser() as client:
        _login(client, base, fixed_rt_idp)
        session_id = str(client.cookies.get(SESSION))

        def tokens() -> dict[str, Any]:
            record = records.load(session_id)
            record = record if isinstance(record, Session) else Session.from_bytes(record)
            return dict(record.tokens)

        api = {"Accept": "application/json"}
        first_at = tokens()["at"]
        clock.advance(ACCESS_TTL - 30)                   # due: the first refresh
        assert client.get(base + "/x", headers=api).status_code == 200
        second = tokens()
        assert second["at"] != first_at and second["ae"] > clock.now
        clock.advance(ACCESS_TTL - 10)                   # that token has ended by now
        assert client.get(base + "/x", headers=api).status_code == 200
        third = tokens()
        assert third["at"] != second["at"], "no second refresh: the old access token is kept"
        assert third["ae"] > clock.now


# -- F2, F3: the multi-worker detection's false positives -------------------------------------

_TEST_PROCESS = r"""
import json, sys
from secure_mw import Settings, asgi, wsgi
from secure_mw.session import memory_store
memory_store.CHECK_INTERVAL = 0          # a suite runs longer than the 5 s interval anyway
settings = Settings.from_mapping({"server": {"allowed_hosts": ["testserver", "localhost"]},
    "access_control": {"rules": [{"resources": ["^/"], "policy": "bypass"}]}}, environ={})
if sys.argv[1] == "asgi":
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient
    client = TestClient(asgi.protect(
        Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))]), settings))
else:
    from werkzeug.test import Client
    def inner(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    client = Client(wsgi.protect(inner, settings))
print(client.get("/").status_code, flush=True)
sys.stdin.readline()                     # the other test process has run its first test
print(client.get("/").status_code, flush=True)
"""


@pytest.mark.xfail(strict=True, reason="F2: in-process test clients of several test "
                   "processes (pytest-xdist, Django test --parallel) count as sibling workers")
def test_test_processes_of_one_parent_with_test_clients_are_not_flagged(
        flavour: str, tmp_path: Path) -> None:
    """An app's own test suite run in two processes (as pytest-xdist or Django's
    ``test --parallel`` do): each process uses an in-process test client, whose scope
    names port 80; there is no server and no shared listening socket, and each process's
    memory store serves its own tests correctly. Today the second process gets 503 from its
    first request on, and the first from its next check on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)      # a registry of this test's own
    procs = [subprocess.Popen([PY, "-c", _TEST_PROCESS, flavour], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    try:
        firsts = []
        for proc in procs:                       # one after the other: no race in the test
            assert proc.stdout is not None
            firsts.append(proc.stdout.readline().strip())
        seconds = []
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            seconds.append(proc.stdout.readline().strip())
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert firsts + seconds == ["200"] * 4


@pytest.mark.xfail(strict=True, reason="F3: after a graceful reload the new worker counts "
                   "the old one, still finishing a request, as a sibling and answers 503")
def test_gunicorn_with_one_worker_reloaded_gracefully_is_not_flagged(tmp_path: Path) -> None:
    """``gunicorn -w 1`` (a healthy single-worker deployment) gets SIGHUP while a request is
    in flight (a download, a long poll): gunicorn starts the new worker before the old one
    has finished. Today every request to the new worker — health checks included — gets
    503 until the old worker exits and the next check passes (20 of 31 requests over 10 s
    in review/probes/gunicorn_reload.py)."""
    pytest.importorskip("gunicorn")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update({"SECURE_MW_ACCESS_CONTROL__RULES": json.dumps(
        [{"resources": ["^/"], "policy": "bypass"}]), "E2E_WORKER_CHECK_INTERVAL": "0",
        "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"})
    release = tmp_path / "release"
    args = [PY, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "4",
            "--graceful-timeout", "60", "-b", f"127.0.0.1:{port}",
            "review.probes.slow_app:wsgi_app()"]
    api = {"Accept": "application/json"}
    with ServerProcess(args, port=port, env=env, log=tmp_path / "gunicorn.log") as server:
        old = httpx.get(server.url + "/x", headers=api, timeout=10)
        assert old.status_code == 200
        held: list[int] = []
        hold = threading.Thread(target=lambda: held.append(httpx.get(
            f"{server.url}/hold?{release}", timeout=60).status_code))
        hold.start()
        try:
            for _ in range(10_000):
                if (tmp_path / "release.held").exists() or not hold.is_alive():
                    break
                hold.join(timeout=0.01)
            assert (tmp_path / "release.held").exists()
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGHUP)
            answer = old
            for _ in range(2000):                # until the new worker answers
                try:
                    answer = httpx.get(server.url + "/x", headers=api, timeout=10)
                except httpx.TransportError:
                    continue
                if answer.status_code != 200 or answer.json()["pid"] != old.json()["pid"]:
                    break
            assert hold.is_alive(), "the old worker's request ended before the check"
            assert answer.status_code == 200, answer.text
        finally:
            release.touch()
            hold.join(timeout=60)
        assert held == [200]


# -- F4: a JWKS fetch blocks the ASGI event loop ----------------------------------------------


def _forged_assertion(kid: str) -> str:
    import base64

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'ES256', 'kid': kid})}.{part({'sub': 'x'})}.{'A' * 86}"


@pytest.mark.xfail(strict=True, reason="F4: the ASGI SignedHeaderMiddleware verifies with the "
                   "blocking get_key, so a hanging JWKS fetch stops the whole event loop")
def test_a_hanging_jwks_fetch_does_not_stop_other_requests_under_asgi() -> None:
    """An anonymous client sends an assertion with an unknown kid; the JWKS endpoint does
    not answer (an outage). Another request, without any assertion, must be answered (401)
    meanwhile. Today it waits until the fetch times out: the sync verifier runs on the event
    loop (review/probes/jwks_blocking.py: the worker answered nothing for about 20 of 30 s
    while a client re-triggered fetches at the new 1-2-4-8 s retry backoff)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from secure_mw.tokens import RemoteKeySet
    from secure_mw.tokens.headers import VerifyLayer
    from tests.apps import asgi_inner, uvicorn_server

    fetched, release = threading.Event(), threading.Event()

    class Hanging(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetched.set()
            release.wait(60)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    jwks = ThreadingHTTPServer(("127.0.0.1", free_port()), Hanging)
    threading.Thread(target=jwks.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{jwks.server_port}/jwks"
    settings = Settings.from_mapping({"signed_headers": {"issue": False, "verify": {
        "jwks_url": url, "issuer": "proxy", "audience": "app"}}}, environ={})
    layer = VerifyLayer(settings, keys=RemoteKeySet(url, timeout=60))
    app = asgi.SignedHeaderMiddleware(asgi_inner(), settings=settings, layer=layer)
    try:
        with uvicorn_server(app) as base:
            attacker = threading.Thread(target=lambda: httpx.get(
                base + "/x", headers={"X-Pomerium-Jwt-Assertion": _forged_assertion("k1")},
                timeout=90))
            attacker.start()
            assert fetched.wait(30)
            try:
                other = httpx.get(base + "/x", timeout=20)
                assert other.status_code == 401
            finally:
                release.set()
                attacker.join(timeout=90)
    finally:
        release.set()
        jwks.shutdown()


# -- F5, F6: an old cookie-store copy is served on a rotation, never refreshed ----------------


@pytest.fixture(scope="module")
def idp() -> Iterator[IdPServer]:
    server = IdPServer(clients=[_client()], users=[
        {**USERS[0], "groups": ["admins", "staff"]},
        {"sub": "mallory", "password": "mallory-pw", "email": "mallory@example.com",
         "email_verified": True, "name": "Mallory", "groups": []}],
        ttl={"AccessToken": ACCESS_TTL})
    server.start()
    yield server
    server.stop()


def _cookie_header(client: httpx.Client) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar
                     if c.name == SESSION or c.name.startswith(SESSION + "."))


@pytest.mark.xfail(strict=True, reason="F5: a copy older than the last refresh is served on "
                   "the in-process rotation record for up to an hour, never refreshed")
def test_an_old_cookie_copy_is_refused_once_the_provider_refuses_the_grant(
        idp: IdPServer, flavour: str) -> None:
    """Cookie store, remember-me. An attacker copied the cookie before its first refresh;
    the user's browser refreshes it once, then the user is disabled at the provider and
    goes away. The copy, replayed every 5 minutes, must stop being served once its access
    token (and the rotated one) has ended: a refresh would be refused. Today it is served
    for 55 minutes (ROTATION_GRACE): the rotation record stands in for a refresh that never
    happens, with no refresh grant and no userinfo call."""
    clock = Clock()
    settings = _settings(idp, "cookie")
    module = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.protect(inner, settings, clock=clock),
               port=APP_PORTS[1]) as base, browser() as client:
        start = client.get(base + "/.auth/login?remember_me=1")
        client.get(dev_login(client, start.headers["location"], username="bob",
                             password="bob-pw"))
        stolen = _cookie_header(client)
        clock.advance(ACCESS_TTL - 20)                       # due: the browser refreshes
        assert client.get(base + "/x", headers={"Accept": "application/json"}
                          ).status_code == 200
        idp.disable_user("bob")
        try:
            served = []
            for minute in range(5, 60, 5):
                clock.advance(300)
                answer = httpx.get(base + "/x", headers={"Cookie": stolen,
                                                         "Accept": "application/json"})
                if answer.status_code == 200:
                    served.append(minute)
        finally:
            idp.enable_user("bob")
    assert served == [], f"the old copy was served {len(served)} times, at minutes {served}"


@pytest.mark.xfail(strict=True, reason="F6: a refreshed profile too large for the cookie "
                   "store is dropped; the old cookie keeps its old groups, refresh skipped")
def test_groups_removed_at_the_provider_are_removed_with_the_cookie_store(
        idp: IdPServer, flavour: str) -> None:
    """Cookie store. The provider removes the user from "admins" and puts them in 600
    other groups (a re-org). At the next refresh the new profile does not fit in the
    cookie: the request gets a 503 page saying the identity service cannot be reached, no
    cookie is written, and every later request is served from the old cookie, through the
    rotation record, still in "admins" — until the session ends."""
    clock = Clock()
    settings = _settings(idp, "cookie")
    module = asgi if flavour == "asgi" else wsgi
    api = {"Accept": "application/json"}
    try:
        with serve(flavour, lambda inner: module.protect(inner, settings, clock=clock),
                   port=APP_PORTS[2]) as base, browser() as client:
            _login(client, base, idp)
            assert "admins" in client.get(base + "/x", headers=api).json()["groups"]
            idp.set_groups("bob", [f"cn=group-{i:04d},ou=groups,dc=example,dc=com"
                                   for i in range(600)])
            clock.advance(ACCESS_TTL - 20)
            client.get(base + "/x", headers=api)             # the refresh that cannot be kept
            for _ in range(3):
                clock.advance(30)
                answer = client.get(base + "/x", headers=api)
                assert answer.status_code != 200 or "admins" not in answer.json()["groups"], \
                    "served as a member of admins after the provider removed it"
    finally:
        idp.set_groups("bob", ["admins", "staff"])


# -- F8: no usable temporary directory: 500 ---------------------------------------------------


def _read_only_server(flavour: str, port: int) -> list[str]:
    """tests.e2e_app in a mount namespace where /tmp, /var/tmp, /usr/tmp and the working
    directory are read-only (a container with readOnlyRootFilesystem and no tmpfs)."""
    mounts = " ".join(f"mount --bind -o ro {d} {d};" for d in ("/tmp", "/var/tmp", str(ROOT)))
    script = (f"set -e; {mounts} if [ -d /usr/tmp ]; then mount --bind -o ro /usr/tmp "
              f"/usr/tmp; fi; exec {PY} -m tests.e2e_app --flavour {flavour} --port {port}")
    return ["unshare", "-m", "bash", "-c", script]


@pytest.mark.xfail(strict=True, reason="F8: registry_directory() lets tempfile.gettempdir()'s "
                   "FileNotFoundError escape: 500 at every check")
def test_no_writable_temp_directory_is_not_a_500(flavour: str, tmp_path: Path) -> None:
    """docs/sessions.md: "Without such a directory (Windows, no writable temp directory)
    nothing is checked." With no writable temporary directory at all, tempfile raises
    FileNotFoundError inside the worker check: one request in every CHECK_INTERVAL (5 s)
    answers 500 on a single-worker deployment on the defaults (here the interval is 0, so
    every request)."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("cannot make a mount namespace here (needs root and unshare)")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SECURE_MW_") and k not in ("XDG_RUNTIME_DIR", "TMPDIR")}
    env.update({"SECURE_MW_ACCESS_CONTROL__RULES": json.dumps(
        [{"resources": ["^/"], "policy": "bypass"}]), "E2E_WORKER_CHECK_INTERVAL": "0",
        "PYTHONDONTWRITEBYTECODE": "1"})
    with ServerProcess(_read_only_server(flavour, port), port=port, env=env,
                       log=tmp_path / "server.log") as server:
        statuses = [httpx.get(server.url + "/x", headers={"Accept": "application/json"},
                              timeout=10).status_code for _ in range(5)]
        assert "No usable temporary directory" not in server.log()
    assert statuses == [200] * 5


# -- F9: HostGuardMiddleware alone checks a host the app never sees ---------------------------


def _echo_host_asgi() -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        hosts = [v.decode("latin-1") for n, v in scope["headers"] if n == b"host"]
        body = json.dumps({"host": hosts}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
    return app


def _echo_host_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = json.dumps({"host": [environ.get("HTTP_HOST")]}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.mark.xfail(strict=True, reason="F9: standalone, the guard judges the forwarded host "
                   "but passes the request on with the Host header it did not judge")
def test_the_host_guard_alone_never_lets_an_unlisted_host_reach_the_app(flavour: str) -> None:
    """HostGuardMiddleware(app, allowed_hosts=[...], trusted_proxies=[...]) without
    ClientAddressMiddleware ("each middleware also works alone"): behind a proxy that
    passes the client's Host on and sets X-Forwarded-Host itself (nginx:
    ``proxy_set_header Host $http_host; proxy_set_header X-Forwarded-Host $server_name``),
    a request with ``Host: evil.example`` passes the guard and the app builds its links
    from evil.example."""
    from tests.apps import uvicorn_server, wsgi_server

    module = asgi if flavour == "asgi" else wsgi
    inner = _echo_host_asgi() if flavour == "asgi" else _echo_host_wsgi
    app = module.HostGuardMiddleware(inner, allowed_hosts=["app.example.com"],
                                     trusted_proxies=["127.0.0.1/32"])
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(app) as base:
        answer = httpx.get(base + "/x", headers={
            "Host": "evil.example", "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Host": "app.example.com"})
    assert answer.status_code == 400 or answer.json()["host"] == ["app.example.com"], \
        f"the app saw Host {answer.json()['host']}"


# -- F10: a retired key makes fail2ban ban the users of the Redis store -----------------------


@pytest.mark.xfail(strict=True, reason="F10: a Redis record that does not decrypt is audited "
                   "as the client's forgery (invalid_session_cookie), which fail2ban bans")
def test_a_retired_key_does_not_make_fail2ban_ban_redis_store_users(
        flavour: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """With the Redis store the client only holds a 256-bit random id: a record under it
    that does not decrypt (written with a key since removed from the ring, or by another
    app sharing the Redis prefix) cannot be the client's forgery. Since the reviewed change
    it is audited ``invalid_session_cookie`` on every path, an event the shipped fail2ban
    filter counts: one page load of 12 parallel requests (a page and its resources) after
    the key was removed is 12 lines from the user's address, above the jail's maxretry 10."""
    from concurrent.futures import ThreadPoolExecutor

    from secure_mw.testing import session_cookie

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
        def one(_: int) -> int:
            return httpx.get(base + "/x", headers={"Cookie": cookie,
                                                   "Accept": "application/json"}).status_code

        with ThreadPoolExecutor(12) as pool:
            assert set(pool.map(one, range(12))) <= {401, 302}
    banning = ("login_failure", "ban", "rate_limited", "csrf_failure", "invalid_session_cookie",
               "invalid_token", "unsafe_redirect", "authorization_denied")
    counted = [r.getMessage() for r in caplog.records if r.name == "secure_mw.audit"
               and any(f'"event":"{e}"' in r.getMessage() for e in banning)]
    assert counted == [], f"{len(counted)} fail2ban-counted lines for one page load"


# -- F11: revocations of the cookie store are evicted by anyone who signs out -----------------


def _sign_in_out(base: str, idp: IdPServer, user: str, password: str, *,
                 remember: bool) -> str:
    """Sign in (remember-me or not) and out again; the session cookie as it was."""
    with browser() as client:
        start = client.get(base + "/.auth/login" + ("?remember_me=1" if remember else ""))
        client.get(dev_login(client, start.headers["location"], username=user,
                             password=password))
        cookie = _cookie_header(client)
        csrf = client.get(base + "/.auth/me").json()["csrf_token"]
        assert client.post(base + "/.auth/logout", data={"csrf": csrf}).status_code == 303
        return cookie


@pytest.mark.xfail(strict=True, reason="F11: when the revocation table is full the mark "
                   "closest to its end is dropped: any user's sign-outs evict the victim's")
def test_a_signed_out_cookie_stays_refused_whoever_signs_out_after(
        idp: IdPServer, flavour: str) -> None:
    """Cookie store without Redis (revocations in process memory, bounded by
    ``session.memory_max_sessions``, 3 here for the test; 100,000 by default). Bob signs
    out; his copied cookie is refused. Mallory then signs in with remember-me and out, as
    many times as the bound: her marks end in 30 days, Bob's within the hour, so his is
    the one dropped, and his copied cookie is served again."""
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "session": {"store": "cookie", "memory_max_sessions": 3},
        "oidc": {"issuer": idp.issuer, "client_id": "app", "client_secret": SECRET,
                 "scopes": ["openid", "profile", "email", "groups"]}}, environ={})
    module = asgi if flavour == "asgi" else wsgi
    api = {"Accept": "application/json"}
    with serve(flavour, lambda inner: module.protect(inner, settings, clock=Clock()),
               port=APP_PORTS[0]) as base:
        stolen = _sign_in_out(base, idp, "bob", "bob-pw", remember=False)
        assert httpx.get(base + "/x", headers={**api, "Cookie": stolen}).status_code == 401
        for _ in range(3):
            _sign_in_out(base, idp, "mallory", "mallory-pw", remember=True)
        replay = httpx.get(base + "/x", headers={**api, "Cookie": stolen})
    assert replay.status_code == 401, f"Bob's signed-out cookie is served again: {replay.text}"


# -- F7: the 503 page for several workers recommends the cookie store without Redis -----------

_CHECKER = r"""
import sys
from pathlib import Path
from secure_mw.session.memory_store import SiblingWorkers
workers = SiblingWorkers("sid", explicit=False, directory=Path(sys.argv[1]), interval=0)
for line in sys.stdin:
    print(repr(workers.check("8000")), flush=True)
"""


@pytest.mark.xfail(strict=True, reason="F7: the refusal names session.store = \"cookie\" as "
                   "the fix for several workers; docs/sessions.md says that cookie store "
                   "cannot arbitrate refreshes or share sign-outs across processes")
def test_the_fix_the_multi_worker_refusal_names_works_with_several_workers(
        tmp_path: Path) -> None:
    """Two workers on the defaults get 503 naming the fix: 'session.store = "cookie"
    (with keys.encryption_keys)'. Applied to two workers (review/probes/
    cookie_two_workers.py, two app instances with their own cores): parallel requests at
    refresh time presented a spent refresh token and the provider ended the session in 5
    of 5 trials, and a sign-out is known only to the worker that served it. The advice must
    name what works with several workers: Redis (store = "redis", or redis_url with the
    cookie store)."""
    registry = tmp_path / "registry"
    registry.mkdir(mode=0o700)
    procs = [subprocess.Popen([PY, "-c", _CHECKER, str(registry)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
    try:
        answers = []
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            answers.append(proc.stdout.readline().strip())
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    refusal = answers[1]
    assert "several worker processes" in refusal
    cookie_advice = refusal.split('session.store = "cookie"', 1)
    assert len(cookie_advice) == 1 or "redis_url" in cookie_advice[1].split(" or ", 1)[0], \
        refusal


# -- F12: a local user switches the check off without a word ----------------------------------

_CHECKER_DEFAULT_DIR = r"""
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from secure_mw.session.memory_store import SiblingWorkers
workers = SiblingWorkers("sid", explicit=False, interval=0)
for line in sys.stdin:
    print(repr(workers.check("8000")), flush=True)
"""


@pytest.mark.xfail(strict=True, reason="F12: a registry directory that is not ours (another "
                   "user's, a symlink) silently disables the check: no refusal, no log line")
@pytest.mark.parametrize("planted", ["other-owner", "symlink"])
def test_a_planted_registry_directory_does_not_silently_disable_the_check(
        tmp_path: Path, planted: str) -> None:
    """Another local user creates ``<tmp>/secure-mw-<uid>`` first (or a symlink there);
    without ``$XDG_RUNTIME_DIR`` (services usually have none) that is the only candidate.
    Two workers on the defaults then serve with the memory store, unflagged, and nothing
    is logged: at least a warning naming the directory is due."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    target = temp / f"secure-mw-{os.getuid()}"
    if planted == "symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        target.symlink_to(elsewhere)
    else:
        target.mkdir()
        os.chown(target, 65534, 65534)       # "nobody" got there first
        target.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(temp)
    procs = [subprocess.Popen([PY, "-c", _CHECKER_DEFAULT_DIR], cwd=ROOT, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    try:
        answers = []
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            answers.append(proc.stdout.readline().strip())
    finally:
        errors = ""
        for proc in procs:
            proc.kill()
            errors += proc.communicate()[1]
    assert answers[1] != "None" or str(target) in errors, (answers, errors)
