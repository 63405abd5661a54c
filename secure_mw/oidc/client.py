"""The OpenID Connect relying party: discovery, code flow with PKCE, id_token validation,
userinfo, refresh and RP-initiated logout.

Every method that talks to the provider is a flow (:mod:`secure_mw._driver`): the same code
runs blocking under WSGI and awaited under ASGI. All HTTP goes through
:mod:`secure_mw.outbound`; an unreachable or misbehaving provider raises
:class:`~secure_mw.errors.StoreUnavailable`, a refused token or grant raises
:class:`~secure_mw.errors.InvalidToken` (or :class:`GrantRefused`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from secure_mw import outbound
from secure_mw._driver import Flow, Op
from secure_mw._encoding import b64url_encode
from secure_mw.errors import InvalidToken, SecureMWError, StoreUnavailable
from secure_mw.settings import OIDCSettings
from secure_mw.tokens import JWTVerifier, RemoteKeySet, SigningKey, sign
from secure_mw.tokens.keys import client_signing_key

__all__ = ["GrantRefused", "OIDCClient", "ProviderMetadata", "TokenSet", "TokenTooLarge",
           "pkce_pair"]

# id_token algorithms we accept from a provider (RFC 8725: an explicit allow-list).
ID_TOKEN_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
# at_hash: the left half of this hash of the access token (EdDSA: Ed25519's SHA-512).
_AT_HASH = {"RS256": hashlib.sha256, "PS256": hashlib.sha256, "ES256": hashlib.sha256,
            "EdDSA": hashlib.sha512}
# Providers put every group in the id_token; directory users can have hundreds. The cap is
# oidc.max_token_size; this is its default.
ID_TOKEN_MAX_SIZE = 64 * 1024
# An id_token larger than this is not kept for the logout's id_token_hint (a URL of the
# provider's, which servers cap at 8-16 KB); the logout names the client instead.
ID_TOKEN_HINT_MAX = 4096
METADATA_TTL = 3600.0
DEFAULT_ACCESS_LIFETIME = 300.0
_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
METADATA_RETRY = 10.0
#: The event a logout token must carry (Back-Channel Logout 1.0 §2.4).
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
#: Logout tokens are small (a few claims); anything larger is refused before parsing.
LOGOUT_TOKEN_MAX_SIZE = 8192


class GrantRefused(SecureMWError):
    """The provider answered a token request with an OAuth error (``invalid_grant`` …)."""

    status = 400

    def __init__(self, error: str, description: str = "") -> None:
        super().__init__(f"the provider refused the grant: {error}")
        self.error = error
        self.description = description


class TokenTooLarge(InvalidToken):
    """An id_token above ``oidc.max_token_size``; the message says what to raise."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the id_token is {size} bytes, above oidc.max_token_size ({limit} "
                         "bytes): raise oidc.max_token_size (e.g. \"256KiB\") to accept it")
        self.size = size
        self.limit = limit


def pkce_pair() -> tuple[str, str]:
    """``(verifier, S256 challenge)`` per RFC 7636."""
    verifier = secrets.token_urlsafe(48)  # 64 characters
    challenge = b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
    return verifier, challenge


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    revocation_endpoint: str | None = None
    iss_parameter_supported: bool = False

    @classmethod
    def parse(cls, data: object, issuer: str) -> ProviderMetadata:
        if not isinstance(data, dict):
            raise StoreUnavailable("provider metadata is not a JSON object")
        if data.get("issuer") != issuer:
            raise StoreUnavailable("provider metadata names another issuer "
                                   "(it must equal oidc.issuer exactly)")
        methods = data.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise StoreUnavailable("the provider does not support PKCE S256")

        def endpoint(name: str, required: bool) -> str | None:
            value = data.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str):
                raise StoreUnavailable(f"provider metadata lacks {name}")
            try:
                outbound.check_url(value)
            except ValueError as exc:
                raise StoreUnavailable(f"provider metadata {name}: {exc}") from None
            return value

        return cls(
            issuer=issuer,
            authorization_endpoint=str(endpoint("authorization_endpoint", True)),
            token_endpoint=str(endpoint("token_endpoint", True)),
            jwks_uri=str(endpoint("jwks_uri", True)),
            userinfo_endpoint=endpoint("userinfo_endpoint", False),
            end_session_endpoint=endpoint("end_session_endpoint", False),
            revocation_endpoint=endpoint("revocation_endpoint", False),
            iss_parameter_supported=data.get("authorization_response_iss_parameter_supported")
            is True,
        )


@dataclass(frozen=True, slots=True)
class TokenSet:
    """The useful part of a token endpoint response, with the validated id_token claims."""

    access_token: str = field(repr=False)
    expires_at: float
    refresh_token: str | None = field(repr=False)
    id_token: str | None = field(repr=False)
    id_claims: Mapping[str, Any] | None


def _with_query(url: str, params: Mapping[str, str]) -> str:
    return url + ("&" if urlsplit(url).query else "?") + urlencode(params, quote_via=quote)


class OIDCClient:
    """One provider, one client registration."""

    def __init__(self, settings: OIDCSettings, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 timeout: float = outbound.DEFAULT_TIMEOUT) -> None:
        self.settings = settings
        self.issuer = settings.issuer.rstrip("/") if settings.issuer.endswith("//") \
            else settings.issuer
        self.client_id = settings.client_id
        self._clock = clock
        self._monotonic = monotonic
        self._timeout = timeout
        self._metadata: ProviderMetadata | None = None
        self._metadata_until = 0.0
        self._metadata_failed_at: float | None = None
        self._verifier: JWTVerifier | None = None
        self._lock = threading.Lock()
        self._assertion_key: SigningKey | None = None
        method = settings.token_endpoint_auth_method
        if method == "private_key_jwt" and settings.client_jwks:
            self._assertion_key = client_signing_key(settings.client_jwks)

    def __repr__(self) -> str:
        return f"OIDCClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    # -- discovery ------------------------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    def metadata(self) -> Flow[ProviderMetadata]:
        """The provider's metadata, fetched once and kept for an hour (a failed refresh keeps
        the old copy; with none, the failure is retried at most every 10 s)."""
        now = self._monotonic()
        cached = self._metadata
        if cached is not None and now < self._metadata_until:
            return cached
        failed = self._metadata_failed_at
        if cached is None and failed is not None and now - failed < METADATA_RETRY:
            raise StoreUnavailable("the identity provider was unreachable moments ago")
        try:
            data, _headers = yield Op(self._get_json, self._aget_json, self.discovery_url, None)
            meta = ProviderMetadata.parse(data, self.issuer)
        except StoreUnavailable:
            with self._lock:
                if cached is not None:
                    self._metadata_until = now + METADATA_RETRY
                    return cached
                self._metadata_failed_at = now
            raise
        with self._lock:
            if self._metadata is None or self._metadata.jwks_uri != meta.jwks_uri:
                self._verifier = JWTVerifier(
                    RemoteKeySet(meta.jwks_uri, timeout=self._timeout, clock=self._monotonic),
                    issuer=self.issuer, audience=self.client_id,
                    algorithms=ID_TOKEN_ALGORITHMS, max_size=self.settings.max_token_size,
                    clock=self._clock)
            self._metadata = meta
            self._metadata_until = now + METADATA_TTL
            self._metadata_failed_at = None
        return meta

    # -- authorization request ----------------------------------------------------------

    def authorization_url(self, meta: ProviderMetadata, *, redirect_uri: str, state: str,
                          nonce: str, code_challenge: str,
                          extra: Mapping[str, str] | None = None) -> str:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if extra:
            params.update(extra)
        return _with_query(meta.authorization_endpoint, params)

    # -- token endpoint -------------------------------------------------------------------

    def _client_auth(self, form: dict[str, str]) -> dict[str, str]:
        method = self.settings.token_endpoint_auth_method
        secret = self.settings.client_secret or ""
        if method == "client_secret_basic":
            # RFC 6749 §2.3.1: both parts form-urlencoded before base64.
            pair = f"{quote(self.client_id, safe='')}:{quote(secret, safe='')}"
            return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        form["client_id"] = self.client_id
        if method == "client_secret_post":
            form["client_secret"] = secret
        elif method == "private_key_jwt" and self._assertion_key is not None:
            # RFC 7523 §2.2 / OpenID Connect Core §9: a short-lived, single-use assertion
            # whose audience is the issuer identifier.
            now = int(self._clock())
            form["client_assertion_type"] = _JWT_BEARER
            form["client_assertion"] = sign({
                "iss": self.client_id, "sub": self.client_id, "aud": self.issuer,
                "jti": secrets.token_urlsafe(24), "iat": now, "exp": now + 60,
            }, self._assertion_key)
        return {}

    def _token_request(self, meta: ProviderMetadata, form: dict[str, str]) -> Flow[dict[str, Any]]:
        headers = self._client_auth(form)
        status, data, _ = yield Op(self._post_form, self._apost_form, meta.token_endpoint,
                                   form, headers)
        if not isinstance(data, dict):
            raise StoreUnavailable("the token endpoint answered with something not JSON")
        if status >= 400 or "error" in data:
            error = data.get("error")
            description = data.get("error_description")
            raise GrantRefused(error if isinstance(error, str) else "invalid_response",
                               description if isinstance(description, str) else "")
        access = data.get("access_token")
        if not isinstance(access, str) or not access or not access.isascii() \
                or len(access) > 16384:
            raise StoreUnavailable("the token endpoint answered without a usable access_token")
        token_type = data.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() not in ("bearer", "dpop"):
            raise StoreUnavailable("the token endpoint answered an unknown token_type")
        return data

    def _token_set(self, data: Mapping[str, Any], claims: Mapping[str, Any] | None) -> TokenSet:
        expires_at = self._clock() + access_lifetime(data.get("expires_in"))
        refresh = data.get("refresh_token")
        id_token = data.get("id_token")
        return TokenSet(
            access_token=data["access_token"],
            expires_at=expires_at,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            id_token=id_token if isinstance(id_token, str) else None,
            id_claims=claims,
        )

    def exchange_code(self, *, code: str, code_verifier: str, redirect_uri: str,
                      nonce: str) -> Flow[TokenSet]:
        """Redeem an authorization code; the id_token is required and validated."""
        meta = yield from self.metadata()
        data = yield from self._token_request(meta, {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        })
        id_token = data.get("id_token")
        if not isinstance(id_token, str):
            raise InvalidToken("the token response has no id_token")
        claims = yield from self.validate_id_token(id_token, nonce=nonce,
                                                   access_token=data["access_token"])
        return self._token_set(data, claims)

    def refresh(self, refresh_token: str, *, sub: str) -> Flow[TokenSet]:
        """Use a refresh token; a new id_token, if any, must name the same subject."""
        data = yield from self.refresh_grant(refresh_token)
        return (yield from self.finish_refresh(data, refresh_token, sub=sub))

    def token_set(self, data: Mapping[str, Any], refresh_token: str | None = None) -> TokenSet:
        """The tokens of a token response, without validating its id_token (that is
        :meth:`finish_refresh`); ``refresh_token`` stands in when none was returned."""
        result = self._token_set(data, None)
        if result.refresh_token is None and refresh_token:
            result = TokenSet(result.access_token, result.expires_at, refresh_token,
                              result.id_token, None)
        return result

    def refresh_grant(self, refresh_token: str) -> Flow[dict[str, Any]]:
        """The token endpoint's answer to a refresh grant, not yet validated. The provider
        has rotated the refresh token by now: keep what this returns before anything else
        can fail."""
        meta = yield from self.metadata()
        return (yield from self._token_request(meta, {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        }))

    def finish_refresh(self, data: Mapping[str, Any], refresh_token: str, *,
                       sub: str) -> Flow[TokenSet]:
        """Validate a refresh grant's answer (:meth:`refresh_grant`)."""
        claims = None
        id_token = data.get("id_token")
        if isinstance(id_token, str):
            claims = yield from self.validate_id_token(id_token, nonce=None,
                                                       access_token=data["access_token"])
            if claims.get("sub") != sub:
                raise InvalidToken("refreshed id_token names another subject")
        result = self._token_set(data, claims)
        if result.refresh_token is None:   # the provider did not rotate it: keep the old one
            result = TokenSet(result.access_token, result.expires_at, refresh_token,
                              result.id_token, result.id_claims)
        return result

    # -- id_token (OpenID Connect Core §3.1.3.7) --------------------------------------------

    def validate_id_token(self, id_token: str, *, nonce: str | None,
                          access_token: str | None) -> Flow[dict[str, Any]]:
        if self._verifier is None:
            yield from self.metadata()
        verifier = self._verifier
        assert verifier is not None
        if len(id_token) > self.settings.max_token_size:
            raise TokenTooLarge(len(id_token), self.settings.max_token_size)
        claims: dict[str, Any] = yield Op(verifier.verify, verifier.averify, id_token)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise InvalidToken("id_token sub missing or malformed")
        self._check_azp(claims, "id_token")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise InvalidToken("id_token nonce does not match the login request")
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token is not None:
            if not access_token.isascii():
                raise InvalidToken("the access token is not ASCII")
            digest = _AT_HASH.get(_token_alg(id_token), hashlib.sha256)(
                access_token.encode("ascii")).digest()
            expected = b64url_encode(digest[: len(digest) // 2])
            if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash, expected):
                raise InvalidToken("id_token at_hash does not match the access token")
        return claims

    def _check_azp(self, claims: dict[str, Any], what: str) -> None:
        """OpenID Connect Core 3.1.3.7: several audiences need an ``azp``, and an ``azp``
        must be this client (an id_token and a logout token alike)."""
        aud = claims.get("aud")
        azp = claims.get("azp")
        if isinstance(aud, list) and len(aud) > 1 and azp is None:
            raise InvalidToken(f"{what} has several audiences but no azp")
        if azp is not None and azp != self.client_id:
            raise InvalidToken(f"{what} azp is not this client")

    # -- logout token (OpenID Connect Back-Channel Logout 1.0 §2.6) ------------------------

    def validate_logout_token(self, token: str, *, max_age: float) -> Flow[dict[str, Any]]:
        """The claims of a logout token, verified as an id_token is (the provider's keys,
        ``iss``, ``aud``/``azp``, algorithms, ``exp`` and ``iat`` required) and then as a
        logout token: ``typ`` absent, ``JWT`` or ``logout+jwt``; ``iat`` at most ``max_age``
        seconds old; the back-channel logout event; no ``nonce``; ``sub`` or ``sid``; a
        ``jti``. Single use is the caller's (:class:`~secure_mw.errors.InvalidToken` here).
        """
        if self._verifier is None:
            yield from self.metadata()
        verifier = self._verifier
        assert verifier is not None
        if not isinstance(token, str) or not 0 < len(token) <= LOGOUT_TOKEN_MAX_SIZE:
            raise InvalidToken("logout token missing or too large")
        typ = _token_header(token).get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.strip().lower().removeprefix(
                "application/") not in ("jwt", "logout+jwt")):
            raise InvalidToken("logout token typ is another kind of token")
        claims: dict[str, Any] = yield Op(verifier.verify, verifier.averify, token)
        self._check_azp(claims, "logout token")
        if self._clock() - float(claims["iat"]) > max_age + verifier.leeway:
            raise InvalidToken("logout token issued too long ago")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise InvalidToken("logout token without the back-channel logout event")
        if "nonce" in claims:
            raise InvalidToken("logout token has a nonce")
        sub, sid = claims.get("sub"), claims.get("sid")
        if sub is None and sid is None:
            raise InvalidToken("logout token names neither sub nor sid")
        for name, value in (("sub", sub), ("sid", sid)):
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 255):
                raise InvalidToken(f"logout token {name} malformed")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= 255:
            raise InvalidToken("logout token jti missing or malformed")
        return claims

    # -- userinfo -------------------------------------------------------------------------

    def userinfo(self, access_token: str, *, sub: str) -> Flow[dict[str, Any]]:
        """The userinfo claims; ``{}`` when the provider has no userinfo endpoint."""
        meta = yield from self.metadata()
        if not meta.userinfo_endpoint:
            return {}
        try:
            data, _ = yield Op(self._get_json, self._aget_json, meta.userinfo_endpoint,
                               {"Authorization": f"Bearer {access_token}"})
        except outbound.HTTPStatusError as exc:
            if exc.http_status in (401, 403):
                raise GrantRefused("invalid_token", "userinfo refused the access token") \
                    from None
            raise
        if not isinstance(data, dict):
            raise StoreUnavailable("userinfo did not answer a JSON object")
        if data.get("sub") != sub:   # OpenID Connect Core §5.3.2
            raise InvalidToken("userinfo names another subject")
        return data

    # -- logout ---------------------------------------------------------------------------

    def revoke(self, token: str, *, hint: str = "refresh_token") -> Flow[None]:
        """Best-effort revocation (RFC 7009); failures are the caller's to log."""
        meta = yield from self.metadata()
        if not meta.revocation_endpoint:
            return None
        form = {"token": token, "token_type_hint": hint}
        headers = self._client_auth(form)
        yield Op(self._post_form, self._apost_form, meta.revocation_endpoint, form, headers)
        return None

    def end_session_url(self, meta: ProviderMetadata, *, id_token_hint: str | None,
                        post_logout_redirect_uri: str, state: str) -> str | None:
        if not meta.end_session_endpoint:
            return None
        params = {"client_id": self.client_id,
                  "post_logout_redirect_uri": post_logout_redirect_uri, "state": state}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        return _with_query(meta.end_session_endpoint, params)

    # -- I/O ------------------------------------------------------------------------------

    def _get_json(self, url: str, headers: Mapping[str, str] | None) -> tuple[Any, Any]:
        return outbound.get_json(url, headers=headers, timeout=self._timeout)

    async def _aget_json(self, url: str, headers: Mapping[str, str] | None) -> tuple[Any, Any]:
        return await outbound.aget_json(url, headers=headers, timeout=self._timeout)

    def _post_form(self, url: str, form: Mapping[str, str],
                   headers: Mapping[str, str]) -> tuple[int, Any, Any]:
        return outbound.post_form(url, form, headers=headers, timeout=self._timeout)

    async def _apost_form(self, url: str, form: Mapping[str, str],
                          headers: Mapping[str, str]) -> tuple[int, Any, Any]:
        return await outbound.apost_form(url, form, headers=headers, timeout=self._timeout)


def access_lifetime(expires_in: object) -> float:
    """Seconds an access token lives: ``expires_in`` (a number, or digits as some providers
    send), else :data:`DEFAULT_ACCESS_LIFETIME` — an unknown lifetime must not mean that the
    provider is never asked again."""
    if isinstance(expires_in, str) and expires_in.isascii() and expires_in.isdigit():
        expires_in = int(expires_in)
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) \
            and 0 < expires_in < 10 * 365 * 86400:
        return float(expires_in)
    return DEFAULT_ACCESS_LIFETIME


def _token_alg(token: str) -> str:
    from secure_mw._encoding import b64url_decode, loads_strict

    header = loads_strict(b64url_decode(token.split(".", 1)[0]))
    alg = header.get("alg") if isinstance(header, dict) else None
    return alg if isinstance(alg, str) else "RS256"


def _token_header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact token, or :class:`InvalidToken`."""
    from secure_mw._encoding import StrictJSONError, b64url_decode, loads_strict

    try:
        header = loads_strict(b64url_decode(token.split(".", 1)[0]))
    except (StrictJSONError, ValueError, RecursionError):
        raise InvalidToken("logout token header is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidToken("logout token header is not a JSON object")
    return header
