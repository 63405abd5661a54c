"""Authorization end to end on real servers, both flavours, behind the built-in login:
rules decide per request, anonymous requests a rule could admit go to the login, a
one-factor session on a two_factor rule goes to the second step, refusals are audited,
ambiguous paths are refused and the app routes the normalized path."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
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
from tests.apps import FLAVOURS, asgi_inner, browser, uvicorn_server, wsgi_inner, wsgi_server

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
RULES = [
    {"resources": ["^/healthz$"], "policy": "bypass"},
    {"resources": ["^/admin(/|$)"], "subject": [["group:admins"]], "policy": "authenticated"},
    {"resources": ["^/admin(/|$)"], "policy": "deny"},     # (a subject is a match criterion)
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


def raw_get(base: str, target: str, cookie: str = "") -> int:
    """The status of a request whose target is sent exactly as written (no client-side
    normalization of dot segments or escapes)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        request = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
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
        ("bob", 2, "/admin/users"), ("bob", 4, "/closed")]


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
