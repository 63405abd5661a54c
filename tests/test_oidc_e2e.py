"""OIDC login sessions end to end: real OpenID provider, real servers, both flavours.

Every case runs through ASGI (uvicorn) and WSGI (werkzeug's threaded server); stores are the
memory store unless a case names another (cookie, or a real redis-server).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie
from secure_mw.tokens import generate_private_jwks, public_jwks
from tests.apps import FLAVOURS, browser, serve
from tests.clock import Clock
from tests.idp import IdPServer, dev_login, rp_logout
from tests.servers import RedisServer, free_port

SECRET = "app-client-secret-for-tests-only"
KEY = KeyRing.new_key_text()
USERS = [
    {"sub": "alice", "password": "alice-pw", "email": "alice@example.com",
     "email_verified": True, "name": "Alice Example", "groups": ["admins", "staff"]},
    {"sub": "bob", "password": "bob-pw", "email": "bob@example.com",
     "email_verified": True, "name": "Bob Example", "groups": ["staff"]},
    {"sub": "many", "password": "many-pw", "email": "many@example.com",
     "email_verified": True, "name": "In Many Groups",
     "groups": [f"cn=group-{i:04d},ou=groups,dc=example,dc=com" for i in range(600)]},
    {"sub": "dana", "password": "dana-pw", "email": "dana@example.com",
     "email_verified": True, "claims": {"department": "sales"}},
    {"sub": "huge", "password": "huge-pw", "email": "huge@example.com",
     "email_verified": True, "name": "In Very Many Groups",      # an id_token of ~120 KB
     "groups": [f"cn=group-{i:04d},ou=groups,dc=example,dc=com" for i in range(2000)]},
]
APP_PORTS = [free_port() for _ in range(4)]
CLIENT_JWKS = generate_private_jwks(("ES256",))
ACCESS_TTL = 120


@pytest.fixture(scope="module")
def idp() -> Iterator[IdPServer]:
    uris = [f"http://127.0.0.1:{p}" for p in APP_PORTS]
    client = {
        "client_secret": SECRET,
        "redirect_uris": [f"{u}/.auth/callback" for u in uris],
        "post_logout_redirect_uris": [f"{u}/.auth/logged-out" for u in uris],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    }
    server = IdPServer(
        clients=[{**client, "client_id": "app", "token_endpoint_auth_method":
                  "client_secret_basic"},
                 {**client, "client_id": "app-post", "token_endpoint_auth_method":
                  "client_secret_post"},
                 {**{k: v for k, v in client.items() if k != "client_secret"},
                  "client_id": "app-jwt", "token_endpoint_auth_method": "private_key_jwt",
                  "jwks": public_jwks(CLIENT_JWKS)}],
        users=USERS, ttl={"AccessToken": ACCESS_TTL},
    )
    server.start()
    yield server
    server.stop()


def settings_for(idp: IdPServer, *, client_id: str = "app", store: str = "memory",
                 redis_url: str | None = None, **session: Any) -> Settings:
    auth = {"app-post": "client_secret_post", "app-jwt": "private_key_jwt"}.get(
        client_id, "client_secret_basic")
    credentials = {"client_jwks": json.dumps(CLIENT_JWKS)} if auth == "private_key_jwt" \
        else {"client_secret": SECRET}
    data: dict[str, Any] = {
        "keys": {"encryption_keys": [KEY]},
        "session": {"store": store, **session},
        "oidc": {"issuer": idp.issuer, "client_id": client_id, **credentials,
                 "token_endpoint_auth_method": auth,
                 "scopes": ["openid", "profile", "email", "groups"]},
    }
    if redis_url:
        data["session"]["redis_url"] = redis_url
    return Settings.from_mapping(data, environ={})


AppFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(flavour: str, clock: Clock) -> AppFactory:
    """``app(settings, port_index=0, **options)`` serves the protected test app."""

    @contextmanager
    def factory(settings: Settings, port_index: int = 0, **options: Any) -> Iterator[str]:
        options.setdefault("clock", clock)
        module = asgi if flavour == "asgi" else wsgi
        with serve(flavour, lambda inner: module.protect(inner, settings, **options),
                   port=APP_PORTS[port_index]) as url:
            yield url

    return factory


def login(client: httpx.Client, base: str, idp: IdPServer, *, user: str = "alice",
          password: str = "alice-pw", path: str = "/hello?x=1") -> httpx.Response:
    """Navigate to ``path``, get sent to the IdP, log in, come back; returns the callback's
    response (a redirect to ``path``)."""
    first = client.get(base + path)
    assert first.status_code == 302, first.text
    assert first.headers["location"].startswith("/.auth/login?rd=")
    start = client.get(base + first.headers["location"])
    assert start.status_code == 302
    auth_url = start.headers["location"]
    assert auth_url.startswith(idp.issuer)
    callback = dev_login(client, auth_url, username=user, password=password)
    assert callback.startswith(base + "/.auth/callback?")
    return client.get(callback)


def audit_events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "secure_mw.audit"]


# -- the happy path -------------------------------------------------------------------------


@pytest.mark.parametrize("client_id", ["app", "app-post", "app-jwt"])
def test_full_login_and_access(idp: IdPServer, app: AppFactory, client_id: str,
                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "secure_mw.audit")
    settings = settings_for(idp, client_id=client_id)
    with app(settings) as base, browser() as client:
        done = login(client, base, idp)
        assert done.status_code == 302
        assert done.headers["location"] == "/hello?x=1"
        set_cookie = done.headers.get_list("set-cookie")
        session_line = next(c for c in set_cookie if c.startswith("__Host-secure_mw_session="))
        for attribute in ("Path=/", "Secure", "HttpOnly", "SameSite=Lax"):
            assert attribute in session_line
        assert "Max-Age" not in session_line and "Domain" not in session_line
        page = client.get(base + "/hello?x=1")
        assert page.status_code == 200
        who = page.json()
        assert who["authenticated"] is True
        assert who["sub"] == "alice"
        assert who["email"] == "alice@example.com"
        assert who["name"] == "Alice Example"
        assert who["groups"] == ["admins", "staff"]
        if "user_is_authenticated" in who:      # ASGI: Starlette's request.user and auth
            assert who["user_is_authenticated"] is True
            assert who["display_name"] == "Alice Example"
            assert who["auth_scopes"] == ["authenticated"]
        me = client.get(base + "/.auth/me").json()
        assert me["authenticated"] is True and me["sub"] == "alice"
        assert me["remember_me"] is False
    events = audit_events(caplog)
    assert any('"event":"login_success"' in e and '"user":"alice"' in e for e in events)
    assert not any(SECRET in e or "alice-pw" in e for e in events)


def test_anonymous_api_gets_401_and_navigation_302(idp: IdPServer, app: AppFactory) -> None:
    with app(settings_for(idp)) as base, httpx.Client() as client:
        api = client.get(base + "/api/items", headers={"Accept": "application/json"})
        assert api.status_code == 401
        assert api.headers["www-authenticate"].startswith('Cookie realm="secure_mw"')
        assert api.json()["login_url"] == "/.auth/login"
        xhr = client.get(base + "/page", headers={"Accept": "text/html",
                                                  "X-Requested-With": "XMLHttpRequest"})
        assert xhr.status_code == 401
        post = client.post(base + "/page", headers={"Accept": "text/html"})
        assert post.status_code == 401
        nav = client.get(base + "/page?q=a b", headers={"Accept": "text/html"})
        assert nav.status_code == 302
        assert nav.headers["location"] == "/.auth/login?rd=/page%3Fq%3Da%2520b"
        me = client.get(base + "/.auth/me")
        assert me.status_code == 401 and me.json() == {"authenticated": False}


def test_remember_me_makes_a_persistent_cookie(idp: IdPServer, app: AppFactory) -> None:
    with app(settings_for(idp)) as base, browser() as client:
        start = client.get(base + "/.auth/login?rd=/x&remember_me=1")
        callback = dev_login(client, start.headers["location"], username="bob",
                             password="bob-pw")
        done = client.get(callback)
        line = next(c for c in done.headers.get_list("set-cookie")
                    if c.startswith("__Host-secure_mw_session="))
        assert "Max-Age=2592000" in line
        assert client.get(base + "/.auth/me").json()["remember_me"] is True


def test_two_tabs_can_log_in_at_once(idp: IdPServer, app: AppFactory) -> None:
    with app(settings_for(idp)) as base, browser() as client:
        first = client.get(base + "/.auth/login?rd=/one").headers["location"]
        second = client.get(base + "/.auth/login?rd=/two").headers["location"]
        callback_2 = dev_login(client, second, username="alice", password="alice-pw")
        callback_1 = dev_login(client, first, username="alice", password="alice-pw")
        assert client.get(callback_2).headers["location"] == "/two"
        assert client.get(callback_1).headers["location"] == "/one"
        assert client.get(base + "/one").status_code == 200


HOSTILE_TARGETS = ("https://evil.example/", "//evil.example/", "/\\evil.example",
                   "javascript:alert(1)", "/ok\r\nx: y", "https:evil.example")


def test_open_redirect_in_rd_is_refused_by_the_guard(idp: IdPServer, app: AppFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with app(settings_for(idp)) as base, browser() as client:
        for target in HOSTILE_TARGETS:
            refused = client.get(base + "/.auth/login", params={"rd": target})
            assert refused.status_code == 400, target
        # A non-ASCII path comes back percent-encoded (a Location header is ASCII).
        start = client.get(base + "/.auth/login", params={"rd": "/caf\u00e9/\u20ac?q=\u4e2d"})
        callback = dev_login(client, start.headers["location"], username="alice",
                             password="alice-pw")
        assert client.get(callback).headers["location"] == "/caf%C3%A9/%E2%82%AC?q=%E4%B8%AD"
    unsafe = [e for e in audit_events(caplog) if '"event":"unsafe_redirect"' in e]
    assert len(unsafe) == len(HOSTILE_TARGETS)


def test_session_middleware_alone_ignores_an_unsafe_rd(idp: IdPServer, flavour: str,
                                                       clock: Clock) -> None:
    settings = settings_for(idp)
    module = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.OIDCSessionMiddleware(
            inner, settings=settings, clock=clock), port=APP_PORTS[0]) as base, \
            browser() as client:
        for target in HOSTILE_TARGETS:
            start = client.get(base + "/.auth/login", params={"rd": target})
            callback = dev_login(client, start.headers["location"], username="alice",
                                 password="alice-pw")
            assert client.get(callback).headers["location"] == "/"


# -- refresh and the end of a session -------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "cookie", "redis"])
def test_refresh_after_expiry_then_refused_refresh_ends_session(
        idp: IdPServer, app: AppFactory, clock: Clock, store: str,
        request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    redis_url = request.getfixturevalue("redis_server").url if store == "redis" else None
    settings = settings_for(idp, store=store, redis_url=redis_url, inactivity="10m")
    with app(settings) as base, browser() as client:
        login(client, base, idp, user="bob", password="bob-pw")
        assert client.get(base + "/hello").status_code == 200
        # The access token (120 s) is due for refresh 60 s before it ends.
        clock.advance(ACCESS_TTL - 30)
        page = client.get(base + "/hello")
        assert page.status_code == 200 and page.json()["sub"] == "bob"
        clock.advance(ACCESS_TTL - 30)   # the refreshed token is due again
        assert client.get(base + "/hello").status_code == 200
        idp.disable_user("bob")
        try:
            clock.advance(ACCESS_TTL - 30)
            refused = client.get(base + "/hello")
            assert refused.status_code == 302
            assert refused.headers["location"].startswith("/.auth/login")
            # The session is gone for good, not just for this request.
            assert client.get(base + "/.auth/me").status_code == 401
        finally:
            idp.enable_user("bob")
    assert any('"event":"session_ended"' in e and '"user":"bob"' in e
               for e in audit_events(caplog))


def test_profile_is_refetched_every_refresh_interval(idp: IdPServer, app: AppFactory,
                                                     clock: Clock) -> None:
    with app(settings_for(idp, inactivity="10m")) as base, browser() as client:
        login(client, base, idp)
        idp.disable_user("alice")   # userinfo and refresh now fail at the provider
        try:
            clock.advance(30)        # before refresh_interval (5m): nothing is fetched
            assert client.get(base + "/hello").status_code == 200
            clock.advance(300)       # the profile is due: the provider refuses, session ends
            assert client.get(base + "/hello").status_code == 302
        finally:
            idp.enable_user("alice")


def test_the_claims_the_rules_read_are_kept_and_follow_the_provider(
        idp: IdPServer, app: AppFactory, clock: Clock, caplog: pytest.LogCaptureFixture
        ) -> None:
    """A deny block on claim/department: the session keeps the claim (it kept six claims
    only, so the block never held), a profile re-fetch brings the new value, and a claim
    too large to keep ends the session rather than leave the rules blind."""
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]}, "session": {"inactivity": "1h"},
        "oidc": {"issuer": idp.issuer, "client_id": "app", "client_secret": SECRET,
                 "scopes": ["openid", "profile", "email"], "refresh_interval": "60s"},
        "access_control": {"default_policy": "deny", "rules": [
            {"allow": {"or": [{"authenticated_user": True}]},
             "deny": {"or": [{"claim/department": "contractors"}]}}]}}, environ={})
    try:
        with app(settings) as base, browser() as client:
            login(client, base, idp, user="dana", password="dana-pw")
            assert client.get(base + "/hello").status_code == 200
            idp.set_claims("dana", {"department": "contractors"})
            clock.advance(30)                     # the profile is not due: the old value
            assert client.get(base + "/hello").status_code == 200
            clock.advance(31)                     # re-fetched: now a contractor
            assert client.get(base + "/hello").status_code == 403
            idp.set_claims("dana", {"department": "x" * 5000})
            clock.advance(61)
            assert client.get(base + "/hello").status_code == 302      # session ended
            assert client.get(base + "/.auth/me").status_code == 401
            # a new sign-in with such a claim is refused, audited
            first = client.get(base + "/.auth/login?rd=/")
            callback = dev_login(client, first.headers["location"], username="dana",
                                 password="dana-pw")
            refused = client.get(callback)
            assert refused.status_code == 401 and "larger than" in refused.text
    finally:
        idp.set_claims("dana", {"department": "sales"})
    events = audit_events(caplog)
    assert any('"event":"session_ended"' in e and "claims the access rules read" in e
               for e in events)
    assert any('"event":"login_failure"' in e and "claims the access rules read" in e
               for e in events)


def test_absolute_expiration_and_inactivity(idp: IdPServer, app: AppFactory,
                                            clock: Clock) -> None:
    settings = settings_for(idp, expiration="1h", inactivity="5m")
    with app(settings) as base, browser() as client:
        login(client, base, idp)
        clock.advance(299)
        assert client.get(base + "/a").status_code == 200      # keeps it alive
        clock.advance(299)
        assert client.get(base + "/a").status_code == 200
        clock.advance(301)                                      # idle too long
        assert client.get(base + "/a").status_code == 302
        login(client, base, idp)
        for _ in range(15):                                     # active, but past 1 h
            clock.advance(240)
            client.get(base + "/a")
        assert client.get(base + "/a").status_code == 302


# -- logout ---------------------------------------------------------------------------------


def test_logout_locally_and_at_the_provider(idp: IdPServer, app: AppFactory,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "secure_mw.audit")
    with app(settings_for(idp)) as base, browser() as client:
        login(client, base, idp)
        page = client.get(base + "/.auth/logout")
        assert page.status_code == 200 and 'name="csrf"' in page.text
        csrf = client.get(base + "/.auth/me").json()["csrf_token"]
        assert f'value="{csrf}"' in page.text
        refused = client.post(base + "/.auth/logout", data={"csrf": "wrong"})
        assert refused.status_code == 403
        assert client.get(base + "/hello").status_code == 200   # still logged in
        out = client.post(base + "/.auth/logout", data={"csrf": csrf})
        assert out.status_code == 303
        end_session = out.headers["location"]
        assert end_session.startswith(idp.issuer)
        assert "id_token_hint=" in end_session
        back = rp_logout(client, end_session)
        assert back.startswith(base + "/.auth/logged-out")
        assert client.get(back).status_code == 200
        # Signed out here ...
        assert client.get(base + "/hello").status_code == 302
        # ... and at the provider: a new login asks for the password again.
        start = client.get(base + "/.auth/login").headers["location"]
        shown = client.get(start, follow_redirects=True)
        assert 'name="password"' in shown.text
    assert any('"event":"logout"' in e for e in audit_events(caplog))


def test_stolen_cookie_is_useless_after_logout(idp: IdPServer, app: AppFactory) -> None:
    with app(settings_for(idp)) as base, browser() as client:
        login(client, base, idp)
        stolen = client.cookies.get("__Host-secure_mw_session")
        csrf = client.get(base + "/.auth/me").json()["csrf_token"]
        client.post(base + "/.auth/logout", data={"csrf": csrf})
        replay = httpx.get(base + "/hello", headers={
            "Cookie": f"__Host-secure_mw_session={stolen}", "Accept": "application/json"})
        assert replay.status_code == 401


# -- hostile callbacks ----------------------------------------------------------------------


def test_replayed_and_forged_state(idp: IdPServer, app: AppFactory,
                                   caplog: pytest.LogCaptureFixture) -> None:
    with app(settings_for(idp)) as base, browser() as client:
        start = client.get(base + "/.auth/login").headers["location"]
        callback = dev_login(client, start, username="alice", password="alice-pw")
        assert client.get(callback).status_code == 302
        replay = client.get(callback)
        assert replay.status_code == 400
        assert "Sign in again" in replay.text
        forged = client.get(base + "/.auth/callback", params={"state": "forged", "code": "x"})
        assert forged.status_code == 400
        # A callback carried to another browser (no pre-login cookie) is refused too.
        start = client.get(base + "/.auth/login").headers["location"]
        callback = dev_login(client, start, username="alice", password="alice-pw")
        other = httpx.get(callback)
        assert other.status_code == 400
        duplicate = client.get(callback + "&state=again")
        assert duplicate.status_code == 400
    assert sum('"event":"login_failure"' in e for e in audit_events(caplog)) >= 2


@pytest.mark.parametrize(("claims", "remove", "why"), [
    ({"nonce": "not-the-nonce"}, [], "nonce"),
    ({"aud": "someone-else"}, [], "audience"),
    ({"exp": 1_000_000_000, "iat": 999_999_000}, [], "expired"),
    ({"iss": "https://evil.example"}, [], "issuer"),
    ({"azp": "someone-else"}, [], "azp"),
    ({}, ["nonce"], "nonce"),
    ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, [], "at_hash"),
])
def test_bad_id_token_is_refused(idp: IdPServer, app: AppFactory, claims: dict[str, Any],
                                 remove: list[str], why: str,
                                 caplog: pytest.LogCaptureFixture) -> None:
    with app(settings_for(idp)) as base, browser() as client:
        start = client.get(base + "/.auth/login").headers["location"]
        callback = dev_login(client, start, username="alice", password="alice-pw")
        idp.tamper_next_id_token(claims, remove)
        refused = client.get(callback)
        assert refused.status_code == 401, refused.text
        assert "could not be verified" in refused.text
        assert client.get(base + "/.auth/me").status_code == 401
    failure = [e for e in audit_events(caplog) if '"event":"login_failure"' in e]
    assert failure and why in failure[-1]


def test_provider_error_gets_a_clear_page(idp: IdPServer, app: AppFactory) -> None:
    with app(settings_for(idp)) as base, browser() as client:
        start = client.get(base + "/.auth/login").headers["location"]
        state = parse_qs(urlsplit(start).query)["state"][0]
        denied = client.get(base + "/.auth/callback", params={
            "state": state, "error": "access_denied", "error_description": "<b>no</b>"})
        assert denied.status_code == 403
        assert "(access_denied)" in denied.text and "<b>" not in denied.text
        # The attempt is used up: the same state cannot be answered twice.
        again = client.get(base + "/.auth/callback", params={"state": state, "code": "x"})
        assert again.status_code == 400
        start = client.get(base + "/.auth/login").headers["location"]
        state = parse_qs(urlsplit(start).query)["state"][0]
        odd = client.get(base + "/.auth/callback", params={
            "state": state, "error": "<script>alert(1)</script>"})
        assert odd.status_code == 400
        assert "<script>" not in odd.text and "(scriptalert1script)" in odd.text


def test_unreachable_provider_gives_503(app: AppFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings.from_mapping({
        "oidc": {"issuer": dead, "client_id": "app", "client_secret": SECRET}}, environ={})
    with app(settings) as base, httpx.Client() as client:
        page = client.get(base + "/.auth/login", headers={"Accept": "text/html"})
        assert page.status_code == 503
        assert "cannot be reached" in page.text
        assert page.headers["retry-after"]
        api = client.get(base + "/.auth/login", headers={"Accept": "application/json"})
        assert api.status_code == 503 and api.json() == {"error": "identity_unavailable"}


# -- cookies under attack -------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "cookie"])
def test_every_byte_of_the_session_cookie_flipped(idp: IdPServer, app: AppFactory,
                                                  store: str) -> None:
    settings = settings_for(idp, store=store)
    with app(settings) as base, browser() as client:
        login(client, base, idp)
        name = "__Host-secure_mw_session"
        value = client.cookies.get(name)
        assert value
        with httpx.Client(base_url=base, headers={"Accept": "application/json"}) as raw:
            good = raw.get("/x", headers={"Cookie": f"{name}={value}"})
            assert good.status_code == 200
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            statuses = set()
            for i, char in enumerate(value):
                flipped = alphabet[(alphabet.index(char) + 1) % 64] \
                    if char in alphabet else "A"
                bad = value[:i] + flipped + value[i + 1:]
                response = raw.get("/x", headers={"Cookie": f"{name}={bad}"})
                statuses.add(response.status_code)
                assert response.status_code == 401, (i, response.text)
                assert any(c.startswith(f"{name}=;") and "Max-Age=0" in c
                           for c in response.headers.get_list("set-cookie"))
            assert statuses == {401}
            for junk in ("", "x" * 5000, "%00", "\u00ff", "2.abc", "9.abc"):
                response = raw.get("/x", headers={
                    "Cookie": f"{name}={junk}".encode("latin-1")})
                assert response.status_code == 401


def test_testing_helper_logs_in_without_provider(app: AppFactory, idp: IdPServer) -> None:
    for store in ("memory", "cookie"):
        settings = settings_for(idp, store=store)
        # The memory store the app uses is the process-wide one for the cookie name, unless
        # the app is given its own; the injected clock gives it its own, so pass it along.
        shared = MemorySessionStore.shared(settings.session.cookie_name)
        options = {"store": shared} if store == "memory" else {}
        with app(settings, **options) as base:
            cookie = session_cookie(settings, {"sub": "carol", "groups": ["ops"]},
                                    **options)
            who = httpx.get(base + "/x", headers={"Cookie": cookie}).json()
            assert who["sub"] == "carol" and who["groups"] == ["ops"]


# -- websockets -----------------------------------------------------------------------------


def test_websocket_handshake_uses_the_session(idp: IdPServer, clock: Clock) -> None:
    import websockets.exceptions
    from websockets.sync.client import connect

    settings = settings_for(idp)
    with serve("asgi", lambda inner: asgi.protect(inner, settings, clock=clock),
               port=APP_PORTS[1]) as base, browser() as client:
        ws_url = "ws" + base[4:] + "/ws"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            connect(ws_url).close()
        assert refused.value.response.status_code == 403
        login(client, base, idp)
        cookie = f"__Host-secure_mw_session={client.cookies.get('__Host-secure_mw_session')}"
        with connect(ws_url, additional_headers={"Cookie": cookie}) as ws:
            import json

            assert json.loads(ws.recv())["sub"] == "alice"


# -- Redis: shared sessions, fail closed ----------------------------------------------------


def test_two_app_servers_share_sessions_through_redis(idp: IdPServer, app: AppFactory,
                                                      redis_server: RedisServer) -> None:
    settings = settings_for(idp, store="redis", redis_url=redis_server.url)
    with app(settings, 0) as first, app(settings, 1) as second, browser() as client:
        login(client, first, idp)
        cookie = client.cookies.get("__Host-secure_mw_session")
        who = httpx.get(second + "/x", headers={"Cookie": f"__Host-secure_mw_session={cookie}"})
        assert who.status_code == 200 and who.json()["sub"] == "alice"


def test_two_app_processes_asgi_and_wsgi_share_sessions_through_redis(
        idp: IdPServer, redis_server: RedisServer) -> None:
    import os
    import subprocess
    import sys

    from tests.servers import wait_for_port

    env = {**os.environ, "SECURE_MW_SESSION__STORE": "redis",
           "SECURE_MW_SESSION__REDIS_URL": redis_server.url,
           "SECURE_MW_KEYS__ENCRYPTION_KEYS": json.dumps([KEY]),
           "SECURE_MW_OIDC__ISSUER": idp.issuer, "SECURE_MW_OIDC__CLIENT_ID": "app",
           "SECURE_MW_OIDC__CLIENT_SECRET": SECRET,
           "SECURE_MW_OIDC__SCOPES": "openid,profile,email,groups"}
    env.pop("SECURE_MW_CONFIG", None)
    procs = []
    try:
        for flavour, index in (("asgi", 2), ("wsgi", 3)):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.e2e_app", "--flavour", flavour,
                 "--port", str(APP_PORTS[index])], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for_port(APP_PORTS[index], proc=procs[-1], timeout=30)
        first, second = (f"http://127.0.0.1:{APP_PORTS[i]}" for i in (2, 3))
        with browser() as client:
            login(client, first, idp)
            cookie = {"Cookie": "__Host-secure_mw_session="
                      + str(client.cookies.get("__Host-secure_mw_session")),
                      "Accept": "application/json"}
            who = httpx.get(second + "/x", headers=cookie)
            assert who.status_code == 200 and who.json()["sub"] == "alice"
            csrf = httpx.get(second + "/.auth/me", headers=cookie).json()["csrf_token"]
            out = httpx.post(second + "/.auth/logout", data={"csrf": csrf}, headers=cookie)
            assert out.status_code == 303
            assert httpx.get(first + "/x", headers=cookie).status_code == 401
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_redis_down_fails_closed_then_recovers(idp: IdPServer, app: AppFactory,
                                               redis_server: RedisServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(idp, store="redis", redis_url=redis_server.url)
    with app(settings) as base, browser() as client:
        login(client, base, idp)
        assert client.get(base + "/x").status_code == 200
        redis_server.stop()
        down = client.get(base + "/x")
        assert down.status_code == 503
        api = client.get(base + "/x", headers={"Accept": "application/json"})
        assert api.status_code == 503
        redis_server.start()
        # The session was in memory of the stopped server (no persistence): it is gone, and
        # the app works again — it asks for a login instead of failing.
        back = client.get(base + "/x")
        assert back.status_code == 302
        login(client, base, idp)
        assert client.get(base + "/x").status_code == 200
    assert any('"event":"store_unavailable"' in e for e in audit_events(caplog))


def test_cookie_store_splits_a_large_session_and_reads_all_or_nothing(
        app: AppFactory, idp: IdPServer) -> None:
    settings = settings_for(idp, store="cookie")
    groups = [f"group-{i:04d}-with-a-long-name" for i in range(200)]
    cookie = session_cookie(settings, {"sub": "dana", "groups": groups})
    parts = cookie.split("; ")
    assert len(parts) >= 3                         # ~9 KB over several cookies
    assert [p.split("=", 1)[0] for p in parts][:2] == [
        "__Host-secure_mw_session", "__Host-secure_mw_session.1"]
    with app(settings) as base, httpx.Client(headers={"Accept": "application/json"}) as c:
        who = c.get(base + "/x", headers={"Cookie": cookie})
        assert who.status_code == 200 and len(who.json()["groups"]) == 200
        for missing in range(len(parts)):
            partial = "; ".join(p for i, p in enumerate(parts) if i != missing)
            assert c.get(base + "/x", headers={"Cookie": partial}).status_code == 401
        extra = cookie + f"; __Host-secure_mw_session.{len(parts)}=AAAA"
        assert c.get(base + "/x", headers={"Cookie": extra}).status_code == 401
        shuffled = "; ".join([parts[0], *(p.split("=", 1)[0] + "=" + parts[1].split("=", 1)[1]
                                          for p in parts[1:])])
        assert c.get(base + "/x", headers={"Cookie": shuffled}).status_code == 401


# -- races and limits (from the security review) --------------------------------------------


def test_old_cookie_after_a_refresh_does_not_revoke_the_grant(
        idp: IdPServer, app: AppFactory, clock: Clock) -> None:
    """The provider revokes the whole grant when a rotated refresh token is presented again;
    a request still carrying the pre-refresh cookie must reuse the rotation instead."""
    settings = settings_for(idp, store="cookie", inactivity="10m")
    with app(settings) as base, browser() as client:
        login(client, base, idp, user="bob", password="bob-pw")
        name = "__Host-secure_mw_session"
        old = client.cookies.get(name)
        clock.advance(ACCESS_TTL - 30)
        assert client.get(base + "/a").status_code == 200       # refreshes, new cookie
        assert client.cookies.get(name) != old
        late = httpx.get(base + "/b", headers={"Cookie": f"{name}={old}",
                                               "Accept": "application/json"})
        assert late.status_code == 200                           # reused, not re-presented
        clock.advance(ACCESS_TTL - 30)
        assert client.get(base + "/c").status_code == 200       # the grant is still alive


def test_concurrent_requests_at_refresh_time_all_succeed(
        idp: IdPServer, app: AppFactory, clock: Clock) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with app(settings_for(idp, inactivity="10m")) as base, browser() as client:
        login(client, base, idp, user="bob", password="bob-pw")
        cookie = "__Host-secure_mw_session=" + str(client.cookies.get("__Host-secure_mw_session"))
        clock.advance(ACCESS_TTL - 30)

        def one(_: int) -> int:
            return httpx.get(base + "/x", headers={"Cookie": cookie,
                                                   "Accept": "application/json"}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(16))) == {200}
        clock.advance(ACCESS_TTL - 30)
        assert one(0) == 200


def test_callback_replayed_with_the_pre_login_cookie_of_before(
        idp: IdPServer, app: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    with app(settings_for(idp)) as base, browser() as client:
        start = client.get(base + "/.auth/login").headers["location"]
        prelogin = client.cookies.get("__Host-secure_mw_session_login")
        callback = dev_login(client, start, username="alice", password="alice-pw")
        assert client.get(callback).status_code == 302
        replay = httpx.get(callback, headers={
            "Cookie": f"__Host-secure_mw_session_login={prelogin}"})
        assert replay.status_code == 400
        assert "already used" in replay.text
    assert any("replayed state" in e for e in audit_events(caplog))


def test_logout_form_with_many_fields_is_refused_not_a_crash(
        idp: IdPServer, app: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "secure_mw.audit")
    with app(settings_for(idp)) as base, browser() as client:
        login(client, base, idp)
        fields = {f"f{i}": "x" for i in range(200)}
        assert client.post(base + "/.auth/logout", data=fields).status_code == 403
        big = client.post(base + "/.auth/logout", content=b"csrf=" + b"x" * 40000,
                          headers={"Content-Type": "application/x-www-form-urlencoded",
                                   "Accept": "*/*"})
        assert big.status_code == 413
        assert big.headers["content-type"] == "application/json"     # not a browser: JSON
        page = client.post(base + "/.auth/logout", content=b"csrf=" + b"x" * 40000,
                           headers={"Content-Type": "application/x-www-form-urlencoded",
                                    "Accept": "text/html,application/xhtml+xml"})
        assert page.status_code == 413 and page.headers["content-type"].startswith("text/html")
    refused = [e for e in audit_events(caplog) if '"event":"request_too_large"' in e]
    assert len(refused) == 2 and '"path":"/.auth/logout"' in refused[0], refused


def test_session_of_another_client_is_not_accepted(idp: IdPServer, app: AppFactory) -> None:
    store = MemorySessionStore()
    with app(settings_for(idp, client_id="app"), 0, store=store) as first, \
            app(settings_for(idp, client_id="app-post"), 1, store=store) as second, \
            browser() as client:
        login(client, first, idp)
        cookie = f"__Host-secure_mw_session={client.cookies.get('__Host-secure_mw_session')}"
        assert httpx.get(first + "/x", headers={"Cookie": cookie}).status_code == 200
        other = httpx.get(second + "/x", headers={"Cookie": cookie,
                                                  "Accept": "application/json"})
        assert other.status_code == 401


def test_remember_me_from_another_site_is_ignored(idp: IdPServer, app: AppFactory) -> None:
    with app(settings_for(idp)) as base, browser() as client:
        start = client.get(base + "/.auth/login?remember_me=1",
                           headers={"Sec-Fetch-Site": "cross-site"})
        done = client.get(dev_login(client, start.headers["location"], username="alice",
                                    password="alice-pw"))
        line = next(c for c in done.headers.get_list("set-cookie")
                    if c.startswith("__Host-secure_mw_session="))
        assert "Max-Age" not in line


def test_strict_same_site_ends_the_login_with_a_same_site_page(idp: IdPServer,
                                                               app: AppFactory) -> None:
    with app(settings_for(idp, same_site="strict")) as base, browser() as client:
        start = client.get(base + "/.auth/login?rd=/there")
        done = client.get(dev_login(client, start.headers["location"], username="alice",
                                    password="alice-pw"))
        assert done.status_code == 200
        assert done.headers["refresh"] == "0; url=/there"
        assert "SameSite=Strict" in done.headers["set-cookie"]
        assert client.get(base + "/there").status_code == 200


def test_session_too_large_for_the_cookie_store_gets_a_clear_503(
        idp: IdPServer, app: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    with app(settings_for(idp, store="cookie")) as base, browser() as client:
        start = client.get(base + "/.auth/login").headers["location"]
        callback = dev_login(client, start, username="many", password="many-pw")
        page = client.get(callback)
        assert page.status_code == 503
    assert any("too large for the cookie store" in e for e in audit_events(caplog))


@pytest.mark.parametrize("store", ["redis"])
def test_two_processes_at_refresh_time_never_present_a_spent_token(
        idp: IdPServer, app: AppFactory, clock: Clock, store: str,
        request: pytest.FixtureRequest) -> None:
    """Two app instances (each with its own core, as two processes have) get the same
    session's requests at once when its access token is due: the store decides who
    refreshes, the other reuses the result, and the provider never sees a spent token (it
    would revoke the grant and end the session). (The cookie store has no shared place to
    arbitrate: across processes it cannot promise this; docs/sessions.md says so.)"""
    from concurrent.futures import ThreadPoolExecutor

    redis_url = request.getfixturevalue("redis_server").url if store == "redis" else None
    settings = settings_for(idp, store=store, redis_url=redis_url, inactivity="10m")
    with app(settings, 0) as first, app(settings, 1) as second, browser() as client:
        login(client, first, idp, user="bob", password="bob-pw")
        cookie = "__Host-secure_mw_session=" + str(client.cookies.get("__Host-secure_mw_session"))
        for _round in range(2):
            clock.advance(ACCESS_TTL - 30)

            def one(index: int, cookie: str = cookie) -> tuple[int, list[str]]:
                base = (first, second)[index % 2]
                response = httpx.get(base + "/x", headers={"Cookie": cookie,
                                                            "Accept": "application/json"})
                return response.status_code, response.headers.get_list("set-cookie")

            with ThreadPoolExecutor(6) as pool:
                results = list(pool.map(one, range(12)))
            assert {status for status, _ in results} == {200}
        assert httpx.get(first + "/x", headers={"Cookie": cookie}).status_code == 200


def test_an_identity_cannot_be_changed_by_the_app() -> None:
    from secure_mw.identity import Identity

    identity = Identity(sub="alice", groups=["staff"])
    with pytest.raises(AttributeError):
        identity.auth_level = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        identity.groups = ("admins",)  # type: ignore[misc]
    with pytest.raises(TypeError):
        identity.claims["sub"] = "mallory"  # type: ignore[index]


def test_provider_and_local_users_together_get_a_choice(
        idp: IdPServer, flavour: str, clock: Clock, tmp_path: Any) -> None:
    """With [oidc] and an existing users file, the login page offers both ways in."""
    import dataclasses

    from secure_mw.crypto import PasswordHasher
    from secure_mw.guards.timing import LoginDelay
    from secure_mw.login import UsersFile

    users = UsersFile(tmp_path / "users.toml",
                      hasher=PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    users.add("dave", password="copper kettle 33", groups=["local"])
    base_settings = settings_for(idp)
    local = Settings.from_mapping({"local_users": {"file": str(users.path)}}, environ={})
    settings = dataclasses.replace(base_settings, local_users=local.local_users)
    module = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.protect(
            inner, settings, clock=clock, users=users, store=MemorySessionStore(clock=clock),
            delay=LoginDelay(floor=0.01, seed=0.01, jitter=0.001)),
            port=APP_PORTS[0]) as base:
        with browser() as local_client:
            page = local_client.get(base + "/.auth/login?rd=/x")
            assert page.status_code == 200
            assert f"Sign in with {urlsplit(idp.issuer).netloc}" in page.text
            import re

            state = re.search(r'name="state" value="([^"]+)"', page.text)
            assert state
            done = local_client.post(base + "/.auth/login", data={
                "state": state.group(1), "username": "dave", "password": "copper kettle 33"})
            assert done.status_code == 303
            assert local_client.get(base + "/x").json()["sub"] == "dave"
        with browser() as oidc_client:
            start = oidc_client.get(base + "/.auth/login/oidc?rd=/y")
            assert start.headers["location"].startswith(idp.issuer)
            callback = dev_login(oidc_client, start.headers["location"], username="alice",
                                 password="alice-pw")
            assert oidc_client.get(callback).headers["location"] == "/y"
            assert oidc_client.get(base + "/y").json()["sub"] == "alice"


# -- a refused or ended session stays ended, in every store ---------------------------------

SESSION = "__Host-secure_mw_session"


def _session_cookie(client: httpx.Client) -> str:
    """The session cookie header the client holds (every chunk of a cookie-store session)."""
    parts = [f"{c.name}={c.value}" for c in client.cookies.jar
             if c.name == SESSION or c.name.startswith(SESSION + ".")]
    assert parts
    return "; ".join(sorted(parts))


def _usable_offsets(base: str, cookie: str, clock: Clock, *, step: float,
                    until: float) -> list[float]:
    """Replay ``cookie`` every ``step`` (injected) seconds up to ``until``; the offsets at
    which the app still served it as signed in."""
    served = []
    offset = 0.0
    while offset < until:
        offset += step
        clock.advance(step)
        replay = httpx.get(base + "/x", headers={"Cookie": cookie,
                                                 "Accept": "application/json"})
        assert replay.status_code in (200, 401, 503), replay.text
        if replay.status_code == 200:
            served.append(offset)
    return served


@pytest.mark.parametrize("store", ["memory", "cookie", "redis"])
def test_a_refused_refresh_ends_the_session_for_every_copy_of_the_cookie(
        idp: IdPServer, app: AppFactory, clock: Clock, store: str,
        request: pytest.FixtureRequest) -> None:
    """The provider refuses a refresh (user disabled): the cookie the browser held, replayed
    every 5 s afterwards, is never served again (the report: 200 from 5 s to 71 s)."""
    redis_url = request.getfixturevalue("redis_server").url if store == "redis" else None
    settings = settings_for(idp, store=store, redis_url=redis_url, inactivity="10m")
    with app(settings) as base, browser() as client:
        login(client, base, idp, user="bob", password="bob-pw")
        clock.advance(ACCESS_TTL - 30)
        assert client.get(base + "/hello").status_code == 200     # refreshed once
        cookie = _session_cookie(client)
        idp.disable_user("bob")
        try:
            clock.advance(ACCESS_TTL - 30)
            assert client.get(base + "/hello").status_code == 302  # refused: ended
            served = _usable_offsets(base, cookie, clock, step=5, until=500)
        finally:
            idp.enable_user("bob")
        assert served == [], f"served at {served}"


@pytest.mark.parametrize("store", ["memory", "cookie", "redis"])
def test_the_old_cookie_replayed_after_logout_is_refused(
        idp: IdPServer, app: AppFactory, clock: Clock, store: str,
        request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue("redis_server").url if store == "redis" else None
    settings = settings_for(idp, store=store, redis_url=redis_url, inactivity="10m")
    with app(settings) as base, browser() as client:
        login(client, base, idp, user="bob", password="bob-pw")
        cookie = _session_cookie(client)
        csrf = client.get(base + "/.auth/me").json()["csrf_token"]
        assert client.post(base + "/.auth/logout", data={"csrf": csrf}).status_code == 303
        now = httpx.get(base + "/x", headers={"Cookie": cookie, "Accept": "application/json"})
        assert now.status_code == 401
        # ... and later, also when its access token is due and the replay would refresh.
        served = _usable_offsets(base, cookie, clock, step=15, until=400)
        assert served == [], f"served at {served}"


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_request_that_cannot_refresh_an_expired_token_is_served_only_within_the_grace(
        idp: IdPServer, app: AppFactory, clock: Clock, store: str,
        request: pytest.FixtureRequest) -> None:
    """Another process holds the refresh claim (it hangs, or died): requests of the session
    are served while the access token is valid and for REFRESH_GRACE after, then fail
    closed with 503 + Retry-After instead of being served on an expired token."""
    from secure_mw.oidc.core import REFRESH_GRACE, rotation_key
    from secure_mw.session.redis_store import RedisSessionStore

    if store == "redis":
        redis_url = request.getfixturevalue("redis_server").url
        settings = settings_for(idp, store="redis", redis_url=redis_url, inactivity="10m")
        sessions: Any = RedisSessionStore(redis_url, keyring=KeyRing.from_strings([KEY]))
        options: dict[str, Any] = {}
    else:
        settings = settings_for(idp, inactivity="10m")
        sessions = MemorySessionStore(clock=clock)
        options = {"store": sessions}
    with app(settings, **options) as base, browser() as client:
        login(client, base, idp, user="bob", password="bob-pw")
        session_id = str(client.cookies.get(SESSION))
        from secure_mw.session.model import Session

        record = sessions.load(session_id)
        record = record if isinstance(record, Session) else Session.from_bytes(record)
        claim = rotation_key(record.tokens, "refreshing")
        assert sessions.claim_once(claim, 3600)                    # "another process"
        ends = record.tokens["ae"]
        api = {"Cookie": f"{SESSION}={session_id}", "Accept": "application/json"}
        clock.now = ends - 20                       # due, not expired: served
        assert httpx.get(base + "/x", headers=api).status_code == 200
        clock.now = ends + REFRESH_GRACE - 1        # just expired: still served
        assert httpx.get(base + "/x", headers=api).status_code == 200
        clock.now = ends + REFRESH_GRACE            # beyond the grace: fail closed
        refused = httpx.get(base + "/x", headers=api)
        assert refused.status_code == 503
        assert refused.json() == {"error": "session_refreshing"}
        assert refused.headers["retry-after"] == "2"
        page = client.get(base + "/x")
        assert page.status_code == 503 and page.headers["refresh"] == "2"
        sessions.release(claim)                     # the other one gave up: we refresh
        assert httpx.get(base + "/x", headers=api).status_code == 200
        # Found held long after the (new) token ended: served while that refresh may still
        # be running (another request may have just started it), for the grace, not beyond.
        record = sessions.load(session_id)
        record = record if isinstance(record, Session) else Session.from_bytes(record)
        assert sessions.claim_once(rotation_key(record.tokens, "refreshing"), 3600)
        clock.now = record.tokens["ae"] + 300
        assert httpx.get(base + "/x", headers=api).status_code == 200
        clock.advance(REFRESH_GRACE - 1)
        assert httpx.get(base + "/x", headers=api).status_code == 200
        clock.advance(1)
        assert httpx.get(base + "/x", headers=api).status_code == 503


def test_cookie_store_with_redis_ends_a_session_in_every_process(
        idp: IdPServer, app: AppFactory, clock: Clock, redis_server: RedisServer) -> None:
    """With ``session.redis_url`` the cookie store keeps its revocations (and refresh claims
    and rotations) in Redis: a logout in one process ends the copied cookie in another."""
    settings = settings_for(idp, store="cookie", redis_url=redis_server.url, inactivity="10m")
    with app(settings, 0) as first, app(settings, 1) as second, browser() as client:
        login(client, first, idp, user="bob", password="bob-pw")
        cookie = _session_cookie(client)
        api = {"Cookie": cookie, "Accept": "application/json"}
        assert httpx.get(second + "/x", headers=api).status_code == 200
        # Both processes at refresh time: one refreshes, the other reuses its result.
        clock.advance(ACCESS_TTL - 30)
        assert httpx.get(second + "/x", headers=api).status_code == 200
        assert httpx.get(first + "/x", headers=api).status_code == 200
        csrf = client.get(first + "/.auth/me").json()["csrf_token"]
        assert client.post(first + "/.auth/logout", data={"csrf": csrf}).status_code == 303
        assert httpx.get(second + "/x", headers=api).status_code == 401
        assert httpx.get(first + "/x", headers=api).status_code == 401


# -- cookies of another application ---------------------------------------------------------


@pytest.mark.parametrize("store", ["cookie", "redis"])
def test_a_cookie_of_another_app_is_refused_with_an_audit_line_everywhere(
        idp: IdPServer, app: AppFactory, store: str, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture) -> None:
    """Another application (other keys, same cookie name, and for Redis the same server and
    prefix): its cookie is refused and audited on every path that reads a session, and no
    audit line carries the cookie's value. With the cookie store it is a cookie that does not
    decrypt (``invalid_session_cookie``, which fail2ban counts); with Redis it is a random id
    whose record does not decrypt, which the client cannot have forged
    (``session_record_unreadable``, not counted)."""
    redis_url = request.getfixturevalue("redis_server").url if store == "redis" else None
    settings = settings_for(idp, store=store, redis_url=redis_url)
    other = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "session": {"store": store, **({"redis_url": redis_url} if redis_url else {})},
    }, environ={})
    cookie = session_cookie(other, {"sub": "mallory"})
    value = cookie.split("=", 1)[1]
    paths = [("GET", "/x"), ("GET", "/.auth/me"), ("GET", "/.auth/logout"),
             ("POST", "/.auth/logout")]
    with app(settings) as base:
        for method, path in paths:
            caplog.clear()
            answer = httpx.request(method, base + path, headers={
                "Cookie": cookie, "Accept": "application/json"})
            assert answer.status_code in (401, 302, 303), (path, answer.text)
            assert any(c.startswith(f"{SESSION}=;") for c in answer.headers.get_list(
                "set-cookie")), path
            event = "invalid_session_cookie" if store == "cookie" else \
                "session_record_unreadable"
            lines = [e for e in audit_events(caplog) if f'"event":"{event}"' in e]
            assert len(lines) == 1, (method, path, audit_events(caplog))
            assert "does not decrypt" in lines[0] and value[:40] not in lines[0]



# -- very large id_tokens ---------------------------------------------------------------------


def test_an_id_token_above_the_cap_is_refused_naming_the_setting_then_accepted_when_raised(
        idp: IdPServer, app: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    with app(settings_for(idp)) as base, browser() as client:
        start = client.get(base + "/.auth/login?rd=/there").headers["location"]
        refused = client.get(dev_login(client, start, username="huge", password="huge-pw"))
        assert refused.status_code == 401
        assert "oidc.max_token_size" in refused.text
    failure = [e for e in audit_events(caplog) if '"event":"login_failure"' in e]
    assert failure and "oidc.max_token_size" in failure[-1] and "65536" in failure[-1]
    settings = settings_for(idp)
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "oidc": {"issuer": idp.issuer, "client_id": "app", "client_secret": SECRET,
                 "scopes": ["openid", "profile", "email", "groups"],
                 "max_token_size": "256KiB"}}, environ={})
    with app(settings) as base, browser() as client:
        done = login(client, base, idp, user="huge", password="huge-pw", path="/there")
        assert done.status_code == 302 and done.headers["location"] == "/there"
        who = client.get(base + "/there").json()
        assert who["sub"] == "huge" and len(who["groups"]) == 2000
        # Signing out still works: the ~120 KB id_token is not put in the logout URL.
        csrf = client.get(base + "/.auth/me").json()["csrf_token"]
        out = client.post(base + "/.auth/logout", data={"csrf": csrf})
        assert out.status_code == 303 and len(out.headers["location"]) < 4096
        back = rp_logout(client, out.headers["location"])
        assert back.startswith(base + "/.auth/logged-out")
        assert client.get(base + "/there").status_code == 302


# -- a broken JWKS at the provider ------------------------------------------------------------


def _back_to_the_app(client: httpx.Client, url: str, base: str) -> str:
    """Follow the provider's redirects from ``url`` without filling any form: the provider
    still has its session, so it must send the browser straight back to ``base``."""
    for _ in range(10):
        response = client.get(url)
        assert response.is_redirect, f"the provider asked again: {response.text[:300]}"
        url = httpx.URL(url).join(response.headers["location"]).__str__()
        if url.startswith(base):
            return url
    raise AssertionError("the provider did not send the browser back")


@pytest.mark.parametrize("fault", ["garbage", "empty", "error"])
@pytest.mark.parametrize("cached", [False, True], ids=["no-keys-yet", "keys-cached"])
def test_a_broken_jwks_costs_no_login_once_it_is_fixed(
        idp: IdPServer, app: AppFactory, clock: Clock, fault: str, cached: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    """Report: after one garbage or empty JWKS answer the first login succeeded 61 s after
    the JWKS was fixed, and every failed callback used up the user's login. Now a set
    already fetched is kept; without one, the callback says "try again" with a link that
    restarts the login for the same target, which the provider answers at once, and the
    fetch is retried within a second of the fix (still at most a few fetches a minute)."""
    from secure_mw.oidc.client import OIDCClient

    settings = settings_for(idp)
    assert settings.oidc is not None
    mono = Clock(1000.0)
    client_app = OIDCClient(settings.oidc, clock=clock, monotonic=mono)
    with app(settings, client=client_app) as base, browser() as client:
        if cached:
            login(client, base, idp)
            client.cookies.clear()
            mono.advance(3600)              # the cached JWKS and metadata are stale now
        idp.set_jwks(fault)
        try:
            start = client.get(base + "/.auth/login?rd=/there").headers["location"]
            callback = dev_login(client, start, username="alice", password="alice-pw")
            fetches = idp.jwks_requests()
            answer = client.get(callback)
            if cached:                      # the kept key set verified the id_token
                assert answer.status_code == 302 and answer.headers["location"] == "/there"
                assert idp.jwks_requests() == fetches + 1
                return
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "5"
            assert 'href="/.auth/login?rd=/there"' in answer.text
            events = audit_events(caplog)
            assert not any('"event":"login_failure"' in e for e in events)   # not a ban
            ours = [e for e in events if '"event":"store_unavailable"' in e]
            assert ours and "the sign-in could not be completed: JWKS unavailable" in ours[-1]
            # Retrying at once while the JWKS is still broken costs no fetch (backoff) ...
            again = _back_to_the_app(client, str(client.get(
                base + "/.auth/login?rd=/there").headers["location"]), base)
            assert client.get(again).status_code == 503
            assert idp.jwks_requests() == fetches + 1
        finally:
            idp.set_jwks("normal")
        mono.advance(1)                     # ... and a second after the fix it works.
        start = client.get(base + "/.auth/login?rd=/there").headers["location"]
        done = client.get(_back_to_the_app(client, start, base))
        assert done.status_code == 302 and done.headers["location"] == "/there"
        assert client.get(base + "/there").json()["sub"] == "alice"
        assert idp.jwks_requests() == fetches + 2



def test_parallel_requests_long_after_the_token_ended_are_all_served(
        idp: IdPServer, app: AppFactory, clock: Clock) -> None:
    """A user back after the access token ended loads a page and its resources at once: one
    request refreshes, the others are served within the grace of that refresh (not 503)."""
    from concurrent.futures import ThreadPoolExecutor

    with app(settings_for(idp, inactivity="10m")) as base, browser() as client:
        login(client, base, idp, user="bob", password="bob-pw")
        cookie = "__Host-secure_mw_session=" + str(client.cookies.get("__Host-secure_mw_session"))
        clock.advance(ACCESS_TTL + 300)

        def one(_: int) -> int:
            return httpx.get(base + "/x", headers={"Cookie": cookie,
                                                   "Accept": "application/json"}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(16))) == {200}


def test_a_refresh_that_ends_between_look_up_and_claim_is_reused_not_repeated(
        idp: IdPServer, app: AppFactory, clock: Clock, redis_server: RedisServer) -> None:
    """Two processes, one session, its token due. Process B looks for a rotation (none yet);
    process A then refreshes, keeps the rotation and gives the claim back; B now gets the
    claim. B must reuse A's rotation: presenting the spent token would make the provider
    revoke the grant. (The flows are stepped by hand to force this interleaving.)"""
    from secure_mw._driver import Op
    from secure_mw.http import RequestView
    from secure_mw.oidc.core import OIDCSessionCore

    settings = settings_for(idp, store="redis", redis_url=redis_server.url, inactivity="10m")
    with app(settings) as base, browser() as client:
        login(client, base, idp, user="bob", password="bob-pw")
        cookie = f"{SESSION}={client.cookies.get(SESSION)}"
    clock.advance(ACCESS_TTL - 30)
    view = RequestView("GET", "https", "app.test", "/x", "", {"cookie": cookie,
                                                               "accept": "application/json"},
                       "127.0.0.1")
    first, second = (OIDCSessionCore(settings, clock=clock) for _ in range(2))
    flow_b = second.handle(view)
    op: Op = next(flow_b)
    while not (op.sync.__name__ == "load" and str(op.args[0]).startswith("rotation:")):
        op = flow_b.send(op.sync(*op.args, **op.kwargs))
    nothing = op.sync(*op.args, **op.kwargs)       # B: no rotation yet
    assert nothing is None
    from secure_mw._driver import run_sync

    done_a = run_sync(first.handle(view))          # A refreshes, keeps it, releases
    assert done_a.identity is not None and done_a.identity.sub == "bob"
    try:
        op = flow_b.send(nothing)
        while True:
            op = flow_b.send(op.sync(*op.args, **op.kwargs))
    except StopIteration as stop:
        done_b = stop.value
    assert done_b.identity is not None and done_b.identity.sub == "bob"
    clock.advance(ACCESS_TTL - 30)                 # the grant is alive: refreshes again
    assert run_sync(first.handle(view)).identity is not None


# -- refreshes of every generation (the boundary/OIDC review) --------------------------------


@pytest.fixture(scope="module")
def keeping_idp() -> Iterator[IdPServer]:
    """A provider that answers the same refresh token at every refresh (no rotation), as
    Google, Auth0 and Okta do by default."""
    uris = [f"http://127.0.0.1:{p}" for p in APP_PORTS]
    server = IdPServer(clients=[{
        "client_id": "app", "client_secret": SECRET,
        "redirect_uris": [f"{u}/.auth/callback" for u in uris],
        "post_logout_redirect_uris": [f"{u}/.auth/logged-out" for u in uris],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic"}],
        users=USERS, ttl={"AccessToken": ACCESS_TTL}, rotate_refresh_tokens=False)
    server.start()
    yield server
    server.stop()


def _tokens_held(client: httpx.Client, records: Any) -> dict[str, Any]:
    """The token fields of the client's session: from its record, or (cookie store, no
    ``records``) from the cookie itself."""
    from secure_mw.session.model import Session

    value = str(client.cookies.get(SESSION))
    if records is None:
        raw = KeyRing.from_strings([KEY]).decrypt(value, f"secure_mw/session:{SESSION}".encode())
        return dict(Session.from_bytes(raw).tokens)
    record = records.load(value)
    record = record if isinstance(record, Session) else Session.from_bytes(record)
    return dict(record.tokens)


@pytest.mark.parametrize("store", ["memory", "cookie", "redis"])
def test_a_provider_that_keeps_its_refresh_token_is_refreshed_at_every_expiry(
        keeping_idp: IdPServer, app: AppFactory, clock: Clock, store: str,
        request: pytest.FixtureRequest) -> None:
    """The provider answers the same refresh token every time: each due access token must be
    refreshed again. (Rotations were keyed by the refresh token alone, so the record of the
    first refresh stood in for every later one: one refresh, then an ended access token kept
    until the provider ended the session, at about twice the access-token lifetime.)"""
    options: dict[str, Any] = {}
    records: Any = None
    redis_url = None
    if store == "redis":
        from secure_mw.session.redis_store import RedisSessionStore

        redis_url = request.getfixturevalue("redis_server").url
        records = RedisSessionStore(redis_url, keyring=KeyRing.from_strings([KEY]))
    elif store == "memory":
        records = MemorySessionStore(clock=clock)
        options["store"] = records
    settings = settings_for(keeping_idp, store=store, redis_url=redis_url, inactivity="10m")
    api = {"Accept": "application/json"}
    with app(settings, **options) as base, browser() as client:
        login(client, base, keeping_idp, user="bob", password="bob-pw")
        first = _tokens_held(client, records)
        seen = [first["at"]]
        for _round in range(4):
            clock.advance(ACCESS_TTL - 20)
            assert client.get(base + "/x", headers=api).status_code == 200
            held = _tokens_held(client, records)
            assert held["rt"] == first["rt"]                  # the provider kept it
            assert held["at"] not in seen, f"no refresh in round {_round + 1}"
            assert held["ae"] > clock.now
            seen.append(held["at"])


def test_an_old_cookie_copy_is_refreshed_from_the_rotation_and_ends_when_refused(
        idp: IdPServer, app: AppFactory, clock: Clock) -> None:
    """Cookie store, remember-me. A copy of the cookie from before the browser's refresh is
    served on the rotation the browser's refresh left, but only while the rotated access
    token is not due: then it is refreshed with the rotated refresh token, so once the
    provider refuses the grant (the user disabled) the copy is never served again. (It was
    served on the rotation record alone, without a refresh, for an hour: 11 of 11 replays
    every 5 minutes.)"""
    settings = settings_for(idp, store="cookie", inactivity="10m")
    api = {"Accept": "application/json"}
    with app(settings) as base, browser() as client:
        start = client.get(base + "/.auth/login?remember_me=1")
        client.get(dev_login(client, start.headers["location"], username="bob",
                             password="bob-pw"))
        stolen = _session_cookie(client)
        clock.advance(ACCESS_TTL - 20)                          # due: the browser refreshes
        assert client.get(base + "/x", headers=api).status_code == 200
        copy = httpx.get(base + "/x", headers={**api, "Cookie": stolen})
        assert copy.status_code == 200                          # the rotation, not due yet
        idp.disable_user("bob")
        try:
            served = _usable_offsets(base, stolen, clock, step=300, until=3300)
        finally:
            idp.enable_user("bob")
        assert served == [], f"the old copy was served at {served}"
        assert client.get(base + "/x", headers=api).status_code == 401   # ended for all


def test_an_old_cookie_copy_refreshed_from_the_rotation_keeps_the_grant_alive(
        idp: IdPServer, app: AppFactory, clock: Clock) -> None:
    """The same copy when the provider still accepts the grant: it is refreshed with the
    rotated refresh token (never the spent one), and the browser's own cookie, one rotation
    behind now, follows the rotations too: both stay signed in, refresh after refresh."""
    settings = settings_for(idp, store="cookie", inactivity="10m")
    api = {"Accept": "application/json"}
    with app(settings) as base, browser() as client, browser() as thief:
        login(client, base, idp, user="bob", password="bob-pw")
        for cookie in client.cookies.jar:
            thief.cookies.set(cookie.name, cookie.value)
        clock.advance(ACCESS_TTL - 20)
        assert client.get(base + "/x", headers=api).status_code == 200     # rotation 1
        clock.advance(ACCESS_TTL - 20)
        assert thief.get(base + "/x", headers=api).status_code == 200      # 1 → rotation 2
        assert client.get(base + "/x", headers=api).status_code == 200     # reuses 2
        for _round in range(2):
            clock.advance(ACCESS_TTL - 20)
            assert client.get(base + "/x", headers=api).status_code == 200
            assert thief.get(base + "/x", headers=api).status_code == 200


def test_a_refreshed_profile_too_large_for_the_cookie_ends_the_session_with_a_clear_page(
        idp: IdPServer, app: AppFactory, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    """Cookie store. The provider moves Alice out of "admins" into 600 groups: the refreshed
    profile no longer fits in the cookie. The session ends (cookies expired, every copy
    refused, `session_ended` with the reason) with a page naming the cause and the fix; it
    is never served again with the old groups. (The old cookie stayed in place and was
    served, through the rotation, as a member of "admins".)"""
    settings = settings_for(idp, store="cookie", inactivity="10m")
    api = {"Accept": "application/json"}
    try:
        with app(settings) as base, browser() as client:
            login(client, base, idp)
            assert "admins" in client.get(base + "/x", headers=api).json()["groups"]
            before = _session_cookie(client)
            idp.set_groups("alice", [f"cn=group-{i:04d},ou=groups,dc=example,dc=com"
                                     for i in range(600)])
            clock.advance(ACCESS_TTL - 20)
            caplog.clear()
            caplog.set_level(logging.INFO, "secure_mw.audit")
            page = client.get(base + "/x")
            assert page.status_code == 503
            assert "too large" in page.text and "redis" in page.text \
                and "groups" in page.text
            assert any(c.startswith(f"{SESSION}=;") for c in page.headers.get_list(
                "set-cookie"))
            ended = [e for e in audit_events(caplog) if '"event":"session_ended"' in e]
            assert len(ended) == 1 and "too large for the cookie store" in ended[0]
            assert client.get(base + "/x", headers=api).status_code == 401
            served = _usable_offsets(base, before, clock, step=30, until=150)
            assert served == [], f"the old cookie was served at {served}"
            replay = httpx.get(base + "/x", headers={**api, "Cookie": before})
            assert replay.status_code == 401
            # A new login meets the same limit: the page says so instead of "unavailable".
            start = client.get(base + "/.auth/login").headers["location"]
            again = client.get(dev_login(client, start, username="alice",
                                         password="alice-pw"))
            assert again.status_code == 503 and "session.store" in again.text
    finally:
        idp.set_groups("alice", ["admins", "staff"])


@pytest.mark.parametrize(("elapsed", "released"), [(1.0, True), (26.0, False)])
def test_a_refresh_claim_held_too_long_is_left_alone_whatever_the_wall_clock_says(
        idp: IdPServer, app: AppFactory, clock: Clock, redis_server: RedisServer,
        elapsed: float, released: bool) -> None:
    """The refresh claim lasts 30 s in Redis; a refresh that took longer than 25 s may have
    lost it to another process, so it is not given back (DEL would release the other's).
    Elapsed time is measured on the monotonic clock: here the refresh grant takes
    ``elapsed`` monotonic seconds while the wall clock stays put (stepped back by NTP as much
    as time went on). (The wall clock measured it: a step back released the claim.)"""
    from secure_mw._driver import Flow, Op
    from secure_mw.http import RequestView
    from secure_mw.oidc.core import OIDCSessionCore, rotation_key
    from secure_mw.session.model import Session
    from secure_mw.session.redis_store import RedisSessionStore

    settings = settings_for(idp, store="redis", redis_url=redis_server.url, inactivity="10m")
    records = RedisSessionStore(redis_server.url, keyring=KeyRing.from_strings([KEY]))
    with app(settings) as base, browser() as client:
        login(client, base, idp, user="bob", password="bob-pw")
        session_id = str(client.cookies.get(SESSION))
    before = Session.from_bytes(records.load(session_id)).tokens
    clock.advance(ACCESS_TTL - 30)
    mono = Clock(1000.0)
    core = OIDCSessionCore(settings, clock=clock, monotonic=mono)
    view = RequestView("GET", "https", "app.test", "/x", "",
                       {"cookie": f"{SESSION}={session_id}", "accept": "application/json"},
                       "127.0.0.1")

    def run(flow: Flow[Any]) -> Any:
        op: Op = next(flow)
        try:
            while True:
                if op.sync.__name__ == "save" and str(op.args[0]).startswith("rotation:"):
                    mono.advance(elapsed)           # the grant has just taken this long
                op = flow.send(op.sync(*op.args, **op.kwargs))
        except StopIteration as stop:
            return stop.value

    done = run(core.handle(view))
    assert done.identity is not None and done.identity.sub == "bob"
    after = Session.from_bytes(records.load(session_id)).tokens
    assert after["at"] != before["at"]                       # it did refresh
    claim = rotation_key(before, "refreshing")
    assert records.claim_once(claim, 30) is released         # released only when in time


def _sign_in_and_out(base: str, idp: IdPServer, user: str, password: str, *,
                     remember: bool) -> str:
    """Sign in (remember-me or not) and out again; the session cookie as it was."""
    with browser() as client:
        start = client.get(base + "/.auth/login" + ("?remember_me=1" if remember else ""))
        client.get(dev_login(client, start.headers["location"], username=user,
                             password=password))
        cookie = _session_cookie(client)
        csrf = client.get(base + "/.auth/me").json()["csrf_token"]
        assert client.post(base + "/.auth/logout", data={"csrf": csrf}).status_code == 303
        return cookie


def test_a_signed_out_cookie_stays_refused_whoever_signs_out_after(
        idp: IdPServer, app: AppFactory, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    """Cookie store without Redis: revocations in this process's memory, bounded by
    ``session.memory_max_sessions`` (3 here; 100,000 by default). Bob signs out; Dana then
    signs in with remember-me and out, three times and more: her marks end in 30 days,
    Bob's within the hour, yet only her own are dropped, and Bob's copied cookie stays
    refused. (Bob's mark, the closest to its end, was the one dropped: his cookie was
    served again.)"""
    settings = settings_for(idp, store="cookie", memory_max_sessions=3)
    api = {"Accept": "application/json"}
    with app(settings) as base:
        stolen = _sign_in_and_out(base, idp, "bob", "bob-pw", remember=False)
        assert httpx.get(base + "/x", headers={**api, "Cookie": stolen}).status_code == 401
        dana = []
        for _ in range(5):
            clock.advance(1)
            dana.append(_sign_in_and_out(base, idp, "dana", "dana-pw", remember=True))
        replay = httpx.get(base + "/x", headers={**api, "Cookie": stolen})
        assert replay.status_code == 401, f"Bob's signed-out cookie is served: {replay.text}"
        assert httpx.get(base + "/x", headers={**api, "Cookie": dana[-1]}).status_code == 401
    assert sum("memory_max_sessions" in r.getMessage() for r in caplog.records) == 1
