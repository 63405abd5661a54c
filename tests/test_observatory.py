"""The MDN HTTP Observatory grades a page served through secure_mw over TLS: A+.

A real uvicorn serves a small HTML page over https on a loopback port, with a certificate
from a throw-away CA made here; the scanner (``integrations/observatory``, run by
tests/observatory.py) trusts that CA through ``NODE_EXTRA_CA_CERTS``. The page runs an
inline script allowed by the CSP nonce and sets a ``__Host-`` cookie with ``Secure``,
``HttpOnly`` and ``SameSite=Lax``, so the scanner's cookie test has something to grade.

What a loopback scan cannot show: the scanner sends its plain-http request to the same
port as https (the CLI takes no second port), which a TLS-only server refuses, so the
redirection test reads ``redirection-not-needed-no-http`` rather than ``redirection-to-https``.
Both pass with a score modifier of 0, so the grade is the one a real host would get.
"""

from __future__ import annotations

import html
import secrets
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from secure_mw import Settings
from secure_mw.asgi import SecurityHeadersMiddleware, protect
from secure_mw.crypto import KeyRing
from tests.observatory import describe, ensure_observatory_packages, observatory_scan
from tests.pki import Pki, make_pki
from tests.servers import find_program, free_port, wait_for_port

pytestmark = pytest.mark.external("node")

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>secure_mw sample page</title></head>
<body>
<h1>A page protected by secure_mw</h1>
<p id="status">Scripts did not run.</p>
<script nonce="{nonce}">document.getElementById("status").textContent = "Scripts ran.";</script>
</body>
</html>
"""
COOKIE = "__Host-sample_session"
# Results that pass without an http redirect to https: TLS-only loopback ports give the first.
NO_HTTP_REDIRECTION = {"redirection-not-needed-no-http", "redirection-to-https"}


@pytest.fixture(scope="module", autouse=True)
def _scanner() -> None:
    """node and the scanner's packages, before any server starts (skip or fail early)."""
    find_program("node")
    ensure_observatory_packages()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away self-signed CA and a server certificate it issued for 127.0.0.1."""
    return make_pki(tmp_path_factory.mktemp("observatory-tls"),
                    name="secure_mw observatory CA")


# -- the sample app ---------------------------------------------------------------------------


async def _page(request: Request) -> HTMLResponse:
    nonce = request.scope.get("secure_mw.csp_nonce") or ""
    response = HTMLResponse(PAGE.replace("{nonce}", html.escape(nonce, quote=True)))
    response.set_cookie(COOKIE, secrets.token_urlsafe(32), path="/", secure=True,
                        httponly=True, samesite="lax")
    return response


def page_app() -> Starlette:
    return Starlette(routes=[Route("/", _page)])


@contextmanager
def tls_server(app: Any, pki: Pki) -> Iterator[int]:
    """uvicorn serving ``app`` over https on a free loopback port; yields the port."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", proxy_headers=False,
                            ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def grade(app: Any, pki: Pki) -> dict[str, Any]:
    """Serve ``app`` over https and have the Observatory scan it; prints the outcome."""
    with tls_server(app, pki) as port:
        # Our own look first: the page is what we meant, over TLS verified by our CA.
        context = ssl.create_default_context(cafile=str(pki.ca))
        page = httpx.get(f"https://127.0.0.1:{port}/", verify=context, timeout=10)
        assert page.status_code == 200, page.text
        assert COOKIE in page.headers.get("set-cookie", "")
        result = observatory_scan(f"127.0.0.1:{port}", ca_file=pki.ca)
    print(describe(result))
    return result


def assert_a_plus(result: dict[str, Any]) -> None:
    summary = describe(result)
    tests = result["tests"]
    # A certificate the scanner did not trust would show here first (it retries unverified).
    assert tests["strict-transport-security"]["result"] != "hsts-invalid-cert", summary
    assert tests["redirection"]["result"] in NO_HTTP_REDIRECTION, summary
    assert tests["cookies"]["data"] and COOKIE in tests["cookies"]["data"], summary
    failed = [name for name, test in tests.items() if not test["pass"]]
    assert failed == [], summary
    assert result["scan"]["grade"] == "A+", summary


# -- the grades -------------------------------------------------------------------------------


def test_the_security_headers_earn_an_a_plus(pki: Pki) -> None:
    """SecurityHeadersMiddleware alone, default ``page`` preset."""
    result = grade(SecurityHeadersMiddleware(page_app()), pki)
    assert_a_plus(result)
    tests = result["tests"]
    assert tests["content-security-policy"]["result"] == "csp-implemented-with-no-unsafe"
    assert tests["cookies"]["result"] == "cookies-secure-with-httponly-sessions-and-samesite"


def test_a_public_page_behind_protect_earns_an_a_plus(pki: Pki) -> None:
    """The whole ``protect()`` stack (headers, client address, open-redirect guard, login
    session) in front of a page anonymous visitors may see. The provider is never contacted
    for an anonymous request, so an unreachable issuer will do."""
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "oidc": {"issuer": f"http://127.0.0.1:{free_port()}", "client_id": "app",
                 "client_secret": "observatory-client-secret-for-tests-only"},
    }, environ={})
    result = grade(protect(page_app(), settings, require_login=False), pki)
    assert_a_plus(result)


def test_the_same_page_without_secure_mw_fails(pki: Pki) -> None:
    """The control: the grade measures what secure_mw adds, not what the page does alone."""
    result = grade(page_app(), pki)
    summary = describe(result)
    failed = {name for name, test in result["tests"].items() if not test["pass"]}
    assert {"content-security-policy", "strict-transport-security", "x-content-type-options",
            "x-frame-options"} <= failed, summary
    assert result["tests"]["cookies"]["pass"], summary   # the page's own cookie is fine
    assert result["scan"]["grade"] not in ("A+", "A", "A-"), summary
