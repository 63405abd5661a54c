"""The guard middlewares end to end on real servers, both flavours: security headers,
client address behind trusted proxies, rate limits (memory and a real redis-server) and the
open-redirect guard — alone and stacked by protect()."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import redis

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie
from tests.apps import FLAVOURS, uvicorn_server, wsgi_server
from tests.redis_faults import FAULTS, fault
from tests.servers import RedisServer

KEY = KeyRing.new_key_text()


# -- inner apps that show what the guards did -----------------------------------------------


def _facts(client: str, scheme: str, host: str, nonce: object, identity: Any) -> bytes:
    return json.dumps({"client": client, "scheme": scheme, "host": host, "nonce": nonce,
                       "user": identity.sub if identity else None}).encode()


async def asgi_app(scope: dict[str, Any], receive: Callable[..., Any],
                   send: Callable[..., Any]) -> None:
    assert scope["type"] == "http"
    query = parse_qs(scope.get("query_string", b"").decode())
    headers = [(b"content-type", b"application/json")]
    status = 200
    if scope["path"] == "/go":
        status = 302
        headers.append((b"location", query["to"][0].encode()))
    if scope["path"] == "/framed":
        headers.append((b"x-frame-options", b"SAMEORIGIN"))
    host = dict(scope["headers"]).get(b"host", b"").decode()
    body = _facts(scope["client"][0], scope["scheme"], host, scope.get("secure_mw.csp_nonce"),
                  scope.get("secure_mw.identity"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    headers = [("Content-Type", "application/json")]
    status = "200 OK"
    if environ["PATH_INFO"] == "/go":
        status = "302 Found"
        headers.append(("Location", query["to"][0]))
    if environ["PATH_INFO"] == "/framed":
        headers.append(("X-Frame-Options", "SAMEORIGIN"))
    body = _facts(environ["REMOTE_ADDR"], environ["wsgi.url_scheme"],
                  environ.get("HTTP_HOST", ""), environ.get("secure_mw.csp_nonce"),
                  environ.get("secure_mw.identity"))
    start_response(status, headers)
    return [body]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Serve = Callable[..., "contextmanager[str]"]


@pytest.fixture
def serve_guarded(flavour: str) -> Callable[..., Any]:
    """serve_guarded(settings, *layers) where layers are names, outermost first; or
    serve_guarded(settings, protect=True, **options)."""
    module = asgi if flavour == "asgi" else wsgi

    @contextmanager
    def run(settings: Settings, *layers: str, protect: bool = False,
            **options: Any) -> Iterator[str]:
        app: Any = asgi_app if flavour == "asgi" else wsgi_app
        if protect:
            app = module.protect(app, settings, **options)
        else:
            for name in reversed(layers):
                if name == "headers":
                    app = module.SecurityHeadersMiddleware(app, settings=settings)
                elif name == "client":
                    app = module.ClientAddressMiddleware(
                        app, trusted_proxies=settings.server.trusted_proxies)
                elif name == "ratelimit":
                    app = module.RateLimitMiddleware(app, settings=settings)
                elif name == "redirect":
                    app = module.RedirectGuardMiddleware(app, settings=settings)
        server = uvicorn_server if flavour == "asgi" else wsgi_server
        with server(app) as url:
            yield url

    return run


def settings(**sections: Any) -> Settings:
    return Settings.from_mapping({"keys": {"encryption_keys": [KEY]}, **sections}, environ={})


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "secure_mw.audit"]


# -- security headers -----------------------------------------------------------------------


def test_security_headers_and_a_fresh_nonce_per_response(serve_guarded: Any) -> None:
    with serve_guarded(settings(), "headers") as base:
        first = httpx.get(base + "/")
        second = httpx.get(base + "/")
    h = first.headers
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "strict-origin-when-cross-origin"
    assert h["x-frame-options"] == "DENY"
    assert h["cross-origin-opener-policy"] == "same-origin"
    assert h["cross-origin-resource-policy"] == "same-origin"
    assert h["x-dns-prefetch-control"] == "off"
    assert "camera=()" in h["permissions-policy"]
    assert "x-xss-protection" not in h
    assert "strict-transport-security" not in h        # plain http: no HSTS
    nonce = first.json()["nonce"]
    assert f"'nonce-{nonce}'" in h["content-security-policy"]
    assert "object-src 'none'" in h["content-security-policy"]
    assert second.json()["nonce"] != nonce


def test_api_preset_and_app_headers_kept(serve_guarded: Any) -> None:
    with serve_guarded(settings(headers={"preset": "api"}), "headers") as base:
        api = httpx.get(base + "/")
        framed = httpx.get(base + "/framed")
    assert api.headers["cache-control"] == "no-store"
    assert api.headers["content-security-policy"].startswith("default-src 'none'")
    assert framed.headers.get_list("x-frame-options") == ["SAMEORIGIN"]


# -- the client address ---------------------------------------------------------------------


def test_forwarded_for_is_believed_from_trusted_proxies_only(serve_guarded: Any) -> None:
    forged = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
              "X-Forwarded-Host": "app.example.com"}
    with serve_guarded(settings(), "headers", "client") as base:
        untrusted = httpx.get(base + "/", headers=forged)
    assert untrusted.json()["client"] == "127.0.0.1"
    assert untrusted.json()["scheme"] == "http"
    assert "strict-transport-security" not in untrusted.headers
    trusted = settings(server={"trusted_proxies": ["127.0.0.1/32"]})
    with serve_guarded(trusted, "headers", "client") as base:
        via_proxy = httpx.get(base + "/", headers={
            **forged, "X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    facts = via_proxy.json()
    assert facts["client"] == "203.0.113.7"          # the rightmost untrusted hop
    assert facts["scheme"] == "https" and facts["host"] == "app.example.com"
    assert via_proxy.headers["strict-transport-security"] == "max-age=31536000; " \
                                                             "includeSubDomains"


# -- rate limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_rate_limit_by_client_address(serve_guarded: Any, store: str,
                                      request: pytest.FixtureRequest,
                                      caplog: pytest.LogCaptureFixture) -> None:
    rate = {"store": store, "rules": [{"key": "ip", "limit": "3/minute"}]}
    if store == "redis":
        rate["redis_url"] = request.getfixturevalue("redis_server").url
    s = settings(server={"trusted_proxies": ["127.0.0.1/32"]}, rate_limits=rate)
    with serve_guarded(s, "client", "ratelimit") as base, httpx.Client() as client:
        alice = {"X-Forwarded-For": "203.0.113.10", "Accept": "application/json"}
        statuses = [client.get(base + "/", headers=alice).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = client.get(base + "/", headers=alice)
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-policy"] == '"3/60s";q=3;w=60'
        assert refused.headers["ratelimit"].startswith('"3/60s";r=0;t=')
        other = client.get(base + "/", headers={"X-Forwarded-For": "203.0.113.11"})
        assert other.status_code == 200                # each address has its own budget
        assert other.headers["ratelimit"].startswith('"3/60s";r=2;')
    limited = [e for e in audit_lines(caplog) if e["event"] == "rate_limited"]
    assert limited and {e["remote_ip"] for e in limited} == {"203.0.113.10"}


@pytest.mark.parametrize("fail_open", [True, False])
def test_rate_limit_with_redis_down(serve_guarded: Any, redis_server: RedisServer,
                                    fail_open: bool) -> None:
    s = settings(rate_limits={"store": "redis", "redis_url": redis_server.url, "rules": [
        {"key": "ip", "limit": "100/minute", "fail_open": fail_open}]})
    with serve_guarded(s, "ratelimit") as base:
        assert httpx.get(base + "/").status_code == 200
        redis_server.stop()
        down = httpx.get(base + "/", headers={"Accept": "application/json"})
        assert down.status_code == (200 if fail_open else 503)
        redis_server.start()
        assert httpx.get(base + "/").status_code == 200


@pytest.mark.parametrize("kind", FAULTS)
def test_rate_limits_fail_closed_for_credentials(flavour: str, redis_server: RedisServer,
                                                 kind: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The attack: fill Redis (or stall it, or stop it) and every limit switched off —
    a 20/minute rule let 30 of 30 login attempts through, with a log warning only. Now the
    login endpoints and rules that protect credentials fail closed; other paths still pass
    (fail_open unset), and every decision made without the store is audited and counted."""
    s = settings(rate_limits={"store": "redis", "redis_url": redis_server.url, "rules": [
        {"key": "ip", "limit": "20/minute"},
        {"key": "ip", "limit": "20/minute", "paths": ["^/api/token$"],
         "protects_credentials": True}]},
        regulation={"paths": ["/login"]})
    module = asgi if flavour == "asgi" else wsgi
    inner = asgi_app if flavour == "asgi" else wsgi_app
    middleware = module.RateLimitMiddleware(inner, settings=s)
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    count = 3 if kind == "paused" else 30       # a paused server costs a timeout each
    with server(middleware) as base, fault(redis_server, kind):
        logins = [httpx.post(base + "/login", headers={"Accept": "application/json"},
                             timeout=30) for _ in range(count)]
        builtin = httpx.post(base + "/.auth/login", timeout=30)
        token = httpx.post(base + "/api/token", timeout=30)
        pages = [httpx.get(base + "/page", timeout=30) for _ in range(count)]
    assert [r.status_code for r in logins] == [503] * count
    assert logins[0].json() == {"error": "rate_limit_unavailable"}
    assert logins[0].headers["retry-after"] == "5"
    assert builtin.status_code == 503 and token.status_code == 503
    assert [r.status_code for r in pages] == [200] * count
    counts = middleware.layer.without_store
    # /api/token passes the first rule (allowed without the store), then its own refuses
    assert counts["refused"] == count + 2 and counts["allowed"] == count + 1
    events = [e for e in audit_lines(caplog) if e["event"] == "rate_limit_unavailable"]
    assert len(events) == 2 * count + 3
    assert {(e["path"], e["rule"], e["outcome"]) for e in events} == {
        ("/login", 0, "refused"), ("/.auth/login", 0, "refused"), ("/api/token", 0, "allowed"),
        ("/api/token", 1, "refused"), ("/page", 0, "allowed")}


def test_rate_limit_keys_take_the_app_prefix(flavour: str, redis_server: RedisServer) -> None:
    """Before: rate-limit keys were secure_mw:rl:… whatever session.redis_key_prefix said,
    so two apps on one Redis shared their limits."""
    def app(prefix: str) -> Any:
        s = settings(session={"redis_key_prefix": prefix}, rate_limits={
            "store": "redis", "redis_url": redis_server.url,
            "rules": [{"key": "ip", "limit": "3/minute"}]})
        module = asgi if flavour == "asgi" else wsgi
        return module.RateLimitMiddleware(asgi_app if flavour == "asgi" else wsgi_app,
                                          settings=s)

    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(app("appA:")) as a, server(app("appB:")) as b:
        assert [httpx.get(a + "/").status_code for _ in range(4)] == [200, 200, 200, 429]
        assert httpx.get(b + "/").status_code == 200
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        keys = raw.keys("*")
    finally:
        raw.close()
    assert keys and all(k.startswith(("appA:rl:", "appB:rl:")) for k in keys)


# -- the open-redirect guard ----------------------------------------------------------------


def test_unsafe_redirect_parameters_and_locations(serve_guarded: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    s = settings(redirects={"allowed_hosts": ["*.example.com"], "default": "/home"})
    with serve_guarded(s, "redirect") as base, httpx.Client() as client:
        for bad in ("https://evil.test/", "//evil.test", "/\\evil.test",
                    "https://notexample.com/", "https://a.example.com@evil.test/"):
            assert client.get(base + "/", params={"next": bad}).status_code == 400, bad
        assert client.get(base + "/", params={"next": "/ok"}).status_code == 200
        assert client.get(base + "/", params={"rd": "https://a.example.com/x"}).status_code \
            == 200
        assert client.get(base + "/", params={"other": "https://evil.test"}).status_code \
            == 200                                 # only the configured parameters
        own = base + "/fine"
        cases = {"https://evil.test/": "/home", "/local": "/local", own: own,
                 "https://b.example.com/": "https://b.example.com/"}
        for location, expected in cases.items():
            response = client.get(base + "/go", params={"to": location})
            assert response.status_code == 302
            assert response.headers["location"] == expected, location
    events = [e for e in audit_lines(caplog) if e["event"] == "unsafe_redirect"]
    assert len(events) == 6


# -- everything at once ---------------------------------------------------------------------


def test_protect_stacks_every_guard_around_the_session(serve_guarded: Any) -> None:
    s = settings(
        server={"trusted_proxies": ["127.0.0.1/32"]},
        oidc={"issuer": "https://idp.example.com", "client_id": "app",
              "client_secret": "x" * 32},
        rate_limits={"rules": [{"key": "ip", "limit": "50/minute"},
                               {"key": "user", "limit": "2/minute"}]},
    )
    store = MemorySessionStore()
    cookie = session_cookie(s, {"sub": "alice"}, store=store)
    with serve_guarded(s, protect=True, store=store) as base, httpx.Client() as client:
        hdrs = {"Cookie": cookie, "X-Forwarded-For": "203.0.113.20",
                "Accept": "application/json"}
        first = client.get(base + "/", headers=hdrs)
        assert first.status_code == 200 and first.json()["user"] == "alice"
        assert first.json()["client"] == "203.0.113.20"
        assert first.headers["x-frame-options"] == "DENY"
        assert client.get(base + "/", headers=hdrs).status_code == 200
        third = client.get(base + "/", headers=hdrs)       # alice's own budget: 2/minute
        assert third.status_code == 429
        assert third.headers["x-content-type-options"] == "nosniff"   # headers on refusals
        anonymous = client.get(base + "/", headers={"Accept": "application/json"})
        assert anonymous.status_code == 401
        assert client.get(base + "/", params={"next": "//evil.test"},
                          headers=hdrs).status_code == 400
        login = client.get(base + "/.auth/login", headers={"Accept": "text/html"})
        assert login.status_code == 503        # the provider is unreachable: fail closed




def test_redirect_guard_refuses_what_it_cannot_parse_and_checks_refresh(
        serve_guarded: Any) -> None:
    s = settings(redirects={"allowed_hosts": ["app.example.com"]})
    with serve_guarded(s, "redirect") as base, httpx.Client() as client:
        padded = "next=https://evil.test/&" + "&".join(f"a{i}=1" for i in range(80))
        assert client.get(base + "/?" + padded).status_code == 400
        assert client.get(base + "/?" + "&".join(f"a{i}=1" for i in range(80))).status_code \
            == 200                         # unparsable, but no redirect parameter in it


def test_head_counts_against_a_get_only_rule(serve_guarded: Any) -> None:
    s = settings(rate_limits={"rules": [{"key": "ip", "limit": "2/minute",
                                         "methods": ["GET"]}]})
    with serve_guarded(s, "ratelimit") as base, httpx.Client() as client:
        statuses = [client.head(base + "/").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
