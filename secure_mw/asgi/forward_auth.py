"""The ASGI app ``secure-mw serve`` runs: the login portal and the forward-auth endpoints
(``/api/authz/auth-request`` for nginx, ``/api/authz/forward-auth`` for Traefik and Caddy),
both behind the ordinary :func:`secure_mw.asgi.protect` stack. For an authorization
subrequest from a trusted proxy, :class:`ForwardAuthAdapter` rewrites the request the layers
see into the original one (method, scheme, host, path and query, client address), so the
Host allow-list, rate limits, session, rules and signed assertion decide exactly as they
would in-process; it then tells the proxy the outcome in the status codes it understands."""

from __future__ import annotations

import functools
import logging
import re
from typing import Any
from urllib.parse import quote, unquote

from secure_mw.asgi._io import ASGIApp, Message, Receive, Scope, Send, send_reply
from secure_mw.audit import AuditLogger, audit_logger
from secure_mw.authz.paths import PathRefused, normalize_path
from secure_mw.errors import ConfigError, ConfigProblem
from secure_mw.forward_auth import (
    ENDPOINTS,
    FORWARDING_HEADERS,
    ForwardedRequest,
    NotForwardable,
    forwarded_request,
    remote_headers,
)
from secure_mw.guards.clientaddr import TrustedProxies
from secure_mw.http import Reply, RequestView, html_reply, json_reply, redirect_reply
from secure_mw.settings import Settings

__all__ = ["ForwardAuthAdapter", "portal_app"]

STATE_KEY = "secure_mw.forward_auth"
_NO_STORE = [("cache-control", "no-store")]
_FORM_ACTION = re.compile(r'form-action="([^"]*)"')


class _State:
    """Shared by the adapter and the endpoint through the scope: which contract, and
    whether the request reached the endpoint (only then is it allowed)."""

    __slots__ = ("allowed", "kind")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.allowed = False


async def endpoint(scope: Scope, receive: Receive, send: Send, *,
                   metrics: ASGIApp | None = None) -> None:
    """The innermost app: 200 with the ``Remote-*`` headers and the signed assertion for a
    forwarded request the stack let through; the portal's own home page; ``/metrics`` when
    ``metrics`` is given (the stack's rules decide who reads it); 404 otherwise."""
    if scope["type"] != "http":
        return
    state = scope.get(STATE_KEY)
    head = scope.get("method") == "HEAD"
    if isinstance(state, _State):
        state.allowed = True
        lines = remote_headers(scope.get("secure_mw.identity"))
        token = scope.get("secure_mw.assertion")
        name = scope.get("secure_mw.assertion_header")
        if isinstance(name, str):
            lines.append((name, token if isinstance(token, str) else ""))
        await send_reply(send, Reply(200, [*lines, *_NO_STORE]), head=head)
        return
    if scope.get("path") == "/":
        identity = scope.get("secure_mw.identity")
        who = f"You are signed in as {identity.sub}." if identity is not None \
            else "You are not signed in."
        await send_reply(send, html_reply(200, "Signed in", who), head=head)
        return
    if metrics is not None and scope.get("path") == "/metrics":
        await metrics(scope, receive, send)
        return
    await send_reply(send, json_reply(404, {"error": "not_found"}), head=head)


class ForwardAuthAdapter:
    """Outermost layer of ``secure-mw serve``: turns an authorization subrequest of a
    trusted proxy into the original request for the stack inside, and the stack's answer
    into 200 / 401 / 403 (nginx) or 200 / 302 / 401 / 403 (Traefik, Caddy). A subrequest
    from any other peer is refused with 403 and a ``forward_auth_refused`` audit event:
    answering it for the portal's own URL would authorize nothing anyone asked about."""

    def __init__(self, app: ASGIApp, *, settings: Settings,
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.proxies = TrustedProxies(settings.server.trusted_proxies,
                                      header=settings.server.forwarded_header)
        self.portal = (settings.server.external_url or "").rstrip("/")
        self.prefix = settings.server.auth_prefix
        self.assertion_header = settings.signed_headers.header.lower()
        self.audit = audit or audit_logger()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = ENDPOINTS.get(scope.get("path") or "") if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        view = RequestView.from_scope(scope)
        if not self.proxies.is_trusted(view.client):
            self._refused(view, None, "the peer is not a trusted proxy")
            await send_reply(send, json_reply(403, {"error": "forbidden"}))
            return
        try:
            original = forwarded_request(kind, view.headers)
        except NotForwardable as exc:
            self._refused(view, None, exc.reason)
            # nginx turns anything but 401/403 into a 500: refuse in its words.
            status = 403 if kind == "auth-request" else 400
            await send_reply(send, json_reply(status, {"error": "bad_forward_request"}))
            return
        path = unquote(original.raw_path)
        try:
            inside = normalize_path(path).startswith(self.prefix)
        except PathRefused:
            inside = False       # the stack refuses it, as in-process
        if inside:
            # The portal's own pages (login, logout) must not run for a service's URL.
            self._refused(view, original, "the path is under the login portal's prefix")
            await send_reply(send, json_reply(403, {"error": "forbidden"}))
            return
        client = self.proxies.resolve(view.client, view.headers, scheme=original.scheme,
                                      host=original.host).ip
        state = _State(kind)
        inner: dict[str, Any] = {
            **scope,
            "method": original.method,
            "scheme": original.scheme,
            "path": path,
            "raw_path": original.raw_path.encode("ascii"),
            "query_string": original.query.encode("ascii"),
            "root_path": "",
            "client": (client, 0),
            "headers": [*((n, v) for n, v in scope.get("headers", ())
                          if n.lower() not in FORWARDING_HEADERS),
                        (b"host", original.host.encode("ascii"))],
            STATE_KEY: state,
            "secure_mw.assertion_header": self.assertion_header,
        }
        for key in ("secure_mw.view", "secure_mw.client"):
            inner.pop(key, None)

        async def no_body() -> Message:     # a subrequest's body is never the original's
            return {"type": "http.request", "body": b"", "more_body": False}

        passing = False
        replaced = False

        async def translate(message: Message) -> None:
            nonlocal passing, replaced
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if state.allowed and status == 200:
                    passing = True
                    await send(message)
                    return
                reply = self._reply(kind, status, message.get("headers", ()), original, view)
                if reply is None:
                    passing = True
                    await send(message)
                    return
                replaced = True
                await send_reply(send, reply)
            elif passing and not replaced:
                await send(message)

        await self.app(inner, no_body, translate)

    def _reply(self, kind: str, status: int, raw_headers: Any,
               original: ForwardedRequest, view: RequestView) -> Reply | None:
        """What the proxy gets for the stack's refusal ``status`` (None: the stack's own
        response as it is)."""
        headers = [(bytes(n).decode("latin-1").lower(), bytes(v).decode("latin-1"))
                   for n, v in raw_headers]
        location = next((v for n, v in headers if n == "location"), "")
        step = self._step(location) if 300 <= status < 400 else None
        if step is not None:     # the login (or second step) challenge of a navigation
            login = f"{self.portal}{self.prefix}{step}"
            target = f"{login}?rd={quote(original.url, safe='')}"
            if kind == "forward-auth":
                return redirect_reply(target)
            # nginx passes a 401 only; its error_page sends the browser to the Location.
            return self._unauthenticated(login, step, [], location=target)
        if status == 401:
            found = [v for n, v in headers if n == "www-authenticate"]
            step = "2fa" if any(f'form-action="{self.prefix}2fa"' in v for v in found) \
                else "login"
            challenges = [_FORM_ACTION.sub(lambda m: f'form-action="{self._absolute(m[1])}"', v)
                          for v in found]
            return self._unauthenticated(f"{self.portal}{self.prefix}{step}", step, challenges)
        if 200 <= status < 400:
            # The stack answered by itself (a page, the public keys): that authorizes nothing.
            self._refused(view, original, f"the portal answered {status} by itself")
            return json_reply(403, {"error": "forbidden"})
        if status == 403:
            return json_reply(403, {"error": "forbidden"})
        if kind == "auth-request":
            return json_reply(403, {"error": "forbidden", "status": status})
        return None

    def _step(self, location: str) -> str | None:
        path = location.split("?", 1)[0]
        if path.startswith(self.portal):
            path = path[len(self.portal):]
        if path.startswith(self.prefix) and path[len(self.prefix):] in ("login", "2fa"):
            return path[len(self.prefix):]
        return None

    def _absolute(self, page: str) -> str:
        return f"{self.portal}{page}" if page.startswith("/") else page

    @staticmethod
    def _unauthenticated(login: str, step: str, challenges: list[str], *,
                         location: str | None = None) -> Reply:
        if not challenges:
            challenges = [f'Cookie realm="secure_mw", form-action="{login}"']
        error = "unauthenticated" if step == "login" else "second_factor_required"
        extra = [("location", location)] if location else []
        return json_reply(401, {"error": error, "login_url": login},
                          headers=[*(("www-authenticate", c) for c in challenges), *extra])

    def _refused(self, view: RequestView, original: ForwardedRequest | None,
                 reason: str) -> None:
        fields: dict[str, object] = {"remote_ip": view.client, "path": view.path}
        if original is not None:
            fields.update(method=original.method, host=original.host,
                          uri=original.raw_path)
        self.audit.event("forward_auth_refused", level=logging.WARNING, reason=reason,
                         **fields)


def serve_problems(settings: Settings) -> list[ConfigProblem]:
    """What ``secure-mw serve`` needs beyond what protect() checks."""
    problems = []
    if not settings.server.trusted_proxies:
        problems.append(ConfigProblem(
            "server.trusted_proxies", "secure-mw serve answers authorization subrequests "
            "only from trusted proxies: list the reverse proxy's address (127.0.0.1/32 when "
            "it runs on this host)"))
    if not settings.server.external_url:
        problems.append(ConfigProblem(
            "server.external_url", "secure-mw serve needs the portal's public URL "
            "(https://auth.example.com): the login redirects of the services go there"))
    if settings.session.store == "cookie":
        problems.append(ConfigProblem(
            "session.store", "secure-mw serve keeps sessions server-side (memory, or sqlite "
            "or redis for several workers): a renewed cookie-store session would not reach the "
            "browser through Traefik or Caddy, which keep the portal's Set-Cookie"))
    if settings.regulation.paths:
        problems.append(ConfigProblem(
            "regulation.paths", "secure-mw serve cannot regulate a service's own login "
            "endpoint: it never sees the service's answer (the portal's login is "
            "regulated already)"))
    return problems


def portal_app(settings: Settings, **options: Any) -> ASGIApp:
    """The ASGI app of ``secure-mw serve``: :class:`ForwardAuthAdapter` around
    ``protect(endpoint, settings)``; ``options`` go to protect(). A ConfigError lists every
    problem at once."""
    from secure_mw.asgi import protect

    problems = serve_problems(settings)
    # Each service's assertion names that service (aud), not the portal.
    options.setdefault("assertion_per_host", True)
    inner: ASGIApp = endpoint
    if settings.metrics.enabled:
        try:
            from secure_mw.metrics import metrics_app

            exposition = metrics_app("asgi", registry=options.get("registry"))
        except ImportError:     # prometheus_client is missing: protect() names the extra
            pass
        else:
            inner = functools.partial(endpoint, metrics=exposition)
    try:
        stacked = protect(inner, settings, **options)
    except ConfigError as exc:
        raise ConfigError([*problems, *exc.problems]) from None
    if problems:
        raise ConfigError(problems)
    return ForwardAuthAdapter(stacked, settings=settings, audit=options.get("audit"))
