"""secure_mw.testing: an in-process test client gets through the Host allow-list with
:func:`allow_test_host`, and :func:`session_cookie` logs a user in for it."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.test import Client

from secure_mw import Settings, asgi, wsgi
from secure_mw.testing import TEST_CLIENT_HOST, allow_test_host, session_cookie
from tests.apps import wsgi_inner

# Starlette 1.10's TestClient asks for httpx2; httpx is what this environment has.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
OPEN = {"access_control": {"rules": [{"resources": ["^/open"], "policy": "bypass"},
                                     {"resources": ["^/"], "policy": "authenticated"}]}}


async def _home(request: Request) -> JSONResponse:
    identity = request.scope.get("secure_mw.identity")
    return JSONResponse({"sub": identity.sub if identity else None})


def _client(settings: Settings) -> TestClient:
    app = Starlette(routes=[Route("/{path:path}", _home)])
    return TestClient(asgi.protect(app, settings))


def test_starlettes_test_client_is_refused_by_the_default_allow_list() -> None:
    settings = Settings.from_mapping(OPEN, environ={})
    with _client(settings) as client:
        answer = client.get("/open", headers={"Accept": "application/json"})
    assert answer.status_code == 400 and answer.json() == {"error": "host_not_allowed"}


def test_allow_test_host_lets_the_test_client_in_and_keeps_the_defaults() -> None:
    settings = allow_test_host(Settings.from_mapping(OPEN, environ={}))
    assert settings.server.allowed_hosts == ["localhost", "127.0.0.1", "[::1]", "testserver"]
    cookie = session_cookie(settings, {"sub": "alice"})
    with _client(settings) as client:
        assert client.get("/open").status_code == 200
        assert client.get("/x", headers={"Cookie": cookie}).json() == {"sub": "alice"}
        assert client.get("/open", headers={"Host": "evil.example"}).status_code == 400
    # werkzeug's test client (Flask's too) sends Host: localhost, still allowed.
    answer = Client(wsgi.protect(wsgi_inner, settings)).get("/open")
    assert answer.status_code == 200


def test_allow_test_host_keeps_listed_hosts_and_external_url() -> None:
    listed = Settings.from_mapping({"server": {"allowed_hosts": ["app.test"]}}, environ={})
    assert allow_test_host(listed).server.allowed_hosts == ["app.test", TEST_CLIENT_HOST]
    public = Settings.from_mapping({"server": {"external_url": "https://app.test"}},
                                   environ={})
    assert allow_test_host(public).server.allowed_hosts == ["app.test", TEST_CLIENT_HOST]
    everything = Settings.from_mapping({"server": {"allowed_hosts": ["*"]}}, environ={})
    assert allow_test_host(everything) is everything
    with pytest.raises(ValueError, match="not a URL"):
        allow_test_host(listed, "http://testserver")
