"""The outside review of the boundary (Host allow-list, UTF-8 paths, ES256, redirects,
derived signing key, multi-worker detection) and OpenID relying-party changes.

Every test here reproduces a finding of the review and is a strict xfail: it fails today and
starts passing (XPASS, which strict makes a failure) once the finding is fixed, so whoever
fixes one removes its mark. Real servers, a real redis-server and the real provider of
integrations/idp; injected clocks, no sleeping for time.
"""

from __future__ import annotations

import json
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
from tests.servers import RedisServer, free_port

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
