"""Unit tests of back-channel and front-channel logout in the OIDC core: every kind of
logout token Back-Channel Logout 1.0 §2.6 refuses (each a 400 with an audit line), single
use of ``jti``, what a valid token ends (server-side and cookie store), the answers when the
store or the provider's keys cannot be reached (503, never 200), the endpoint's methods and
content types, and front-channel logout's checks.

No provider: logout tokens are signed here with generated keys; tests/test_oidc_logout_e2e.py
runs the same code against the real provider, two instances and a real Redis and SQLite.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlencode

import pytest

from secure_mw import Settings
from secure_mw._driver import run_async, run_sync
from secure_mw._encoding import b64url_encode
from secure_mw.crypto import KeyRing
from secure_mw.errors import StoreUnavailable
from secure_mw.http import RequestView
from secure_mw.oidc.client import (
    BACKCHANNEL_EVENT,
    ID_TOKEN_ALGORITHMS,
    METADATA_TTL,
    OIDCClient,
    ProviderMetadata,
)
from secure_mw.oidc.core import OIDCSessionCore, Outcome
from secure_mw.session.manager import index_name
from secure_mw.session.memory_store import MemorySessionStore
from secure_mw.session.model import Session
from secure_mw.tokens import JWTVerifier, KeySet, RemoteKeySet, SigningKey, sign
from tests.clock import Clock
from tests.servers import free_port

NOW = 1_800_000_000.0
ISSUER = "https://idp.example.test"
CLIENT_ID = "app"
KEY_TEXT = KeyRing.new_key_text()
PROVIDER_KEY = SigningKey.generate("RS256")
URL = "/.auth/backchannel-logout"
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def settings(session_store: str | None = None, **oidc: Any) -> Settings:
    section = {"issuer": ISSUER, "client_id": CLIENT_ID, "client_secret": "app-secret",
               "frontchannel_logout": True, **oidc}
    data: dict[str, Any] = {"keys": {"encryption_keys": [KEY_TEXT]}, "oidc": section}
    if session_store:
        data["session"] = {"store": session_store}
    return Settings.from_mapping(data, environ={})


def provider_client(clock: Clock, s: Settings, *, keys: Any = None) -> OIDCClient:
    """A client whose metadata and the provider's keys are already known (no discovery)."""
    assert s.oidc is not None
    mono = Clock(1000.0)
    client = OIDCClient(s.oidc, clock=clock, monotonic=mono)
    client._metadata = ProviderMetadata.parse({
        "issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/auth",
        "token_endpoint": f"{ISSUER}/token", "jwks_uri": f"{ISSUER}/jwks",
        "end_session_endpoint": f"{ISSUER}/session/end",
        "code_challenge_methods_supported": ["S256"]}, ISSUER)
    client._metadata_until = mono() + 10 * METADATA_TTL
    client._verifier = JWTVerifier(
        keys or KeySet.from_dict({"keys": [PROVIDER_KEY.public_jwk()]}), issuer=ISSUER,
        audience=s.oidc.client_id, algorithms=ID_TOKEN_ALGORITHMS, clock=clock)
    return client


def make_core(clock: Clock, *, store: Any = None, keys: Any = None,
              session_store: str | None = None, **oidc: Any) -> OIDCSessionCore:
    s = settings(session_store, **oidc)
    if store is None and session_store != "cookie":
        store = MemorySessionStore(clock=clock)
    return OIDCSessionCore(s, store=store, clock=clock,
                           client=provider_client(clock, s, keys=keys))


def logout_token(clock: Clock, *, key: SigningKey = PROVIDER_KEY,
                 headers: dict[str, Any] | None = None, **claims: Any) -> str:
    now = int(clock())
    body = {"iss": ISSUER, "aud": CLIENT_ID, "iat": now, "exp": now + 120, "jti": "jti-1",
            "sub": "alice", "sid": "sid-1", "events": {BACKCHANNEL_EVENT: {}}, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return sign(body, key, headers={"typ": "logout+jwt", **(headers or {})})


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    def part(data: dict[str, Any]) -> str:
        return b64url_encode(json.dumps(data).encode())
    head = f"{part(header)}.{part(claims)}"
    return f"{head}.{b64url_encode(signature)}"


def claims_of(clock: Clock, **changes: Any) -> dict[str, Any]:
    now = int(clock())
    return {"iss": ISSUER, "aud": CLIENT_ID, "iat": now, "exp": now + 120, "jti": "j",
            "sub": "alice", "events": {BACKCHANNEL_EVENT: {}}, **changes}


def post(body: bytes | str, *, method: str = "POST", headers: dict[str, str] | None = None,
         path: str = URL, query: str = "") -> RequestView:
    view = RequestView(method=method, scheme="https", host="app.test", path=path,
                       query_string=query, headers=dict(FORM if headers is None else headers),
                       client="192.0.2.7")
    view.body = body.encode() if isinstance(body, str) else body
    return view


def send(core: OIDCSessionCore, token: str) -> Outcome:
    return run_sync(core.handle(post(urlencode({"logout_token": token}))))


def audit(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records
            if r.name == "secure_mw.audit" and f'"event":"{event}"' in r.getMessage()]


def signed_in(core: OIDCSessionCore, sub: str = "alice", sid: str | None = "sid-1") -> Session:
    tokens: dict[str, Any] = {"cid": CLIENT_ID}
    if sid is not None:
        tokens["ps"] = sid
    session = core.sessions.new(claims={"sub": sub}, tokens=tokens)
    run_sync(core.sessions.save(session, new=True))
    return session


def alive(core: OIDCSessionCore, session: Session) -> bool:
    assert core.sessions.store is not None
    return core.sessions.store.load(session.id) is not None


# -- every refused kind of logout token ---------------------------------------------------

def hs256_with_the_public_key(clock: Clock) -> str:
    """The classic confusion: HMAC keyed with the provider's public key."""
    from cryptography.hazmat.primitives import serialization

    public = PROVIDER_KEY.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": PROVIDER_KEY.kid, "typ": "logout+jwt"}
    token = unsigned(header, claims_of(clock))
    head = token.rsplit(".", 1)[0]
    mac = hmac.new(public, head.encode(), hashlib.sha256).digest()
    return f"{head}.{b64url_encode(mac)}"


def forged(clock: Clock) -> str:
    """Signed by another key under the provider key's kid."""
    other = SigningKey.generate("RS256")
    impostor = SigningKey(other.private_key, kid=PROVIDER_KEY.kid)
    return logout_token(clock, key=impostor)


REFUSED = {
    "forged signature": forged,
    "alg none": lambda c: unsigned({"alg": "none", "typ": "logout+jwt"}, claims_of(c)),
    "alg none, a signature": lambda c: unsigned({"alg": "none"}, claims_of(c), b"x"),
    "HS256 with the public key": hs256_with_the_public_key,
    "wrong iss": lambda c: logout_token(c, iss="https://evil.example"),
    "wrong aud": lambda c: logout_token(c, aud="another-client"),
    "several aud, no azp": lambda c: logout_token(c, aud=[CLIENT_ID, "other"]),
    "azp of another client": lambda c: logout_token(c, aud=[CLIENT_ID, "other"], azp="other"),
    "no iat": lambda c: logout_token(c, iat=None),
    "old iat": lambda c: logout_token(c, iat=int(c()) - 121 - 60),
    "future iat": lambda c: logout_token(c, iat=int(c()) + 3600),
    "no exp": lambda c: logout_token(c, exp=None),
    "expired": lambda c: logout_token(c, iat=int(c()) - 100, exp=int(c()) - 90),
    "no events": lambda c: logout_token(c, events=None),
    "events not an object": lambda c: logout_token(c, events=[BACKCHANNEL_EVENT]),
    "wrong event": lambda c: logout_token(c, events={"http://example.com/other": {}}),
    "event not an object": lambda c: logout_token(c, events={BACKCHANNEL_EVENT: True}),
    "nonce present": lambda c: logout_token(c, nonce="n-1"),
    "neither sub nor sid": lambda c: logout_token(c, sub=None, sid=None),
    "sid not a string": lambda c: logout_token(c, sid=12),
    "no jti": lambda c: logout_token(c, jti=None),
    "typ at+jwt": lambda c: logout_token(c, headers={"typ": "at+jwt"}),
    "typ of an id_token's cousin": lambda c: logout_token(c, headers={"typ": "secevent+jwt"}),
    "not a JWT": lambda c: "not.a.jwt",
    "header not JSON": lambda c: "eyJhbGciOi.e30.c2ln",
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_a_bad_logout_token_is_refused_with_400_and_an_audit_line(
        clock: Clock, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    core = make_core(clock)
    session = signed_in(core)
    caplog.set_level("INFO", logger="secure_mw.audit")
    outcome = send(core, REFUSED[kind](clock))
    assert outcome.reply is not None
    assert outcome.reply.status == 400, kind
    assert json.loads(outcome.reply.body) == {
        "error": "invalid_request", "error_description": "the logout token is not valid"}
    events = audit(caplog, "backchannel_logout_refused")
    assert len(events) == 1 and events[0]["remote_ip"] == "192.0.2.7"
    assert "logout_token" not in json.dumps(events[0])   # never the token itself
    assert alive(core, session)


def test_a_valid_token_ends_every_session_of_its_sid_and_answers_200_without_a_body(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    core = make_core(clock)
    one, two = signed_in(core), signed_in(core)
    other_sid = signed_in(core, sid="sid-2")
    bob = signed_in(core, "bob", sid="sid-3")
    caplog.set_level("INFO", logger="secure_mw.audit")
    outcome = send(core, logout_token(clock))
    assert outcome.reply is not None and outcome.reply.status == 200
    assert outcome.reply.body == b""
    assert ("cache-control", "no-store") in outcome.reply.headers
    assert not alive(core, one) and not alive(core, two)
    assert alive(core, other_sid) and alive(core, bob)
    assert audit(caplog, "backchannel_logout")[0]["ended"] == 2


def test_a_token_with_only_sub_ends_every_session_of_the_subject(clock: Clock) -> None:
    core = make_core(clock)
    sessions = [signed_in(core, sid="a"), signed_in(core, sid="b"), signed_in(core, sid=None)]
    bob = signed_in(core, "bob")
    assert send(core, logout_token(clock, sid=None)).reply.status == 200  # type: ignore[union-attr]
    assert not any(alive(core, s) for s in sessions) and alive(core, bob)


def test_a_token_within_the_leeway_and_max_age_is_accepted(clock: Clock) -> None:
    core = make_core(clock, logout_token_max_age="60s")
    token = logout_token(clock, iat=int(clock()) - 60)
    assert send(core, token).reply.status == 200  # type: ignore[union-attr]
    too_old = logout_token(clock, iat=int(clock()) - 60 - 61, jti="j-2")
    assert send(core, too_old).reply.status == 400  # type: ignore[union-attr]


@pytest.mark.parametrize("typ", [None, "JWT", "logout+jwt", "application/logout+jwt"])
def test_typ_absent_jwt_or_logout_jwt_is_accepted(clock: Clock, typ: str | None) -> None:
    core = make_core(clock)
    token = sign(claims_of(clock, sid="s"), PROVIDER_KEY,
                 headers={"typ": typ} if typ is not None else {})
    if typ is None:     # sign() writes typ JWT: a header without it, signed by hand
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        header = {"alg": "RS256", "kid": PROVIDER_KEY.kid}
        head = unsigned(header, claims_of(clock, sid="s")).rsplit(".", 1)[0]
        private = PROVIDER_KEY.private_key
        assert isinstance(private, rsa.RSAPrivateKey)
        signature = private.sign(head.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = f"{head}.{b64url_encode(signature)}"
    assert send(core, token).reply.status == 200  # type: ignore[union-attr]


def test_a_replayed_token_is_refused(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    core = make_core(clock)
    token = logout_token(clock)
    assert send(core, token).reply.status == 200  # type: ignore[union-attr]
    session = signed_in(core)             # signed in again under the same provider session
    caplog.set_level("INFO", logger="secure_mw.audit")
    assert send(core, token).reply.status == 400  # type: ignore[union-attr]
    assert audit(caplog, "backchannel_logout_refused")[0]["reason"] == "logout token replayed"
    assert alive(core, session)
    # Still refused just before it could no longer be accepted anyway.
    clock.advance(115)
    assert send(core, token).reply.status == 400  # type: ignore[union-attr]


def test_twenty_concurrent_posts_of_one_token_end_it_once(clock: Clock) -> None:
    core = make_core(clock)
    token = logout_token(clock)

    async def many() -> list[int]:
        outcomes = await asyncio.gather(*(
            run_async(core.handle(post(urlencode({"logout_token": token}))))
            for _ in range(20)))
        return [o.reply.status for o in outcomes if o.reply is not None]

    statuses = asyncio.run(many())
    assert sorted(statuses) == [200] + [400] * 19


# -- the cookie store: marks in the shared store -------------------------------------------

def test_cookie_store_sessions_of_the_sid_are_refused_after_the_logout(clock: Clock) -> None:
    core = make_core(clock, session_store="cookie")
    session = core.sessions.new(claims={"sub": "alice"}, tokens={"cid": CLIENT_ID, "ps": "sid-1"})
    cookies = run_sync(core.sessions.save(session, new=True))
    assert cookies
    header = "; ".join(c.split(";", 1)[0] for c in cookies)

    def read() -> Session | None:
        view = RequestView(method="GET", scheme="https", host="app.test", path="/x",
                           query_string="", headers={"cookie": header}, client="192.0.2.7")
        return run_sync(core.sessions.read(view)).session

    assert read() is not None
    assert send(core, logout_token(clock)).reply.status == 200  # type: ignore[union-attr]
    assert read() is None
    # The sid is over for good: a session of it made later (a login racing the logout, or
    # an instance whose clock runs fast) is refused too; one of a new sid is not.
    for later_sid, kept in (("sid-1", False), ("sid-2", True)):
        clock.advance(1)
        later = core.sessions.new(claims={"sub": "alice"},
                                  tokens={"cid": CLIENT_ID, "ps": later_sid})
        again = run_sync(core.sessions.save(later, new=True))
        assert again
        header = "; ".join(c.split(";", 1)[0] for c in again)
        assert (read() is not None) == kept, later_sid


# -- store and provider keys unreachable: 503 ----------------------------------------------

class FailingStore(MemorySessionStore):
    """A memory store whose back-channel operations fail as an unreachable store does."""

    fail = ("end_indexed",)

    def claim_once(self, token: str, ttl: float) -> bool:
        if "claim_once" in self.fail:
            raise StoreUnavailable("session store unavailable: 127.0.0.1:1")
        return super().claim_once(token, ttl)

    def end_indexed(self, name: str) -> int:
        if "end_indexed" in self.fail:
            raise StoreUnavailable("session store unavailable: 127.0.0.1:1")
        return super().end_indexed(name)


@pytest.mark.parametrize("fail", ["claim_once", "end_indexed"])
def test_store_unreachable_is_503_with_retry_after_and_the_token_can_come_again(
        clock: Clock, caplog: pytest.LogCaptureFixture, fail: str) -> None:
    store = FailingStore(clock=clock)
    store.fail = (fail,)
    core = make_core(clock, store=store)
    session = signed_in(core)
    caplog.set_level("INFO", logger="secure_mw.audit")
    token = logout_token(clock)
    outcome = send(core, token)
    assert outcome.reply is not None and outcome.reply.status == 503
    assert ("retry-after", "5") in outcome.reply.headers
    assert audit(caplog, "store_unavailable")
    store.fail = ()
    assert send(core, token).reply.status == 200  # type: ignore[union-attr]
    assert not alive(core, session)


def test_provider_keys_unreachable_is_503(clock: Clock) -> None:
    keys = RemoteKeySet(f"http://127.0.0.1:{free_port()}/jwks", allow_http=True,
                        timeout=2.0)
    core = make_core(clock, keys=keys)
    outcome = send(core, logout_token(clock))
    assert outcome.reply is not None and outcome.reply.status == 503


# -- the endpoint's HTTP ---------------------------------------------------------------------

def test_wrong_method_content_type_and_missing_or_doubled_token(clock: Clock) -> None:
    core = make_core(clock)

    def status(view: RequestView) -> int:
        reply = run_sync(core.handle(view)).reply
        assert reply is not None
        return reply.status

    assert status(post(b"", method="GET")) == 405
    assert status(post(b'{"logout_token": "x"}', headers={"content-type": "application/json"})) \
        == 415
    assert status(post(b"")) == 400
    assert status(post(b"logout_token=a&logout_token=b")) == 400
    assert status(post(b"\xff\xfe")) == 400


def test_the_endpoint_is_not_served_when_turned_off(clock: Clock) -> None:
    core = make_core(clock, backchannel_logout=False, frontchannel_logout=False)
    reply = send(core, logout_token(clock)).reply
    assert reply is not None and reply.status == 404


# -- front-channel logout ------------------------------------------------------------------

def front(core: OIDCSessionCore, **params: str) -> int:
    view = post(b"", method="GET", headers={}, path="/.auth/frontchannel-logout",
                query=urlencode(params))
    reply = run_sync(core.handle(view)).reply
    assert reply is not None
    return reply.status


def test_front_channel_needs_the_issuer_and_a_sid(clock: Clock,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    core = make_core(clock)
    session = signed_in(core)
    caplog.set_level("INFO", logger="secure_mw.audit")
    assert front(core, iss="https://evil.example", sid="sid-1") == 400
    assert front(core, sid="sid-1") == 400
    assert front(core, iss=ISSUER) == 400
    assert len(audit(caplog, "frontchannel_logout_refused")) == 3
    assert alive(core, session)
    assert front(core, iss=ISSUER, sid="sid-1") == 200
    assert not alive(core, session)


def test_front_channel_is_off_by_default(clock: Clock) -> None:
    core = make_core(clock, frontchannel_logout=False)
    assert front(core, iss=ISSUER, sid="sid-1") == 404


def test_index_names_keep_clients_apart() -> None:
    assert index_name("sid", "a", "x") != index_name("sid", "b", "x")
    assert index_name("sid", "a", "x") != index_name("sub", "a", "x")


def test_a_store_of_your_own_without_an_index_serves_neither_endpoint(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    inner = MemorySessionStore(clock=clock)

    class Plain:
        """A store with the session protocol only (no save_indexed / end_indexed)."""

        holds_objects = True
        indexes = False

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

    caplog.set_level("WARNING", logger="secure_mw.oidc")
    core = make_core(clock, store=Plain())
    assert send(core, logout_token(clock)).reply.status == 404  # type: ignore[union-attr]
    assert front(core, iss=ISSUER, sid="sid-1") == 404
    assert any("keeps no index" in r.getMessage() for r in caplog.records)


def _front_visit(core: OIDCSessionCore, header: dict[str, str], sid: str) -> tuple[int, bool]:
    """(status, whether the visitor's session ended) of a front-channel request for ``sid``
    that carries the visitor's cookie."""
    view = post(b"", method="GET", headers=header, path="/.auth/frontchannel-logout",
                query=urlencode({"iss": ISSUER, "sid": sid}))
    reply = run_sync(core.handle(view)).reply
    assert reply is not None
    cleared = any(n == "set-cookie" for n, _ in reply.headers)
    probe = RequestView(method="GET", scheme="https", host="app.test", path="/x",
                        query_string="", headers=header, client="192.0.2.7")
    return reply.status, cleared or run_sync(core.sessions.read(probe)).session is None


def test_front_channel_never_ends_a_visitor_s_session_of_another_sid(clock: Clock) -> None:
    """A link on any site can send the front-channel request with the visitor's cookie
    (SameSite=Lax) and the public iss: a guessed sid must not end that visitor's session."""
    for store in ("memory", "cookie"):
        core = make_core(clock, session_store=None if store == "memory" else "cookie")
        session = core.sessions.new(claims={"sub": "alice"},
                                    tokens={"cid": CLIENT_ID, "ps": "sid-1"})
        cookies = run_sync(core.sessions.save(session, new=True)) or []
        header = {"cookie": "; ".join(c.split(";", 1)[0] for c in cookies)}
        assert _front_visit(core, header, "attacker-guess") == (200, False), store
        assert _front_visit(core, header, "sid-1") == (200, True), store


def test_a_sid_token_also_ends_the_subject_s_sessions_that_had_no_sid(clock: Clock) -> None:
    """A session whose id_token carried no sid is listed under "nosid": a logout token with a
    sid and that sub ends it too, instead of 200 and nothing ended."""
    core = make_core(clock)
    without = signed_in(core, sid=None)
    other_sid = signed_in(core, sid="sid-9")
    bob = signed_in(core, sub="bob", sid=None)
    assert send(core, logout_token(clock)).reply.status == 200  # type: ignore[union-attr]
    assert not alive(core, without)
    assert alive(core, other_sid) and alive(core, bob)


def test_two_clients_sharing_a_store_each_spend_their_own_token(clock: Clock) -> None:
    """The single use of a jti is per issuer and client: a provider that sends each client a
    token with the same jti gets 200 from both apps on one shared store."""
    shared = MemorySessionStore(clock=clock)
    first = make_core(clock, store=shared)
    second = make_core(clock, store=shared, client_id="other-app")
    assert send(first, logout_token(clock)).reply.status == 200  # type: ignore[union-attr]
    assert send(second, logout_token(clock, aud="other-app")  # type: ignore[union-attr]
                ).reply.status == 200
    assert send(second, logout_token(clock, aud="other-app")  # type: ignore[union-attr]
                ).reply.status == 400
