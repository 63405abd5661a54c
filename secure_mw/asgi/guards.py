"""The guard middlewares for ASGI: security headers, client address, rate limit and
open-redirect guard. Each works alone; :func:`secure_mw.asgi.protect` stacks them."""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from types import CoroutineType
from typing import Any
from urllib.parse import quote

from secure_mw._driver import Op, run_async, run_inline
from secure_mw._stack import given_or_built
from secure_mw.asgi._io import (
    VIEW_KEY,
    ASGIApp,
    BodyTooLarge,
    Message,
    Receive,
    Scope,
    Send,
    read_body,
    send_reply,
    view_of,
)
from secure_mw.asgi._layer import HTTP, Entered, Layer, RawHeaders, Verdict
from secure_mw.audit import AuditLogger
from secure_mw.authz.layer import AuthorizationLayer
from secure_mw.guards.clientaddr import TrustedProxies, forwarded_client_cert
from secure_mw.guards.headers import SecurityHeaders
from secure_mw.guards.hosts import HostGuardLayer
from secure_mw.guards.layers import (
    MAX_LOGIN_BODY,
    LoginGuardLayer,
    RateLimitLayer,
    RedirectLayer,
)
from secure_mw.guards.ratelimit import RateDecision, RateLimiter, rate_lines
from secure_mw.http import CLIENT_CERT_KEY, Reply, RequestView
from secure_mw.identity import Identity
from secure_mw.settings import Settings

__all__ = [
    "AuthorizationMiddleware",
    "ClientAddressMiddleware",
    "HostGuardMiddleware",
    "LoginGuardMiddleware",
    "RateLimitMiddleware",
    "RedirectGuardMiddleware",
    "SecurityHeadersMiddleware",
    "check_redirects",
]

NONCE_KEY = "secure_mw.csp_nonce"
Decided = tuple[Reply | None, RateDecision | None]
_REDIRECTING = frozenset({b"location", b"refresh"})


class HostGuardMiddleware(Layer):
    """400 for a request whose host is not in ``server.allowed_hosts`` (or ``allowed_hosts``)
    or whose path is not UTF-8; a WebSocket handshake is refused before it is accepted.
    ``protect()`` stacks it outermost, so nothing else runs for such a request. The host is
    the forwarded one when the peer is one of ``trusted_proxies`` (see
    :class:`~secure_mw.guards.hosts.HostGuardLayer`), and the request then goes on with that
    host in its ``Host`` header: what was checked is what the app sees."""

    def __init__(self, app: ASGIApp, *, settings: Settings | None = None,
                 allowed_hosts: Iterable[str] | None = None,
                 trusted_proxies: TrustedProxies | Iterable[str] | None = None,
                 layer: HostGuardLayer | None = None, audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = layer or HostGuardLayer.build(settings=settings,
                                                   allowed_hosts=allowed_hosts,
                                                   trusted_proxies=trusted_proxies,
                                                   audit=audit)

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        view = view_of(scope)
        raw = scope.get("raw_path")
        if isinstance(raw, bytes):
            reply, host = self.layer.judge(view, raw, encoded=True)
        else:    # a server without raw_path: only what survived its decoding can be judged
            reply, host = self.layer.judge(view, view.path.encode("utf-8", "surrogatepass"),
                                           encoded=False)
        if reply is not None:
            return reply
        if host != view.host:      # a trusted proxy's forwarded host: the app sees it too
            _set_host(scope, host)
        return None


def _set_host(scope: Scope, host: str) -> None:
    scope["headers"] = [(n, v) for n, v in scope.get("headers", ()) if n != b"host"]
    scope["headers"].append((b"host", host.encode("latin-1")))
    scope.pop(VIEW_KEY, None)


class SecurityHeadersMiddleware(Layer):
    """Adds the security headers to every HTTP response; the CSP nonce of the request is
    ``scope["secure_mw.csp_nonce"]`` (use it in templates: ``<script nonce="…">``)."""

    kinds = HTTP

    def __init__(self, app: ASGIApp, *, headers: SecurityHeaders | None = None,
                 settings: Settings | None = None) -> None:
        self.app = app
        if headers is None:
            headers = SecurityHeaders.from_settings(settings.headers) if settings \
                else SecurityHeaders()
        self.headers = headers

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        path = view_of(scope).route_path    # overrides see what the app routes
        policy = self.headers
        nonce = SecurityHeaders.new_nonce() if policy.uses_nonce(path) else None
        scope[NONCE_KEY] = nonce

        def add_headers(lines: RawHeaders) -> None:
            # The scheme as the layers inside resolved it (behind a trusted proxy).
            policy.add_to(lines, path=path, https=scope.get("scheme") == "https", nonce=nonce,
                          drawn=True)

        return add_headers


class ClientAddressMiddleware(Layer):
    """Resolves the real client behind trusted proxies (RFC 7239 ``Forwarded`` or
    ``X-Forwarded-For/-Proto/-Host``) into ``scope["client"]``, ``scope["scheme"]`` and the
    ``host`` header; ``scope["secure_mw.client"]`` holds the :class:`ClientInfo`. Forwarding
    headers from any other peer are ignored."""

    def __init__(self, app: ASGIApp, *,
                 trusted_proxies: TrustedProxies | Iterable[str] = (),
                 client_cert_header: str | None = None) -> None:
        self.app = app
        self.proxies = trusted_proxies if isinstance(trusted_proxies, TrustedProxies) \
            else TrustedProxies(trusted_proxies)
        self.cert_header = client_cert_header.lower() if client_cert_header else None

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        view = view_of(scope)
        info = self.proxies.resolve(view.client, view.headers, scheme=view.scheme,
                                    host=view.host)
        scope["secure_mw.client"] = info
        if self.cert_header is not None:
            cert = forwarded_client_cert(self.proxies, self.cert_header, view)
            if cert is not None:
                scope[CLIENT_CERT_KEY] = cert
                scope.pop(VIEW_KEY, None)
        if info.via_proxy:
            client = scope.get("client")
            scope["client"] = (info.ip, client[1] if client else 0)
            websocket = scope["type"] == "websocket"
            scope["scheme"] = ("wss" if info.scheme == "https" else "ws") if websocket \
                else info.scheme
            if info.host != view.host:
                _set_host(scope, info.host)
            scope.pop(VIEW_KEY, None)     # later layers see the resolved request
        return None


class RateLimitMiddleware(Layer):
    """Applies the ``[rate_limits]`` rules: 429 with ``Retry-After`` and the IETF
    ``RateLimit``/``RateLimit-Policy`` headers, which also go on allowed responses."""

    def __init__(self, app: ASGIApp, *, settings: Settings | None = None,
                 layer: RateLimitLayer | None = None, limiter: RateLimiter | None = None,
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = given_or_built(layer, settings, lambda s: RateLimitLayer.for_app(
            s, limiter=limiter, audit=audit))

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        if not self.layer.rules:
            return None
        layer = self.layer
        if layer.inline:          # decided in this process: no flow to drive
            return self._verdict(scope, layer.check_now(view_of(scope),
                                                        scope.get("secure_mw.identity")))
        decided = run_inline(layer.check(view_of(scope), scope.get("secure_mw.identity")))
        if decided.__class__ is CoroutineType:      # a limiter that waits (Redis, SQLite)
            return self._wait(scope, decided)
        return self._verdict(scope, decided)  # type: ignore[arg-type]

    async def _wait(self, scope: Scope, decided: Coroutine[Any, Any, Decided]) -> Verdict:
        return self._verdict(scope, await decided)

    @staticmethod
    def _verdict(scope: Scope, decided: Decided) -> Verdict:
        reply, decision = decided
        if reply is not None:
            return reply
        if decision is None or scope["type"] == "websocket":
            return None
        extra = rate_lines(decision)

        def add_rate(headers: RawHeaders) -> None:
            headers.extend(extra)

        return add_rate


class RedirectGuardMiddleware(Layer):
    """400 for a request whose redirect parameters (``rd``, ``next`` …) point off the allowed
    hosts; an unsafe ``Location`` in a response is replaced by ``redirects.default``."""

    kinds = HTTP

    def __init__(self, app: ASGIApp, *, settings: Settings | None = None,
                 layer: RedirectLayer | None = None, extra_hosts: Iterable[str] = (),
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = given_or_built(layer, settings, lambda s: RedirectLayer(
            s.redirects, extra_hosts=extra_hosts, audit=audit))

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        view = view_of(scope)
        reply = self.layer.check_request(view, scope.get("secure_mw.identity"))
        if reply is not None:
            return reply
        layer = self.layer

        def check_response(headers: RawHeaders) -> None:
            check_redirects(layer, headers, view, scope.get("secure_mw.identity"))

        return check_response


def check_redirects(layer: RedirectLayer, headers: RawHeaders, view: RequestView,
                    identity: Identity | None) -> None:
    """Replace an unsafe ``Location`` or ``Refresh`` among a response's raw ``headers``
    (edited in place) with ``redirects.default``."""
    for index, (name, value) in enumerate(headers):
        lower = name.lower()
        if lower not in _REDIRECTING:
            continue
        check = layer.check_location if lower == b"location" else layer.check_refresh
        replacement = check(value.decode("latin-1"), view, identity)
        if replacement is not None:
            headers[index] = (lower, replacement.encode("latin-1"))


class LoginGuardMiddleware:
    """Regulation (bans after repeated failures) and enumeration-resistant timing for the
    app's own login endpoints: ``POST`` to one of ``paths`` (see
    :class:`~secure_mw.guards.layers.LoginGuardLayer`)."""

    fusable = True     # ``protect()`` fuses the layers inside it

    def __init__(self, app: ASGIApp, *, settings: Settings | None = None,
                 layer: LoginGuardLayer | None = None, **options: Any) -> None:
        self.app = app
        if layer is None:
            layer = LoginGuardLayer(settings or Settings(), **options)
        self.layer = layer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        view = view_of(scope)
        layer = self.layer
        if not layer.applies(view):
            await self.app(scope, receive, send)
            return
        try:
            view.body = await read_body(receive, MAX_LOGIN_BODY)
        except BodyTooLarge:
            await send_reply(send, layer.refusal(view, 413, "login body too large"))
            return
        captured: list[Message] = []

        async def answer(body: bytes) -> tuple[int, str, str]:
            captured[:] = await self._call_app(scope, body)
            start = _start_of(captured)
            headers = _str_headers(start)
            return (int(start["status"]) if start else 500, headers.get("content-type", ""),
                    headers.get("location", ""))

        refusal, cookies = await run_async(layer.guard(view, lambda body: Op(
            _sync_only, answer, body)))
        if refusal is not None:
            await send_reply(send, refusal)
            return
        start = _start_of(captured)
        if cookies and start is not None:
            start["headers"] = [*start.get("headers", ()),
                                *((b"set-cookie", c.encode("latin-1")) for c in cookies)]
        for message in captured:
            await send(message)

    async def _call_app(self, scope: Scope, body: bytes) -> list[Message]:
        captured: list[Message] = []
        pending = [body]

        async def replay() -> Message:
            if pending:
                return {"type": "http.request", "body": pending.pop(), "more_body": False}
            return {"type": "http.disconnect"}

        async def capture(message: Message) -> None:
            captured.append(message)

        await self.app(scope, replay, capture)
        return captured


def _start_of(captured: list[Message]) -> Message | None:
    return next((m for m in captured if m["type"] == "http.response.start"), None)


def _sync_only(body: bytes) -> Any:  # pragma: no cover - the ASGI flavour never runs ops sync
    raise RuntimeError("the ASGI login guard calls the app asynchronously")


def _str_headers(start: Message | None) -> dict[str, str]:
    """The headers of a response start message, lower-cased names (the last of each)."""
    if start is None:
        return {}
    return {bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1")
            for name, value in start.get("headers", ())}


class AuthorizationMiddleware(Layer):
    """``[access_control]`` rules for every request and WebSocket handshake (refused before
    it is accepted). Runs after the session (it needs the identity); the app receives the
    normalized path in ``scope["path"]`` and the deciding rule in
    ``scope["secure_mw.decision"]``."""

    def __init__(self, app: ASGIApp, *, settings: Settings | None = None,
                 layer: AuthorizationLayer | None = None,
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = given_or_built(layer, settings,
                                    lambda s: AuthorizationLayer(s, audit=audit))

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        view = view_of(scope)
        raw = scope.get("raw_path")
        verdict = self.layer.decide(view, scope.get("secure_mw.identity"),
                                    raw.split(b"?", 1)[0] if isinstance(raw, bytes) else None,
                                    root=scope.get("root_path") or "")
        if verdict.reply is not None:
            return verdict.reply
        if verdict.path != scope.get("path"):
            scope["path"] = verdict.path
            scope["raw_path"] = quote(verdict.path).encode("ascii")
            scope.pop(VIEW_KEY, None)
        scope["secure_mw.decision"] = verdict.decision
        return None
