"""The bearer-token verifier and gate (secure_mw.tokens.bearer): every refusal, the cache,
the JWKS refetch bound, introspection (RFC 7662) against a loopback endpoint, and the
settings' checks."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from secure_mw import Settings
from secure_mw._driver import run_async, run_sync
from secure_mw.errors import ConfigError, InvalidToken, StoreUnavailable
from secure_mw.http import RequestView
from secure_mw.tokens.bearer import BearerGate, BearerVerifier, bearer_token
from tests.bearer_tokens import AUDIENCE, ISSUER, Minter
from tests.clock import Clock
from tests.servers import free_port


def settings_for(tmp_path: Path, minter: Minter, **extra: Any) -> Settings:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(minter.jwks))
    section = {"issuer": ISSUER, "audience": [AUDIENCE, "urn:other"],
               "jwks_file": str(jwks), "algorithms": ["ES256"], **extra}
    return Settings.from_mapping({"bearer_tokens": section}, environ={})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def minter(clock: Clock) -> Minter:
    return Minter(clock=clock)


@pytest.fixture
def verifier(tmp_path: Path, minter: Minter, clock: Clock) -> BearerVerifier:
    config = settings_for(tmp_path, minter).bearer_tokens
    assert config is not None
    return BearerVerifier(config, clock=clock)


def test_a_good_access_token_is_the_identity(verifier: BearerVerifier, minter: Minter) -> None:
    verified = run_sync(verifier.verify(minter.token(groups=["staff", "ops"])))
    assert verified.identity.sub == "alice" and verified.identity.source == "bearer"
    assert verified.identity.groups == ("staff", "ops")
    assert verified.scopes == {"api:read", "api:write"}
    again = run_sync(verifier.verify(minter.token(aud=["urn:other", "x"],
                                                  header={"typ": "application/at+jwt"})))
    assert again.identity.sub == "alice"


REFUSALS = sorted(Minter().refusals())
#: Why each is refused (the audit line's reason): each for its own flaw, not a side effect.
WHY = {
    "alg_none": "token must have three non-empty segments",
    "alg_none_signed": "unsigned tokens (alg none) are not accepted",
    "hs256_with_public_key": "HMAC algorithms are not accepted",
    "alg_not_allowed": "algorithm not allowed",
    "embedded_jwk": "header parameter not allowed ",
    "jku": "header parameter not allowed ",
    "x5u": "header parameter not allowed ",
    "x5c": "header parameter not allowed ",
    "crit": "critical header parameters are not supported",
    "expired": "token expired",
    "not_yet_valid": "token not yet valid",
    "issued_in_future": "token issued in the future",
    "wrong_audience": "audience mismatch",
    "audience_prefix": "audience mismatch",
    "no_audience": "aud missing or malformed",
    "wrong_issuer": "issuer mismatch",
    "issuer_trailing_slash": "issuer mismatch",
    "missing_exp": "exp claim missing",
    "exp_not_a_number": "exp claim is not a number",
    "missing_iat": "iat claim missing",
    "missing_sub": "sub missing or malformed",
    "typ_jwt_id_token": "unexpected token type",
    "typ_missing": "unexpected token type",
    "unknown_kid": "unknown signing key",
    "other_key_same_kid": "invalid signature",
    "tampered_payload": "invalid signature",
    "tampered_signature": "invalid signature",
    "sender_constrained_cnf": "sender-constrained token (cnf)",
    "not_base64": "token is not base64url",
    "not_json": "header: not valid JSON",
    "json_array_header": "header is not a JSON object",
    "duplicate_members": "header: duplicate member",
    "two_segments": "not a JWT",
    "jwe_five_segments": "encrypted tokens (JWE) are not accepted",
    "opaque_without_introspection": "not a JWT",
    "huge": "token too large",
}


@pytest.mark.parametrize("case", REFUSALS)
def test_every_refusal(case: str, verifier: BearerVerifier, minter: Minter) -> None:
    token = minter.refusals()[case]
    with pytest.raises(InvalidToken) as caught:
        run_sync(verifier.verify(token))
    assert WHY[case] in str(caught.value)
    with pytest.raises(InvalidToken):
        asyncio.run(run_async(verifier.verify(token)))


def test_the_refusal_count() -> None:
    assert len(REFUSALS) == 36


def test_a_verified_token_is_cached_until_exp_only(verifier: BearerVerifier, minter: Minter,
                                                   clock: Clock) -> None:
    token = minter.token(exp=int(clock()) + 100)
    calls = 0
    verify = verifier.jwt.verify    # type: ignore[union-attr]

    def counting(t: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return verify(t)

    verifier.jwt.verify = counting  # type: ignore[method-assign,union-attr]
    for _ in range(5):
        run_sync(verifier.verify(token))
    assert calls == 1 and len(verifier.cache) == 1
    clock.advance(100)      # exp reached: the cache forgets it, the verifier refuses it later
    run_sync(verifier.verify(token))    # within the 30 s leeway: verified again
    assert calls == 2
    clock.advance(31)
    with pytest.raises(InvalidToken, match="expired"):
        run_sync(verifier.verify(token))


def test_the_cache_is_bounded(tmp_path: Path, minter: Minter, clock: Clock) -> None:
    config = settings_for(tmp_path, minter, cache_size=3).bearer_tokens
    assert config is not None
    verifier = BearerVerifier(config, clock=clock)
    for n in range(10):
        run_sync(verifier.verify(minter.token(jti=f"j{n}")))
    assert len(verifier.cache) == 3


def test_the_authorization_header_syntax() -> None:
    def view(value: str | None) -> RequestView:
        headers = {} if value is None else {"authorization": value}
        return RequestView(method="GET", scheme="https", host="api", path="/", query_string="",
                           headers=headers, client="198.51.100.7")

    assert bearer_token(view(None)) is None
    assert bearer_token(view("Basic dTpw")) is None
    assert bearer_token(view("bearer abc.def-_~+/=")) == "abc.def-_~+/="
    for bad in ("Bearer", "Bearer ", "Bearer a b", "Bearer a, Bearer b", "Bearer é"):
        with pytest.raises(InvalidToken):
            bearer_token(view(bad))


# -- the JWKS refetch bound -------------------------------------------------------------------


@contextmanager
def json_server(answer: Any) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server answering ``answer(request)`` (a dict) as JSON; yields its URL
    and the requests it saw."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            request = {"method": self.command, "path": self.path, "form": parse_qs(body),
                       "authorization": self.headers.get("authorization")}
            seen.append(request)
            status, data = answer(request)
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _reply

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_an_unknown_kid_refetches_at_most_once_per_interval(minter: Minter,
                                                             clock: Clock) -> None:
    monotonic = Clock(1000.0)
    keys: dict[str, Any] = {"jwks": minter.jwks}
    with json_server(lambda r: (200, keys["jwks"])) as (url, seen):
        config = Settings.from_mapping({"bearer_tokens": {
            "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": url + "/jwks",
            "jwks_refetch_interval": "60s", "cache_size": 0}}, environ={}).bearer_tokens
        assert config is not None
        verifier = BearerVerifier(config, clock=clock, monotonic=monotonic)
        run_sync(verifier.verify(minter.token()))
        assert len(seen) == 1
        stranger = minter.token(header={"kid": "rotated-in"})
        with pytest.raises(InvalidToken):   # within the interval of the first fetch: none
            run_sync(verifier.verify(stranger))
        assert len(seen) == 1
        monotonic.advance(61)
        for _ in range(20):        # 20 tokens with an unknown kid: one refetch
            with pytest.raises(InvalidToken, match="unknown signing key"):
                run_sync(verifier.verify(stranger))
        assert len(seen) == 2
        monotonic.advance(61)
        with pytest.raises(InvalidToken):
            asyncio.run(run_async(verifier.verify(stranger)))
        assert len(seen) == 3
        # The issuer rotates in a new key: found on the next allowed refetch.
        new = Minter(clock=clock)
        keys["jwks"] = {"keys": [*minter.jwks["keys"], *new.jwks["keys"]]}
        monotonic.advance(61)
        assert run_sync(verifier.verify(new.token())).identity.sub == "alice"
        assert len(seen) == 4


def test_unreachable_keys_are_store_unavailable(minter: Minter, clock: Clock) -> None:
    config = Settings.from_mapping({"bearer_tokens": {
        "issuer": ISSUER, "audience": AUDIENCE,
        "jwks_url": f"http://127.0.0.1:{free_port()}/jwks"}}, environ={}).bearer_tokens
    assert config is not None
    verifier = BearerVerifier(config, clock=clock)
    with pytest.raises(StoreUnavailable):
        run_sync(verifier.verify(minter.token()))


# -- introspection (RFC 7662) -----------------------------------------------------------------


def introspection_settings(url: str, **extra: Any) -> Any:
    config = Settings.from_mapping({"bearer_tokens": {
        "issuer": ISSUER, "audience": AUDIENCE, "introspection_url": url,
        "client_id": "api", "client_secret": "s3cret:with/odd chars", **extra}},
        environ={}).bearer_tokens
    assert config is not None
    return config


def test_introspection(clock: Clock) -> None:
    now = int(clock())
    answers = {
        "good": {"active": True, "sub": "svc", "aud": AUDIENCE, "iss": ISSUER,
                 "exp": now + 100, "scope": "api:read", "token_type": "Bearer",
                 "groups": ["robots"]},
        "inactive": {"active": False},
        "no_active": {"sub": "svc", "aud": AUDIENCE},
        "active_string": {"active": "true", "sub": "svc", "aud": AUDIENCE},
        "other_audience": {"active": True, "sub": "svc", "aud": "https://other.example"},
        "no_audience": {"active": True, "sub": "svc"},
        "other_issuer": {"active": True, "sub": "svc", "aud": AUDIENCE,
                         "iss": "https://evil.example"},
        "expired": {"active": True, "sub": "svc", "aud": AUDIENCE, "exp": now - 1},
        "refresh_token": {"active": True, "sub": "svc", "aud": AUDIENCE,
                          "token_type": "refresh_token"},
        "cnf": {"active": True, "sub": "svc", "aud": AUDIENCE, "cnf": {"jkt": "x"}},
        "no_sub": {"active": True, "aud": AUDIENCE},
        "client_credentials": {"active": True, "client_id": "svc", "aud": AUDIENCE,
                               "exp": now + 100},
    }

    def answer(request: dict[str, Any]) -> tuple[int, Any]:
        expected = "Basic " + base64.b64encode(b"api:s3cret%3Awith%2Fodd%20chars").decode()
        if request["authorization"] != expected:
            return 401, {"error": "invalid_client"}
        assert request["form"]["token_type_hint"] == ["access_token"]
        return 200, answers[request["form"]["token"][0]]

    with json_server(answer) as (url, seen):
        verifier = BearerVerifier(introspection_settings(url, cache_ttl="5m"), clock=clock)
        machine = run_sync(verifier.verify("client_credentials"))
        assert machine.identity.sub == "svc"      # no sub (RFC 7662): its client's token
        good = run_sync(verifier.verify("good"))
        assert good.identity.sub == "svc" and good.identity.groups == ("robots",)
        assert good.scopes == {"api:read"} and good.until == now + 100
        asyncio.run(run_async(verifier.verify("good")))
        assert len(seen) == 2                          # cached
        for name in answers:
            if name in ("good", "client_credentials"):
                continue
            with pytest.raises(InvalidToken):
                run_sync(verifier.verify(name))
        count = len(seen)
        with pytest.raises(InvalidToken):              # an inactive answer is remembered
            run_sync(verifier.verify("inactive"))
        assert len(seen) == count
        clock.advance(100)                             # never beyond the token's exp
        with pytest.raises(InvalidToken):
            run_sync(verifier.verify("good"))
        # A wrong secret is our problem, not the client's: fail closed, not 401.
        wrong = BearerVerifier(introspection_settings(url, client_secret="nope"), clock=clock)
        with pytest.raises(StoreUnavailable):
            run_sync(wrong.verify("fresh"))


def test_introspection_unreachable_is_store_unavailable(clock: Clock) -> None:
    verifier = BearerVerifier(introspection_settings(
        f"http://127.0.0.1:{free_port()}/introspect"), clock=clock)
    with pytest.raises(StoreUnavailable):
        asyncio.run(run_async(verifier.verify("opaque")))


# -- the gate ---------------------------------------------------------------------------------


class _Core:
    """Stands for the session core: records whether the gate handed the request on."""

    def __init__(self) -> None:
        self.handled = 0
        from secure_mw.audit import audit_logger

        self.audit = audit_logger()

    def is_reserved(self, path: str) -> bool:
        return path.startswith("/.auth/")

    def handle(self, view: RequestView) -> Any:
        from secure_mw.oidc.core import Outcome

        self.handled += 1
        yield from ()
        return Outcome(None, None)


def test_the_gate_never_falls_back_to_the_session(tmp_path: Path, minter: Minter,
                                                 clock: Clock) -> None:
    settings = settings_for(tmp_path, minter, required_scopes=["api:read"])
    core = _Core()
    gate = BearerGate(core, settings, clock=clock)

    def view(**headers: str) -> RequestView:
        return RequestView(method="GET", scheme="https", host="api", path="/x",
                           query_string="", headers=headers, client="198.51.100.7")

    cookie = "__Host-secure_mw_session=valid-looking"
    refused = run_sync(gate.handle(view(authorization="Bearer nope", cookie=cookie)))
    assert refused.reply is not None and refused.reply.status == 401 and core.handled == 0
    ok = run_sync(gate.handle(view(authorization="Bearer " + minter.token(), cookie=cookie)))
    assert ok.reply is None and ok.identity is not None and ok.identity.source == "bearer"
    assert core.handled == 0
    scope = run_sync(gate.handle(view(authorization="Bearer " + minter.token(scope="api:x"))))
    assert scope.reply is not None and scope.reply.status == 403
    run_sync(gate.handle(view(cookie=cookie)))
    assert core.handled == 1


# -- settings ---------------------------------------------------------------------------------


def test_settings_refuse_what_must_never_be_configured(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping({"bearer_tokens": {
            "issuer": ISSUER, "audience": [], "algorithms": ["HS256", "none"],
            "jwks_url": "http://idp.example/jwks", "jwks_file": str(tmp_path / "j.json"),
            "introspection_url": "http://idp.example/introspect"}}, environ={})
    text = str(caught.value)
    for key in ("bearer_tokens.audience", "bearer_tokens.algorithms",
                "bearer_tokens.jwks_url", "bearer_tokens.introspection_url"):
        assert key in text
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping({"bearer_tokens": {
            "issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["RS256", "HS512"],
            "introspection_url": "https://idp.example/introspect"}}, environ={})
    text = str(caught.value)
    for key in ("bearer_tokens.algorithms", "bearer_tokens.client_id",
                "bearer_tokens.client_secret"):
        assert key in text
    with pytest.raises(ConfigError, match=r"bearer_tokens\.jwks_url"):
        Settings.from_mapping({"bearer_tokens": {"issuer": ISSUER, "audience": AUDIENCE}},
                              environ={})
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_mapping({"bearer_tokens": {
            "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://idp.example/j",
            "jwks_file": str(tmp_path / "j.json")}}, environ={})


def test_the_introspection_secret_comes_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    secret.chmod(0o600)
    config = Settings.from_mapping({"bearer_tokens": {
        "issuer": ISSUER, "audience": AUDIENCE, "introspection_url": "https://idp.example/i",
        "client_id": "api", "client_secret_file": str(secret)}}, environ={}).bearer_tokens
    assert config is not None and config.client_secret == "from-a-file"
    assert "from-a-file" not in repr(config)


def test_parallel_unknown_kids_refetch_once(minter: Minter, clock: Clock) -> None:
    import concurrent.futures

    monotonic = Clock(1000.0)
    with json_server(lambda r: (200, minter.jwks)) as (url, seen):
        config = Settings.from_mapping({"bearer_tokens": {
            "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": url + "/jwks",
            "cache_size": 0}}, environ={}).bearer_tokens
        assert config is not None
        verifier = BearerVerifier(config, clock=clock, monotonic=monotonic)
        run_sync(verifier.verify(minter.token()))
        monotonic.advance(61)
        tokens = [minter.token(header={"kid": f"new-{n}"}) for n in range(50)]

        def attempt(token: str) -> str:
            try:
                run_sync(verifier.verify(token))
            except InvalidToken as exc:
                return str(exc)
            return "accepted"

        with concurrent.futures.ThreadPoolExecutor(16) as pool:     # WSGI: threads
            assert set(pool.map(attempt, tokens)) == {"unknown signing key"}
        assert len(seen) == 2
        monotonic.advance(61)

        async def flood() -> list[BaseException | Any]:             # ASGI: one loop
            return await asyncio.gather(*(run_async(verifier.verify(t)) for t in tokens),
                                        return_exceptions=True)

        results = asyncio.run(flood())
        assert all(isinstance(r, InvalidToken) for r in results)
        assert len(seen) == 3


def test_the_bearer_gate_defines_every_entry_the_session_middlewares_call() -> None:
    """BearerGate hands every other attribute to the session core it wraps (``__getattr__``):
    an entry point the middlewares call that the gate does not define itself goes straight
    to the core, past the token. The warm session path did (tests/test_review_warm.py): a
    live session cookie answered for any bearer token. Only the reply to an oversized body
    (no identity in it) may come from the core."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "secure_mw"
    called: set[str] = set()
    for flavour in ("asgi", "wsgi"):
        tree = ast.parse((package / flavour / "session.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self.core":
                called.add(node.attr)
    assert {"handle", "warm_identity", "is_reserved"} <= called
    assert called - set(vars(BearerGate)) <= {"body_too_large"}
