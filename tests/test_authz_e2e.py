"""Authorization end to end on real servers, both flavours, behind the built-in login:
rules decide per request, anonymous requests a rule could admit go to the login, a
one-factor session on a two_factor rule goes to the second step, refusals are audited,
ambiguous paths are refused and the app routes the normalized path."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.session import MemorySessionStore
from tests.apps import (
    FLAVOURS,
    asgi_inner,
    browser,
    serve,
    uvicorn_server,
    wsgi_inner,
    wsgi_server,
)
from tests.idp import IdPServer, dev_login
from tests.servers import free_port

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
RULES = [
    {"resources": ["^/healthz$"], "policy": "bypass"},
    # a gate: signed-in users outside the subject are refused here
    {"resources": ["^/admin(/|$)"], "subject": [["group:admins"]], "policy": "authenticated"},
    {"resources": ["^/secure(/|$)"], "policy": "two_factor"},
    {"resources": ["^/closed(/|$)"], "policy": "deny"},
    {"policy": "authenticated"},
]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def site(flavour: str, tmp_path: Path) -> Iterator[str]:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="quartz falcon 11", groups=["admins"])
    users.add("bob", password="velvet harbor 22", groups=["staff"])
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "local_users": {"file": str(users.path)},
        "access_control": {"default_policy": "deny", "rules": RULES},
    }, environ={})
    module = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = module.protect(inner, settings, users=users, store=MemorySessionStore(),
                         delay=LoginDelay(floor=0.01, seed=0.01, jitter=0.001))
    with server(app) as url:
        yield url


def sign_in(client: httpx.Client, base: str, user: str, password: str) -> None:
    form = client.get(base + "/.auth/login")
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert state
    done = client.post(base + "/.auth/login", data={
        "state": state.group(1), "username": user, "password": password})
    assert done.status_code == 303


def raw_get(base: str, target: str, cookie: str = "", *, host: str = "",
            method: str = "GET") -> int:
    """The status of a request whose target is sent exactly as written (no client-side
    normalization of dot segments or escapes), to ``host`` (default: the server's)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        request = (f"{method} {target} HTTP/1.1\r\nHost: {host or parts.netloc}\r\n"
                   f"Accept: application/json\r\nConnection: close\r\n")
        if cookie:
            request += f"Cookie: {cookie}\r\n"
        sock.sendall((request + "\r\n").encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_rules_decide_per_request(site: str, caplog: pytest.LogCaptureFixture) -> None:
    base = site
    with httpx.Client(headers={"Accept": "application/json"}) as anonymous:
        assert anonymous.get(base + "/healthz").status_code == 200          # bypass
        assert anonymous.get(base + "/anything").status_code == 401         # login needed
        assert anonymous.get(base + "/admin").status_code == 401            # could admit
    with browser() as bob:
        assert bob.get(base + "/page").headers["location"] == "/.auth/login?rd=/page"
        sign_in(bob, base, "bob", "velvet harbor 22")
        assert bob.get(base + "/page").json()["sub"] == "bob"
        refused = bob.get(base + "/admin/users")
        assert refused.status_code == 403 and "Access denied" in refused.text
        assert bob.get(base + "/closed").status_code == 403
        step = bob.get(base + "/secure/report")
        assert step.status_code == 302
        assert step.headers["location"] == "/.auth/2fa?rd=/secure/report"
    with browser() as alice:
        sign_in(alice, base, "alice", "quartz falcon 11")
        assert alice.get(base + "/admin/users").status_code == 200
    denied = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "secure_mw.audit" and '"authorization_denied"' in r.getMessage()]
    assert [(d["user"], d["rule"], d["path"]) for d in denied] == [
        ("bob", 1, "/admin/users"), ("bob", 3, "/closed")]


def test_ambiguous_paths_are_refused_and_the_app_routes_the_normalized_one(
        site: str, caplog: pytest.LogCaptureFixture) -> None:
    base = site
    with browser() as alice:
        sign_in(alice, base, "alice", "quartz falcon 11")
        cookie = "__Host-secure_mw_session=" + str(alice.cookies.get("__Host-secure_mw_session"))
    # Encoded separators and dot segments: refused before any rule is consulted.
    for target in ("/healthz/..%2Fadmin", "/a%2F..%2Fadmin", "/%2e%2e/admin",
                   "/x%5C..%5Cadmin", "/a%252Fb"):
        assert raw_get(base, target) == 400, target
    # Plain dot segments and doubled slashes are resolved, and the rules see the result:
    # /healthz/../admin is /admin (not the bypassed /healthz) for an anonymous client.
    assert raw_get(base, "/healthz/../admin") == 401
    assert raw_get(base, "//healthz") == 200
    with httpx.Client(base_url=base) as client:
        echo = client.get("/a//b/./c", headers={"Cookie": cookie})
    assert echo.status_code == 200
    assert echo.json()["path"] == "/a/b/c"
    refused = [r for r in caplog.records if '"path refused' in r.getMessage()]
    assert len(refused) == 5


def test_websocket_handshakes_are_authorized(flavour: str, site: str) -> None:
    if flavour != "asgi":
        pytest.skip("WebSocket is ASGI only")
    import websockets.exceptions
    from websockets.sync.client import connect

    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        connect("ws" + site[4:] + "/ws").close()
    assert refused.value.response.status_code == 403


def test_without_rules_every_request_needs_a_login(flavour: str, tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KeyRing.new_key_text()]},
                                      "local_users": {"file": str(users.path)}}, environ={})
    module = asgi if flavour == "asgi" else wsgi
    inner: Callable[..., Any] = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(module.protect(inner, settings, users=users)) as base:
        assert httpx.get(base + "/healthz", headers={"Accept": "application/json"}
                         ).status_code == 401


def test_a_path_that_normalizes_into_the_login_pages_is_not_let_through(site: str) -> None:
    for target in ("/x/../.auth/secret", "//.auth/anything", "/a/./../.auth/me2"):
        assert raw_get(site, target) == 404, target


def test_a_client_copy_of_the_assertion_header_never_reaches_the_app_in_any_spelling(
        ) -> None:
    import asyncio

    from secure_mw.asgi import IdentityHeaderMiddleware

    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))

    settings = Settings.from_mapping({}, environ={})
    middleware = IdentityHeaderMiddleware(app, settings=settings)
    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"",
             "headers": [(b"host", b"app.test"), (b"x-secure-mw-jwt-assertion", b"forged1"),
                         (b"x_secure_mw_jwt_assertion", b"forged2"),
                         (b"X_Secure_MW_Jwt_Assertion", b"forged3")],
             "client": ("203.0.113.5", 1)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(middleware(scope, receive, send))
    assert not any(value.startswith(b"forged") for _, value in seen[0])


def test_wsgi_normalized_path_leaving_the_mount_is_refused() -> None:
    from secure_mw.authz.layer import inside

    assert inside("/app/x", "/app") and inside("/app", "/app") and inside("/x", "")
    assert not inside("/application", "/app") and not inside("/public", "/app")


# -- attacks: the query string, the documented layout, unverified emails -------------------

STORES = ("memory", "cookie", "redis")


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def serve_rules(flavour: str, tmp_path: Path, access_control: dict[str, Any], *,
                store: str = "memory", redis_url: str | None = None,
                hosts: tuple[str, ...] = ()) -> Iterator[str]:
    """The protected test app behind the built-in login (alice in admins, bob in staff)."""
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="quartz falcon 11", email="alice@example.com", groups=["admins"])
    users.add("bob", password="velvet harbor 22", email="bob@example.com", groups=["staff"])
    session: dict[str, Any] = {"store": store}
    if redis_url:
        session["redis_url"] = redis_url
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "session": session,
        "local_users": {"file": str(users.path)},
        "access_control": access_control,
        **({"server": {"allowed_hosts": ["127.0.0.1", *hosts]}} if hosts else {}),
    }, environ={})
    module = asgi if flavour == "asgi" else wsgi
    options: dict[str, Any] = {"store": MemorySessionStore()} if store == "memory" else {}
    with serve(flavour, lambda inner: module.protect(
            inner, settings, users=users, delay=LoginDelay(floor=0.01, seed=0.01,
                                                           jitter=0.001), **options)) as url:
        yield url


def session_of(client: httpx.Client) -> str:
    """The Cookie header value a signed-in browser sends."""
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)


def test_a_query_string_does_not_walk_around_resources(
        flavour: str, store_kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture) -> None:
    redis_url = request.getfixturevalue("redis_server").url if store_kind == "redis" else None
    with serve_rules(flavour, tmp_path, {"default_policy": "deny", "rules": RULES},
                     store=store_kind, redis_url=redis_url) as base, browser() as bob, \
            browser() as alice:
        sign_in(bob, base, "bob", "velvet harbor 22")
        sign_in(alice, base, "alice", "quartz falcon 11")
        bob_cookie, alice_cookie = session_of(bob), session_of(alice)
        for target in ("/admin?x=1", "/admin?", "/admin/?x=1", "/admin/users?a=b&c",
                       "/closed?x=1", "/x/../admin?x=1"):
            assert raw_get(base, target, bob_cookie) == 403, target
            assert raw_get(base, target, "") == (401 if "admin" in target else 403), target
        assert raw_get(base, "/admin?x=1", alice_cookie) == 200
        # one factor on a two_factor rule: the second step, with or without a query
        for target in ("/secure", "/secure?x=1", "/secure/?x=1&y"):
            assert raw_get(base, target, bob_cookie) == 401, target   # second_factor_required
        assert raw_get(base, "/page?x=1", bob_cookie) == 200
        # a resource regex sees the path only: "?" in a regex never matches
    denied = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "secure_mw.audit" and '"authorization_denied"' in r.getMessage()]
    assert {(d["user"], d["rule"]) for d in denied if d["path"].startswith("/admin")} == {
        ("bob", 1)}


DOCUMENTED = Path(__file__).resolve().parents[1] / "docs" / "authorization.md"


def documented_toml(title: str) -> dict[str, Any]:
    """The TOML example of docs/authorization.md that follows the line ``<!-- title -->``."""
    import tomllib

    text = DOCUMENTED.read_text()
    marker = f"<!-- example: {title} -->"
    assert marker in text, f"docs/authorization.md has no example {title!r}"
    block = text.split(marker, 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    return tomllib.loads(block)


def test_the_documented_layout_refuses_users_outside_the_subject(
        flavour: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """docs/authorization.md's first example, copied verbatim: admins need two factors at
    /admin; a signed-in user outside the group is refused there, not let in by the catch-all
    rule after it."""
    access_control = documented_toml("layout")["access_control"]
    host = "app.example.com"
    with serve_rules(flavour, tmp_path, access_control, hosts=(host,)) as base, \
            browser() as bob, browser() as alice:
        sign_in(bob, base, "bob", "velvet harbor 22")
        sign_in(alice, base, "alice", "quartz falcon 11")
        for target in ("/admin", "/admin/", "/admin/users", "/admin?x=1", "//admin"):
            assert raw_get(base, target, session_of(bob), host=host) == 403, target
            assert raw_get(base, target, session_of(alice), host=host) == 401, target  # 2fa
            assert raw_get(base, target, "", host=host) == 401, target              # login
        assert raw_get(base, "/page", session_of(bob), host=host) == 200
        assert raw_get(base, "/healthz", "", host=host) == 200
        # another host of server.allowed_hosts is just as gated (the review's F1: a rule
        # scoped to app.example.com let bob in at Host: 127.0.0.1 through the catch-all)
        assert raw_get(base, "/admin/users", session_of(bob), host="127.0.0.1") == 403
    denied = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "secure_mw.audit" and '"authorization_denied"' in r.getMessage()]
    assert denied and all(d["user"] == "bob" and d["rule"] == 1 for d in denied)
    assert denied[0]["reason"] == "rule 1: subject does not match"


EMAIL_RULES = [
    {"resources": ["^/boss(/|$)"], "subject": [["email:boss@example.com"]],
     "policy": "authenticated"},
    {"resources": ["^/mail(/|$)"], "allow": {"or": [{"email": "boss@example.com"}]}},
    {"resources": ["^/corp(/|$)"], "allow": {"or": [{"domain": "corp.example"}]}},
    {"policy": "authenticated"},
]
OIDC_SECRET = "authz-client-secret-for-tests-only"
OIDC_PORTS = [free_port() for _ in range(2)]
OIDC_USERS = [
    {"sub": "boss", "password": "boss-pw", "email": "boss@example.com",
     "email_verified": True, "name": "The Boss"},
    {"sub": "impostor", "password": "impostor-pw", "email": "boss@example.com",
     "email_verified": False, "name": "Not The Boss"},
    {"sub": "x", "password": "x-pw", "email": "x@corp.example", "email_verified": False},
    {"sub": "y", "password": "y-pw", "email": "y@corp.example", "email_verified": True},
    {"sub": "silent", "password": "silent-pw", "email": "boss@example.com"},  # no claim
    # deny-lists: a claimed email (no email_verified) and other claims the rules read
    {"sub": "mallory", "password": "mallory-pw", "email": "mallory@evil.test"},
    {"sub": "eve", "password": "eve-pw", "email": "eve@evil.test"},
    {"sub": "carl", "password": "carl-pw", "email": "carl@good.test", "email_verified": True,
     "claims": {"department": "contractors", "org": {"unit": "ext"}}},
    {"sub": "sam", "password": "sam-pw", "email": "sam@good.test", "email_verified": True,
     "claims": {"department": "sales"}},
]


@pytest.fixture(scope="module")
def idp() -> Iterator[IdPServer]:
    uris = [f"http://127.0.0.1:{p}" for p in OIDC_PORTS]
    server = IdPServer(clients=[{
        "client_id": "authz", "client_secret": OIDC_SECRET,
        "redirect_uris": [f"{u}/.auth/callback" for u in uris],
        "grant_types": ["authorization_code"], "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic"}], users=OIDC_USERS)
    server.start()
    yield server
    server.stop()


def oidc_sign_in(client: httpx.Client, base: str, idp: IdPServer, user: str) -> None:
    start = client.get(base + "/.auth/login?rd=/")
    assert start.status_code == 302 and start.headers["location"].startswith(idp.issuer)
    callback = dev_login(client, start.headers["location"], username=user,
                         password=f"{user}-pw")
    assert client.get(callback).status_code == 302


@pytest.mark.parametrize("assume", [False, True])
def test_an_unverified_email_matches_no_email_rule(flavour: str, idp: IdPServer,
                                                   assume: bool) -> None:
    oidc: dict[str, Any] = {"issuer": idp.issuer, "client_id": "authz",
                            "client_secret": OIDC_SECRET}
    if assume:
        oidc["assume_email_verified"] = True
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]}, "oidc": oidc,
        "access_control": {"default_policy": "deny", "rules": EMAIL_RULES}}, environ={})
    module = asgi if flavour == "asgi" else wsgi
    port = OIDC_PORTS[0 if assume else 1]
    expected = {  # (user, path) -> status; the provider's own false always counts
        ("boss", "/boss"): 200, ("boss", "/mail"): 200, ("boss", "/corp"): 403,
        ("impostor", "/boss"): 403, ("impostor", "/mail"): 403, ("impostor", "/x"): 200,
        ("x", "/corp"): 403, ("y", "/corp"): 200,
        ("silent", "/boss"): 200 if assume else 403,
        ("silent", "/mail"): 200 if assume else 403,
    }
    with serve(flavour, lambda inner: module.protect(inner, settings,
                                                     store=MemorySessionStore()),
               port=port) as base:
        for user in ("impostor", "x", "boss", "y", "silent"):
            with browser() as client:
                oidc_sign_in(client, base, idp, user)
                for (who, path), status in expected.items():
                    if who == user:
                        assert client.get(base + path).status_code == status, (user, path)
                me = client.get(base + "/.auth/me").json()
                page = client.get(base + "/x").json()
                listed = next(u for u in OIDC_USERS if u["sub"] == user)
                verified = listed.get("email_verified", assume) is True
                # the email is still shown, with its flag
                assert (me["email"], me["email_verified"]) == (listed["email"], verified)
                assert (page["email"], page["email_verified"]) == (listed["email"], verified)


def test_the_built_in_logins_emails_count_as_verified(flavour: str, tmp_path: Path) -> None:
    """The users file is the administrator's: its emails match email rules."""
    rules = {"rules": [
        {"resources": ["^/mine(/|$)"], "subject": ["email:alice@example.com"],
         "policy": "authenticated"},
        {"resources": ["^/example(/|$)"], "allow": {"or": [{"domain": "example.com"}]}},
        {"policy": "authenticated"}]}
    with serve_rules(flavour, tmp_path, rules) as base, browser() as alice, \
            browser() as bob:
        sign_in(alice, base, "alice", "quartz falcon 11")
        sign_in(bob, base, "bob", "velvet harbor 22")
        assert raw_get(base, "/mine?x=1", session_of(alice)) == 200
        assert raw_get(base, "/mine", session_of(bob)) == 403
        assert raw_get(base, "/example/x", session_of(bob)) == 200
        me = alice.get(base + "/.auth/me").json()
        assert (me["email"], me["email_verified"]) == ("alice@example.com", True)


def test_a_padded_query_string_does_not_slip_past_query_conditions(
        flavour: str, tmp_path: Path) -> None:
    rules = {"rules": [{"query": [{"key": "debug", "value": "1"}], "policy": "deny"},
                       {"policy": "authenticated"}]}
    padded = "/x?" + "&".join(["a=1"] * 70) + "&debug=1"     # the app still reads debug=1
    with serve_rules(flavour, tmp_path, rules) as base, browser() as bob:
        sign_in(bob, base, "bob", "velvet harbor 22")
        assert raw_get(base, "/x?debug=1", session_of(bob)) == 403
        assert raw_get(base, padded, session_of(bob)) == 403
        assert raw_get(base, "/x?debug=2&" + "&".join(["a=1"] * 20), session_of(bob)) == 200


# -- the review of the access-rule change: HEAD, repeated keys, deny-lists, mount points -------


def test_head_is_gated_like_get(flavour: str, tmp_path: Path) -> None:
    """A server answers HEAD with the GET handler (status, headers and Content-Length of
    the page): a rule listing GET selects HEAD too. Before: bob's HEAD /admin/users got 200
    on every server."""
    rules = {"default_policy": "deny", "rules": [
        {"resources": ["^/admin(/|$)"], "methods": ["GET", "POST"],
         "subject": [["group:admins"]], "policy": "authenticated"},
        {"policy": "authenticated"}]}
    with serve_rules(flavour, tmp_path, rules) as base, browser() as bob, \
            browser() as alice:
        sign_in(bob, base, "bob", "velvet harbor 22")
        sign_in(alice, base, "alice", "quartz falcon 11")
        for method in ("GET", "HEAD", "POST"):
            assert raw_get(base, "/admin/users", session_of(bob), method=method) == 403, method
            assert raw_get(base, "/admin/users", session_of(alice), method=method) == 200
        assert raw_get(base, "/page", session_of(bob), method="HEAD") == 200


def test_a_repeated_query_key_is_refused_as_ambiguous(
        flavour: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Starlette reads a repeated key's last value, werkzeug its first: a bypass for
    format=csv let an anonymous format=csv&format=pdf through (200) while the app read pdf.
    Now 400, audited."""
    rules = {"default_policy": "deny", "rules": [
        {"resources": ["^/export$"], "query": [{"key": "format", "value": "csv"}],
         "policy": "bypass"},
        {"policy": "authenticated"}]}
    with serve_rules(flavour, tmp_path, rules) as base, browser() as bob:
        assert raw_get(base, "/export?format=csv") == 200
        assert raw_get(base, "/export?format=pdf") == 401
        for target in ("/export?format=csv&format=pdf", "/export?format=pdf&format=csv",
                       "/export?format=csv&%66ormat=pdf"):
            assert raw_get(base, target) == 400, target
        sign_in(bob, base, "bob", "velvet harbor 22")
        assert raw_get(base, "/export?format=pdf&format=csv", session_of(bob)) == 400
        assert raw_get(base, "/other?format=pdf&format=csv", session_of(bob)) == 200
    denied = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "secure_mw.audit" and '"authorization_denied"' in r.getMessage()]
    assert len(denied) == 4
    assert {(d["rule"], d["effect"], d["reason"]) for d in denied} == {
        (0, "bad_request", "rule 0: repeated query key format")}


DENY_LIST_RULES = [
    {"subject": ["email:mallory@evil.test"], "policy": "deny"},
    {"resources": ["^/blocks(/|$)"], "allow": {"or": [{"accept": True}]},
     "deny": {"or": [{"domain": "evil.test"}]}},
    {"allow": {"or": [{"authenticated_user": True}]},
     "deny": {"or": [{"claim/department": "contractors"}, {"claim/org/unit": "banned"}]}},
]


def test_deny_lists_deny_on_the_real_provider(flavour: str, idp: IdPServer) -> None:
    """An email deny-list denies the claimed email even when the provider sends no
    email_verified (it let mallory in with 200 since emails had to be verified), and a deny
    block on another claim holds (sessions kept six claims, so it never did)."""
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "oidc": {"issuer": idp.issuer, "client_id": "authz", "client_secret": OIDC_SECRET},
        "access_control": {"default_policy": "deny", "rules": DENY_LIST_RULES}}, environ={})
    module = asgi if flavour == "asgi" else wsgi
    expected = {"mallory": {"/page": 403, "/blocks": 403},
                "eve": {"/page": 200, "/blocks": 403},
                "carl": {"/page": 403, "/blocks": 200},
                "sam": {"/page": 200, "/blocks": 200}}
    with serve(flavour, lambda inner: module.protect(inner, settings,
                                                     store=MemorySessionStore()),
               port=OIDC_PORTS[0]) as base:
        for user, statuses in expected.items():
            with browser() as client:
                oidc_sign_in(client, base, idp, user)
                got = {path: client.get(base + path).status_code for path in statuses}
                assert got == statuses, user


def test_a_userinfo_email_does_not_inherit_the_id_tokens_flag(flavour: str,
                                                              idp: IdPServer) -> None:
    """The id_token says me@corp.example, verified; userinfo says boss@example.com with no
    flag. The identity's email is userinfo's, so its flag must be too (it was the
    id_token's: boss@example.com counted as verified)."""
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "oidc": {"issuer": idp.issuer, "client_id": "authz", "client_secret": OIDC_SECRET},
        "access_control": {"default_policy": "deny", "rules": EMAIL_RULES}}, environ={})
    module = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.protect(inner, settings,
                                                     store=MemorySessionStore()),
               port=OIDC_PORTS[1]) as base, browser() as client:
        idp.tamper_next_id_token({"email": "me@corp.example", "email_verified": True})
        oidc_sign_in(client, base, idp, "silent")
        me = client.get(base + "/.auth/me").json()
        assert (me["email"], me["email_verified"]) == ("boss@example.com", False)
        assert client.get(base + "/boss").status_code == 403
        assert client.get(base + "/mail").status_code == 403


@contextmanager
def serve_mounted(flavour: str, settings: Settings, root: str) -> Iterator[str]:
    """protect(app) mounted at ``root``: ``uvicorn --root-path`` (the proxy in front strips
    the prefix, so clients' targets arrive without it) or werkzeug's DispatcherMiddleware
    (``SCRIPT_NAME``; targets include the prefix)."""
    if flavour == "asgi":
        with uvicorn_server(asgi.protect(asgi_inner(), settings), root_path=root) as url:
            yield url
    else:
        from werkzeug.middleware.dispatcher import DispatcherMiddleware

        def elsewhere(environ: dict[str, Any], start_response: Callable[..., Any]
                      ) -> list[bytes]:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not mounted here"]

        with wsgi_server(DispatcherMiddleware(elsewhere, {
                root: wsgi.protect(wsgi_inner, settings)})) as url:
            yield url


def test_the_rules_match_the_path_the_app_routes_under_a_mount_point(flavour: str,
                                                                     tmp_path: Path) -> None:
    """Under /app the rules saw /app/admin/users while the app routed /admin/users, so
    `^/admin(/|$)` missed and bob got 200. The documented layout, mounted."""
    from secure_mw.testing import session_cookie

    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]}, "session": {"store": "cookie"},
        "access_control": documented_toml("layout")["access_control"]}, environ={})
    bob = session_cookie(settings, {"sub": "bob", "groups": ["staff"]})
    alice = session_cookie(settings, {"sub": "alice", "groups": ["admins"]}, auth_level=2)
    sent = "" if flavour == "asgi" else "/app"     # what the client's target starts with
    with serve_mounted(flavour, settings, "/app") as base:
        for target in ("/admin/users", "/admin", "/admin/", "//admin/x", "/x/../admin"):
            assert raw_get(base, sent + target, bob) == 403, target
        assert raw_get(base, sent + "/admin/users", alice) == 200
        assert raw_get(base, sent + "/page", bob) == 200
        assert raw_get(base, sent + "/healthz") == 200
        assert raw_get(base, sent + "/page") == 401
        with httpx.Client() as client:
            seen = client.get(base + sent + "/admin//users", headers={
                "Cookie": alice, "Accept": "application/json"}).json()
        assert seen["path"].endswith("/admin/users") and seen["sub"] == "alice"
        assert raw_get(base, sent + "/../admin/users", alice) == 400   # leaves the mount


def test_two_host_headers_do_not_walk_around_a_domain_gate(flavour: str,
                                                          tmp_path: Path) -> None:
    """Two Host headers: the rules must not judge one host while the app routes the other
    (Starlette's Host routing takes the first). Held when reviewed; kept as a test."""
    rules = {"default_policy": "deny", "rules": [
        {"domain": ["admin.example.com"], "subject": [["group:admins"]],
         "policy": "authenticated"},
        {"policy": "authenticated"}]}
    hosts = ("admin.example.com", "www.example.com")
    with serve_rules(flavour, tmp_path, rules, hosts=hosts) as base, browser() as bob:
        sign_in(bob, base, "bob", "velvet harbor 22")
        assert raw_get(base, "/settings", session_of(bob), host="admin.example.com") == 403
        assert raw_get(base, "/settings", session_of(bob), host="www.example.com") == 200
        parts = urlsplit(base)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(("GET /settings HTTP/1.1\r\nHost: admin.example.com\r\n"
                          "Host: www.example.com\r\nAccept: application/json\r\n"
                          f"Cookie: {session_of(bob)}\r\nConnection: close\r\n\r\n"
                          ).encode("latin-1"))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert int(data.split(b" ", 2)[1]) in (400, 403)
