"""Unit tests of the framework-free OIDC core: the pre-login cookie, the relying-party client
(metadata, PKCE, authorization URL, id_token validation, client authentication, the token
endpoint with faked I/O) and ``local_target``.

No provider and no network: id_tokens are signed here with a generated key and the
provider's HTTP answers are fakes. tests/test_oidc_e2e.py runs the same code against a
real provider.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from secure_mw import Settings
from secure_mw._driver import Op, run_async, run_sync
from secure_mw._encoding import b64url_encode
from secure_mw.crypto import KeyRing
from secure_mw.errors import InvalidToken, StoreUnavailable
from secure_mw.http import RequestView
from secure_mw.oidc.client import (
    DEFAULT_ACCESS_LIFETIME,
    ID_TOKEN_ALGORITHMS,
    METADATA_RETRY,
    METADATA_TTL,
    GrantRefused,
    OIDCClient,
    ProviderMetadata,
    TokenTooLarge,
    pkce_pair,
)
from secure_mw.oidc.core import local_target
from secure_mw.oidc.prelogin import LIFETIME, MAX_PENDING, PendingLogin, PreLoginCookie
from secure_mw.session.cookies import CookieJarSpec
from secure_mw.tokens import JWTVerifier, KeySet, SigningKey, sign
from tests.clock import Clock

NOW = 1_800_000_000.0
ISSUER = "https://idp.example.test"
CLIENT_ID = "app"
SECRET = "app-secret"


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def view_with_cookies(set_cookies: list[str] | dict[str, str]) -> RequestView:
    if isinstance(set_cookies, dict):
        pairs = [f"{k}={v}" for k, v in set_cookies.items()]
    else:
        pairs = [c.split(";", 1)[0] for c in set_cookies if "Max-Age=0" not in c]
    return RequestView(method="GET", scheme="https", host="app.test", path="/.auth/callback",
                       query_string="", headers={"cookie": "; ".join(pairs)}, client="")


# =========================================================================================
# pre-login cookie
# =========================================================================================

RING = KeyRing.generate()


def make_prelogin(clock: Clock, keyring: KeyRing = RING, base: str = "sess") -> PreLoginCookie:
    return PreLoginCookie(keyring, CookieJarSpec(), base, clock=clock)


def pending(clock: Clock, return_to: str = "/", remember: bool = False) -> PendingLogin:
    return PendingLogin.start(verifier="v" * 64, return_to=return_to, now=clock(),
                              remember=remember)


def test_prelogin_cookie_name_and_attributes(clock: Clock) -> None:
    cookie = make_prelogin(clock)
    assert cookie.name == "__Host-sess_login"
    set_cookie = cookie.add(view_with_cookies({}), pending(clock))
    assert set_cookie.startswith("__Host-sess_login=")
    assert f"Max-Age={int(LIFETIME)}" in set_cookie
    assert "SameSite=Lax" in set_cookie and "HttpOnly" in set_cookie


def test_prelogin_add_then_take_round_trip(clock: Clock) -> None:
    cookie = make_prelogin(clock)
    attempt = pending(clock, return_to="/after?x=1", remember=True)
    set_cookie = cookie.add(view_with_cookies({}), attempt)
    assert attempt.state not in set_cookie and attempt.nonce not in set_cookie
    got, rest = cookie.take(view_with_cookies([set_cookie]), attempt.state)
    assert got == attempt
    assert rest is not None and "Max-Age=0" in rest     # nothing left: the cookie goes


def test_prelogin_start_makes_fresh_state_and_nonce(clock: Clock) -> None:
    a, b = pending(clock), pending(clock)
    assert a.state != b.state and a.nonce != b.nonce and a.state != a.nonce
    assert len(a.state) >= 43


def test_prelogin_keeps_at_most_max_pending_dropping_the_oldest(clock: Clock) -> None:
    cookie = make_prelogin(clock)
    attempts = []
    set_cookie = ""
    for _ in range(MAX_PENDING + 2):
        attempt = pending(clock)
        attempts.append(attempt)
        set_cookie = cookie.add(view_with_cookies([set_cookie] if set_cookie else {}), attempt)
        clock.advance(1)
    kept = cookie.read(view_with_cookies([set_cookie]))
    assert kept == attempts[-MAX_PENDING:]
    assert cookie.take(view_with_cookies([set_cookie]), attempts[0].state) == (None, None)


def test_prelogin_drops_attempts_older_than_lifetime(clock: Clock) -> None:
    cookie = make_prelogin(clock)
    old = pending(clock)
    set_cookie = cookie.add(view_with_cookies({}), old)
    clock.advance(LIFETIME / 2)
    young = pending(clock)
    set_cookie = cookie.add(view_with_cookies([set_cookie]), young)
    clock.advance(LIFETIME / 2 - 1)
    assert cookie.read(view_with_cookies([set_cookie])) == [old, young]
    clock.advance(1)
    assert cookie.read(view_with_cookies([set_cookie])) == [young]
    assert cookie.take(view_with_cookies([set_cookie]), old.state) == (None, None)
    clock.advance(LIFETIME)
    assert cookie.read(view_with_cookies([set_cookie])) == []


def test_prelogin_drops_attempts_from_the_future(clock: Clock) -> None:
    cookie = make_prelogin(clock)
    set_cookie = cookie.add(view_with_cookies({}), pending(clock))
    clock.advance(-1)
    assert cookie.read(view_with_cookies([set_cookie])) == []


def test_prelogin_take_unknown_state(clock: Clock) -> None:
    cookie = make_prelogin(clock)
    set_cookie = cookie.add(view_with_cookies({}), pending(clock))
    assert cookie.take(view_with_cookies([set_cookie]), "unknown-state") == (None, None)
    assert cookie.take(view_with_cookies([set_cookie]), "") == (None, None)
    assert cookie.take(view_with_cookies({}), "anything") == (None, None)


def test_prelogin_take_removes_only_the_matching_entry(clock: Clock) -> None:
    cookie = make_prelogin(clock)
    attempts = [pending(clock, return_to=f"/{i}") for i in range(3)]
    set_cookie = ""
    for attempt in attempts:
        set_cookie = cookie.add(view_with_cookies([set_cookie] if set_cookie else {}), attempt)
    got, rest = cookie.take(view_with_cookies([set_cookie]), attempts[1].state)
    assert got == attempts[1]
    assert rest is not None
    assert cookie.read(view_with_cookies([rest])) == [attempts[0], attempts[2]]
    # The state is single-use: the cookie without it no longer has it.
    assert cookie.take(view_with_cookies([rest]), attempts[1].state) == (None, None)


def test_prelogin_tampered_cookie_reads_as_empty(clock: Clock) -> None:
    cookie = make_prelogin(clock)
    attempt = pending(clock)
    value = cookie.add(view_with_cookies({}), attempt).split(";", 1)[0].split("=", 1)[1]
    for index in (0, len(value) // 2, len(value) - 1):
        char = "A" if value[index] != "A" else "B"
        tampered = value[:index] + char + value[index + 1:]
        view = view_with_cookies({cookie.name: tampered})
        assert cookie.read(view) == []
        assert cookie.take(view, attempt.state) == (None, None)
    assert cookie.read(view_with_cookies({cookie.name: "not-a-token"})) == []


def test_prelogin_cookie_of_another_name_or_key_reads_as_empty(clock: Clock) -> None:
    one = make_prelogin(clock, base="one")
    value = one.add(view_with_cookies({}), pending(clock)).split(";", 1)[0].split("=", 1)[1]
    two = make_prelogin(clock, base="two")
    assert two.read(view_with_cookies({two.name: value})) == []
    other_key = make_prelogin(clock, keyring=KeyRing.generate(), base="one")
    assert other_key.read(view_with_cookies({one.name: value})) == []


def test_prelogin_cookie_with_wrong_shape_reads_as_empty(clock: Clock) -> None:
    cookie = make_prelogin(clock)
    for payload in (b"{}", b"[1]", b'[["s","n","v","/",1]]', b'[["s","n","v","/","t",false]]',
                    b'[["s","n","v",1,1,false]]', b"not json"):
        token = RING.encrypt(payload, f"secure_mw/prelogin:{cookie.name}".encode())
        assert cookie.read(view_with_cookies({cookie.name: token})) == [], payload


def test_prelogin_write_without_attempts_deletes(clock: Clock) -> None:
    assert "Max-Age=0" in make_prelogin(clock).write([])


# =========================================================================================
# provider metadata
# =========================================================================================


def metadata_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/auth",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "userinfo_endpoint": f"{ISSUER}/me",
        "end_session_endpoint": f"{ISSUER}/logout",
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def test_metadata_parse_reads_the_endpoints() -> None:
    meta = ProviderMetadata.parse(metadata_doc(), ISSUER)
    assert meta.issuer == ISSUER
    assert meta.authorization_endpoint == f"{ISSUER}/auth"
    assert meta.token_endpoint == f"{ISSUER}/token"
    assert meta.jwks_uri == f"{ISSUER}/jwks"
    assert meta.userinfo_endpoint == f"{ISSUER}/me"
    assert meta.end_session_endpoint == f"{ISSUER}/logout"
    assert meta.revocation_endpoint is None
    assert meta.iss_parameter_supported is True


@pytest.mark.parametrize("issuer", [ISSUER + "/", "https://IDP.example.test",
                                    "https://other.example.test", None, 5])
def test_metadata_issuer_must_match_exactly(issuer: object) -> None:
    with pytest.raises(StoreUnavailable, match="issuer"):
        ProviderMetadata.parse(metadata_doc(issuer=issuer), ISSUER)


@pytest.mark.parametrize("data", [None, [], "text", 3])
def test_metadata_must_be_an_object(data: object) -> None:
    with pytest.raises(StoreUnavailable):
        ProviderMetadata.parse(data, ISSUER)


@pytest.mark.parametrize("name", ["authorization_endpoint", "token_endpoint", "jwks_uri"])
def test_metadata_required_endpoint_missing(name: str) -> None:
    doc = metadata_doc()
    del doc[name]
    with pytest.raises(StoreUnavailable, match=name):
        ProviderMetadata.parse(doc, ISSUER)


@pytest.mark.parametrize("url", [
    "http://idp.example.test/token",
    "ftp://idp.example.test/token",
    "/token",
    "https://user:pw@idp.example.test/token",
    "https://idp.example.test/to ken",
])
def test_metadata_refuses_unsafe_endpoints(url: str) -> None:
    with pytest.raises(StoreUnavailable, match="token_endpoint"):
        ProviderMetadata.parse(metadata_doc(token_endpoint=url), ISSUER)


@pytest.mark.parametrize("name", ["userinfo_endpoint", "end_session_endpoint",
                                  "revocation_endpoint"])
def test_metadata_optional_endpoints_are_checked_too(name: str) -> None:
    with pytest.raises(StoreUnavailable, match=name):
        ProviderMetadata.parse(metadata_doc(**{name: "http://idp.example.test/x"}), ISSUER)
    with pytest.raises(StoreUnavailable, match=name):
        ProviderMetadata.parse(metadata_doc(**{name: 42}), ISSUER)


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost", "[::1]:9000"])
def test_metadata_accepts_http_to_loopback(host: str) -> None:
    meta = ProviderMetadata.parse(metadata_doc(token_endpoint=f"http://{host}/token"), ISSUER)
    assert meta.token_endpoint == f"http://{host}/token"


def test_metadata_without_s256_is_refused() -> None:
    with pytest.raises(StoreUnavailable, match="S256"):
        ProviderMetadata.parse(metadata_doc(code_challenge_methods_supported=["plain"]),
                               ISSUER)
    with pytest.raises(StoreUnavailable, match="S256"):
        ProviderMetadata.parse(metadata_doc(code_challenge_methods_supported=[]), ISSUER)


def test_metadata_not_listing_pkce_methods_is_accepted() -> None:
    doc = metadata_doc()
    del doc["code_challenge_methods_supported"]
    assert ProviderMetadata.parse(doc, ISSUER).token_endpoint == f"{ISSUER}/token"


@pytest.mark.parametrize("value", ["true", 1, None])
def test_metadata_iss_parameter_only_when_exactly_true(value: object) -> None:
    doc = metadata_doc(authorization_response_iss_parameter_supported=value)
    assert ProviderMetadata.parse(doc, ISSUER).iss_parameter_supported is False


# =========================================================================================
# PKCE and the authorization request
# =========================================================================================


def test_pkce_pair() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", verifier)
    assert challenge == b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
    assert "=" not in challenge
    assert pkce_pair()[0] != verifier


def oidc_settings(**oidc: Any) -> Any:
    data: dict[str, Any] = {"issuer": ISSUER, "client_id": CLIENT_ID, "client_secret": SECRET}
    data.update(oidc)
    settings = Settings.from_mapping({"oidc": data}, environ={})
    assert settings.oidc is not None
    return settings.oidc


SIGNING_KEY = SigningKey.generate("ES256")


def make_client(clock: Clock, monotonic: Clock | None = None, key: SigningKey = SIGNING_KEY,
                **oidc: Any) -> OIDCClient:
    """A client whose metadata and id_token keys are already known (no discovery)."""
    mono = monotonic or Clock(1000.0)
    client = OIDCClient(oidc_settings(**oidc), clock=clock, monotonic=mono)
    client._metadata = ProviderMetadata.parse(metadata_doc(), ISSUER)
    client._metadata_until = mono() + 10 * METADATA_TTL
    client._verifier = JWTVerifier(KeySet.from_dict({"keys": [key.public_jwk()]}),
                                   issuer=ISSUER, audience=CLIENT_ID,
                                   algorithms=ID_TOKEN_ALGORITHMS, clock=clock)
    return client


def test_authorization_url_parameters(clock: Clock) -> None:
    client = make_client(clock, scopes=["openid", "email", "groups"])
    meta = run_sync(client.metadata())
    url = client.authorization_url(meta, redirect_uri="https://app.test/.auth/callback",
                                   state="st", nonce="no", code_challenge="ch",
                                   extra={"prompt": "login"})
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{ISSUER}/auth"
    assert parse_qs(parts.query) == {
        "response_type": ["code"], "client_id": [CLIENT_ID],
        "redirect_uri": ["https://app.test/.auth/callback"], "scope": ["openid email groups"],
        "state": ["st"], "nonce": ["no"], "code_challenge": ["ch"],
        "code_challenge_method": ["S256"], "prompt": ["login"],
    }
    assert "scope=openid%20email%20groups" in parts.query


def test_authorization_url_keeps_the_endpoint_query(clock: Clock) -> None:
    client = make_client(clock)
    meta = ProviderMetadata.parse(
        metadata_doc(authorization_endpoint=f"{ISSUER}/auth?tenant=t1&x=%2F"), ISSUER)
    url = client.authorization_url(meta, redirect_uri="https://app.test/cb", state="s",
                                   nonce="n", code_challenge="c")
    assert url.startswith(f"{ISSUER}/auth?tenant=t1&x=%2F&response_type=code&")
    query = parse_qs(urlsplit(url).query)
    assert query["tenant"] == ["t1"] and query["x"] == ["/"] and query["state"] == ["s"]


def test_end_session_url(clock: Clock) -> None:
    client = make_client(clock)
    meta = run_sync(client.metadata())
    url = client.end_session_url(meta, id_token_hint="tok", state="s",
                                 post_logout_redirect_uri="https://app.test/.auth/logged-out")
    assert url is not None
    assert parse_qs(urlsplit(url).query) == {
        "client_id": [CLIENT_ID], "state": ["s"], "id_token_hint": ["tok"],
        "post_logout_redirect_uri": ["https://app.test/.auth/logged-out"]}
    no_logout = ProviderMetadata.parse(metadata_doc(end_session_endpoint=None), ISSUER)
    assert client.end_session_url(no_logout, id_token_hint=None, state="s",
                                  post_logout_redirect_uri="https://a.test/") is None


# =========================================================================================
# metadata caching (driving the flow by hand: no network)
# =========================================================================================


def test_metadata_is_served_from_cache_without_io(clock: Clock) -> None:
    client = make_client(clock)
    flow = client.metadata()
    with pytest.raises(StopIteration) as stop:
        next(flow)
    assert stop.value.value is client._metadata


def test_metadata_is_fetched_when_stale_and_cached_for_an_hour(clock: Clock) -> None:
    mono = Clock(1000.0)
    client = OIDCClient(oidc_settings(), clock=clock, monotonic=mono)
    assert client.discovery_url == f"{ISSUER}/.well-known/openid-configuration"
    flow = client.metadata()
    op = next(flow)
    assert isinstance(op, Op)
    assert op.args == (client.discovery_url, None)
    with pytest.raises(StopIteration) as stop:
        flow.send((metadata_doc(), {}))
    meta = stop.value.value
    assert isinstance(meta, ProviderMetadata) and meta.jwks_uri == f"{ISSUER}/jwks"
    assert client._verifier is not None
    mono.advance(METADATA_TTL - 1)
    with pytest.raises(StopIteration):
        next(client.metadata())
    mono.advance(1)
    assert isinstance(next(client.metadata()), Op)


def test_metadata_failed_refresh_keeps_the_old_copy(clock: Clock) -> None:
    mono = Clock(1000.0)
    client = make_client(clock, monotonic=mono)
    cached = client._metadata
    mono.now = client._metadata_until
    flow = client.metadata()
    next(flow)
    with pytest.raises(StopIteration) as stop:
        flow.throw(StoreUnavailable("idp down"))
    assert stop.value.value is cached
    assert client._metadata_until == mono() + METADATA_RETRY


def test_metadata_first_failure_is_not_retried_for_ten_seconds(clock: Clock) -> None:
    mono = Clock(1000.0)
    client = OIDCClient(oidc_settings(), clock=clock, monotonic=mono)
    flow = client.metadata()
    next(flow)
    with pytest.raises(StoreUnavailable, match="idp down"):
        flow.throw(StoreUnavailable("idp down"))
    mono.advance(METADATA_RETRY - 0.1)
    with pytest.raises(StoreUnavailable, match="moments ago"):
        next(client.metadata())
    mono.advance(0.1)
    assert isinstance(next(client.metadata()), Op)


def test_metadata_of_another_issuer_is_a_failure(clock: Clock) -> None:
    client = OIDCClient(oidc_settings(), clock=clock, monotonic=Clock(1000.0))
    flow = client.metadata()
    next(flow)
    with pytest.raises(StoreUnavailable, match="issuer"):
        flow.send((metadata_doc(issuer="https://evil.example.test"), {}))
    assert client._metadata is None


# =========================================================================================
# id_token validation (OpenID Connect Core 3.1.3.7)
# =========================================================================================


def id_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "alice",
                              "iat": int(NOW), "exp": int(NOW) + 300, "nonce": "n-1"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def at_hash(access_token: str, hash_name: str = "sha256") -> str:
    digest = hashlib.new(hash_name, access_token.encode("ascii")).digest()
    return b64url_encode(digest[: len(digest) // 2])


def validate(client: OIDCClient, claims: Mapping[str, Any], *, nonce: str | None = "n-1",
             access_token: str | None = None, key: SigningKey = SIGNING_KEY) -> dict[str, Any]:
    token = sign(claims, key)
    return run_sync(client.validate_id_token(token, nonce=nonce, access_token=access_token))


def test_valid_id_token_gives_its_claims(clock: Clock) -> None:
    claims = validate(make_client(clock), id_claims(email="a@example.test"))
    assert claims["sub"] == "alice" and claims["email"] == "a@example.test"


def test_valid_id_token_async_gives_the_same_claims(clock: Clock) -> None:
    client = make_client(clock)
    token = sign(id_claims(), SIGNING_KEY)
    flow = client.validate_id_token(token, nonce="n-1", access_token=None)
    assert asyncio.run(run_async(flow)) == \
        run_sync(client.validate_id_token(token, nonce="n-1", access_token=None))


def test_id_token_signed_by_another_key_is_refused(clock: Clock) -> None:
    with pytest.raises(InvalidToken):
        validate(make_client(clock), id_claims(), key=SigningKey.generate("ES256"))


def test_id_token_of_another_issuer_or_audience_is_refused(clock: Clock) -> None:
    client = make_client(clock)
    with pytest.raises(InvalidToken):
        validate(client, id_claims(iss="https://other.example.test"))
    with pytest.raises(InvalidToken):
        validate(client, id_claims(aud="other-client"))


def test_id_token_above_max_token_size_is_refused_naming_the_setting(clock: Clock) -> None:
    client = make_client(clock, max_token_size="2KiB")
    big = id_claims(groups=[f"group-{i:03d}" for i in range(200)])
    with pytest.raises(TokenTooLarge) as refused:
        validate(client, big)
    assert refused.value.limit == 2048 and refused.value.size > 2048
    assert "raise oidc.max_token_size" in str(refused.value)
    assert isinstance(refused.value, InvalidToken)
    assert validate(client, id_claims())["sub"] == "alice"       # small ones still pass


def test_expired_id_token_is_refused(clock: Clock) -> None:
    client = make_client(clock)
    clock.advance(3600)
    with pytest.raises(InvalidToken):
        validate(client, id_claims())


@pytest.mark.parametrize("nonce_claim", ["n-2", "", None, 12, "n-1 "])
def test_nonce_mismatch_is_refused(clock: Clock, nonce_claim: object) -> None:
    with pytest.raises(InvalidToken, match="nonce"):
        validate(make_client(clock), id_claims(nonce=nonce_claim))


def test_nonce_is_not_checked_when_none_is_expected(clock: Clock) -> None:
    # A refreshed id_token carries no nonce (or the original one).
    assert validate(make_client(clock), id_claims(nonce=None), nonce=None)["sub"] == "alice"


def test_several_audiences_without_azp_are_refused(clock: Clock) -> None:
    with pytest.raises(InvalidToken, match="azp"):
        validate(make_client(clock), id_claims(aud=[CLIENT_ID, "other"]))


def test_several_audiences_with_our_azp_are_accepted(clock: Clock) -> None:
    claims = validate(make_client(clock), id_claims(aud=[CLIENT_ID, "other"], azp=CLIENT_ID))
    assert claims["azp"] == CLIENT_ID


def test_single_audience_list_without_azp_is_accepted(clock: Clock) -> None:
    assert validate(make_client(clock), id_claims(aud=[CLIENT_ID]))["sub"] == "alice"


@pytest.mark.parametrize("aud", [CLIENT_ID, [CLIENT_ID, "other"]])
def test_azp_of_another_client_is_refused(clock: Clock, aud: object) -> None:
    with pytest.raises(InvalidToken, match="azp"):
        validate(make_client(clock), id_claims(aud=aud, azp="other"))


def test_at_hash_matching_the_access_token_passes(clock: Clock) -> None:
    claims = validate(make_client(clock), id_claims(at_hash=at_hash("access-token-1")),
                      access_token="access-token-1")
    assert claims["at_hash"] == at_hash("access-token-1")


@pytest.mark.parametrize("value", [at_hash("another-token"), at_hash("access-token-1")[:-1],
                                   at_hash("access-token-1", "sha512"), "", 42])
def test_at_hash_not_matching_is_refused(clock: Clock, value: object) -> None:
    with pytest.raises(InvalidToken, match="at_hash"):
        validate(make_client(clock), id_claims(at_hash=value), access_token="access-token-1")


def test_at_hash_is_not_checked_without_an_access_token(clock: Clock) -> None:
    assert validate(make_client(clock), id_claims(at_hash="whatever"))["sub"] == "alice"


def test_at_hash_for_rs256(clock: Clock) -> None:
    key = SigningKey.generate("RS256")
    client = make_client(clock, key=key)
    validate(client, id_claims(at_hash=at_hash("tok")), access_token="tok", key=key)
    with pytest.raises(InvalidToken, match="at_hash"):
        validate(client, id_claims(at_hash=at_hash("tok", "sha512")), access_token="tok",
                 key=key)


def test_at_hash_for_eddsa_uses_sha512(clock: Clock) -> None:
    key = SigningKey.generate("EdDSA")
    client = make_client(clock, key=key)
    validate(client, id_claims(at_hash=at_hash("tok", "sha512")), access_token="tok", key=key)


def test_at_hash_with_a_non_ascii_access_token_is_refused_cleanly(clock: Clock) -> None:
    with pytest.raises(InvalidToken):
        validate(make_client(clock), id_claims(at_hash="x"), access_token="t\u00f6ken")


@pytest.mark.parametrize("sub", [None, "", 42, ["alice"], "x" * 256])
def test_sub_missing_or_malformed_is_refused(clock: Clock, sub: object) -> None:
    with pytest.raises(InvalidToken, match="sub"):
        validate(make_client(clock), id_claims(sub=sub))


def test_sub_of_255_characters_is_accepted(clock: Clock) -> None:
    assert validate(make_client(clock), id_claims(sub="x" * 255))["sub"] == "x" * 255


# =========================================================================================
# client authentication at the token endpoint
# =========================================================================================


def decode_basic(headers: Mapping[str, str]) -> tuple[str, str]:
    scheme, _, value = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    pair = base64.b64decode(value, validate=True).decode("ascii")
    assert pair.count(":") == 1          # the separator is the only raw colon
    client_id, _, secret = pair.partition(":")
    return client_id, secret


def test_client_secret_basic_form_urlencodes_both_parts(clock: Clock) -> None:
    secret = "p:a%s/s w+rd\u00e9"
    client = make_client(clock, client_id="urn:app:1", client_secret=secret)
    form: dict[str, str] = {"grant_type": "authorization_code"}
    headers = client._client_auth(form)
    assert form == {"grant_type": "authorization_code"}    # nothing in the form
    raw_id, raw_secret = decode_basic(headers)
    assert "%3A" in raw_id and "%25" in raw_secret and "%3A" in raw_secret
    assert unquote(raw_id) == "urn:app:1"
    assert unquote(raw_secret) == secret


def test_client_secret_basic_plain_values(clock: Clock) -> None:
    headers = make_client(clock)._client_auth({})
    assert headers == {"Authorization": "Basic " + base64.b64encode(
        f"{CLIENT_ID}:{SECRET}".encode()).decode()}


def test_client_secret_post_puts_both_in_the_form(clock: Clock) -> None:
    client = make_client(clock, token_endpoint_auth_method="client_secret_post",
                         client_secret="p:a%ss")
    form: dict[str, str] = {"grant_type": "refresh_token"}
    assert client._client_auth(form) == {}
    assert form == {"grant_type": "refresh_token", "client_id": CLIENT_ID,
                    "client_secret": "p:a%ss"}


def test_public_client_sends_only_its_id(clock: Clock) -> None:
    client = make_client(clock, token_endpoint_auth_method="none", client_secret=None)
    form: dict[str, str] = {}
    assert client._client_auth(form) == {}
    assert form == {"client_id": CLIENT_ID}


# =========================================================================================
# token endpoint with a faked provider
# =========================================================================================


class FakeTokenEndpoint:
    """Answers token requests with a fixed reply and records what was sent."""

    def __init__(self, status: int, data: Any) -> None:
        self.status = status
        self.data = data
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []

    def __call__(self, url: str, form: Mapping[str, str],
                 headers: Mapping[str, str]) -> tuple[int, Any, Any]:
        self.requests.append((url, dict(form), dict(headers)))
        return self.status, self.data, {}

    async def acall(self, url: str, form: Mapping[str, str],
                    headers: Mapping[str, str]) -> tuple[int, Any, Any]:
        return self(url, form, headers)


def fake_provider(monkeypatch: pytest.MonkeyPatch, client: OIDCClient, status: int,
                  data: Any) -> FakeTokenEndpoint:
    endpoint = FakeTokenEndpoint(status, data)
    monkeypatch.setattr(client, "_post_form", endpoint)
    monkeypatch.setattr(client, "_apost_form", endpoint.acall)
    return endpoint


def token_response(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "access_token": "at-1", "token_type": "Bearer", "expires_in": 300,
        "refresh_token": "rt-1",
        "id_token": sign(id_claims(at_hash=at_hash("at-1")), SIGNING_KEY),
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def exchange(client: OIDCClient, nonce: str = "n-1") -> Any:
    return run_sync(client.exchange_code(code="c-1", code_verifier="v" * 64,
                                         redirect_uri="https://app.test/.auth/callback",
                                         nonce=nonce))


def test_exchange_code_sends_the_grant_and_validates_the_id_token(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(clock)
    endpoint = fake_provider(monkeypatch, client, 200, token_response())
    tokens = exchange(client)
    assert tokens.access_token == "at-1" and tokens.refresh_token == "rt-1"
    assert tokens.expires_at == NOW + 300
    assert tokens.id_claims is not None and tokens.id_claims["sub"] == "alice"
    url, form, headers = endpoint.requests[0]
    assert url == f"{ISSUER}/token"
    assert form == {"grant_type": "authorization_code", "code": "c-1",
                    "redirect_uri": "https://app.test/.auth/callback",
                    "code_verifier": "v" * 64}
    assert decode_basic(headers) == (CLIENT_ID, SECRET)


def test_exchange_code_async_matches(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(clock)
    fake_provider(monkeypatch, client, 200, token_response())
    flow = client.exchange_code(code="c-1", code_verifier="v" * 64,
                                redirect_uri="https://app.test/cb", nonce="n-1")
    assert asyncio.run(run_async(flow)).access_token == "at-1"


def test_exchange_code_refuses_a_wrong_nonce(clock: Clock,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(clock)
    fake_provider(monkeypatch, client, 200, token_response())
    with pytest.raises(InvalidToken, match="nonce"):
        exchange(client, nonce="n-other")


def test_exchange_code_requires_an_id_token(clock: Clock,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(clock)
    fake_provider(monkeypatch, client, 200, token_response(id_token=None))
    with pytest.raises(InvalidToken, match="id_token"):
        exchange(client)


def test_exchange_code_refuses_an_id_token_for_another_access_token(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(clock)
    fake_provider(monkeypatch, client, 200, token_response(access_token="at-swapped"))
    with pytest.raises(InvalidToken, match="at_hash"):
        exchange(client)


def test_exchange_code_grant_refused(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(clock)
    fake_provider(monkeypatch, client, 400, {"error": "invalid_grant",
                                             "error_description": "code used"})
    with pytest.raises(GrantRefused) as info:
        exchange(client)
    assert (info.value.error, info.value.description) == ("invalid_grant", "code used")


@pytest.mark.parametrize("data", [
    "not json",
    {"token_type": "Bearer"},
    {"access_token": "", "token_type": "Bearer"},
    {"access_token": "at", "token_type": "mac"},
    {"access_token": "at"},
])
def test_exchange_code_malformed_response_is_a_provider_failure(
        clock: Clock, monkeypatch: pytest.MonkeyPatch, data: Any) -> None:
    client = make_client(clock)
    fake_provider(monkeypatch, client, 200, data)
    with pytest.raises(StoreUnavailable):
        exchange(client)


@pytest.mark.parametrize("expires_in", [0, -5, True, "3e5", "", None, 10 * 365 * 86400])
def test_unusable_expires_in_means_the_default_lifetime(
        clock: Clock, monkeypatch: pytest.MonkeyPatch, expires_in: object) -> None:
    """An unknown lifetime must not mean the provider is never asked again."""
    client = make_client(clock)
    fake_provider(monkeypatch, client, 200, token_response(expires_in=expires_in))
    assert exchange(client).expires_at == clock() + DEFAULT_ACCESS_LIFETIME


def test_expires_in_as_digits_is_read(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(clock)
    fake_provider(monkeypatch, client, 200, token_response(expires_in="3599"))
    assert exchange(client).expires_at == clock() + 3599


def test_refresh_keeps_the_old_refresh_token_when_not_rotated(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(clock)
    endpoint = fake_provider(monkeypatch, client, 200,
                             token_response(refresh_token=None, id_token=None))
    tokens = run_sync(client.refresh("rt-old", sub="alice"))
    assert tokens.refresh_token == "rt-old" and tokens.id_claims is None
    assert endpoint.requests[0][1] == {"grant_type": "refresh_token",
                                       "refresh_token": "rt-old"}


def test_refresh_refuses_an_id_token_for_another_subject(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(clock)
    fake_provider(monkeypatch, client, 200, token_response(
        id_token=sign(id_claims(sub="mallory", nonce=None), SIGNING_KEY)))
    with pytest.raises(InvalidToken, match="subject"):
        run_sync(client.refresh("rt-old", sub="alice"))


# =========================================================================================
# local_target: where to go after login
# =========================================================================================


@pytest.mark.parametrize("value", ["/", "/a?b", "/a/b?c=d&e=%2F#frag", "/x;y=1,2~!$'()*+:@[]",
                                   "/" + "a" * 1023])
def test_local_target_accepts_local_paths(value: str) -> None:
    assert local_target(value) == value


def test_local_target_percent_encodes_non_ascii() -> None:
    assert local_target("/caf\u00e9?q=\u65e5") == "/caf%C3%A9?q=%E6%97%A5"
    assert local_target("/a\u2028b") == "/a%E2%80%A8b"
    assert local_target("/a\u0085b") == "/a%C2%85b"


@pytest.mark.parametrize("value", [
    None, "", "a/b", "//evil.test", "//evil.test/path", "/\\evil.test", "/a\\b", "\\\\x",
    "http://evil.test", "https://evil.test/", "javascript:alert(1)", "/a\nb", "/a\rb",
    "/a\tb", "/a b", "/\x00", "/\x7f", "/" + "a" * 2048,
])
def test_local_target_refuses_other_hosts_and_odd_paths(value: str | None) -> None:
    assert local_target(value) is None
