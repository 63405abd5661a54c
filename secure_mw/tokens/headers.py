"""Signed identity headers, framework-free: what the issuing and verifying middlewares do.

* :class:`IssueLayer` — after authorization, a JWT assertion of the identity for the wrapped
  app (header ``signed_headers.header``), signed once per session and reused while fresh;
  any copy a client sent is dropped first; the public keys at
  ``/.well-known/secure-mw/jwks.json`` (and Pomerium's path) with ``Cache-Control`` and
  ``ETag``. :class:`AssertionAuth` puts the current request's assertion on the app's own
  outbound httpx calls.
* :class:`VerifyLayer` — for an app behind Pomerium or another secure_mw: the assertion in
  ``signed_headers.verify.header`` is verified against the pinned JWKS (issuer pinned,
  audience ``verify.audience``, else the host of ``server.external_url``, else the request
  host when ``server.allowed_hosts`` lists it) and becomes the request's identity.

An assertion's ``iss`` and ``aud`` are the host of ``server.external_url``, or the request's
host only when ``server.allowed_hosts`` lists it: never an unlisted ``Host`` header.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from secure_mw._driver import Flow, Op, run_async, run_sync
from secure_mw.audit import AuditLogger, audit_logger
from secure_mw.crypto import KeyRing
from secure_mw.errors import InvalidToken
from secure_mw.guards.hosts import HostPolicy
from secure_mw.http import Reply, RequestView, json_reply
from secure_mw.identity import Identity
from secure_mw.settings import Settings
from secure_mw.tokens.assertions import AssertionSigner, AssertionVerifier
from secure_mw.tokens.jwks import KeySet, KeySource, RemoteKeySet
from secure_mw.tokens.keys import SigningKey, generate_private_jwks

__all__ = ["JWKS_PATHS", "AssertionAuth", "IssueLayer", "VerifyLayer", "current_assertion",
           "derived_signing_jwks"]

log = logging.getLogger("secure_mw.tokens")

JWKS_PATHS = ("/.well-known/secure-mw/jwks.json", "/.well-known/pomerium/jwks.json")

#: The assertion of the request being served (set by the issuing middleware).
current_assertion: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "secure_mw_assertion", default=None)


_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SIGNING_KEY_PURPOSE = "assertion signing key ES256"


def derived_signing_jwks(keyring: KeyRing) -> dict[str, Any]:
    """A private JWK Set of ES256 keys derived from ``keyring``: one per ring key, the
    encrypting key's first (it signs; the others are published, so assertions signed before a
    rotation still verify). Every process with the same ring derives the same keys. Each
    private scalar is 384 bits of HKDF output reduced into [1, n-1] (FIPS 186-5 A.2.1); the
    ``kid`` is the public key's RFC 7638 thumbprint."""
    keys = []
    for seed in keyring.derive(SIGNING_KEY_PURPOSE, 48):
        scalar = int.from_bytes(seed, "big") % (_P256_ORDER - 1) + 1
        private = ec.derive_private_key(scalar, ec.SECP256R1())
        keys.append(SigningKey(private, alg="ES256").private_jwk())
    return {"keys": keys}


class IssueLayer:
    """Signs the identity assertion for the app and serves the public keys. The keys are
    ``keys.signing_jwks``; without it, ES256 keys derived from the key ring
    (``keys.encryption_keys`` or the passphrase, or ``keyring``), so that every process
    signs with the same key; with no key configured at all, a key made at start-up.
    ``per_host``: the ``iss`` and ``aud`` are the request's host (when listed) even with an
    ``external_url`` — what a forward-auth portal signs for each service it vouches to.
    ``clock``: what the signer dates assertions by (``protect()`` passes its own)."""

    def __init__(self, settings: Settings, *, signer: AssertionSigner | None = None,
                 keyring: KeyRing | None = None, per_host: bool = False,
                 clock: Callable[[], float] | None = None) -> None:
        config = settings.signed_headers
        self.header = config.header.lower()
        if signer is None:
            jwks_text = settings.keys.signing_jwks
            if jwks_text:
                jwks = json.loads(jwks_text)
            elif keyring is not None or settings.keys.encryption_keys or \
                    settings.keys.encryption_passphrase:
                jwks = derived_signing_jwks(keyring if keyring is not None
                                            else KeyRing.from_settings(settings.keys))
            else:
                log.warning("neither keys.signing_jwks nor keys.encryption_keys is set: "
                            "identity assertions are signed with a key made at start-up "
                            "(other processes cannot verify them)")
                jwks = generate_private_jwks(("ES256",))
            signer = AssertionSigner(jwks=jwks, lifetime=config.lifetime,
                                     clock=clock or time.time)
        self.signer = signer
        self.hosts = HostPolicy.from_settings(
            dataclasses.replace(settings.server, external_url=None) if per_host
            else settings.server)
        # (session or subject, audience) -> (identity, token, iat, reuse until): a warm
        # request neither builds the claims nor asks the signer (see assertion())
        self._issued: dict[tuple[str, str], tuple[Identity, str, float, float]] = {}
        self._issued_lock = threading.Lock()
        body, etag = signer.jwks_document()
        self._jwks_headers = [("content-type", "application/json"), ("etag", etag),
                              ("cache-control", "public, max-age=300")]
        self._jwks_body = body
        self._etag = etag

    def jwks_reply(self, view: RequestView) -> Reply | None:
        """The public keys, when ``view`` asks for them."""
        if view.path not in JWKS_PATHS or view.method not in ("GET", "HEAD"):
            return None
        if self._etag in view.headers.get("if-none-match", ""):
            return Reply(304, [(n, v) for n, v in self._jwks_headers if n != "content-type"])
        return Reply(200, list(self._jwks_headers), self._jwks_body)

    def assertion(self, view: RequestView, identity: Identity | None) -> str | None:
        """The assertion of ``identity`` for ``view``'s host, or None (anonymous, or a host
        that is not listed). A token is reused for the same session (or subject without
        one), the same audience and an equal identity for as long as the signer would reuse
        it, from a bounded table in front of the signer: no claims built, no signing."""
        issued = self.issued(view, identity)
        return None if issued is None else issued[0]

    def issued(self, view: RequestView, identity: Identity | None
               ) -> tuple[str, float, float] | None:
        """:meth:`assertion`'s token, its ``iat`` and the moment until which it is handed
        out again (by :attr:`signer`'s clock), for a caller that keeps it longer."""
        if identity is None:
            return None
        host = self.hosts.public_host(view)
        if not host:           # an unlisted or hostile Host: no assertion rather than an error
            return None
        signer = self.signer
        key = (identity.session_id or "\x00" + identity.sub, host)
        entry = self._issued.get(key)
        if entry is not None:
            held, token, iat, reuse_until = entry
            if (held is identity or held == identity) and iat <= signer.clock() < reuse_until:
                return token, iat, reuse_until
        claims = {"sub": identity.sub, "email": identity.email,
                  "email_verified": identity.email_verified, "name": identity.name,
                  "groups": list(identity.groups)}
        token, iat, reuse_until = signer.sign_reusable(
            claims, audience=host, issuer=host, session_id=identity.session_id or None)
        if signer.cache_size:
            with self._issued_lock:
                issued = self._issued
                issued.pop(key, None)
                while len(issued) >= signer.cache_size:   # bounded: the oldest go first
                    del issued[next(iter(issued))]
                issued[key] = (identity, token, iat, reuse_until)
        return token, iat, reuse_until


class AssertionAuth(httpx.Auth):
    """httpx authentication that forwards the current request's identity assertion::

        client = httpx.AsyncClient(auth=AssertionAuth())     # inside a protected request
    """

    def __init__(self, header: str = "X-Secure-MW-Jwt-Assertion") -> None:
        self.header = header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = current_assertion.get()
        if token:
            request.headers[self.header] = token
        yield request


class VerifyLayer:
    """Verifies ``signed_headers.verify`` assertions; one verifier per audience (the
    request host unless configured), all sharing the pinned key set."""

    def __init__(self, settings: Settings, *, audit: AuditLogger | None = None,
                 keys: KeySource | None = None) -> None:
        config = settings.signed_headers.verify
        if config is None:
            raise ValueError("signed_headers.verify is not configured")
        self.config = config
        self.header = config.header.lower()
        if keys is None:
            keys = KeySet.from_file(config.jwks_file) if config.jwks_file \
                else RemoteKeySet(str(config.jwks_url))
        self.keys = keys
        self.hosts = HostPolicy.from_settings(settings.server)
        self.audit = audit or audit_logger()
        self._verifiers: dict[str, AssertionVerifier] = {}
        self._lock = threading.Lock()

    def _verifier(self, audience: str) -> AssertionVerifier:
        verifier = self._verifiers.get(audience)
        if verifier is None:
            with self._lock:
                if len(self._verifiers) >= 64:      # Host headers are the client's: bounded
                    self._verifiers.pop(next(iter(self._verifiers)))
                verifier = self._verifiers[audience] = AssertionVerifier(
                    jwks=self.keys, issuer=self.config.issuer, audience=audience,
                    algorithms=self.config.algorithms, leeway=self.config.leeway)
        return verifier

    def identity(self, view: RequestView) -> tuple[Identity | None, Reply | None]:
        """The verified identity of ``view``'s assertion, or the 401 to answer (blocking:
        a remote key set is fetched in this thread)."""
        return run_sync(self.decide(view))

    async def aidentity(self, view: RequestView) -> tuple[Identity | None, Reply | None]:
        """:meth:`identity` for ASGI: a remote key set is fetched without blocking the event
        loop."""
        return await run_async(self.decide(view))

    def decide(self, view: RequestView) -> Flow[tuple[Identity | None, Reply | None]]:
        """The flow of :meth:`identity` and :meth:`aidentity`, written once."""
        token = view.headers.get(self.header)
        reason = "missing assertion"
        if token:
            audience = self.config.audience or self.hosts.public_host(view)
            try:
                if not audience:
                    raise InvalidToken("no audience: the request's host is not allowed")
                verifier = self._verifier(audience)
                claims = verifier.cached(token)
                if claims is None:      # a full verification: may fetch the key set
                    claims = yield Op(verifier.verify, verifier.averify, token)
            except InvalidToken as exc:
                reason = str(exc)
            else:
                return Identity.from_claims(
                    claims, source="assertion",
                    assume_email_verified=self.config.assume_email_verified), None
        self.audit.event("invalid_token", remote_ip=view.client, method=view.method,
                         host=view.host, path=view.path, reason=reason)
        return None, json_reply(401, {"error": "invalid_assertion"}, headers=[
            ("www-authenticate", 'Bearer realm="secure_mw", error="invalid_token"')])
