"""Bearer tokens from the real OpenID provider of integrations/idp (oidc-provider with
resource indicators and the client_credentials grant), on real servers, both flavours: JWT
access tokens (RFC 9068) against its JWKS, opaque ones through its introspection endpoint
(RFC 7662), revocation seen once the cached answer ends, and the provider gone: 503."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.session import MemorySessionStore
from tests.apps import FLAVOURS, serve
from tests.clock import Clock
from tests.idp import IdPServer

API = "https://api.example"
OPAQUE_API = "https://opaque-api.example"
OTHER_API = "https://other-api.example"
MACHINE = {"grant_types": ["client_credentials"], "response_types": [], "redirect_uris": []}
CLIENTS = [{"client_id": "svc", "client_secret": "svc-secret", **MACHINE},
           {"client_id": "api", "client_secret": "api-secret", **MACHINE}]
RESOURCES = {API: {"scope": "api:read api:write", "format": "jwt"},
             OPAQUE_API: {"scope": "api:read api:write", "format": "opaque"},
             OTHER_API: {"scope": "api:read", "format": "jwt"}}


@pytest.fixture(scope="module")
def idp() -> Iterator[IdPServer]:
    with IdPServer(clients=CLIENTS, users=[{"sub": "nobody", "password": "unused pass 1"}],
                   resource_servers=RESOURCES) as server:
        yield server


def settings_for(idp: IdPServer) -> Settings:
    return Settings.from_mapping({"bearer_tokens": {
        "issuer": idp.issuer, "audience": [API, OPAQUE_API],
        "jwks_url": idp.url("/jwks"), "algorithms": ["ES256"],
        "required_scopes": ["api:read"],
        "introspection_url": idp.url("/token/introspection"),
        "client_id": "api", "client_secret": "api-secret"}}, environ={})


@pytest.fixture(scope="module", params=FLAVOURS)
def site(request: pytest.FixtureRequest, idp: IdPServer) -> Iterator[tuple[str, Clock]]:
    clock = Clock()
    module = asgi if request.param == "asgi" else wsgi
    with serve(str(request.param), lambda inner: module.protect(
            inner, settings_for(idp), store=MemorySessionStore(), clock=clock)) as url:
        yield url, clock


def token_for(idp: IdPServer, resource: str, scope: str = "api:read") -> str:
    answer = httpx.post(idp.url("/token"), auth=("svc", "svc-secret"), data={
        "grant_type": "client_credentials", "scope": scope, "resource": resource})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


def get(base: str, token: str) -> httpx.Response:
    return httpx.get(base + "/api/items", headers={"Authorization": f"Bearer {token}",
                                                   "Accept": "application/json"})


def test_jwt_access_tokens_of_the_provider(idp: IdPServer, site: tuple[str, Clock],
                                           caplog: pytest.LogCaptureFixture) -> None:
    base, _ = site
    token = token_for(idp, API)
    assert token.count(".") == 2
    answer = get(base, token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["sub"] == "svc" and answer.json()["source"] == "bearer"
    caplog.set_level(logging.WARNING, logger="secure_mw.audit")
    assert get(base, token_for(idp, OTHER_API)).status_code == 401      # another API's
    scant = get(base, token_for(idp, API, scope="api:write"))
    assert scant.status_code == 403 and scant.json() == {"error": "insufficient_scope"}
    head, payload, _ = token.split(".")
    other_signature = token_for(idp, API).split(".")[2]   # the provider's, for another token
    assert get(base, f"{head}.{payload}.{other_signature}").status_code == 401
    reasons = [json.loads(r.getMessage())["reason"] for r in caplog.records
               if r.name == "secure_mw.audit" and '"invalid_token"' in r.getMessage()]
    assert reasons == ["audience mismatch", "invalid signature"]


def test_opaque_tokens_are_introspected_and_revocation_is_seen(
        idp: IdPServer, site: tuple[str, Clock]) -> None:
    base, clock = site
    token = token_for(idp, OPAQUE_API)
    assert "." not in token
    answer = get(base, token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["sub"] == "svc"
    revoked = httpx.post(idp.url("/token/revocation"), auth=("svc", "svc-secret"),
                         data={"token": token, "token_type_hint": "access_token"})
    assert revoked.status_code == 200
    assert get(base, token).status_code == 200       # the cached answer (cache_ttl 60 s)
    clock.advance(61)
    assert get(base, token).status_code == 401       # asked again: no longer active
    assert get(base, "not-a-token-the-provider-issued").status_code == 401


def test_the_provider_unreachable_is_503_not_401(flavour_idp: tuple[str, IdPServer],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    base, idp = flavour_idp
    caplog.set_level(logging.WARNING, logger="secure_mw.audit")
    token = token_for(idp, OPAQUE_API)
    jwt = token_for(idp, API)
    idp.stop()
    for sent in (token, jwt):     # introspection, and the JWKS never fetched yet
        answer = get(base, sent)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert answer.json() == {"error": "temporarily_unavailable"}
    events = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "secure_mw.audit" and '"store_unavailable"' in r.getMessage()]
    assert len(events) == 2 and token not in caplog.text


@pytest.fixture(params=FLAVOURS)
def flavour_idp(request: pytest.FixtureRequest) -> Iterator[tuple[str, IdPServer]]:
    """A provider of its own (the test stops it) and the protected app."""
    with IdPServer(clients=CLIENTS, users=[{"sub": "nobody", "password": "unused pass 1"}],
                   resource_servers=RESOURCES) as server:
        module: Any = asgi if request.param == "asgi" else wsgi
        with serve(str(request.param), lambda inner: module.protect(
                inner, settings_for(server), store=MemorySessionStore())) as url:
            yield url, server
