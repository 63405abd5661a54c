"""Bearer tokens for API clients (``[bearer_tokens]``), framework-free.

:class:`BearerVerifier` turns the token of an ``Authorization: Bearer`` header into an
:class:`~secure_mw.identity.Identity` (source ``bearer``): a JWT access token (RFC 9068) is
verified against the pinned keys, an opaque one is introspected (RFC 7662) when an
introspection endpoint is configured. :class:`BearerGate` wraps a session core: a request
carrying a bearer token is decided by the token alone, never by a cookie next to it, and any
invalid token gets 401 ``invalid_token`` (RFC 6750) and an ``invalid_token`` audit event.
Verified tokens are remembered by their SHA-256, bounded in number and never beyond their
``exp``. What is refused and why: docs/bearer-tokens.md.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from secure_mw import outbound
from secure_mw._driver import Flow, Op
from secure_mw.audit import AuditLogger
from secure_mw.errors import InvalidToken, StoreUnavailable
from secure_mw.http import Reply, RequestView, json_reply
from secure_mw.identity import Identity, claims_groups
from secure_mw.settings import BearerTokensSettings, Settings
from secure_mw.tokens.jwks import KeySet, KeySource, RemoteKeySet
from secure_mw.tokens.jwt import JWTVerifier

__all__ = ["BearerGate", "BearerVerifier", "Introspector", "Verified", "bearer_token"]

log = logging.getLogger("secure_mw.tokens")

RETRY_AFTER = 5
#: RFC 6750 §2.1 b64token.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_NEGATIVE_TTL = 300.0     # an inactive token never becomes active again
_ACCESS_TOKEN_TYPES = frozenset({"bearer", "access_token", "urn:ietf:params:oauth:token-type:"
                                 "access_token"})


class _Malformed(InvalidToken):
    """The Authorization header names Bearer but carries no well-formed token."""


def bearer_token(view: RequestView, max_size: int = 256 * 1024) -> str | None:
    """The token of an ``Authorization: Bearer`` header; ``None`` when the header is absent
    or names another scheme; :class:`InvalidToken` when it names Bearer without a
    well-formed token (or several Authorization headers were folded into one), or with one
    longer than ``max_size``."""
    header = view.headers.get("authorization")
    if header is None:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = rest.strip(" ")
    if len(token) > max_size:      # before any other look at it
        raise _Malformed("token too large")
    if not token:
        raise _Malformed("no token after Bearer")
    if _B64TOKEN.fullmatch(token) is None:
        raise _Malformed("token is not a b64token (or several Authorization headers)")
    return token


@dataclass(frozen=True, slots=True)
class Verified:
    """A token that verified: the identity it stands for, its scopes and until when (Unix
    time) it may be remembered."""

    identity: Identity
    scopes: frozenset[str]
    until: float


def token_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes of ``scope`` (space-separated, RFC 8693/9068) or ``scp`` (a list or a
    space-separated string, as some providers send it)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str) and v and " " not in v)
    return frozenset(found)


def identity_of(claims: Mapping[str, Any], groups_claim: str) -> Identity:
    """The identity a token's verified claims stand for (``sub`` required)."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 1024:
        raise InvalidToken("sub missing or malformed")
    kept = dict(claims)
    kept["groups"] = list(claims_groups(claims.get(groups_claim)))
    return Identity.from_claims(kept, source="bearer")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class Introspector:
    """RFC 7662 token introspection with client_secret_basic, through
    :mod:`secure_mw.outbound`. The answer must be ``active: true``, of an access token, for
    our issuer (when it names one) and for one of our audiences (``aud`` required)."""

    def __init__(self, config: BearerTokensSettings, *,
                 clock: Callable[[], float] = time.time) -> None:
        if not (config.introspection_url and config.client_id and config.client_secret):
            raise ValueError("introspection needs introspection_url, client_id and "
                             "client_secret")
        self.url = config.introspection_url
        self.config = config
        self.clock = clock
        pair = f"{quote(config.client_id, safe='')}:{quote(config.client_secret, safe='')}"
        self._headers = {"authorization": "Basic " + base64.b64encode(pair.encode()).decode()}

    def _form(self, token: str) -> dict[str, str]:
        return {"token": token, "token_type_hint": "access_token"}

    def introspect(self, token: str) -> Verified:
        status, data, _ = outbound.post_form(self.url, self._form(token), headers=self._headers)
        return self._judge(status, data)

    async def aintrospect(self, token: str) -> Verified:
        status, data, _ = await outbound.apost_form(self.url, self._form(token),
                                                    headers=self._headers)
        return self._judge(status, data)

    def _judge(self, status: int, data: Any) -> Verified:
        if status != 200 or not isinstance(data, dict):
            # Our credentials or request refused: our problem, not the client's (fail closed).
            raise StoreUnavailable(f"introspection answered {status}")
        if data.get("active") is not True:
            raise InvalidToken("introspection: token not active")
        now = self.clock()
        kind = data.get("token_type")
        if kind is not None and (not isinstance(kind, str)
                                 or kind.lower() not in _ACCESS_TOKEN_TYPES):
            raise InvalidToken("introspection: not an access token")
        exp = _number(data.get("exp")) if "exp" in data else math.inf
        if exp is None:
            raise InvalidToken("introspection: exp is not a number")
        if now >= exp:
            raise InvalidToken("introspection: token expired")
        nbf = data.get("nbf")
        if nbf is not None and ((n := _number(nbf)) is None or n - self.config.leeway > now):
            raise InvalidToken("introspection: token not yet valid")
        iss = data.get("iss")
        if iss is not None and iss != self.config.issuer:
            raise InvalidToken("introspection: issuer mismatch")
        aud = data.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in self.config.audience for a in audiences):
            raise InvalidToken("introspection: audience missing or mismatch")
        if "cnf" in data:
            raise InvalidToken("sender-constrained token (cnf): not accepted as a bearer token")
        if "sub" not in data and isinstance(data.get("client_id"), str):
            # RFC 7662 makes sub optional: a client_credentials token is its client's.
            data = {**data, "sub": data["client_id"]}
        identity = identity_of(data, self.config.groups_claim)
        return Verified(identity, token_scopes(data), min(exp, now + self.config.cache_ttl))


class _Cache:
    """Token digest -> :class:`Verified` (or the reason it was refused); bounded, the
    oldest entry out first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[Verified | str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes, now: float) -> Verified | str | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry[1]:
            with self._lock:
                self._entries.pop(digest, None)
            return None
        return entry[0]

    def put(self, digest: bytes, value: Verified | str, until: float) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._entries[digest] = (value, until)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class BearerVerifier:
    """What ``[bearer_tokens]`` accepts, as a flow (:meth:`verify`) both flavours run.

    ``keys`` and ``introspector`` replace what the settings would build (tests); ``clock``
    is Unix time for the tokens, ``monotonic`` drives the JWKS refetch interval."""

    def __init__(self, config: BearerTokensSettings, *, keys: KeySource | None = None,
                 introspector: Introspector | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        if keys is None and config.jwks_file:
            keys = KeySet.from_file(config.jwks_file)
        elif keys is None and config.jwks_url:
            keys = RemoteKeySet(config.jwks_url, refetch_cooldown=config.jwks_refetch_interval,
                                min_ttl=min(60.0, config.jwks_refetch_interval),
                                clock=monotonic)
        self.keys = keys
        self.jwt = None if keys is None else JWTVerifier(
            keys, issuer=config.issuer, audience=config.audience,
            algorithms=config.algorithms, leeway=config.leeway,
            max_size=config.max_token_size, typ="at+jwt", clock=clock)
        if introspector is None and config.introspection_url:
            introspector = Introspector(config, clock=clock)
        self.introspector = introspector
        self.cache = _Cache(config.cache_size)

    def verify(self, token: str) -> Flow[Verified]:
        """The verified token, or :class:`InvalidToken`; :class:`StoreUnavailable` when the
        keys or the introspection endpoint cannot be reached."""
        if len(token) > self.config.max_token_size:
            raise InvalidToken("token too large")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        now = self.clock()
        cached = self.cache.get(digest, now)
        if isinstance(cached, Verified):
            return cached
        if isinstance(cached, str):
            raise InvalidToken(cached)
        if self.jwt is not None and token.count(".") == 2:
            claims = yield Op(self.jwt.verify, self.jwt.averify, token)
            if "cnf" in claims:
                raise InvalidToken("sender-constrained token (cnf): not accepted as a bearer "
                                   "token")
            exp = float(claims["exp"])
            verified = Verified(identity_of(claims, self.config.groups_claim),
                                token_scopes(claims), min(exp, now + self.config.cache_ttl))
        elif self.introspector is not None:
            try:
                verified = yield Op(self.introspector.introspect,
                                    self.introspector.aintrospect, token)
            except InvalidToken as exc:
                self.cache.put(digest, str(exc), now + min(_NEGATIVE_TTL,
                                                           self.config.cache_ttl))
                raise
        elif token.count(".") == 4:
            raise InvalidToken("encrypted tokens (JWE) are not accepted")
        else:
            raise InvalidToken("not a JWT (and no introspection_url for opaque tokens)")
        if verified.until > now:
            self.cache.put(digest, verified, verified.until)
        return verified


def _challenge(error: str | None = None, scope: str | None = None) -> str:
    value = 'Bearer realm="secure_mw"'
    if error:
        value += f', error="{error}"'
    if scope:
        value += f', scope="{scope}"'
    return value


class BearerGate:
    """A session core with bearer tokens in front: the same ``handle``/``is_reserved`` as the
    core it wraps (every other attribute is the core's), so both flavours' session
    middlewares serve it unchanged. A request with ``Authorization: Bearer`` outside the
    login pages is decided by the token alone; every other request goes to the session core.
    """

    def __init__(self, core: Any, settings: Settings, *,
                 verifier: BearerVerifier | None = None, audit: AuditLogger | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        config = settings.bearer_tokens
        if config is None:
            raise ValueError("BearerGate needs a [bearer_tokens] section in the settings")
        self.core = core
        self.config = config
        self.prefix = settings.server.auth_prefix
        self.verifier = verifier or BearerVerifier(config, clock=clock, monotonic=monotonic)
        self.audit: AuditLogger = audit or core.audit
        self.required = frozenset(config.required_scopes)
        self._scope_text = " ".join(sorted(self.required))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    def is_reserved(self, path: str) -> bool:
        return bool(self.core.is_reserved(path))

    def warm_identity(self, view: RequestView) -> Identity | None:
        """The session core's warm path for a request with no ``Authorization`` header;
        ``None`` for one with it, which :meth:`handle` decides (a bearer token by itself).
        (Not left to ``__getattr__``: the core's own would serve the session cookie.)"""
        if "authorization" in view.headers:
            return None
        identity: Identity | None = self.core.warm_identity(view)
        return identity

    def warm_session(self, view: RequestView) -> Any:
        """:meth:`warm_identity`'s session, with the same refusal of an ``Authorization``
        header (a lane asks this one)."""
        if "authorization" in view.headers:
            return None
        return self.core.warm_session(view)

    def handle(self, view: RequestView) -> Flow[Any]:
        if view.path.startswith(self.prefix):
            return (yield from self.core.handle(view))
        try:
            token = bearer_token(view, self.config.max_token_size)
        except InvalidToken as exc:
            return self._outcome(self._invalid(view, str(exc)))
        if token is None:
            return (yield from self.core.handle(view))
        try:
            verified = yield from self.verifier.verify(token)
        except InvalidToken as exc:
            return self._outcome(self._invalid(view, str(exc)))
        except StoreUnavailable as exc:
            self._event("store_unavailable", view,
                        reason=f"bearer token not verifiable: {exc}")
            return self._outcome(json_reply(503, {"error": "temporarily_unavailable"},
                                            headers=[("retry-after", str(RETRY_AFTER))]))
        missing = self.required - verified.scopes
        if missing:
            self._event("authorization_denied", view, user=verified.identity.sub,
                        effect="deny", reason="insufficient_scope: token lacks "
                        + " ".join(sorted(missing)), source="bearer")
            return self._outcome(json_reply(403, {"error": "insufficient_scope"}, headers=[
                ("www-authenticate", _challenge("insufficient_scope", self._scope_text))]))
        return self._outcome(None, verified.identity)

    def _outcome(self, reply: Reply | None, identity: Identity | None = None) -> Any:
        from secure_mw.oidc.core import Outcome

        return Outcome(reply, identity)

    def _invalid(self, view: RequestView, reason: str) -> Reply:
        self._event("invalid_token", view, reason=reason, source="bearer")
        return json_reply(401, {"error": "invalid_token"},
                          headers=[("www-authenticate", _challenge("invalid_token"))])

    def _event(self, name: str, view: RequestView, **fields: Any) -> None:
        self.audit.event(name, level=logging.WARNING, remote_ip=view.client,
                         method=view.method, host=view.host, path=view.path, **fields)
