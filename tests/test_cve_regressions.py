"""The anchors' advisories as named regression tests: each attack of a published
vulnerability in a comparable project, run against secure_mw on real servers.

* oauth2-proxy CVE-2020-5233: open redirect through ``/\\evil``.
* oauth2-proxy GHSA-7rh7, GHSA-pxq7, GHSA-7x63: skip-auth rules bypassed by a query string,
  by ``#``, by a spoofed ``X-Forwarded-Uri``.
* Pomerium CVE-2023-33189: a path trick past authorization.
* A malformed cookie answered 200.
* Authlib: ``alg: none`` and an embedded ``jwk`` accepted.
* Login CSRF through an OAuth ``state`` not bound to the browser.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.errors import InvalidToken
from secure_mw.guards.redirect import is_safe_redirect
from secure_mw.tokens.jwks import KeySet
from secure_mw.tokens.jwt import JWTVerifier, sign
from secure_mw.tokens.keys import SigningKey
from tests.apps import browser, serve
from tests.idp import IdPServer, dev_login
from tests.test_oidc_e2e import APP_PORTS, idp, settings_for  # noqa: F401 - the fixture

KEY = KeyRing.new_key_text()
API = {"Accept": "application/json"}
RULES = {"default_policy": "deny", "rules": [
    {"resources": ["^/public(/|$)"], "policy": "bypass"},
    {"policy": "authenticated"},
]}


@pytest.fixture(params=["asgi", "wsgi"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def protected(flavour: str, **sections: Any) -> Iterator[str]:
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "access_control": RULES, **sections}, environ={})
    module: Any = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.protect(inner, settings)) as base:
        yield base


def raw_get(base: str, target: str, headers: str = "") -> int:
    """The status of ``GET target`` sent byte for byte (no client normalizes it)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json"
                     f"\r\n{headers}Connection: close\r\n\r\n".encode("latin-1"))
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0


# -- oauth2-proxy CVE-2020-5233 -------------------------------------------------------------


@pytest.mark.parametrize("target", ["/\\evil.example", "/\\/evil.example", "\\\\evil.example",
                                    "/\t/evil.example", "https:/\\evil.example",
                                    "//evil.example", "///evil.example"])
def test_cve_2020_5233_backslash_redirects_are_not_safe(target: str) -> None:
    assert not is_safe_redirect(target, ["app.example.com"])


def test_cve_2020_5233_a_login_to_a_backslash_target_is_refused(
        idp: IdPServer, flavour: str) -> None:  # noqa: F811 - the fixture
    settings = settings_for(idp)
    module: Any = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.protect(inner, settings),
               port=APP_PORTS[0]) as base, browser() as client:
        for target in ("/\\evil.example", "/\\/evil.example", "//evil.example"):
            start = client.get(base + "/.auth/login?rd=" + quote(target, safe=""))
            assert start.status_code == 400, target         # the redirect guard
            assert "location" not in start.headers
        fine = client.get(base + "/.auth/login?rd=/after")  # the control: a path is taken
        assert fine.status_code == 302 and fine.headers["location"].startswith(idp.issuer)


# -- oauth2-proxy GHSA-7rh7 / GHSA-pxq7 / GHSA-7x63: skip-auth rules ------------------------


@pytest.mark.parametrize("target", ["/secret?/public", "/secret?x=/public/",
                                    "/secret?public", "/secret;/public"])
def test_ghsa_7rh7_a_bypass_rule_is_not_reached_through_the_query(flavour: str,
                                                                   target: str) -> None:
    with protected(flavour) as base:
        assert httpx.get(base + "/public/x", headers=API).status_code == 200
        response = httpx.get(base + target, headers=API)
        assert response.status_code in (400, 401), (target, response.status_code)


def test_ghsa_pxq7_a_bypass_rule_is_not_reached_through_a_fragment(flavour: str) -> None:
    with protected(flavour) as base:
        for target in ("/secret#/public", "/secret%23/public", "/secret#/public/x"):
            assert raw_get(base, target) in (400, 401), target


@pytest.mark.parametrize("header", ["X-Forwarded-Uri", "X-Original-URL", "X-Rewrite-URL",
                                    "X-Forwarded-Path", "X-Original-URI"])
def test_ghsa_7x63_a_spoofed_forwarded_uri_is_ignored(flavour: str, header: str) -> None:
    with protected(flavour, server={"trusted_proxies": ["127.0.0.0/8"]}) as base:
        response = httpx.get(base + "/secret", headers={**API, header: "/public/"})
        assert response.status_code == 401


# -- Pomerium CVE-2023-33189: a path trick past authorization ------------------------------


@pytest.mark.parametrize("target", [
    "/public/../secret", "/public/%2e%2e/secret", "/public/%2E%2E/secret",
    "/public/..%2fsecret", "/public/..%2Fsecret", "/public%2f..%2fsecret",
    "/public/.%2e/secret", "/public/%c0%ae%c0%ae/secret", "/public/..;/secret",
    "/public/..\\secret", "/public/%5c../secret", "//public/../secret",
    "/public/./../secret", "/./public/../secret",
])
def test_cve_2023_33189_no_path_trick_reaches_a_protected_path(flavour: str,
                                                               target: str) -> None:
    with protected(flavour) as base:
        status = raw_get(base, target)
        assert status in (400, 401, 404), (target, status)


# -- a malformed cookie answered 200 --------------------------------------------------------


@pytest.mark.parametrize("cookie", [
    "__Host-secure_mw_session=garbage", "__Host-secure_mw_session=",
    "__Host-secure_mw_session=" + "A" * 5000, "__Host-secure_mw_session=%%%%",
    '__Host-secure_mw_session="unterminated', "__Host-secure_mw_session=a; "
    "__Host-secure_mw_session=b", "=; ;;=;", "__Host-secure_mw_session=\x7f\x01",
])
def test_a_malformed_session_cookie_is_never_200(flavour: str, cookie: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with protected(flavour) as base:
        status = raw_get(base, "/secret", headers=f"Cookie: {cookie}\r\n")
    assert status in (400, 401), (cookie, status)


# -- Authlib: alg none and an embedded jwk ------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_authlib_alg_none_and_an_embedded_jwk_are_refused() -> None:
    ours, theirs = SigningKey.generate("ES256"), SigningKey.generate("ES256")
    verifier = JWTVerifier(KeySet([ours.verifying_key()]), issuer="https://iss",
                           audience="app", clock=lambda: 1_000.0)
    claims = {"iss": "https://iss", "aud": "app", "sub": "admin", "iat": 990, "exp": 1_100}
    assert verifier.verify(sign(claims, ours))["sub"] == "admin"       # the control
    for alg in ("none", "None", "NONE", "nOnE", "HS256"):
        forged = f"{_b64({'alg': alg, 'typ': 'JWT', 'kid': ours.kid})}.{_b64(claims)}."
        with pytest.raises(InvalidToken):
            verifier.verify(forged)
    # Signed by the attacker's key, with that key embedded (and its kid, and ours).
    token = sign(claims, theirs)
    header, payload, signature = token.split(".")
    head = json.loads(base64.urlsafe_b64decode(header + "=="))
    for extra in ({"jwk": theirs.public_jwk()}, {"jwk": theirs.public_jwk(), "kid": ours.kid},
                  {"jku": "https://evil.example/jwks.json"}, {"x5u": "https://evil.example/"}):
        with pytest.raises(InvalidToken):
            verifier.verify(f"{_b64({**head, **extra})}.{payload}.{signature}")


# -- login CSRF: an OAuth state not bound to the browser ------------------------------------


def test_login_csrf_a_callback_carried_to_another_browser_is_refused(
        idp: IdPServer, flavour: str) -> None:  # noqa: F811 - the fixture
    settings = settings_for(idp)
    module: Any = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.protect(inner, settings),
               port=APP_PORTS[1]) as base, browser() as attacker, browser() as victim:
        start = attacker.get(base + "/.auth/login?rd=/")
        callback = dev_login(attacker, start.headers["location"], username="bob",
                             password="bob-pw")
        # The attacker sends the victim the callback of the attacker's own login.
        refused = victim.get(callback)
        assert refused.status_code == 400
        assert not any(c.name.startswith("__Host-secure_mw_session") and
                       not c.name.endswith("_login") for c in victim.cookies.jar)
        assert victim.get(base + "/secret", headers=API).status_code == 401
