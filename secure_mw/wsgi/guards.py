"""The guard middlewares for WSGI: security headers, client address, rate limit and
open-redirect guard. Each works alone; :func:`secure_mw.wsgi.protect` stacks them."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from secure_mw._driver import Op, run_sync
from secure_mw._stack import given_or_built
from secure_mw.audit import AuditLogger
from secure_mw.authz.layer import AuthorizationLayer
from secure_mw.authz.paths import route_path
from secure_mw.guards.clientaddr import TrustedProxies, forwarded_client_cert
from secure_mw.guards.headers import SecurityHeaders
from secure_mw.guards.hosts import HostGuardLayer
from secure_mw.guards.layers import (
    MAX_LOGIN_BODY,
    LoginGuardLayer,
    RateLimitLayer,
    RedirectLayer,
)
from secure_mw.guards.ratelimit import RateLimiter, rate_headers
from secure_mw.http import CLIENT_CERT_KEY, RequestView
from secure_mw.identity import Identity
from secure_mw.settings import Settings
from secure_mw.wsgi._io import (
    VIEW_KEY,
    BodyTooLarge,
    Environ,
    ExcInfo,
    StartResponse,
    WSGIApp,
    read_body,
    view_of,
    write_reply,
)
from secure_mw.wsgi._layer import Headers, Layer, Verdict

__all__ = ["AuthorizationMiddleware", "ClientAddressMiddleware", "HostGuardMiddleware",
           "LoginGuardMiddleware",
           "RateLimitMiddleware", "RedirectGuardMiddleware", "SecurityHeadersMiddleware"]

NONCE_KEY = "secure_mw.csp_nonce"


class HostGuardMiddleware(Layer):
    """400 for a request whose host is not allowed or whose path is not UTF-8 (see the ASGI
    middleware of the same name); outermost in ``protect()``. A forwarded host it believed
    goes on in ``HTTP_HOST`` (the original under ``environ["secure_mw.peer"]``)."""

    def __init__(self, app: WSGIApp, *, settings: Settings | None = None,
                 allowed_hosts: Iterable[str] | None = None,
                 trusted_proxies: TrustedProxies | Iterable[str] | None = None,
                 layer: HostGuardLayer | None = None, audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = layer or HostGuardLayer.build(settings=settings,
                                                   allowed_hosts=allowed_hosts,
                                                   trusted_proxies=trusted_proxies,
                                                   audit=audit)

    def enter(self, environ: Environ) -> Verdict:
        view = view_of(environ)
        reply, host = self.layer.judge(view, _path_bytes(environ), encoded=False)
        if reply is None:
            raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
            if isinstance(raw_uri, str):
                # werkzeug replaces undecodable bytes in PATH_INFO with U+FFFD, gunicorn
                # passes them on: the target as sent (gunicorn, werkzeug) settles it.
                reply = self.layer.path_refusal(view, host,
                                                raw_uri.encode("latin-1", "replace"),
                                                encoded=True)
        if reply is not None:
            return reply
        if host != view.host:      # a trusted proxy's forwarded host: the app sees it too
            environ.setdefault("secure_mw.peer", (environ.get("REMOTE_ADDR"),
                                                  environ.get("wsgi.url_scheme"),
                                                  environ.get("HTTP_HOST")))
            environ["HTTP_HOST"] = host
            environ.pop(VIEW_KEY, None)
        return None


def _path_bytes(environ: Environ) -> bytes:
    return path_bytes(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))


def path_bytes(path: str) -> bytes:
    """The bytes of ``SCRIPT_NAME + PATH_INFO``, as the host guard checks them."""
    try:    # PEP 3333: the decoded path's bytes, as latin-1
        return bytes(path.encode("latin-1"))
    except UnicodeEncodeError:   # a server that decoded it already
        return bytes(path.encode("utf-8", "surrogatepass"))


def rules_path(target: object, path: str) -> bytes:
    """The raw path the access rules see: the request target the server kept (``RAW_URI``
    or ``REQUEST_URI``, a str), without its query, else ``SCRIPT_NAME + PATH_INFO``."""
    if isinstance(target, str):          # servers that keep the undecoded path
        return target.split("?", 1)[0].encode("latin-1", "replace")
    return path.encode("latin-1", "replace")


class SecurityHeadersMiddleware(Layer):
    """Adds the security headers to every response; the CSP nonce of the request is
    ``environ["secure_mw.csp_nonce"]``."""

    def __init__(self, app: WSGIApp, *, headers: SecurityHeaders | None = None,
                 settings: Settings | None = None) -> None:
        self.app = app
        if headers is None:
            headers = SecurityHeaders.from_settings(settings.headers) if settings \
                else SecurityHeaders()
        self.headers = headers

    def enter(self, environ: Environ) -> Verdict:
        # Overrides see the path the app routes (// and dot segments resolved).
        path = route_path((environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
                          or "/")
        policy = self.headers
        nonce = SecurityHeaders.new_nonce() if policy.uses_nonce(path) else None
        environ[NONCE_KEY] = nonce

        def add_headers(lines: Headers) -> None:
            # The scheme as the layers inside resolved it (behind a trusted proxy).
            policy.add_to_text(lines, path=path,
                               https=environ.get("wsgi.url_scheme") == "https", nonce=nonce,
                               drawn=True)

        return add_headers


class ClientAddressMiddleware(Layer):
    """Resolves the real client behind trusted proxies into ``REMOTE_ADDR``,
    ``wsgi.url_scheme`` and ``HTTP_HOST`` (the originals stay under
    ``environ["secure_mw.peer"]``); ``environ["secure_mw.client"]`` holds the
    :class:`ClientInfo`. Forwarding headers from any other peer are ignored."""

    def __init__(self, app: WSGIApp, *,
                 trusted_proxies: TrustedProxies | Iterable[str] = (),
                 client_cert_header: str | None = None) -> None:
        self.app = app
        self.proxies = trusted_proxies if isinstance(trusted_proxies, TrustedProxies) \
            else TrustedProxies(trusted_proxies)
        self.cert_header = client_cert_header.lower() if client_cert_header else None

    def enter(self, environ: Environ) -> Verdict:
        view = view_of(environ)
        info = self.proxies.resolve(view.client, view.headers, scheme=view.scheme,
                                    host=view.host)
        environ["secure_mw.client"] = info
        if self.cert_header is not None:
            cert = forwarded_client_cert(self.proxies, self.cert_header, view)
            if cert is not None:
                environ[CLIENT_CERT_KEY] = cert
                environ.pop(VIEW_KEY, None)
        if info.via_proxy:    # the originals (HostGuardMiddleware may have kept them first)
            environ.setdefault("secure_mw.peer", (environ.get("REMOTE_ADDR"),
                                                  environ.get("wsgi.url_scheme"),
                                                  environ.get("HTTP_HOST")))
            environ["REMOTE_ADDR"] = info.ip
            environ["wsgi.url_scheme"] = info.scheme
            environ["HTTP_HOST"] = info.host
            environ.pop(VIEW_KEY, None)
        return None


class RateLimitMiddleware(Layer):
    """Applies the ``[rate_limits]`` rules (see the ASGI middleware of the same name)."""

    def __init__(self, app: WSGIApp, *, settings: Settings | None = None,
                 layer: RateLimitLayer | None = None, limiter: RateLimiter | None = None,
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = given_or_built(layer, settings, lambda s: RateLimitLayer.for_app(
            s, limiter=limiter, audit=audit))

    def enter(self, environ: Environ) -> Verdict:
        if not self.layer.rules:
            return None
        view, identity = view_of(environ), environ.get("secure_mw.identity")
        reply, decision = self.layer.check_now(view, identity) if self.layer.inline \
            else run_sync(self.layer.check(view, identity))
        if reply is not None:
            return reply
        if decision is None:
            return None
        lines = rate_headers(decision)

        def add_rate(headers: Headers) -> None:
            headers.extend(lines)

        return add_rate


class RedirectGuardMiddleware(Layer):
    """400 for unsafe redirect parameters; unsafe ``Location`` headers replaced."""

    def __init__(self, app: WSGIApp, *, settings: Settings | None = None,
                 layer: RedirectLayer | None = None, extra_hosts: Iterable[str] = (),
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = given_or_built(layer, settings, lambda s: RedirectLayer(
            s.redirects, extra_hosts=extra_hosts, audit=audit))

    def enter(self, environ: Environ) -> Verdict:
        view = view_of(environ)
        reply = self.layer.check_request(view, environ.get("secure_mw.identity"))
        if reply is not None:
            return reply
        layer = self.layer

        def hook(headers: Headers) -> None:
            check_redirects(layer, headers, view, environ.get("secure_mw.identity"))

        return hook


def check_redirects(layer: RedirectLayer, headers: Headers, view: RequestView,
                    identity: Identity | None) -> None:
    """Replace an unsafe ``Location`` or ``Refresh`` among a response's ``headers`` (edited
    in place) with ``redirects.default``."""
    for index, (name, value) in enumerate(headers):
        lower = name.lower()
        if lower == "location":
            replacement = layer.check_location(value, view, identity)
        elif lower == "refresh":
            replacement = layer.check_refresh(value, view, identity)
        else:
            continue
        if replacement is not None:
            headers[index] = (name, replacement)


class LoginGuardMiddleware:
    """Regulation and enumeration-resistant timing for the app's own login endpoints (see
    the ASGI middleware of the same name)."""

    fusable = True     # ``protect()`` fuses the layers inside it

    def __init__(self, app: WSGIApp, *, settings: Settings | None = None,
                 layer: LoginGuardLayer | None = None, **options: Any) -> None:
        self.app = app
        if layer is None:
            layer = LoginGuardLayer(settings or Settings(), **options)
        self.layer = layer

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        view = view_of(environ)
        layer = self.layer
        if not layer.applies(view):
            return self.app(environ, start_response)
        try:
            view.body = read_body(environ, MAX_LOGIN_BODY)
        except BodyTooLarge:
            return write_reply(start_response,
                               layer.refusal(view, 413, "login body too large"))
        kept: list[tuple[str, Headers, Any, bytes]] = []

        def answer(body: bytes) -> tuple[int, str, str]:
            kept[:] = [self._call_app(environ, body)]
            try:
                status = int(kept[0][0].split(" ", 1)[0])
            except ValueError:
                status = 500
            named = {name.lower(): value for name, value in kept[0][1]}
            return status, named.get("content-type", ""), named.get("location", "")

        refusal, cookies = run_sync(layer.guard(view, lambda body: Op(
            answer, _async_only, body)))
        if refusal is not None or not kept:
            return write_reply(start_response,
                               refusal or layer.refusal(view, 503, "no answer"))
        status_line_text, headers, exc_info, content = kept[0]
        headers.extend(("Set-Cookie", c) for c in cookies)
        start_response(status_line_text, headers, exc_info)
        return [content]

    def _call_app(self, environ: Environ, body: bytes) -> tuple[str, Headers, Any, bytes]:
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        seen: list[Any] = []
        written: list[bytes] = []

        def capture(status: str, headers: Headers,
                    exc_info: ExcInfo | None = None) -> Callable[[bytes], object]:
            seen[:] = [status, headers, exc_info]
            return written.append

        result = self.app(environ, capture)
        try:
            content = b"".join([*written, *result])
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not seen:
            return "500 Internal Server Error", [], None, b""
        return str(seen[0]), list(seen[1]), seen[2], content


async def _async_only(body: bytes) -> Any:  # pragma: no cover - WSGI runs ops sync
    raise RuntimeError("the WSGI login guard calls the app synchronously")


class AuthorizationMiddleware(Layer):
    """``[access_control]`` rules for every request (see the ASGI middleware of the same
    name); the app receives the normalized path in ``PATH_INFO`` and the deciding rule in
    ``environ["secure_mw.decision"]``."""

    def __init__(self, app: WSGIApp, *, settings: Settings | None = None,
                 layer: AuthorizationLayer | None = None,
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = given_or_built(layer, settings,
                                    lambda s: AuthorizationLayer(s, audit=audit))

    def enter(self, environ: Environ) -> Verdict:
        view = view_of(environ)
        raw = rules_path(environ.get("RAW_URI") or environ.get("REQUEST_URI"),
                         environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
        script = environ.get("SCRIPT_NAME", "").rstrip("/")
        verdict = self.layer.decide(view, environ.get("secure_mw.identity"), raw, root=script)
        if verdict.reply is not None:
            return verdict.reply
        if verdict.path != view.path:
            environ["PATH_INFO"] = verdict.path[len(script):].encode("utf-8").decode("latin-1")
            environ.pop(VIEW_KEY, None)
        environ["secure_mw.decision"] = verdict.decision
        return None
