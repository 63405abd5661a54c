"""The test OpenID provider (integrations/idp) and its fixture (tests/idp.py), with httpx alone.

One IdP serves the whole module: two confidential clients (client_secret_basic and
client_secret_post) and two users. Every test logs in with its own ``httpx.Client``, so no
test sees another's IdP session.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from secure_mw.errors import InvalidToken
from secure_mw.tokens import JWTVerifier, KeySet, public_jwks
from tests.idp import IdPServer, dev_login, rp_logout

pytestmark = pytest.mark.external("node")

BASIC: dict[str, Any] = {
    "client_id": "rp-basic",
    "client_secret": "basic-secret-" + "b" * 32,
    "redirect_uris": ["http://rp-basic.test/callback"],
    "post_logout_redirect_uris": ["http://rp-basic.test/signed-out"],
    "token_endpoint_auth_method": "client_secret_basic",
    "grant_types": ["authorization_code", "refresh_token"],
    "response_types": ["code"],
}
POST: dict[str, Any] = {
    "client_id": "rp-post",
    "client_secret": "post-secret-" + "p" * 32,
    "redirect_uris": ["http://rp-post.test/callback"],
    "post_logout_redirect_uris": ["http://rp-post.test/signed-out"],
    "token_endpoint_auth_method": "client_secret_post",
    "grant_types": ["authorization_code", "refresh_token"],
    "response_types": ["code"],
}
ALICE: dict[str, Any] = {
    "sub": "alice",
    "password": "alice-password",
    "email": "alice@example.test",
    "email_verified": True,
    "name": "Alice Liddell",
    "groups": ["admins", "staff"],
}
BOB: dict[str, Any] = {
    "sub": "bob",
    "password": "bob-password",
    "email": "bob@example.test",
    "email_verified": False,
    "name": "Bob Builder",
    "groups": ["staff"],
}
SCOPE = "openid profile email groups"


@pytest.fixture(scope="module")
def idp() -> Iterator[IdPServer]:
    server = IdPServer(clients=[BASIC, POST], users=[ALICE, BOB], ttl={"AccessToken": 60})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def meta(idp: IdPServer) -> dict[str, Any]:
    return idp.metadata()


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


# -- a relying party, by hand ------------------------------------------------------------


@dataclass
class Login:
    location: str
    params: dict[str, str]
    state: str
    nonce: str
    verifier: str


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def _query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def authorization_url(
    meta: dict[str, Any], client: dict[str, Any], *, pkce: bool = True, **extra: str
) -> tuple[str, str, str, str]:
    """(url, state, nonce, code_verifier) for an authorization code request."""
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    verifier, challenge = _pkce()
    params = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": client["redirect_uris"][0],
        "scope": SCOPE,
        "state": state,
        "nonce": nonce,
    }
    if pkce:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    params.update(extra)
    return f"{meta['authorization_endpoint']}?{urlencode(params)}", state, nonce, verifier


def login(
    browser: httpx.Client, meta: dict[str, Any], client: dict[str, Any], user: dict[str, Any]
) -> Login:
    url, state, nonce, verifier = authorization_url(meta, client)
    location = dev_login(browser, url, username=user["sub"], password=user["password"])
    assert location.startswith(client["redirect_uris"][0] + "?"), location
    return Login(location, _query(location), state, nonce, verifier)


def _client_auth(client: dict[str, Any], data: dict[str, str]) -> dict[str, Any]:
    """httpx keyword arguments authenticating ``client`` its registered way."""
    if client["token_endpoint_auth_method"] == "client_secret_post":
        return {"data": {**data, "client_id": client["client_id"],
                         "client_secret": client["client_secret"]}}
    return {"data": data, "auth": (client["client_id"], client["client_secret"])}


def token_request(meta: dict[str, Any], client: dict[str, Any], **data: str) -> httpx.Response:
    return httpx.post(meta["token_endpoint"], timeout=10, **_client_auth(client, data))


def exchange(meta: dict[str, Any], client: dict[str, Any], done: Login) -> dict[str, Any]:
    response = token_request(
        meta, client, grant_type="authorization_code", code=done.params["code"],
        redirect_uri=client["redirect_uris"][0], code_verifier=done.verifier,
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def refresh(meta: dict[str, Any], client: dict[str, Any], token: str) -> httpx.Response:
    return token_request(meta, client, grant_type="refresh_token", refresh_token=token)


def verifier_for(idp: IdPServer, meta: dict[str, Any], client: dict[str, Any]) -> JWTVerifier:
    jwks = httpx.get(meta["jwks_uri"], timeout=10).json()
    return JWTVerifier(KeySet.from_dict(jwks), issuer=idp.issuer,
                       audience=client["client_id"], algorithms=("ES256",))


def userinfo(meta: dict[str, Any], access_token: str) -> httpx.Response:
    return httpx.get(meta["userinfo_endpoint"], timeout=10,
                     headers={"Authorization": f"Bearer {access_token}"})


# -- the fixture and discovery -----------------------------------------------------------


def test_discovery_document(idp: IdPServer, meta: dict[str, Any]) -> None:
    assert meta["issuer"] == idp.issuer == f"http://127.0.0.1:{idp.port}"
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
                 "end_session_endpoint", "revocation_endpoint", "introspection_endpoint"):
        assert meta[name].startswith(idp.issuer + "/"), name
    assert "S256" in meta["code_challenge_methods_supported"]
    assert {"openid", "profile", "email", "groups"} <= set(meta["scopes_supported"])
    assert meta["response_types_supported"] == ["code"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert "client_credentials" not in meta["grant_types_supported"]


def test_jwks_is_the_fixture_key(idp: IdPServer, meta: dict[str, Any]) -> None:
    published = httpx.get(meta["jwks_uri"], timeout=10).json()
    expected = public_jwks(idp.jwks_private)
    assert [k["kid"] for k in published["keys"]] == [k["kid"] for k in expected["keys"]]
    assert all("d" not in key for key in published["keys"])
    assert published["keys"][0]["x"] == expected["keys"][0]["x"]


def test_jwks_faults_on_demand(idp: IdPServer, meta: dict[str, Any]) -> None:
    before = idp.jwks_requests()
    try:
        idp.set_jwks("garbage")
        garbage = httpx.get(meta["jwks_uri"], timeout=10)
        assert garbage.status_code == 200
        with pytest.raises(ValueError):
            garbage.json()
        idp.set_jwks("empty")
        assert httpx.get(meta["jwks_uri"], timeout=10).json() == {"keys": []}
        idp.set_jwks("error")
        assert httpx.get(meta["jwks_uri"], timeout=10).status_code == 503
        with pytest.raises(RuntimeError, match="400"):
            idp.set_jwks("nonsense")
    finally:
        idp.set_jwks("normal")
    assert httpx.get(meta["jwks_uri"], timeout=10).json()["keys"]
    assert idp.jwks_requests() == before + 4


def test_config_file_is_private(idp: IdPServer) -> None:
    assert stat.S_IMODE(os.stat(idp.config_path).st_mode) == 0o600


def test_health_and_unknown_test_endpoint(idp: IdPServer) -> None:
    assert httpx.get(idp.url("/__test/health"), timeout=10).status_code == 200
    assert httpx.post(idp.url("/__test/nothing"), timeout=10).status_code == 404
    with pytest.raises(RuntimeError, match="404"):
        idp.disable_user("nobody")


# -- the authorization code flow ---------------------------------------------------------


@pytest.mark.parametrize(("client", "user"), [(BASIC, ALICE), (POST, BOB)],
                         ids=["client_secret_basic", "client_secret_post"])
def test_code_flow_with_pkce(
    idp: IdPServer, meta: dict[str, Any], browser: httpx.Client,
    client: dict[str, Any], user: dict[str, Any],
) -> None:
    done = login(browser, meta, client, user)
    assert done.params["state"] == done.state
    assert done.params["iss"] == idp.issuer  # RFC 9207
    assert "code" in done.params

    tokens = exchange(meta, client, done)
    assert tokens["token_type"] == "Bearer"
    assert {"id_token", "access_token", "refresh_token"} <= tokens.keys()
    assert tokens["expires_in"] <= 60  # the fixture's AccessToken ttl

    claims = verifier_for(idp, meta, client).verify(tokens["id_token"])
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == client["client_id"]
    assert claims["nonce"] == done.nonce
    for name in ("sub", "email", "email_verified", "name", "groups"):
        assert claims[name] == user[name], name

    # The code is single-use.
    again = token_request(
        meta, client, grant_type="authorization_code", code=done.params["code"],
        redirect_uri=client["redirect_uris"][0], code_verifier=done.verifier,
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_userinfo_returns_groups(
    idp: IdPServer, meta: dict[str, Any], browser: httpx.Client
) -> None:
    tokens = exchange(meta, BASIC, login(browser, meta, BASIC, ALICE))
    response = userinfo(meta, tokens["access_token"])
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["sub"] == "alice"
    assert info["groups"] == ["admins", "staff"]
    assert info["email"] == ALICE["email"]
    assert info["name"] == ALICE["name"]


def test_introspection(idp: IdPServer, meta: dict[str, Any], browser: httpx.Client) -> None:
    tokens = exchange(meta, POST, login(browser, meta, POST, BOB))
    response = httpx.post(meta["introspection_endpoint"], timeout=10,
                          **_client_auth(POST, {"token": tokens["access_token"]}))
    assert response.status_code == 200
    assert response.json()["active"] is True
    assert response.json()["sub"] == "bob"


def test_refresh_token_rotates(idp: IdPServer, meta: dict[str, Any], browser: httpx.Client) -> None:
    tokens = exchange(meta, BASIC, login(browser, meta, BASIC, ALICE))
    first = tokens["refresh_token"]

    response = refresh(meta, BASIC, first)
    assert response.status_code == 200, response.text
    renewed = response.json()
    assert renewed["access_token"] != tokens["access_token"]
    assert renewed["refresh_token"] != first  # rotation
    claims = verifier_for(idp, meta, BASIC).verify(renewed["id_token"])
    assert claims["sub"] == "alice"
    assert userinfo(meta, renewed["access_token"]).status_code == 200

    # Reusing the consumed refresh token fails, and revokes the whole grant.
    reused = refresh(meta, BASIC, first)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert refresh(meta, BASIC, renewed["refresh_token"]).status_code == 400


def test_disabled_user_cannot_refresh(
    idp: IdPServer, meta: dict[str, Any], browser: httpx.Client
) -> None:
    tokens = exchange(meta, POST, login(browser, meta, POST, BOB))
    idp.disable_user("bob")
    try:
        response = refresh(meta, POST, tokens["refresh_token"])
        assert response.status_code == 400
        assert response.json() == {
            "error": "invalid_grant", "error_description": "grant request is invalid",
        }
        assert userinfo(meta, tokens["access_token"]).status_code == 401
        with httpx.Client(timeout=10) as other, pytest.raises(AssertionError, match="login form"):
            login(other, meta, POST, BOB)
    finally:
        idp.enable_user("bob")
    # Enabled again: the untouched refresh token works again.
    assert refresh(meta, POST, tokens["refresh_token"]).status_code == 200


def test_wrong_password_does_not_log_in(meta: dict[str, Any], browser: httpx.Client) -> None:
    url, *_ = authorization_url(meta, BASIC)
    with pytest.raises(AssertionError, match="login form again"):
        dev_login(browser, url, username="alice", password="not-her-password")
    with pytest.raises(AssertionError, match="login form again"):
        dev_login(browser, url, username="mallory", password="anything")
    # The same browser can still log in with the right password afterwards.
    location = dev_login(browser, url, username="alice", password=ALICE["password"])
    assert "code" in _query(location)


def test_login_form_cannot_be_bypassed(
    idp: IdPServer, meta: dict[str, Any], browser: httpx.Client
) -> None:
    url, *_ = authorization_url(meta, BASIC)
    page = browser.get(url, follow_redirects=True)
    assert page.status_code == 200 and 'name="password"' in page.text
    # No password at all: back to the login page.
    refused = browser.post(page.url, data={"prompt": "login", "login": "alice"})
    assert refused.status_code == 303
    assert refused.headers["location"] == page.url.path
    # The interaction's cookies presented on another interaction's URL: refused.
    cookies = "; ".join(f"{c.name}={c.value}" for c in browser.cookies.jar)
    other = httpx.post(idp.url("/interaction/not-this-one"), timeout=10,
                       headers={"Cookie": cookies},
                       data={"prompt": "login", "login": "alice", "password": ""})
    assert other.status_code == 400
    location = dev_login(browser, url, username="alice", password=ALICE["password"])
    assert "code" in _query(location)


def test_pkce_is_required(meta: dict[str, Any], browser: httpx.Client) -> None:
    url, state, _, _ = authorization_url(meta, BASIC, pkce=False)
    location = dev_login(browser, url, username="alice", password=ALICE["password"])
    params = _query(location)
    assert location.startswith(BASIC["redirect_uris"][0])
    assert params["error"] == "invalid_request"
    assert "PKCE" in params["error_description"]
    assert params["state"] == state
    assert "code" not in params

    url, *_ = authorization_url(meta, BASIC, pkce=False, code_challenge="x" * 43,
                                code_challenge_method="plain")
    params = _query(dev_login(browser, url, username="alice", password=ALICE["password"]))
    assert params["error"] == "invalid_request"


def test_code_exchange_needs_the_right_verifier(
    meta: dict[str, Any], browser: httpx.Client
) -> None:
    done = login(browser, meta, BASIC, ALICE)
    for verifier in ({}, {"code_verifier": secrets.token_urlsafe(48)}):
        response = token_request(meta, BASIC, grant_type="authorization_code",
                                 code=done.params["code"],
                                 redirect_uri=BASIC["redirect_uris"][0], **verifier)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"


def test_wrong_client_secret_is_refused(meta: dict[str, Any], browser: httpx.Client) -> None:
    done = login(browser, meta, BASIC, ALICE)
    response = httpx.post(meta["token_endpoint"], timeout=10,
                          auth=(BASIC["client_id"], "wrong"),
                          data={"grant_type": "authorization_code", "code": done.params["code"],
                                "redirect_uri": BASIC["redirect_uris"][0],
                                "code_verifier": done.verifier})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


# -- forged ID tokens from the real server -----------------------------------------------


def test_tamper_next_id_token(idp: IdPServer, meta: dict[str, Any], browser: httpx.Client) -> None:
    done = login(browser, meta, BASIC, ALICE)
    idp.tamper_next_id_token({"nonce": "x"})
    tokens = exchange(meta, BASIC, done)
    verifier = verifier_for(idp, meta, BASIC)
    claims = verifier.verify(tokens["id_token"])  # still validly signed by the IdP's key
    assert claims["nonce"] == "x"
    assert claims["sub"] == "alice"

    # One-shot: the next token response is untouched.
    renewed = refresh(meta, BASIC, tokens["refresh_token"]).json()
    assert verifier.verify(renewed["id_token"]).get("nonce") != "x"


def test_tamper_can_remove_claims_and_break_validation(
    idp: IdPServer, meta: dict[str, Any], browser: httpx.Client
) -> None:
    done = login(browser, meta, POST, BOB)
    idp.tamper_next_id_token({"aud": "someone-else", "exp": 1_000_000}, remove=["nonce"])
    tokens = exchange(meta, POST, done)
    with pytest.raises(InvalidToken):
        verifier_for(idp, meta, POST).verify(tokens["id_token"])
    header, payload = (
        base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        for part in tokens["id_token"].split(".")[:2]
    )
    assert b'"kid"' in header
    assert b'"nonce"' not in payload
    assert b'"aud":"someone-else"' in payload


# -- revocation and logout ---------------------------------------------------------------


def test_revocation_revokes_refresh_token(
    meta: dict[str, Any], browser: httpx.Client
) -> None:
    tokens = exchange(meta, POST, login(browser, meta, POST, BOB))
    response = httpx.post(meta["revocation_endpoint"], timeout=10, **_client_auth(
        POST, {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}))
    assert response.status_code == 200
    failed = refresh(meta, POST, tokens["refresh_token"])
    assert failed.status_code == 400
    assert failed.json()["error"] == "invalid_grant"


def test_rp_initiated_logout(meta: dict[str, Any], browser: httpx.Client) -> None:
    tokens = exchange(meta, BASIC, login(browser, meta, BASIC, ALICE))
    state = secrets.token_urlsafe(12)
    url = meta["end_session_endpoint"] + "?" + urlencode({
        "id_token_hint": tokens["id_token"],
        "post_logout_redirect_uri": BASIC["post_logout_redirect_uris"][0],
        "state": state,
    })
    location = rp_logout(browser, url)
    assert location == f"{BASIC['post_logout_redirect_uris'][0]}?state={state}"

    # logout=yes revokes the grants of the session: its tokens are dead.
    assert refresh(meta, BASIC, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert userinfo(meta, tokens["access_token"]).status_code == 401

    # The IdP session is gone: a new authorization asks for the password again.
    url, *_ = authorization_url(meta, BASIC)
    with pytest.raises(AssertionError, match="login form again"):
        dev_login(browser, url, username="alice", password="wrong")


def test_logout_with_client_id_and_no_session(meta: dict[str, Any], browser: httpx.Client) -> None:
    url = meta["end_session_endpoint"] + "?" + urlencode({
        "client_id": POST["client_id"],
        "post_logout_redirect_uri": POST["post_logout_redirect_uris"][0],
        "state": "s1",
    })
    assert rp_logout(browser, url) == f"{POST['post_logout_redirect_uris'][0]}?state=s1"


def test_unregistered_post_logout_redirect_uri_is_refused(
    meta: dict[str, Any], browser: httpx.Client
) -> None:
    url = meta["end_session_endpoint"] + "?" + urlencode({
        "client_id": BASIC["client_id"],
        "post_logout_redirect_uri": "http://evil.test/",
        "state": "s",
    })
    response = browser.get(url, follow_redirects=False)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "post_logout_redirect_uri" in response.json()["error_description"]
    with pytest.raises(AssertionError, match="refused the logout"):
        rp_logout(browser, url)


def test_localhost_issuer() -> None:
    server = IdPServer(clients=[BASIC], users=[ALICE], host="localhost")
    with server:
        meta = server.metadata()
        assert meta["issuer"] == f"http://localhost:{server.port}"
        assert meta["token_endpoint"].startswith(f"http://localhost:{server.port}/")
        with httpx.Client(timeout=10) as browser:
            done = login(browser, meta, BASIC, ALICE)
        assert done.params["iss"] == server.issuer
    assert server.proc is None
