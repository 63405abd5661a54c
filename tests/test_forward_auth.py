"""The forward-auth endpoints of ``secure-mw serve`` on a real uvicorn: the contracts of
nginx ``auth_request`` (X-Original-URL / -Method) and of Traefik ``ForwardAuth`` and Caddy
``forward_auth`` (X-Forwarded-Proto/Host/Uri/Method, sent here as those proxies send them),
the same decision as in-process for path tricks (oauth2-proxy GHSA-7x63: a spoofed
X-Forwarded-Uri), refusal of untrusted peers, and the login's way back to a sibling host."""

from __future__ import annotations

import base64
import json
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest

from secure_mw import Settings, asgi
from secure_mw.asgi.forward_auth import portal_app
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.errors import ConfigError
from secure_mw.forward_auth import NotForwardable, forwarded_request, remote_headers
from secure_mw.guards.timing import LoginDelay
from secure_mw.identity import Identity
from secure_mw.login import UsersFile
from secure_mw.session import MemorySessionStore
from tests.apps import asgi_inner, browser, uvicorn_server
from tests.servers import free_port

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
KEY = KeyRing.new_key_text()
RULES = [
    {"resources": ["^/public(/|$)"], "policy": "bypass"},
    {"resources": ["^/admin(/|$)"], "subject": [["group:admins"]], "policy": "authenticated"},
    {"resources": ["^/closed(/|$)"], "policy": "deny"},
    {"resources": ["^/secure(/|$)"], "policy": "two_factor"},
    {"policy": "authenticated"},
]
APP = "app.test"
HTML = {"accept": "text/html,application/xhtml+xml", "sec-fetch-mode": "navigate"}


def settings_for(tmp_path: Path, port: int, extra: dict[str, Any] | None = None,
                 **server: Any) -> tuple[Settings, UsersFile]:
    extra = extra or {}
    users_path = tmp_path / "users.toml"
    users = UsersFile(users_path, hasher=FAST)
    if not users_path.exists():
        users.add("alice", password="quartz falcon 11", groups=["admins", "r&d lab"],
                  email="alice@example.com", display_name="Zoë Example")
        users.add("bob", password="velvet harbor 22", groups=["staff"])
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "local_users": {"file": str(users_path)},
        "session": {"cookie_secure": False},
        "server": {"external_url": f"http://127.0.0.1:{port}",
                   "trusted_proxies": ["127.0.0.1/32"],
                   "allowed_hosts": ["127.0.0.1", APP, "other.test:8443"], **server},
        "access_control": {"default_policy": "deny", "rules": RULES},
        **extra,
    }, environ={})
    return settings, users


@contextmanager
def running(tmp_path: Path, extra: dict[str, Any] | None = None,
            **server: Any) -> Iterator[str]:
    port = free_port()
    settings, users = settings_for(tmp_path, port, extra, **server)
    app = portal_app(settings, users=users, store=MemorySessionStore(),
                     delay=LoginDelay(floor=0.01, seed=0.01, jitter=0.001))
    with uvicorn_server(app, port=port) as base:
        yield base


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[str]:
    with running(tmp_path) as base:
        yield base


def sign_in(client: httpx.Client, base: str, user: str, password: str,
            rd: str = f"http://{APP}/page") -> httpx.Response:
    form = client.get(f"{base}/.auth/login", params={"rd": rd})
    assert form.status_code == 200, form.text
    state = form.text.split('name="state" value="', 1)[1].split('"', 1)[0]
    return client.post(f"{base}/.auth/login",
                       data={"state": state, "username": user, "password": password})


def cookie_of(client: httpx.Client) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)


def traefik(base: str, uri: str, *, cookie: str = "", method: str = "GET",
            host: str = APP, headers: dict[str, str] | None = None) -> httpx.Response:
    """What Traefik's ForwardAuth sends: a GET to the address with X-Forwarded-*."""
    sent = {"x-forwarded-proto": "http", "x-forwarded-host": host, "x-forwarded-uri": uri,
            "x-forwarded-method": method, "x-forwarded-for": "203.0.113.7",
            **({"cookie": cookie} if cookie else {}), **(headers or {})}
    return httpx.get(f"{base}/api/authz/forward-auth", headers=sent)


def nginx(base: str, uri: str, *, cookie: str = "", method: str = "GET",
          host: str = APP, headers: dict[str, str] | None = None) -> httpx.Response:
    """What the documented nginx auth_request location sends."""
    sent = {"x-original-url": f"http://{host}{uri}", "x-original-method": method,
            "x-forwarded-for": "203.0.113.7", **({"cookie": cookie} if cookie else {}),
            **(headers or {})}
    return httpx.request(method, f"{base}/api/authz/auth-request", headers=sent)


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_anonymous_navigation_goes_to_the_portal_and_an_api_client_gets_401(
        portal: str) -> None:
    nav = traefik(portal, "/page?x=1", headers=HTML)
    assert nav.status_code == 302
    assert nav.headers["location"] == (f"{portal}/.auth/login?rd="
                                       + quote(f"http://{APP}/page?x=1", safe=""))
    api = traefik(portal, "/page", headers={"accept": "application/json"})
    assert api.status_code == 401
    assert f'form-action="{portal}/.auth/login"' in api.headers["www-authenticate"]
    assert api.json()["login_url"] == f"{portal}/.auth/login"
    # nginx's auth_request passes 2xx, 401 and 403 only: never a 302.
    by_nginx = nginx(portal, "/page?x=1", headers=HTML)
    assert by_nginx.status_code == 401
    assert by_nginx.headers["location"] == nav.headers["location"]   # for its error_page
    assert "location" not in nginx(portal, "/page").headers          # an API client
    assert nginx(portal, "/public/x").status_code == 200        # bypass: no login


def test_signed_in_gets_200_with_the_remote_headers_and_the_assertion(portal: str) -> None:
    with browser() as alice:
        done = sign_in(alice, portal, "alice", "quartz falcon 11")
        assert done.status_code == 303
        assert done.headers["location"] == f"http://{APP}/page"   # back to the sibling host
        cookie = cookie_of(alice)
    for answer in (traefik(portal, "/admin/x", cookie=cookie),
                   nginx(portal, "/admin/x", cookie=cookie)):
        assert answer.status_code == 200, answer.text
        assert answer.headers["remote-user"] == "alice"
        assert answer.headers["remote-email"] == "alice@example.com"
        assert unquote(answer.headers["remote-name"]) == "Zoë Example"
        groups = [unquote(g) for g in answer.headers["remote-groups"].split(",")]
        assert groups == ["admins", "r&d lab"]
        token = claims(answer.headers["x-secure-mw-jwt-assertion"])
        assert token["sub"] == "alice" and token["aud"] == APP   # the service, not the portal
        assert answer.headers["cache-control"] == "no-store"


def test_a_rule_refusal_is_403_for_every_proxy(portal: str) -> None:
    with browser() as bob:
        sign_in(bob, portal, "bob", "velvet harbor 22")
        cookie = cookie_of(bob)
    for uri in ("/admin", "/admin/users", "/closed"):
        assert traefik(portal, uri, cookie=cookie).status_code == 403, uri
        assert nginx(portal, uri, cookie=cookie).status_code == 403, uri
    assert traefik(portal, "/page", cookie=cookie).headers["remote-user"] == "bob"


def raw_status(base: str, target: str, cookie: str, host: str) -> int:
    """The status a server answers for the request line ``GET target`` exactly as given."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
                     "Accept: application/json\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(4096).decode("latin-1")
    return int(head.split(" ", 2)[1])


TRICKS = ["/public/../admin", "/public/%2e%2e/admin", "/public/%2E%2E/admin",
          "/public/..;/admin", "/public/..%3b/admin", "//admin", "/./admin", "/admin/",
          "/admin?/public", "/admin?x=/public/", "/public%2f..%2fadmin", "/public/%252e%252e/admin",
          "/%2e%2e/admin", "/public/.%2e/admin", "/admin;/public", "/ADMIN", "/admin%00",
          "/public/..\\admin", "/public//../admin", "/public/x/../../admin", "/page"]


def test_path_tricks_in_the_forwarded_uri_decide_as_in_process(tmp_path: Path) -> None:
    """oauth2-proxy GHSA-7x63-xv5r-3p2x: a URI the proxy forwards must not be read more
    kindly than the in-process middleware reads the same request line."""
    port = free_port()
    settings, users = settings_for(tmp_path, port)
    in_process = asgi.protect(asgi_inner(), settings, users=users, store=MemorySessionStore())
    with running(tmp_path) as portal, uvicorn_server(in_process) as direct, \
            browser() as bob_portal, browser() as bob_direct:
        sign_in(bob_portal, portal, "bob", "velvet harbor 22")
        sign_in(bob_direct, direct, "bob", "velvet harbor 22", rd="/page")
        at_portal, at_app = cookie_of(bob_portal), cookie_of(bob_direct)
        for uri in TRICKS:
            expected = raw_status(direct, uri, at_app, APP)
            forwarded = traefik(portal, uri, cookie=at_portal).status_code
            assert forwarded == expected, (uri, forwarded, expected)
            by_nginx = nginx(portal, uri, cookie=at_portal).status_code
            assert by_nginx == (expected if expected in (200, 401, 403) else 403), uri
        assert raw_status(direct, "/page", at_app, APP) == 200
    # A fragment never comes from a browser: refused, never matched without it.
    for uri in ("/admin#/public", "/public#/../admin"):
        with running(tmp_path / "again") as portal:
            assert traefik(portal, uri).status_code == 400
            assert nginx(portal, uri).status_code == 403


def test_forwarding_headers_from_an_untrusted_peer_are_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="secure_mw.audit")
    with running(tmp_path, trusted_proxies=["10.0.0.0/8"]) as portal:
        for answer in (traefik(portal, "/public/x"), nginx(portal, "/public/x")):
            assert answer.status_code == 403
        assert httpx.get(f"{portal}/api/authz/forward-auth").status_code == 403
    lines = [r.getMessage() for r in caplog.records if "forward_auth_refused" in r.getMessage()]
    assert len(lines) == 3 and all("not a trusted proxy" in line for line in lines)


def test_ambiguous_or_hostile_forwarded_requests_get_a_precise_refusal(
        portal: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="secure_mw.audit")
    assert traefik(portal, "/public/x", host="evil.test").status_code == 400   # Host list
    assert nginx(portal, "/public/x", host="evil.test").status_code == 403
    assert traefik(portal, "/public/x", host=f"{APP}, evil.test").status_code == 400
    assert traefik(portal, "http://evil.test/public").status_code == 400
    assert traefik(portal, "/public/x", method="G-T").status_code == 400
    assert traefik(portal, "/public/x", headers={"x-forwarded-proto": "gopher"}
                   ).status_code == 400
    missing = httpx.get(f"{portal}/api/authz/forward-auth",
                        headers={"x-forwarded-uri": "/public"})
    assert missing.status_code == 400
    # The portal's own pages never answer for a service's URL (no logout as a side effect).
    for uri in ("/.auth/login", "/.auth/logout", "/x/../.auth/me"):
        assert traefik(portal, uri).status_code == 403, uri
        assert nginx(portal, uri).status_code == 403, uri
    events = [r.getMessage() for r in caplog.records if r.name == "secure_mw.audit"]
    assert any("forward_auth_refused" in e and "x-forwarded-host has several" in e
               for e in events)
    assert any("login portal" in e for e in events)


def test_spoofed_remote_headers_and_client_address_do_not_count(portal: str) -> None:
    spoof = {"remote-user": "alice", "remote-groups": "admins",
             "x-secure-mw-jwt-assertion": "forged"}
    assert traefik(portal, "/admin", headers=spoof).status_code == 401
    assert nginx(portal, "/admin", headers=spoof).status_code == 401
    answer = traefik(portal, "/public/x", headers=spoof)
    assert answer.status_code == 200 and answer.headers["remote-user"] == ""
    assert answer.headers["x-secure-mw-jwt-assertion"] == ""


def test_the_login_returns_only_to_allowed_sibling_hosts(portal: str) -> None:
    with browser() as client:
        for hostile in ("http://evil.test/", "//evil.test/", "http://app.test@evil.test/",
                        "javascript:alert(1)", "http://other.test/"):
            answer = client.get(f"{portal}/.auth/login", params={"rd": hostile})
            assert answer.status_code == 400, hostile
        done = sign_in(client, portal, "bob", "velvet harbor 22",
                       rd="http://other.test:8443/x?y=1")
        assert done.headers["location"] == "http://other.test:8443/x?y=1"


def test_serve_needs_trusted_proxies_and_an_external_url(tmp_path: Path) -> None:
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]}}, environ={})
    with pytest.raises(ConfigError) as caught:
        portal_app(settings)
    paths = {p.path for p in caught.value.problems}
    assert {"server.trusted_proxies", "server.external_url"} <= paths
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]}, "session": {"store": "cookie"},
        "regulation": {"paths": ["/login"]},
        "server": {"external_url": "https://auth.example.com",
                   "trusted_proxies": ["127.0.0.1/32"]}}, environ={})
    with pytest.raises(ConfigError) as caught:
        portal_app(settings)
    assert {p.path for p in caught.value.problems} == {"session.store", "regulation.paths"}


def test_forwarded_request_parsing() -> None:
    fwd = forwarded_request("forward-auth", {
        "x-forwarded-proto": "HTTPS", "x-forwarded-host": "App.Test:8443",
        "x-forwarded-uri": "/a,b?c=d", "x-forwarded-method": "POST"})
    assert (fwd.scheme, fwd.host, fwd.raw_path, fwd.query, fwd.method) == (
        "https", "app.test:8443", "/a,b", "c=d", "POST")
    orig = forwarded_request("auth-request", {"x-original-url": "https://app.test",
                                              "x-original-method": "GET"})
    assert orig.target == "/" and orig.url == "https://app.test/"
    for bad in ({"x-original-url": "https://u@app.test/", "x-original-method": "GET"},
                {"x-original-url": "ftp://app.test/", "x-original-method": "GET"},
                {"x-original-url": "https://app.test/\u00e9", "x-original-method": "GET"},
                {"x-original-url": "https://app.test/ x", "x-original-method": "GET"},
                {"x-original-url": "https://app.test/", "x-original-method": "get"}):
        with pytest.raises(NotForwardable):
            forwarded_request("auth-request", bad)


def test_remote_header_values_carry_no_control_characters() -> None:
    who = Identity(sub="eve\r\nRemote-User: admin", name="Ünïcode\n", email="e@x.test",
                   groups=["a,b", "c\x00d", " "])
    lines = dict(remote_headers(who))
    assert all(c >= " " and c < "\x7f" for v in lines.values() for c in v)
    assert unquote(lines["remote-user"]) == "eve\r\nRemote-User: admin"
    assert [unquote(g) for g in lines["remote-groups"].split(",")] == ["a,b", "c\x00d"]
    assert remote_headers(None) == [(n, "") for n in ("remote-user", "remote-groups",
                                                      "remote-email", "remote-name")]


def test_a_wildcard_host_list_never_opens_the_way_back() -> None:
    from secure_mw.guards.redirect import RedirectPolicy
    from secure_mw.oidc.core import return_target, sibling_hosts

    assert sibling_hosts(["*", "*.example.com", "a.example.com"]) == ["a.example.com"]
    policy = RedirectPolicy(sibling_hosts(["*", "*.example.com", "a.example.com"]),
                            require_https=True)
    assert return_target("https://a.example.com/x", policy) == "https://a.example.com/x"
    for hostile in ("http://a.example.com/x", "https://evil.test/", "https://example.com.evil/",
                    "https://b.example.com/", "https://a.example.com.evil.test/",
                    "https://a.example.com\\@evil.test/", "https:/\\evil.test"):
        assert return_target(hostile, policy) is None, hostile
    assert return_target("/local?x=1", None) == "/local?x=1"
    assert return_target("https://a.example.com/x", None) is None


def test_the_traefik_configuration_matches_the_endpoint(portal: str) -> None:
    """Traefik is not run here: its documented middleware is read, and the portal is asked
    what ForwardAuth asks (a GET with X-Forwarded-Method/Proto/Host/Uri/For)."""
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent / "integrations" / "traefik"
    dynamic = yaml.safe_load((root / "dynamic.yml").read_text(encoding="utf-8"))
    auth = dynamic["http"]["middlewares"]["secure-mw"]["forwardAuth"]
    assert auth["address"].endswith("/api/authz/forward-auth")
    assert auth["trustForwardHeader"] is False
    labels = yaml.safe_load((root / "docker-compose.labels.yml").read_text(encoding="utf-8"))
    label = labels["services"]["secure-mw"]["labels"]
    assert label["traefik.http.middlewares.secure-mw.forwardauth.authResponseHeaders"] == \
        ",".join(auth["authResponseHeaders"])
    with browser() as alice:
        sign_in(alice, portal, "alice", "quartz falcon 11")
        answer = traefik(portal, "/page", cookie=cookie_of(alice))
    assert answer.status_code == 200
    for name in auth["authResponseHeaders"]:
        assert answer.headers.get(name), name


def test_rate_limits_count_the_original_client_and_path(tmp_path: Path) -> None:
    """40 subrequests in parallel for one client address on a limited path: 5 allowed;
    another client, and another path, are not counted with them."""
    from concurrent.futures import ThreadPoolExecutor

    limits = {"rate_limits": {"rules": [{"key": "ip", "limit": "5/minute",
                                         "paths": ["^/public/limited$"]}]}}
    with running(tmp_path, limits) as portal:
        def ask(client_ip: str) -> int:
            return traefik(portal, "/public/limited",
                           headers={"x-forwarded-for": client_ip}).status_code

        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(ask, ["198.51.100.1"] * 40))
        assert statuses.count(200) == 5 and statuses.count(429) == 35
        assert ask("198.51.100.2") == 200
        assert traefik(portal, "/public/other",
                       headers={"x-forwarded-for": "198.51.100.1"}).status_code == 200
        # nginx only understands 401/403: the limit is a refusal there.
        assert nginx(portal, "/public/limited",
                     headers={"x-forwarded-for": "198.51.100.1"}).status_code == 403


def test_the_documented_configurations_are_the_tested_files(tmp_path: Path) -> None:
    """docs/forward-auth.md shows integrations/ verbatim, and its portal configuration
    builds the portal (with its files made here)."""
    import re

    import tomllib

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "forward-auth.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(\w+)\n(.*?)\n```", doc, re.DOTALL)
    shown = {text for _, text in blocks}
    for name in ("nginx/secure-mw-authz.conf", "nginx/secure-mw-protect.conf",
                 "nginx/site.conf", "caddy/Caddyfile", "traefik/dynamic.yml",
                 "traefik/docker-compose.labels.yml"):
        text = (root / "integrations" / name).read_text(encoding="utf-8").rstrip()
        assert text in shown, name
    toml = next(text for kind, text in blocks if kind == "toml")
    data = tomllib.loads(toml.replace("/etc/secure-mw/", f"{tmp_path}/"))
    (tmp_path / "encryption.keys").write_text(KEY + "\n", encoding="utf-8")
    (tmp_path / "encryption.keys").chmod(0o600)
    UsersFile(tmp_path / "users.toml", hasher=FAST).add("alice", password="quartz falcon 11")
    portal_app(Settings.from_mapping(data, environ={}), store=MemorySessionStore())


def test_a_two_factor_rule_sends_to_the_portal_s_second_step(portal: str) -> None:
    with browser() as alice:
        sign_in(alice, portal, "alice", "quartz falcon 11")
        cookie = cookie_of(alice)
    nav = traefik(portal, "/secure/x", cookie=cookie, headers=HTML)
    assert nav.status_code == 302
    assert nav.headers["location"] == (f"{portal}/.auth/2fa?rd="
                                       + quote(f"http://{APP}/secure/x", safe=""))
    api = traefik(portal, "/secure/x", cookie=cookie, headers={"accept": "application/json"})
    assert api.status_code == 401
    assert api.json() == {"error": "second_factor_required", "login_url": f"{portal}/.auth/2fa"}
    assert f'form-action="{portal}/.auth/2fa"' in api.headers["www-authenticate"]
    by_nginx = nginx(portal, "/secure/x", cookie=cookie, headers=HTML)
    assert by_nginx.status_code == 401 and by_nginx.headers["location"] == nav.headers["location"]


def test_an_api_client_s_bearer_token_is_decided_like_a_session(tmp_path: Path) -> None:
    """[bearer_tokens] through the portal: a good token gets 200 with the Remote-* headers,
    a forged one 401 with the RFC 6750 challenge (never the login), for both contracts."""
    from tests.bearer_tokens import AUDIENCE, ISSUER, Minter

    minter = Minter()
    jwks = tmp_path / "api-jwks.json"
    jwks.write_text(json.dumps(minter.jwks), encoding="utf-8")
    bearer = {"bearer_tokens": {"issuer": ISSUER, "audience": AUDIENCE,
                                "jwks_file": str(jwks), "algorithms": ["ES256"]}}
    good = minter.token()
    forged = Minter().token()
    with running(tmp_path, bearer) as base:
        for ask in (traefik, nginx):
            ok = ask(base, "/reports?q=1", headers={"authorization": f"Bearer {good}"})
            assert ok.status_code == 200, (ask.__name__, ok.text)
            assert ok.headers["remote-user"] == "alice"
            assert ok.headers["remote-groups"] == "staff"
            refused = ask(base, "/reports", headers={"authorization": f"Bearer {forged}",
                                                     **HTML})
            assert refused.status_code == 401, (ask.__name__, refused.text)
            assert "location" not in refused.headers
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
            assert "remote-user" not in refused.headers
            closed = ask(base, "/admin", headers={"authorization": f"Bearer {good}"})
            assert closed.status_code == 403      # alice's token carries no admins group


def test_the_portal_serves_metrics_to_whom_the_rules_allow(tmp_path: Path) -> None:
    """[metrics] enabled: the portal's /metrics, behind its own rules like any page."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    port = free_port()
    rules = [{"resources": ["^/metrics$"], "networks": ["127.0.0.1/32"], "policy": "bypass"},
             *RULES]
    settings, users = settings_for(tmp_path, port, {
        "metrics": {"enabled": True},
        "access_control": {"default_policy": "deny", "rules": rules}})
    app = portal_app(settings, users=users, store=MemorySessionStore(), registry=registry,
                     delay=LoginDelay(floor=0.01, seed=0.01, jitter=0.001))
    with uvicorn_server(app, port=port) as base:
        assert traefik(base, "/closed").status_code == 403
        # The same path of a service, for a client elsewhere: the bypass is not theirs.
        assert traefik(base, "/metrics", headers=HTML).status_code == 302
        shown = httpx.get(f"{base}/metrics")
        assert shown.status_code == 200, shown.text
        assert "secure_mw_decisions_total" in shown.text
        assert 'secure_mw_decisions_total{layer="authorization",outcome="deny"} 1.0' in shown.text


def test_serve_refuses_several_workers_on_the_memory_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from secure_mw.cli import SERVE_CONFIG_ENV, main

    monkeypatch.setenv(SERVE_CONFIG_ENV, "")      # serve sets it; restored afterwards

    settings_path = tmp_path / "portal.toml"
    users = tmp_path / "users.toml"
    UsersFile(users, hasher=FAST).add("alice", password="quartz falcon 11")
    settings_path.write_text(f"""
[keys]
encryption_keys = ["{KEY}"]
[local_users]
file = "{users}"
[server]
external_url = "https://auth.example.com"
trusted_proxies = ["127.0.0.1/32"]
""", encoding="utf-8")
    assert main(["serve", "--config", str(settings_path), "--workers", "2"]) == 2
    assert 'session.store = "sqlite"' in capsys.readouterr().err
