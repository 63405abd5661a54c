"""Signed identity headers end to end on real servers, both flavours: one secure_mw (the
front, with the built-in login) issues an assertion to its app and publishes its keys; a
second app behind it verifies the assertion with SignedHeaderMiddleware."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.guards.timing import LoginDelay
from secure_mw.identity import Identity
from secure_mw.login import UsersFile
from secure_mw.session import MemorySessionStore
from secure_mw.tokens import AssertionAuth, AssertionVerifier, generate_private_jwks
from tests.apps import FLAVOURS, browser, uvicorn_server, wsgi_server

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


def echo_asgi() -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Callable[..., Any],
                  send: Callable[..., Any]) -> None:
        headers = {k.decode(): v.decode() for k, v in scope.get("headers", ())}
        identity = scope.get("secure_mw.identity")
        body = json.dumps({"assertion": headers.get("x-secure-mw-jwt-assertion"),
                           "sub": identity.sub if identity else None,
                           "source": identity.source if identity else None}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
    return app


def echo_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    identity = environ.get("secure_mw.identity")
    body = json.dumps({"assertion": environ.get("HTTP_X_SECURE_MW_JWT_ASSERTION"),
                       "sub": identity.sub if identity else None,
                       "source": identity.source if identity else None}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_issue_then_verify_behind_it(flavour: str, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="quartz falcon 11", email="alice@example.com", groups=["staff"])
    front = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()],
                 "signing_jwks": json.dumps(generate_private_jwks(("ES256",)))},
        "local_users": {"file": str(users.path)},
    }, environ={})
    module = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    inner = echo_asgi() if flavour == "asgi" else echo_wsgi
    app = module.protect(inner, front, users=users, store=MemorySessionStore(),
                         delay=LoginDelay(floor=0.01, seed=0.01, jitter=0.001))
    with server(app) as base, browser() as client:
        host = base.split("//", 1)[1].split(":", 1)[0]
        jwks = client.get(base + "/.well-known/secure-mw/jwks.json")
        assert jwks.status_code == 200 and jwks.headers["cache-control"].startswith("public")
        again = client.get(base + "/.well-known/secure-mw/jwks.json",
                           headers={"If-None-Match": jwks.headers["etag"]})
        assert again.status_code == 304
        form = client.get(base + "/.auth/login")
        state = re.search(r'name="state" value="([^"]+)"', form.text)
        assert state
        client.post(base + "/.auth/login", data={"state": state.group(1), "username": "alice",
                                                 "password": "quartz falcon 11"})
        forged = client.get(base + "/x", headers={"X-Secure-MW-Jwt-Assertion": "forged"})
        token = forged.json()["assertion"]
        assert token and token != "forged"                  # the client's copy was dropped
        assert client.get(base + "/y").json()["assertion"] == token    # reused, not re-signed
        claims = AssertionVerifier(jwks=jwks.json(), issuer=host, audience=host).verify(token)
        assert claims["sub"] == "alice" and claims["groups"] == ["staff"]
        assert claims["email"] == "alice@example.com" and claims["exp"] - claims["iat"] == 300
        # A second app behind this one verifies the assertion against the published keys.
        behind = Settings.from_mapping({"signed_headers": {"verify": {
            "header": "X-Secure-MW-Jwt-Assertion",
            "jwks_url": base + "/.well-known/secure-mw/jwks.json", "issuer": host}}},
            environ={})
        inner2 = echo_asgi() if flavour == "asgi" else echo_wsgi
        second = module.SignedHeaderMiddleware(inner2, settings=behind)
        with server(second) as base2:
            ok = httpx.get(base2 + "/z", headers={"X-Secure-MW-Jwt-Assertion": token})
            assert ok.status_code == 200
            assert ok.json()["sub"] == "alice" and ok.json()["source"] == "assertion"
            assert httpx.get(base2 + "/z").status_code == 401
            tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
            bad = httpx.get(base2 + "/z", headers={"X-Secure-MW-Jwt-Assertion": tampered})
            assert bad.status_code == 401
            assert bad.headers["www-authenticate"].startswith("Bearer")
    events = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "secure_mw.audit" and '"invalid_token"' in r.getMessage()]
    assert len(events) == 2 and token not in json.dumps(events)


def test_assertion_auth_forwards_the_current_assertion() -> None:
    from secure_mw.tokens.headers import current_assertion

    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-secure-mw-jwt-assertion"))
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(handler), auth=AssertionAuth()) as c:
        c.get("https://api.internal/")
        token = current_assertion.set("abc.def.ghi")
        try:
            c.get("https://api.internal/")
        finally:
            current_assertion.reset(token)
    assert seen == [None, "abc.def.ghi"]


@pytest.mark.parametrize("host", [":80", "[", ""])
def test_a_hostile_host_header_is_never_a_500(host: str) -> None:
    from secure_mw.http import RequestView
    from secure_mw.identity import Identity
    from secure_mw.tokens.headers import IssueLayer, VerifyLayer
    from secure_mw.tokens.keys import public_jwks

    private = generate_private_jwks(("ES256",))
    settings = Settings.from_mapping({"keys": {"signing_jwks": json.dumps(private)}},
                                     environ={})
    view = RequestView("GET", "https", host, "/", "", {}, "203.0.113.9")
    assert IssueLayer(settings).assertion(view, Identity(sub="alice")) is None
    from secure_mw.tokens import KeySet

    behind = Settings.from_mapping({"signed_headers": {"verify": {
        "jwks_url": "https://proxy.example/jwks.json", "issuer": "proxy"}}}, environ={})
    layer = VerifyLayer(behind, keys=KeySet.from_dict(public_jwks(private)))
    hostile = RequestView("GET", "https", host, "/", "",
                          {"x-pomerium-jwt-assertion": "a.b.c"}, "203.0.113.9")
    identity, reply = layer.identity(hostile)
    assert identity is None and reply is not None and reply.status == 401


@pytest.mark.parametrize("assume", [False, True])
def test_the_assertion_carries_the_email_and_its_verified_flag(assume: bool) -> None:
    from secure_mw.http import RequestView
    from secure_mw.identity import Identity
    from secure_mw.tokens import AssertionSigner, KeySet
    from secure_mw.tokens.headers import IssueLayer, VerifyLayer
    from secure_mw.tokens.keys import public_jwks

    private = generate_private_jwks(("ES256",))
    front = Settings.from_mapping({"keys": {"signing_jwks": json.dumps(private)},
                                   "server": {"external_url": "https://app.test"}}, environ={})
    view = RequestView("GET", "https", "app.test", "/", "", {}, "203.0.113.9")
    issue = IssueLayer(front)
    behind = Settings.from_mapping({"server": {"external_url": "https://app.test"},
                                    "signed_headers": {"verify": {
        "jwks_url": "https://proxy.example/jwks.json", "issuer": "app.test",
        "assume_email_verified": assume}}}, environ={})
    verify = VerifyLayer(behind, keys=KeySet.from_dict(public_jwks(private)))
    for verified in (True, False):
        token = issue.assertion(view, Identity(sub="a", email="a@x.test",
                                               email_verified=verified))
        assert token is not None
        claims = AssertionVerifier(jwks=KeySet.from_dict(public_jwks(private)),
                                   issuer="app.test", audience="app.test").verify(token)
        assert (claims["email"], claims["email_verified"]) == ("a@x.test", verified)
        seen, _ = verify.identity(RequestView("GET", "https", "app.test", "/", "",
                                              {"x-pomerium-jwt-assertion": token}, "::1"))
        assert seen is not None and seen.email_verified is verified   # the claim counts
    # Pomerium's assertions have no email_verified: only the setting makes it verified
    pomerium = AssertionSigner(jwks=private).sign({"sub": "p", "email": "p@x.test"},
                                                 audience="app.test", issuer="app.test")
    seen, _ = verify.identity(RequestView("GET", "https", "app.test", "/", "",
                                          {"x-pomerium-jwt-assertion": pomerium}, "::1"))
    assert seen is not None and seen.email == "p@x.test" and seen.email_verified is assume


# -- the signing key without keys.signing_jwks ------------------------------------------------


def test_without_signing_jwks_every_process_derives_the_same_keys(
        caplog: pytest.LogCaptureFixture) -> None:
    import os
    import subprocess
    import sys

    from secure_mw.tokens.headers import IssueLayer

    old, new = KeyRing.new_key_text(), KeyRing.new_key_text()
    settings = Settings.from_mapping({"keys": {"encryption_keys": [new, old]}}, environ={})
    reply = IssueLayer(settings).jwks_reply(_jwks_view())
    assert reply is not None and reply.status == 200
    here = json.loads(reply.body)
    script = ("import json, sys; from secure_mw import Settings; "
              "from secure_mw.tokens.headers import IssueLayer; "
              "print(IssueLayer(Settings.from_environment()).signer.jwks_document()[0]"
              ".decode())")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")},
           "SECURE_MW_KEYS__ENCRYPTION_KEYS": f"{new},{old}"}
    there = json.loads(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                      capture_output=True, text=True).stdout)
    assert here == there and len(here["keys"]) == 2
    assert "made at start-up" not in caplog.text
    # Rotation: what the old ring signed verifies against the new ring's published keys.
    before = IssueLayer(Settings.from_mapping({"keys": {"encryption_keys": [old]}},
                                              environ={}))
    view = _jwks_view()
    view.host = "127.0.0.1"
    token = before.assertion(view, Identity(sub="alice"))
    assert token is not None
    claims = AssertionVerifier(jwks=here, issuer="127.0.0.1",
                               audience="127.0.0.1").verify(token)
    assert claims["sub"] == "alice"


def test_a_passphrase_or_a_given_key_ring_derives_too(tmp_path: Path) -> None:
    from secure_mw.tokens.headers import IssueLayer, derived_signing_jwks
    from secure_mw.tokens.keys import public_jwks

    settings = Settings.from_mapping({"keys": {
        "encryption_passphrase": "correct horse battery staple",
        "encryption_salt_file": str(tmp_path / "salt")}}, environ={})
    ring = KeyRing.from_settings(settings.keys)
    assert IssueLayer(settings).signer.public_jwks() == public_jwks(derived_signing_jwks(ring))
    given = KeyRing.generate()
    assert IssueLayer(Settings.from_mapping({}, environ={}), keyring=given).signer \
        .public_jwks() == public_jwks(derived_signing_jwks(given))


def test_with_no_key_at_all_a_key_is_made_at_start_up(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    from secure_mw.tokens.headers import IssueLayer

    settings = Settings.from_mapping({}, environ={})
    assert IssueLayer(settings).signer.public_jwks() != IssueLayer(settings).signer.public_jwks()
    assert "made at start-up" in caplog.text


def _jwks_view() -> Any:
    from secure_mw.http import RequestView

    return RequestView("GET", "http", "127.0.0.1", "/.well-known/secure-mw/jwks.json", "", {},
                       "127.0.0.1")


def test_claim_criteria_see_every_claim_of_a_verified_assertion(flavour: str,
                                                               tmp_path: Path) -> None:
    """Behind a proxy the identity is the assertion's, all its claims kept: a deny block on
    claim/department holds there as it does for a login session."""
    from secure_mw.tokens import AssertionSigner
    from secure_mw.tokens.keys import public_jwks

    private = generate_private_jwks(("ES256",))
    jwks_file = tmp_path / "proxy-jwks.json"
    jwks_file.write_text(json.dumps(public_jwks(private)))
    settings = Settings.from_mapping({
        "server": {"allowed_hosts": ["127.0.0.1"]},
        "signed_headers": {"issue": False, "verify": {
            "jwks_file": str(jwks_file), "issuer": "proxy.test", "audience": "app.test"}},
        "access_control": {"default_policy": "deny", "rules": [
            {"allow": {"or": [{"authenticated_user": True}]},
             "deny": {"or": [{"claim/department": "contractors"},
                             {"claim/org/unit": "banned"}]}}]}}, environ={})
    signer = AssertionSigner(jwks=private)
    module = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    inner = echo_asgi() if flavour == "asgi" else echo_wsgi
    with server(module.protect(inner, settings)) as base:
        def status(claims: dict[str, Any]) -> int:
            token = signer.sign(claims, audience="app.test", issuer="proxy.test")
            return httpx.get(base + "/page", headers={
                "X-Pomerium-Jwt-Assertion": token, "Accept": "application/json"}).status_code

        assert status({"sub": "c", "department": "contractors"}) == 403
        assert status({"sub": "b", "org": {"unit": "banned"}}) == 403
        assert status({"sub": "s", "department": "sales", "org": {"unit": "core"}}) == 200


# -- a JWKS fetch never holds up other requests ------------------------------------------------


def _forged_assertion(kid: str) -> str:
    import base64

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'ES256', 'kid': kid})}.{part({'sub': 'x'})}.{'A' * 86}"


def test_a_hanging_jwks_fetch_does_not_stop_other_requests(flavour: str) -> None:
    """An anonymous client sends an assertion with an unknown kid while the JWKS endpoint
    hangs (an outage): another request, without an assertion, is answered (401) meanwhile,
    and the forged one gets its 401 once the fetch fails. (Under ASGI the verifier ran the
    blocking fetch on the event loop: the worker answered nothing for ~20 of 30 s while a
    client re-triggered fetches at the 1-2-4-8 s retry backoff.)"""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from secure_mw.tokens import RemoteKeySet
    from secure_mw.tokens.headers import VerifyLayer
    from tests.apps import asgi_inner, wsgi_inner
    from tests.servers import free_port

    fetched, release = threading.Event(), threading.Event()

    class Hanging(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetched.set()
            release.wait(60)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    jwks = ThreadingHTTPServer(("127.0.0.1", free_port()), Hanging)
    threading.Thread(target=jwks.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{jwks.server_port}/jwks"
    settings = Settings.from_mapping({"signed_headers": {"issue": False, "verify": {
        "jwks_url": url, "issuer": "proxy", "audience": "app"}}}, environ={})
    layer = VerifyLayer(settings, keys=RemoteKeySet(url, timeout=60))
    module = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    app = module.SignedHeaderMiddleware(inner, settings=settings, layer=layer)
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    forged: list[int] = []
    try:
        with server(app) as base:
            attacker = threading.Thread(target=lambda: forged.append(httpx.get(
                base + "/x", headers={"X-Pomerium-Jwt-Assertion": _forged_assertion("k1")},
                timeout=90).status_code))
            attacker.start()
            assert fetched.wait(30)
            try:
                assert attacker.is_alive()                   # its fetch hangs ...
                other = httpx.get(base + "/x", timeout=20)   # ... and this one is served
                assert other.status_code == 401
                assert other.json() == {"error": "invalid_assertion"}
            finally:
                release.set()
                attacker.join(timeout=90)
    finally:
        release.set()
        jwks.shutdown()
    assert forged == [401]


# -- rotating the key ring under verifiers that pinned a jwks_file ------------------------------


def test_a_two_step_key_rotation_keeps_a_pinned_jwks_file_working(flavour: str,
                                                                  tmp_path: Path) -> None:
    """The assertion signing key is derived from the key ring, so a new first key signs at
    once: a verifier that pinned a ``jwks_file`` refuses everything after a one-step
    rotation. The documented two steps (docs/crypto.md): add the new key *second* (the old
    one still signs, both keys are published), re-pin, then make it first."""
    from secure_mw.testing import session_cookie
    from secure_mw.tokens.keys import b64url_decode

    old, new = KeyRing.new_key_text(), KeyRing.new_key_text()
    module = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    inner = echo_asgi() if flavour == "asgi" else echo_wsgi

    def front(ring: list[str]) -> Settings:
        return Settings.from_mapping({
            "keys": {"encryption_keys": ring}, "session": {"store": "cookie"},
            "access_control": {"rules": [{"resources": ["^/"], "policy": "authenticated"}]},
        }, environ={})

    cookie = session_cookie(front([old]), {"sub": "alice"})     # signed in before it all

    def from_front(ring: list[str], pin: Path | None = None) -> str:
        """Serve the app with ``ring``: the assertion it gives alice (and the published
        keys written to ``pin``, as an operator re-pins)."""
        with server(module.protect(inner, front(ring))) as base:
            if pin is not None:
                pin.write_bytes(httpx.get(base + "/.well-known/secure-mw/jwks.json").content)
            answer = httpx.get(base + "/x", headers={"Cookie": cookie})
            assert answer.status_code == 200, answer.text
            return str(answer.json()["assertion"])

    def verified(token: str, pin: Path) -> int:
        behind = Settings.from_mapping({"signed_headers": {"issue": False, "verify": {
            "header": "X-Secure-MW-Jwt-Assertion", "jwks_file": str(pin),
            "issuer": "127.0.0.1", "audience": "127.0.0.1"}}}, environ={})
        back = module.SignedHeaderMiddleware(inner, settings=behind)
        with server(back) as base:
            return httpx.get(base + "/z", headers={"X-Secure-MW-Jwt-Assertion": token}
                             ).status_code

    pinned = tmp_path / "pinned.json"
    before = from_front([old], pinned)
    assert len(json.loads(pinned.read_text())["keys"]) == 1
    assert verified(before, pinned) == 200
    # One step (the new key first at once): the pinned verifier refuses it all.
    assert verified(from_front([new, old]), pinned) == 401
    # Step 1: the new key second. The old key still signs; both are published: re-pin.
    repinned = tmp_path / "repinned.json"
    step1 = from_front([old, new], repinned)
    assert verified(step1, pinned) == 200
    assert len(json.loads(repinned.read_text())["keys"]) == 2
    # Step 2: the new key first. It signs; the re-pinned verifier knows it, and the
    # assertions signed before still verify while they last.
    step2 = from_front([new, old])
    kid = json.loads(b64url_decode(step2.split(".")[0]))["kid"]
    assert kid in {k["kid"] for k in json.loads(repinned.read_text())["keys"]}
    assert kid not in {k["kid"] for k in json.loads(pinned.read_text())["keys"]}
    assert verified(step2, repinned) == 200
    assert verified(before, repinned) == 200
