"""FastAPI (and Starlette) glue: ``app.add_middleware(SecureMW, settings=settings)`` builds the
whole ``protect()`` stack around the rest of the app, so ``app`` stays a FastAPI object; the
dependencies :func:`current_identity`, :func:`optional_identity` and :func:`require` read the
identity the stack found and let the authorization core decide (a refusal is an
:class:`HTTPException`); ``/docs`` and ``/redoc`` are served with the request's CSP nonce.
docs/quickstart/fastapi.md shows it whole.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

try:
    from fastapi import FastAPI, HTTPException, Request, Security
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.openapi.models import APIKey, APIKeyIn
    from fastapi.security.base import SecurityBase
except ImportError as exc:  # pragma: no cover - exercised by tests/test_plain_install.py
    raise ImportError("secure_mw.contrib.fastapi needs FastAPI: "
                      "pip install 'secure-mw[fastapi]'") from exc

from secure_mw.asgi import protect
from secure_mw.asgi._io import ASGIApp, Receive, Scope, Send, view_of
from secure_mw.audit import AuditLogger
from secure_mw.authz.layer import AuthorizationLayer
from secure_mw.authz.rules import AccessPolicy
from secure_mw.errors import ConfigError, SecureMWError
from secure_mw.guards.headers import NONCE_MARKER, PAGE_CSP
from secure_mw.http import Reply
from secure_mw.identity import Identity
from secure_mw.session.cookies import CookieJarSpec
from secure_mw.settings import Settings

__all__ = ["CONTEXT_KEY", "Refused", "SecureMW", "current_identity", "optional_identity",
           "require", "session_scheme"]

log = logging.getLogger("secure_mw.contrib.fastapi")

#: Where :class:`SecureMW` leaves what the dependencies need (settings, audit, layers).
CONTEXT_KEY = "secure_mw.fastapi"
_NONCE_KEY = "secure_mw.csp_nonce"
_IDENTITY_KEY = "secure_mw.identity"


class SecureMW:
    """The ``protect()`` stack as a Starlette middleware class. Give ``settings`` (a
    :class:`~secure_mw.Settings`) or ``config`` (a TOML path, read with the ``SECURE_MW_*``
    environment overrides). ``docs``: serve FastAPI's ``/docs`` and ``/redoc`` with the CSP
    nonce (``True``), not at all (``False``), or a mapping of asset URLs (``swagger_js_url``,
    ``swagger_css_url``, ``swagger_favicon_url``, ``redoc_js_url``). Other keyword options go
    to ``protect()`` (``keyring``, ``store``, ``clock``, ``audit``, ``require_login``, ...).

    Starlette builds its middleware stack once, at the application's first call; that is
    when this stack is built. A configuration problem fails the lifespan start-up (uvicorn
    exits naming every problem) and, without a lifespan, answers 503 to every request.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings | None = None,
                 config: str | os.PathLike[str] | None = None,
                 docs: bool | Mapping[str, str] = True, **options: Any) -> None:
        if (settings is None) == (config is None):
            raise TypeError("SecureMW needs settings= or config= (exactly one of them)")
        self.app = app
        self.error: ConfigError | None = None
        self.stack: ASGIApp = app
        try:
            if settings is None:
                assert config is not None
                settings = Settings.from_file(config, environ=os.environ)
            inner: ASGIApp = app
            if docs:
                inner = _Docs(app, settings, docs if isinstance(docs, Mapping) else {})
            self.stack = protect(inner, settings, **options)
        except ConfigError as exc:
            log.error("secure_mw: the configuration is not valid: %s", exc)
            self.error = exc
            return
        self.settings = settings
        self.context = _Context(settings, options.get("audit"))
        session_scheme.name_cookie(self.context.cookie_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.error is not None:
            await _misconfigured(self.error, scope, receive, send)
            return
        scope[CONTEXT_KEY] = self.context
        await self.stack(scope, receive, send)


async def _misconfigured(error: ConfigError, scope: Scope, receive: Receive, send: Send
                         ) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.failed",
                        "message": f"secure_mw: {error}"})
        raise error       # as Starlette's router does: the server stops starting
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1011})
        return
    body = b"The server's security configuration is not valid; see its log."
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


class _Context:
    """What the dependencies of one :class:`SecureMW` share: an authorization layer per
    requirement, built at its first use."""

    def __init__(self, settings: Settings, audit: AuditLogger | None) -> None:
        self.settings = settings
        self.audit = audit
        self.cookie_name = CookieJarSpec(secure=settings.session.cookie_secure,
                                         domain=settings.session.cookie_domain
                                         ).name(settings.session.cookie_name)
        self.layers: dict[_Requirement, AuthorizationLayer] = {}

    def layer(self, requirement: _Requirement) -> AuthorizationLayer:
        layer = self.layers.get(requirement)
        if layer is None:
            layer = self.layers[requirement] = AuthorizationLayer(
                self.settings, policy=requirement.policy, audit=self.audit)
        return layer


# -- the dependencies -------------------------------------------------------------------------


class Refused(HTTPException, SecureMWError):
    """A requirement not met: the authorization core's answer (a redirect to the login or
    the second step for a browser navigation, 401, or 403) as FastAPI's HTTPException, so the
    app's exception handlers render it; ``reply`` is the core's own response."""

    def __init__(self, reply: Reply) -> None:
        headers = {name: value for name, value in reply.headers
                   if name.lower() not in ("content-type", "content-length",
                                           "content-security-policy")}
        detail: Any = HTTPStatus(reply.status).phrase
        if any(name.lower() == "content-type" and "json" in value
               for name, value in reply.headers):
            detail = json.loads(reply.body)
        super().__init__(reply.status, detail=detail, headers=headers)
        self.status = reply.status
        self.reply = reply


class _SessionScheme(SecurityBase):
    """The OpenAPI security scheme of the stack's sign-in: the session cookie. As a
    dependency it returns the identity (or None)."""

    def __init__(self) -> None:
        self.scheme_name = "secure_mw"
        self.name_cookie(CookieJarSpec(secure=True).name(Settings().session.cookie_name))

    def name_cookie(self, name: str) -> None:
        self.model = APIKey.model_validate({"in": APIKeyIn.cookie, "name": name, "description": (
            "The session cookie secure_mw sets when you sign in (your browser sends it). "
            "Sign in at /.auth/login; a route's list names the groups and factors it needs.")})

    async def __call__(self, request: Request) -> Identity | None:
        return _identity(request)


#: The security scheme every protected route's OpenAPI operation lists.
session_scheme = _SessionScheme()


def _identity(request: Request) -> Identity | None:
    if CONTEXT_KEY not in request.scope:
        raise RuntimeError("secure_mw's dependencies need the SecureMW middleware: "
                           "app.add_middleware(SecureMW, settings=settings)")
    identity = request.scope.get(_IDENTITY_KEY)
    return identity if isinstance(identity, Identity) else None


class _Requirement:
    """Who may pass, compiled once into an access policy of one rule."""

    __slots__ = ("auth_level", "groups", "policy", "scopes")

    def __init__(self, groups: Iterable[str], auth_level: int) -> None:
        if isinstance(groups, str):
            groups = (groups,)
        self.groups = tuple(dict.fromkeys(groups))
        self.auth_level = auth_level
        self.policy = AccessPolicy.requirement(self.groups, auth_level)
        self.scopes = [f"group:{g}" for g in self.groups] + \
            (["two_factor"] if auth_level == 2 else [])


_SIGNED_IN = _Requirement((), 1)


def _check(request: Request, requirement: _Requirement) -> Identity:
    identity = _identity(request)
    scope = request.scope
    raw = scope.get("raw_path")
    verdict = scope[CONTEXT_KEY].layer(requirement).decide(
        view_of(scope), identity, raw.split(b"?", 1)[0] if isinstance(raw, bytes) else None,
        root=scope.get("root_path") or "")
    if verdict.reply is not None:
        raise Refused(verdict.reply)
    assert identity is not None      # the rule admits signed-in identities only
    return identity


async def current_identity(request: Request,
                           _: Identity | None = Security(session_scheme)) -> Identity:
    """The signed-in identity. Nobody signed in: a browser navigation is sent to the login
    (302, and back here afterwards); anything else gets 401 with ``login_url``."""
    return _check(request, _SIGNED_IN)


async def optional_identity(request: Request) -> Identity | None:
    """The signed-in identity, or None (the route is public: no lock in /docs)."""
    return _identity(request)


def require(*, groups: Iterable[str] = (), auth_level: int = 1
            ) -> Callable[..., Awaitable[Identity]]:
    """A dependency admitting a signed-in identity in any of ``groups`` (all when empty)
    whose sign-in has ``auth_level`` factors (1, or 2 for a second factor), returning it.

    Not met: 403 for a signed-in identity outside the groups (audited). A one-factor session
    on ``auth_level=2``: a browser navigation goes to the second step (``/.auth/2fa``), an API
    call gets 401 ``second_factor_required`` with its ``login_url`` — as a ``two_factor``
    access rule answers; with an OpenID provider's session (no second step here), 403.
    Nobody signed in: as :func:`current_identity`."""
    requirement = _Requirement(groups, auth_level)

    async def dependency(request: Request, _: Identity | None = Security(
            session_scheme, scopes=requirement.scopes)) -> Identity:
        return _check(request, requirement)

    dependency.__name__ = "require_" + "_".join(
        [*(re.sub(r"\W", "_", g) for g in requirement.groups), f"level{auth_level}"])
    return dependency


# -- /docs and /redoc under the CSP ----------------------------------------------------------

_SWAGGER_JS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
_SWAGGER_CSS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
_REDOC_JS = "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"
_ELEMENTS = re.compile(r"<(script|style)\b|<link\b(?=[^>]*\brel=\"?stylesheet)", re.IGNORECASE)
_FAVICON = re.compile(r"<link\b[^>]*\brel=\"?shortcut icon\"?[^>]*>\s*", re.IGNORECASE)


def _with_nonce(page: str, nonce: str) -> str:
    """``page`` with the nonce on every script, style and stylesheet link."""
    return _ELEMENTS.sub(lambda m: m.group(0) + f' nonce="{nonce}"', page)


class _Docs:
    """Answers the FastAPI app's ``docs_url``, its OAuth2 redirect page and ``redoc_url``
    (from ``scope["app"]``) with FastAPI's pages, every script and style carrying the CSP
    nonce; the page's policy is the configured one plus ``img-src 'self' data:`` (Swagger
    UI's icons) and, for ReDoc, ``worker-src 'self' blob:`` (its search)."""

    def __init__(self, app: ASGIApp, settings: Settings, assets: Mapping[str, str]) -> None:
        self.app = app
        unknown = set(assets) - {"swagger_js_url", "swagger_css_url", "swagger_favicon_url",
                                 "redoc_js_url"}
        if unknown:
            raise TypeError(f"SecureMW(docs=...): unknown asset names {sorted(unknown)}")
        self.assets = dict(assets)
        self.csp = settings.headers.csp or PAGE_CSP

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        page = self._page(scope) if scope["type"] == "http" else None
        if page is None:
            await self.app(scope, receive, send)
            return
        body, csp = page
        encoded = body.encode("utf-8")
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(encoded)).encode()),
            (b"content-security-policy", csp.encode("latin-1"))]})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else encoded})

    def _page(self, scope: Scope) -> tuple[str, str] | None:
        app = scope.get("app")
        nonce = scope.get(_NONCE_KEY)
        if not isinstance(app, FastAPI) or not app.openapi_url or not nonce \
                or scope["method"] not in ("GET", "HEAD"):
            return None
        root = (scope.get("root_path") or "").rstrip("/")
        path = scope["path"]
        route = path[len(root):] if root and path.startswith(root + "/") else path
        openapi_url = root + app.openapi_url
        if app.docs_url and route == app.docs_url:
            redirect = app.swagger_ui_oauth2_redirect_url
            swagger = get_swagger_ui_html(
                openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
                swagger_js_url=self.assets.get("swagger_js_url", _SWAGGER_JS),
                swagger_css_url=self.assets.get("swagger_css_url", _SWAGGER_CSS),
                swagger_favicon_url=self.assets.get("swagger_favicon_url", ""),
                oauth2_redirect_url=root + redirect if redirect else None,
                init_oauth=app.swagger_ui_init_oauth,
                swagger_ui_parameters=app.swagger_ui_parameters)
            page = bytes(swagger.body).decode("utf-8")
            if "swagger_favicon_url" not in self.assets:
                page = _FAVICON.sub("", page)     # no icon from another site
            return _with_nonce(page, nonce), self._policy(nonce, "img-src 'self' data:")
        if app.docs_url and route == app.swagger_ui_oauth2_redirect_url:
            redirect_page = get_swagger_ui_oauth2_redirect_html()
            return _with_nonce(bytes(redirect_page.body).decode("utf-8"), nonce), \
                self._policy(nonce)
        if app.redoc_url and route == app.redoc_url:
            return self._redoc(app.title, openapi_url, nonce), self._policy(
                nonce, "img-src 'self' data:", "worker-src 'self' blob:")
        return None

    def _redoc(self, title: str, openapi_url: str, nonce: str) -> str:
        # ReDoc is started by a script (not the <redoc> element) so that it gets the nonce
        # for the styles it inserts: browsers hide a nonce attribute from scripts.
        source = html.escape(self.assets.get("redoc_js_url", _REDOC_JS), quote=True)
        spec = json.dumps(openapi_url).replace("<", "\\u003c")
        return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(title)} - ReDoc</title>"
                f'<style nonce="{nonce}">body{{margin:0;padding:0}}</style></head>\n<body>'
                f'<div id="redoc"></div>\n<script nonce="{nonce}" src="{source}"></script>\n'
                f'<script nonce="{nonce}">Redoc.init({spec}, {{nonce: "{nonce}"}}, '
                f'document.getElementById("redoc"));</script>\n</body></html>\n')

    def _policy(self, nonce: str, *extra: str) -> str:
        policy = self.csp.replace(NONCE_MARKER, f"'nonce-{nonce}'")
        for directive in extra:
            if not re.search(rf"(^|;)\s*{directive.split()[0]}\b", policy):
                policy += f"; {directive}"
        return policy
