"""The Host allow-list (``server.allowed_hosts``): real servers in both flavours, the
assertion's iss/aud under a hostile Host, forwarded hosts from trusted proxies, WebSocket
handshakes, entry validation, and the invalid-UTF-8 path check that rides on the same layer."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.errors import ConfigError
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.session import MemorySessionStore
from secure_mw.tokens import AssertionVerifier, generate_private_jwks
from tests.apps import FLAVOURS, asgi_inner, browser, uvicorn_server, wsgi_inner, wsgi_server
from tests.servers import NginxServer

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def users(tmp_path: Path) -> UsersFile:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="quartz falcon 11", email="alice@example.com", groups=["staff"])
    return users


def _settings(users: UsersFile, **server: Any) -> Settings:
    return Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()],
                 "signing_jwks": json.dumps(generate_private_jwks(("ES256",)))},
        "local_users": {"file": str(users.path)},
        "server": server,
    }, environ={})


def _audit(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records
            if r.name == "secure_mw.audit" and f'"event":"{event}"' in r.getMessage()]


def _sign_in(client: httpx.Client, base: str, host: str) -> None:
    headers = {"Host": host}
    form = client.get(base + "/.auth/login", headers=headers)
    assert form.status_code == 200, form.text
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert state
    done = client.post(base + "/.auth/login", headers=headers, data={
        "state": state.group(1), "username": "alice", "password": "quartz falcon 11"})
    assert done.status_code in (302, 303), done.text


async def echo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        return
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
    raw = scope.get("raw_path") or b""
    body = json.dumps({"assertion": headers.get("x-secure-mw-jwt-assertion"),
                       "host": headers.get("host"), "path": scope.get("path"),
                       "raw_path": raw.decode("latin-1")}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def echo_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    # PATH_INFO is latin-1 text of the path's bytes (PEP 3333): decoded the way Flask and
    # Django do, so both flavours' apps can be compared.
    path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
    body = json.dumps({"assertion": environ.get("HTTP_X_SECURE_MW_JWT_ASSERTION"),
                       "host": environ.get("HTTP_HOST"), "path": path}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _protected(flavour: str, settings: Settings, users: UsersFile) -> Any:
    module = asgi if flavour == "asgi" else wsgi
    inner = echo_asgi if flavour == "asgi" else echo_wsgi
    return module.protect(inner, settings, users=users, store=MemorySessionStore(),
                          delay=LoginDelay(floor=0.01, seed=0.01, jitter=0.001))


# -- issue: the assertion's iss and aud came from the Host header ----------------------------


def test_a_hostile_host_never_becomes_the_assertion_issuer(
        flavour: str, users: UsersFile, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="secure_mw.audit")
    settings = _settings(users, external_url="https://app.test")
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(_protected(flavour, settings, users)) as base, browser() as client:
        _sign_in(client, base, "app.test")
        jwks = client.get(base + "/.well-known/secure-mw/jwks.json",
                          headers={"Host": "app.test"}).json()
        good = client.get(base + "/x", headers={"Host": "app.test"})
        assert good.status_code == 200
        evil = client.get(base + "/x", headers={"Host": "evil.example",
                                                "Accept": "application/json"})
        assert evil.status_code == 400, evil.text
        assert evil.json().get("assertion") is None
        assert evil.json() == {"error": "host_not_allowed"}
        page = client.get(base + "/x", headers={"Host": "evil.example", "Accept": "text/html"})
        assert page.status_code == 400 and "text/html" in page.headers["content-type"]
    token = good.json()["assertion"]
    claims = AssertionVerifier(jwks=jwks, issuer="app.test", audience="app.test").verify(token)
    assert claims["iss"] == claims["aud"] == "app.test"
    events = _audit(caplog, "host_refused")
    assert len(events) == 2 and events[0]["host"] == "evil.example"


# -- issue: invalid UTF-8 in a path reached the app, differently in each flavour -------------


def _raw_get(base: str, target: bytes, host: bytes = b"127.0.0.1") -> tuple[int, bytes]:
    """One request with exactly ``target`` on the request line (no client normalizes it);
    the status and the body, de-chunked (uvicorn with httptools chunks an answer without a
    length)."""
    address, port = base.split("//", 1)[1].split(":")
    with socket.create_connection((address, int(port)), timeout=10) as conn:
        conn.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + host +
                     b"\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {name.strip().lower(): value.strip()
              for name, _, value in (line.partition(b":") for line in lines[1:])}
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = _dechunk(body)
    return int(lines[0].split(b" ", 2)[1]), body


def _dechunk(data: bytes) -> bytes:
    """The body of a chunked message (RFC 9112 section 7.1; extensions and trailers ignored)."""
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            return body
        body += data[:size]
        data = data[size + 2:]


INVALID_UTF8 = [
    pytest.param(b"/%c0%ae", id="overlong-dot"),
    pytest.param(b"/a/%c0%af/b", id="overlong-slash"),
    pytest.param(b"/a%80", id="lone-continuation"),
    pytest.param(b"/%ed%a0%80", id="surrogate"),
    pytest.param(b"/%ff%fe", id="not-utf8-at-all"),
    pytest.param(b"/%e2%82", id="truncated-sequence"),
]


@pytest.fixture
def open_app(flavour: str, users: UsersFile) -> Iterator[str]:
    """protect() with the defaults and no access rules; anonymous requests reach the app."""
    settings = _settings(users)
    module = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    inner = echo_asgi if flavour == "asgi" else echo_wsgi
    with server(module.protect(inner, settings, users=users, require_login=False)) as base:
        yield base


@pytest.mark.parametrize("target", INVALID_UTF8)
def test_a_path_that_is_not_utf8_gets_400_in_both_flavours(
        open_app: str, target: bytes, caplog: pytest.LogCaptureFixture) -> None:
    status, body = _raw_get(open_app, target)
    assert status == 400, body
    assert json.loads(body) == {"error": "bad_path"}
    events = _audit(caplog, "path_refused")
    assert len(events) == 1 and events[0]["reason"] == "path is not valid UTF-8"


@pytest.mark.parametrize(("target", "path"), [
    (b"/caf%c3%a9", "/café"), (b"/%e2%82%ac", "/€"), (b"/plain", "/plain"),
    (b"/%ef%bf%bd", "/\ufffd"),     # U+FFFD itself, correctly encoded, is just a character
])
def test_utf8_paths_reach_the_app_alike_in_both_flavours(
        open_app: str, target: bytes, path: str) -> None:
    status, body = _raw_get(open_app, target)
    assert status == 200, body
    assert json.loads(body)["path"] == path


# -- the allow-list itself ----------------------------------------------------------------------


def _policy(**server: Any) -> Any:
    from secure_mw.guards.hosts import HostPolicy

    return HostPolicy.from_settings(Settings.from_mapping({"server": server}, environ={}).server)


@pytest.mark.parametrize(("entries", "allowed", "refused"), [
    (["app.example.com"], ["app.example.com", "APP.example.com", "app.example.com:8443"],
     ["example.com", "evil.app.example.com", "app.example.com.", "app.example.com.evil"]),
    (["app.example.com:8443"], ["app.example.com:8443"],
     ["app.example.com", "app.example.com:443"]),
    (["*.example.org"], ["a.example.org", "a.b.example.org:8000"],
     ["example.org", "notexample.org", "a.example.org.evil"]),
    (["[::1]", "127.0.0.1:8000"], ["[::1]", "[::1]:9000", "[0:0::1]:1", "127.0.0.1:8000"],
     ["127.0.0.1", "127.0.0.1:8001", "::1"]),
    (["bücher.example"], ["xn--bcher-kva.example"], ["bucher.example"]),
    (["*"], ["anything.test", "a:1", "[::1]"], ["", "a@b", "a/b", "a b", "é.test"]),
])
def test_allow_list_entries_and_ports(entries: list[str], allowed: list[str],
                                      refused: list[str]) -> None:
    policy = _policy(allowed_hosts=entries)
    for host in allowed:
        assert policy.allows(host), host
    for host in refused:
        assert not policy.allows(host), host


@pytest.mark.parametrize("host", [
    "", "app.test@evil.example", "evil.example#app.test", "app.test:99999", "app.test:",
    "app.test:80:80", "[::1", "app.test\\evil", "app .test", "app.test\r\nx: y",
    "\u00e9vil.test", "%61pp.test", "0x7f.1", "2130706433", "a" * 400, "app.test/x",
])
def test_hostile_host_values_are_refused_without_raising(host: str) -> None:
    policy = _policy(allowed_hosts=["app.test", "127.0.0.1"])
    assert policy.allows(host) is False


def test_default_is_the_host_of_external_url() -> None:
    policy = _policy(external_url="https://App.Example.com:8443/base/")
    assert policy.allows("app.example.com") and policy.allows("app.example.com:8443")
    assert not policy.allows("127.0.0.1") and not policy.allows("evil.example")
    assert _policy(external_url="http://[::1]:8080/").allows("[::1]:8080")


def test_allowed_hosts_wins_over_external_url_host() -> None:
    policy = _policy(external_url="https://app.example.com", allowed_hosts=["internal.test"])
    assert policy.allows("internal.test") and not policy.allows("app.example.com")


def test_without_either_only_loopback_is_answered_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    from secure_mw.guards import hosts

    hosts._warned.clear()
    policy = _policy()
    assert policy.loopback_only
    for host in ("localhost", "localhost:8000", "127.0.0.1:5000", "[::1]:1"):
        assert policy.allows(host), host
    for host in ("127.0.0.2", "example.com", "0.0.0.0:8000", "localhost.evil.test"):
        assert not policy.allows(host), host
    settings = Settings.from_mapping({}, environ={})
    for _ in range(3):
        asgi.HostGuardMiddleware(asgi_inner(), settings=settings)
        wsgi.HostGuardMiddleware(wsgi_inner, settings=settings)
    warnings = [r.getMessage() for r in caplog.records if "server.allowed_hosts" in r.getMessage()]
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0]


@pytest.mark.parametrize(("entry", "reason"), [
    ("https://app.example.com", "not a URL"), ("user:pass@app.example.com", "user info"),
    ("app.example.com/path", "not a URL"), ("*.", "wildcard"), (".example.com", "*.example"),
    ("app.example.com:http", "port"), ("", "empty"), ("a*.example.com", "wildcard"),
])
def test_bad_entries_are_configuration_errors_naming_them(entry: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"server": {"allowed_hosts": ["ok.test", entry]}}, environ={})
    [problem] = info.value.problems
    assert problem.path == "server.allowed_hosts"
    assert repr(entry) in problem.message and reason in problem.message


@pytest.mark.parametrize("entry", ["*.com", "*.co.uk", "*.github.io", "*.рф",
                                   "*.s3.amazonaws.com:443", "*.COM"])
def test_a_wildcard_over_a_public_suffix_is_a_configuration_error(entry: str) -> None:
    """``*.com`` answers for every .com site: a ConfigError naming the entry, as a public
    suffix is for ``session.cookie_domain``."""
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"server": {"allowed_hosts": ["ok.test", entry]}}, environ={})
    [problem] = info.value.problems
    assert problem.path == "server.allowed_hosts"
    assert repr(entry) in problem.message and "is a public suffix" in problem.message
    with pytest.raises(ValueError, match="public suffix"):
        asgi.HostGuardMiddleware(asgi_inner(), allowed_hosts=[entry])


@pytest.mark.parametrize("entry", ["*.example.com", "*.example.co.uk", "*.me.github.io",
                                   "*.localhost", "*.internal", "*.corp", "com"])
def test_wildcards_under_a_registrable_or_private_name_are_accepted(entry: str) -> None:
    """A name someone registered, or a TLD nobody can register under (not on the list)."""
    server = Settings.from_mapping({"server": {"allowed_hosts": [entry]}}, environ={}).server
    assert server.allowed_hosts == [entry]


def test_check_config_summary_names_the_hosts_and_warns_for_a_star() -> None:
    star = Settings.from_mapping({"server": {"allowed_hosts": ["*"]}}, environ={}).summary()
    assert "allowed hosts   : * -- WARNING: any Host is answered" in star
    listed = Settings.from_mapping({"server": {"external_url": "https://app.example.com"}},
                                   environ={}).summary()
    assert "allowed hosts   : app.example.com (the host of server.external_url)" in listed
    assert "set server.allowed_hosts" in Settings.from_mapping({}, environ={}).summary()


def test_an_unlisted_host_gets_no_oidc_redirect_uri() -> None:
    from secure_mw.guards.hosts import public_base
    from secure_mw.http import RequestView

    settings = Settings.from_mapping({"server": {"allowed_hosts": ["app.test"]}}, environ={})
    view = RequestView("GET", "https", "evil.example", "/", "", {}, "203.0.113.9")
    assert public_base(settings.server, view) is None
    view.host = "app.test:8443"
    assert public_base(settings.server, view) == "https://app.test:8443"
    fixed = Settings.from_mapping({"server": {"external_url": "https://app.test/base"}},
                                  environ={})
    view.host = "evil.example"
    assert public_base(fixed.server, view) == "https://app.test/base"


# -- forwarded hosts and WebSocket handshakes on real servers --------------------------------


def _forwarding_app(flavour: str, users: UsersFile, proxies: list[str]) -> Any:
    settings = _settings(users, allowed_hosts=["app.test"], trusted_proxies=proxies)
    module = asgi if flavour == "asgi" else wsgi
    inner = echo_asgi if flavour == "asgi" else echo_wsgi
    return module.protect(inner, settings, users=users, require_login=False)


def test_a_forwarded_host_from_a_trusted_proxy_is_checked(
        flavour: str, users: UsersFile, caplog: pytest.LogCaptureFixture) -> None:
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(_forwarding_app(flavour, users, ["127.0.0.1/32"])) as base:
        fwd = {"X-Forwarded-For": "203.0.113.5", "Accept": "application/json"}
        ok = httpx.get(base + "/a", headers={**fwd, "Host": "app-internal:8000",
                                             "X-Forwarded-Host": "app.test"})
        assert ok.status_code == 200 and ok.json()["host"] == "app.test"
        evil = httpx.get(base + "/a", headers={**fwd, "Host": "app.test",
                                               "X-Forwarded-Host": "evil.example"})
        assert evil.status_code == 400 and evil.json() == {"error": "host_not_allowed"}
        internal = httpx.get(base + "/a", headers={**fwd, "Host": "app-internal:8000"})
        assert internal.status_code == 400
    [event, other] = _audit(caplog, "host_refused")
    assert event["host"] == "evil.example" and other["host"] == "app-internal:8000"


def test_a_forwarded_host_from_anyone_else_is_ignored(flavour: str, users: UsersFile) -> None:
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(_forwarding_app(flavour, users, [])) as base:
        sent = httpx.get(base + "/a", headers={"Host": "app.test", "Accept": "application/json",
                                               "X-Forwarded-Host": "evil.example"})
        assert sent.status_code == 200 and sent.json()["host"] == "app.test"
        refused = httpx.get(base + "/a", headers={"Host": "evil.example",
                                                  "X-Forwarded-Host": "app.test"})
        assert refused.status_code == 400


# -- the guard alone behind a proxy: what it judged is what the app sees ----------------------


async def _who_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    hosts = [v.decode("latin-1") for n, v in scope["headers"] if n == b"host"]
    body = json.dumps({"host": hosts, "client": (scope.get("client") or [""])[0]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _who_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = json.dumps({"host": [environ.get("HTTP_HOST")], "client": environ["REMOTE_ADDR"],
                       "peer": environ.get("secure_mw.peer")}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def _alone(flavour: str, middleware: str, **options: Any) -> Any:
    module = asgi if flavour == "asgi" else wsgi
    inner = _who_asgi if flavour == "asgi" else _who_wsgi
    return getattr(module, middleware)(inner, **options)


def test_the_host_guard_alone_passes_on_the_host_it_checked(flavour: str) -> None:
    """HostGuardMiddleware without ClientAddressMiddleware, behind a trusted proxy that
    passes the client's Host on and sets X-Forwarded-Host itself: the forwarded host is
    checked, and the app sees it in Host — never the client's unchecked one."""
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = _alone(flavour, "HostGuardMiddleware", allowed_hosts=["app.example.com"],
                 trusted_proxies=["127.0.0.1/32"])
    fwd = {"X-Forwarded-For": "203.0.113.9"}
    with server(app) as base:
        forwarded = httpx.get(base + "/x", headers={**fwd, "Host": "evil.example",
                                                    "X-Forwarded-Host": "app.example.com"})
        plain = httpx.get(base + "/x", headers={"Host": "app.example.com"})
        refused = httpx.get(base + "/x", headers={**fwd, "Host": "app.example.com",
                                                  "X-Forwarded-Host": "evil.example"})
    assert forwarded.status_code == 200 and forwarded.json()["host"] == ["app.example.com"]
    if flavour == "wsgi":                  # the original kept, as ClientAddressMiddleware does
        assert forwarded.json()["peer"][2] == "evil.example"
    assert plain.status_code == 200 and plain.json()["host"] == ["app.example.com"]
    assert refused.status_code == 400


def test_the_host_guard_alone_behind_nginx(flavour: str, tmp_path: Path) -> None:
    """nginx with ``proxy_set_header Host $http_host`` (the client's Host) and
    ``X-Forwarded-Host $server_name``: a request for evil.example reaches the app as a
    request for the host nginx serves."""
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = _alone(flavour, "HostGuardMiddleware", allowed_hosts=["app.example.com"],
                 trusted_proxies=["127.0.0.1/32"])
    with server(app) as base, NginxServer(base, tmp_path / "nginx", server_name=(
            "app.example.com"), headers={
            "Host": "$http_host", "X-Forwarded-Host": "$server_name",
            "X-Forwarded-For": "$proxy_add_x_forwarded_for"}) as nginx:
        answer = httpx.get(nginx.url + "/x", headers={"Host": "evil.example"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["host"] == ["app.example.com"]


def test_a_clients_own_forwarded_header_is_ignored_behind_nginx_by_default(
        flavour: str, tmp_path: Path) -> None:
    """The standalone middlewares read what ``server.forwarded_header`` reads by default,
    X-Forwarded-For: nginx sets that one and passes a client's ``Forwarded`` through as is,
    so reading ``Forwarded`` when present (``"auto"``) let a client choose its address."""
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = _alone(flavour, "ClientAddressMiddleware", trusted_proxies=["127.0.0.1/32"])
    with server(app) as base, NginxServer(base, tmp_path / "nginx", headers={
            "X-Forwarded-For": "$proxy_add_x_forwarded_for"}) as nginx:
        answer = httpx.get(nginx.url + "/x", headers={
            "Forwarded": "for=198.51.100.66;host=evil.example"})
    assert answer.status_code == 200
    assert answer.json()["client"] == "127.0.0.1"
    assert Settings.from_mapping({}, environ={}).server.forwarded_header == "x-forwarded-for"


def test_a_websocket_handshake_for_an_unlisted_host_is_refused(users: UsersFile) -> None:
    import websockets.exceptions
    from websockets.sync.client import connect

    with uvicorn_server(_forwarding_app("asgi", users, [])) as base:
        port = int(base.rsplit(":", 1)[1])

        def handshake(host: str) -> None:      # the URL's host is what goes in Host
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            with connect(f"ws://{host}:{port}/ws", sock=sock):
                pass

        handshake("app.test")                  # accepted (the echo app accepts and closes)
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            handshake("evil.example")
    assert refused.value.response.status_code == 403


def test_a_long_hostile_host_is_logged_cut_and_escaped(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    from secure_mw.guards.hosts import HostGuardLayer, HostPolicy
    from secure_mw.http import RequestView

    layer = HostGuardLayer(HostPolicy(["app.test"]))
    host = "evil\x1b[31m" + "x" * 500
    reply = layer.check(RequestView("GET", "https", host, "/", "", {}, "203.0.113.9"), b"/",
                        encoded=True)
    assert reply is not None and reply.status == 400
    [event] = _audit(caplog, "host_refused")
    assert len(event["host"]) <= 110 and "\x1b" not in event["host"]


@pytest.mark.parametrize("target", [b"/%c0%ae", b"/%ed%a0%80", b"/a%80"])
def test_a_path_that_is_not_utf8_gets_400_under_gunicorn(tmp_path: Path, target: bytes) -> None:
    """gunicorn hands WSGI apps the raw bytes ("/\\xc0\\xae"), where uvicorn gives U+FFFD."""
    pytest.importorskip("gunicorn")
    import os
    import sys

    from tests.servers import ServerProcess, free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["SECURE_MW_ACCESS_CONTROL__RULES"] = json.dumps([{"resources": ["^/"],
                                                           "policy": "bypass"}])
    with ServerProcess([sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}",
                        "tests.e2e_app:wsgi_app()"], port=port, env=env,
                       log=tmp_path / "gunicorn.log") as server:
        status, body = _raw_get(server.url, target)
        assert status == 400 and json.loads(body) == {"error": "bad_path"}
        status, body = _raw_get(server.url, b"/caf%c3%a9")
        assert status == 200 and json.loads(body)["path"] == "/caf\u00c3\u00a9"  # PEP 3333
