"""The session gate, framework-free: what every identity source shares.

:class:`SessionGate` decides every request once, as a flow: it finds the session, keeps it
alive and hands back the identity, or a challenge when login is required; under the reserved
prefix it serves ``logout``, ``logged-out``, ``me`` and the ``[pages]`` files, and the pages
of its login methods (:class:`LoginMethod`: the OpenID provider's, :mod:`secure_mw.oidc.core`;
the built-in password login, :mod:`secure_mw.login.core`). A method names the session source
it creates and may maintain, refuse or sign out those sessions; it uses the gate's public
attributes only.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from secure_mw._driver import Flow
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.errors import SecureMWError, SessionTooLarge, StoreUnavailable
from secure_mw.guards.redirect import RedirectPolicy
from secure_mw.http import (
    MAX_FORM_BODY,
    Reply,
    RequestView,
    html_reply,
    json_reply,
    redirect_reply,
    too_large_reply,
)
from secure_mw.identity import Identity
from secure_mw.session.manager import SessionManager, SessionRead, SessionStore
from secure_mw.session.model import Session
from secure_mw.settings import Settings

__all__ = ["MAX_FORM", "RETRY_AFTER", "BadRequest", "LoginMethod", "Maintained", "Outcome",
           "RefreshPending", "Route", "SessionGate", "challenge", "local_target",
           "method_not_allowed", "return_target", "sibling_hosts", "single"]

MAX_FORM = MAX_FORM_BODY   # what the flavours read of a POST to our pages
RETRY_AFTER = 2           # seconds, for a request refused while another refreshes
_MAX_TARGET = 1024


@dataclass(slots=True)
class Outcome:
    """Either a complete ``reply``, or go on to the app with ``identity`` (maybe ``None``);
    ``cookies`` are Set-Cookie values to add to whatever response goes out."""

    reply: Reply | None = None
    identity: Identity | None = None
    cookies: list[str] = field(default_factory=list)


#: A page under the reserved prefix.
Route = Callable[[RequestView], Flow[Outcome]]
#: A session after maintenance (``None``: it ended) and the Set-Cookie values to send.
Maintained = tuple[Session | None, list[str]]


class BadRequest(SecureMWError):
    """A request to our pages that cannot be answered as asked: 400 and an audit line."""


class RefreshPending(SecureMWError):
    """The session's credentials have ended and another request is renewing them: this
    request cannot be served as signed in right now (503 with Retry-After)."""

    status = 503

    def __init__(self, user: str) -> None:
        super().__init__("another request is refreshing the session")
        self.user = user


class _NotKept(Exception):
    """A maintained session could not be saved (too large for the cookie store): it has been
    ended; ``cookies`` expire the client's copy."""

    def __init__(self, cookies: list[str], source: str) -> None:
        super().__init__("the updated session cannot be kept")
        self.cookies = cookies
        self.source = source


@dataclass(frozen=True, slots=True)
class LoginMethod:
    """A way of signing in, as the gate uses it. ``source`` is the :attr:`Session.source`
    of the sessions it creates; ``routes`` its pages under the prefix. The hooks see only
    sessions of its source: ``foreign`` says why one is not this application's;
    ``maintain`` brings one up to date (``None``: nothing to do but keep it alive), and
    ``fresh`` says, without a flow, that it has nothing to do now (a request then skips the
    flow: :meth:`SessionGate.warm_identity`; without ``fresh`` every request runs it);
    ``signing_out`` runs once the session is destroyed and ``signed_out`` names where the
    browser goes next (``None``: the logged-out page)."""

    source: str
    routes: Mapping[str, Route]
    foreign: Callable[[Session], str | None] | None = None
    maintain: Callable[[RequestView, Session, SessionRead], Flow[Maintained | None]] | None \
        = None
    signing_out: Callable[[RequestView, Session], Flow[None]] | None = None
    signed_out: Callable[[RequestView, Session], Flow[str | None]] | None = None
    fresh: Callable[[Session], bool] | None = None


def local_target(value: str | None) -> str | None:
    """``value`` if it is a path on this site a browser cannot read as another host."""
    if not value or len(value) > _MAX_TARGET or value[0] != "/":
        return None
    if value.startswith(("//", "/\\")) or "\\" in value:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return None
    # Non-ASCII is percent-encoded: a Location header carries ASCII only.
    encoded = quote(value, safe="!#$%&'()*+,/:;=?@[]~-._")
    return encoded if len(encoded) <= _MAX_TARGET else None


def sibling_hosts(allowed_hosts: list[str]) -> list[str]:
    """The entries of ``server.allowed_hosts`` a login may send the browser back to (the
    hosts a forward-auth portal signs in for): those naming one host. A wildcard
    (``*``, ``*.example.com``) may cover hosts whose pages others write."""
    return [entry for entry in allowed_hosts if not entry.startswith("*")]


def return_target(value: str | None, hosts: RedirectPolicy | None) -> str | None:
    """Where a login may send the browser back to: a :func:`local_target`, or an absolute
    http(s) URL on one of ``hosts`` (normalized as a browser reads it), or None."""
    local = local_target(value)
    if local is not None or hosts is None or not value or len(value) > _MAX_TARGET:
        return local
    if not value[:8].lower().startswith(("https://", "http://")):
        return None
    target = hosts.normalize(value)
    return target if target is not None and len(target) <= _MAX_TARGET else None


def challenge(view: RequestView, prefix: str, cookie_name: str, *,
              step: str = "login", bearer: bool = False) -> Reply:
    """Send a browser navigation to ``prefix + step`` (``login``, or ``2fa`` for a second
    factor) with the way back; anything else gets 401 saying where to go. With ``bearer``
    (``[bearer_tokens]`` is set) the 401 also offers ``Bearer`` (RFC 6750 §3.1: no error
    code, no token was sent), and a request with an Authorization header of another scheme
    is an API client's: 401, never a redirect."""
    target = view.path + (f"?{view.query_string}" if view.query_string else "")
    page = f"{prefix}{step}"
    api_client = bearer and step == "login" and "authorization" in view.headers
    if view.wants_html and not api_client:
        return redirect_reply(f"{page}?rd={quote(target, safe='/')}")
    error = "unauthenticated" if step == "login" else "second_factor_required"
    offers = [("www-authenticate", 'Bearer realm="secure_mw"')] if bearer and step == "login" \
        else []
    return json_reply(401, {"error": error, "login_url": page}, headers=[
        *offers,
        ("www-authenticate",
         f'Cookie realm="secure_mw", form-action="{page}", cookie-name="{cookie_name}"'),
    ])


def single(params: dict[str, list[str]], name: str) -> str | None:
    """The one value of query parameter ``name`` (None when absent); :class:`BadRequest`
    when it is repeated."""
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"the parameter {name!r} appears more than once")
    return values[0]


def method_not_allowed(allow: str) -> Reply:
    return html_reply(405, "Method not allowed", "This address does not accept that method.",
                      headers=[("allow", allow)])


class SessionGate:
    """The sessions of one application and the pages every login method shares."""

    def __init__(self, settings: Settings, *, keyring: KeyRing | None = None,
                 store: SessionStore | None = None, clock: Callable[[], float] = time.time,
                 audit: AuditLogger | None = None, require_login: bool = True) -> None:
        self.settings = settings
        self.keyring = keyring if keyring is not None else KeyRing.from_settings(settings.keys)
        self.clock = clock
        self.sessions = SessionManager(settings.session, keyring=self.keyring, store=store,
                                       clock=clock, secure=settings.session.cookie_secure,
                                       on_refused=self._cookie_refused,
                                       on_unreadable=self._record_unreadable,
                                       sqlite=settings.sqlite)
        from secure_mw.oidc.prelogin import PreLoginCookie  # (its package imports this one)

        self.prelogin = PreLoginCookie(self.keyring, self.sessions.jar,
                                       settings.session.cookie_name, clock=clock)
        self.audit = audit or AuditLogger(fmt=settings.audit.format,  # type: ignore[arg-type]
                                          logger=logging.getLogger(settings.audit.logger),
                                          clock=clock)
        self.prefix = settings.server.auth_prefix
        siblings = sibling_hosts(settings.server.allowed_hosts)
        try:     # the entries are checked by the settings; the login only reads them
            self.return_hosts: RedirectPolicy | None = RedirectPolicy(
                siblings, require_https=settings.session.cookie_secure) if siblings else None
        except ValueError:
            self.return_hosts = None
        self.require_login = require_login
        from secure_mw.authz.rules import claim_names

        # The claims the access rules read (claim/...): kept in the session for them.
        self.kept_claims = claim_names(settings.access_control)
        self._methods: list[LoginMethod] = []
        self._routes: dict[str, Route] = {
            "logout": self._logout, "logged-out": self._logged_out, "me": self._me}
        from secure_mw.login.pages import Pages

        # The look of our pages ([pages]); its files are served under the prefix.
        self.pages = Pages.from_settings(settings.pages, self.prefix)
        for name, asset in self.pages.assets.items():
            self._routes[f"assets/{name}"] = _asset_route(asset.reply)

    def use(self, method: LoginMethod) -> None:
        """Serve ``method``'s pages and let it look after the sessions of its source."""
        self._methods.append(method)
        self._routes.update(method.routes)

    def _method(self, session: Session) -> LoginMethod | None:
        for method in self._methods:
            if method.source == session.source:
                return method
        return None

    def _cookie_refused(self, view: RequestView, problem: str) -> None:
        """A session cookie that is malformed, forged or made with other keys (another
        application's) is audited wherever it is read."""
        self.event("invalid_session_cookie", view, reason=problem)

    def _record_unreadable(self, view: RequestView, problem: str) -> None:
        """A server-side record the client's session id names cannot be read: audited under
        an event of its own, which fail2ban does not count (the client cannot have forged
        it; one page load after a key left the ring would otherwise ban its user)."""
        self.event("session_record_unreadable", view, reason=problem)

    def _foreign(self, session: Session) -> str | None:
        """Why ``session`` is not one this application accepts, or ``None``."""
        method = self._method(session)
        return method.foreign(session) if method is not None and method.foreign else None

    # -- entry point ----------------------------------------------------------------------

    def return_target(self, value: str | None) -> str | None:
        """``rd``: a path here, or a URL on a host of ``server.allowed_hosts``."""
        return return_target(value, self.return_hosts)

    def is_reserved(self, path: str) -> bool:
        return path.startswith(self.prefix)

    def handle(self, view: RequestView) -> Flow[Outcome]:
        refusal = self.sessions.worker_refusal(view)
        if refusal is not None:     # the memory store in several workers: cannot work
            return Outcome(refusal)
        try:
            if view.path.startswith(self.prefix):
                route = self._routes.get(view.path[len(self.prefix):])
                if route is None:
                    return Outcome(html_reply(404, "Not found", "There is no such page."))
                return (yield from route(view))
            return (yield from self._gate(view))
        except _NotKept as exc:     # audited (session_ended) where it was ended
            return Outcome(self._too_large(view, exc.cookies, exc.source))
        except SessionTooLarge as exc:
            self.event("session_too_large", view, reason=str(exc))
            return Outcome(self._too_large(view, []))
        except StoreUnavailable as exc:
            self.event("store_unavailable", view, reason=str(exc))
            return Outcome(self._unavailable(view))
        except RefreshPending as exc:
            self.event("session_refresh_pending", view, user=exc.user, level=logging.INFO,
                       reason="access token expired while another request refreshes it")
            return Outcome(self._refresh_pending(view))
        except BadRequest as exc:
            self.event("bad_request", view, reason=str(exc))
            return Outcome(html_reply(400, "Bad request", str(exc)))

    def warm_identity(self, view: RequestView) -> Identity | None:
        """The identity of a warm request — a live session that needs nothing refreshed,
        written or audited — found without running :meth:`handle`'s flow; ``None`` whenever
        anything else may happen (then :meth:`handle` decides, as for every request before)."""
        session = self.warm_session(view)
        return None if session is None else session.identity()

    def warm_session(self, view: RequestView) -> Session | None:
        """The session of :meth:`warm_identity`, or ``None``."""
        if view.path.startswith(self.prefix):
            return None
        session = self.sessions.read_warm(view)
        if session is None or self._foreign(session) is not None \
                or not self.stays_warm(view, session):
            return None
        return session

    def stays_warm(self, view: RequestView, session: Session) -> bool:
        """The checks of :meth:`warm_session` that depend on the time or on this server's
        workers rather than on the session record alone (a caller that kept a warm record
        asks them again, with :meth:`~secure_mw.session.manager.SessionManager.warm_record`,
        on every request): nothing to refuse, touch or refresh now."""
        sessions = self.sessions
        if sessions.worker_refusal(view) is not None or sessions.needs_touch(session):
            return False
        method = self._method(session)
        return method is None or method.maintain is None or (
            method.fresh is not None and method.fresh(session))

    # -- the gate -------------------------------------------------------------------------

    def _gate(self, view: RequestView) -> Flow[Outcome]:
        read = yield from self.sessions.read(view)
        cookies: list[str] = []
        session = read.session
        if session is None:
            if read.sent:     # (a forged one was audited as it was read)
                cookies += self.sessions.forget(read.sent)
            if self.require_login:
                return Outcome(self.challenge(view), None, cookies)
            return Outcome(None, None, cookies)
        session, more = yield from self._maintained(view, session, read)
        cookies += more
        if session is None:
            if self.require_login:
                return Outcome(self.challenge(view), None, cookies)
            return Outcome(None, None, cookies)
        return Outcome(None, session.identity(), cookies)

    def _maintained(self, view: RequestView, session: Session, read: SessionRead
                    ) -> Flow[Maintained]:
        """:meth:`_maintain`, ending a session whose updated record cannot be saved (too
        large for the cookie store after a refresh brought hundreds of groups) for every
        copy: the record of before, with the groups of before, is never served instead."""
        try:
            return (yield from self._maintain(view, session, read))
        except SessionTooLarge as exc:
            self.event("session_ended", view, user=session.sub,
                       reason=f"the updated session cannot be kept: {exc}")
            ended = yield from self.sessions.destroy(session, sent=read.sent)
            raise _NotKept(ended, session.source) from None

    def _maintain(self, view: RequestView, session: Session, read: SessionRead
                  ) -> Flow[Maintained]:
        """Refuse a session of another application; let the session's login method bring
        it up to date; else keep it alive (:meth:`touch`)."""
        foreign = self._foreign(session)
        if foreign is not None:    # a session another application created: not ours
            self.event("invalid_session_cookie", view, user=session.sub, reason=foreign)
            return None, self.sessions.forget(read.sent)
        method = self._method(session)
        if method is not None and method.maintain is not None:
            kept = yield from method.maintain(view, session, read)
            if kept is not None:
                return kept
        return (yield from self.touch(view, session, read))

    def touch(self, view: RequestView, session: Session, read: SessionRead, *,
              latest: Callable[[Session], Flow[Session | None]] | None = None
              ) -> Flow[Maintained]:
        """Write back last-active now and then, starting from ``latest(session)`` (default:
        :meth:`latest`): never from a copy older than the stored record."""
        if not self.sessions.needs_touch(session):
            return session, []
        base = yield from (latest or self.latest)(session)
        if base is None:
            return None, self.sessions.forget(read.sent)
        return (yield from self.write_back(base, read, self.clock()))

    def write_back(self, session: Session, read: SessionRead, now: float
                   ) -> Flow[Maintained]:
        updated = session.evolve(last_active=now)
        saved = yield from self.sessions.save(updated, sent=read.sent)
        if saved is None:     # deleted meanwhile (a logout): stays deleted
            return None, self.sessions.forget(read.sent)
        return updated, saved

    def latest(self, session: Session) -> Flow[Session | None]:
        """The newest version of ``session``: the stored record (server-side stores), or
        ``session`` itself (the cookie store); ``None`` if it is gone."""
        if self.sessions.store is None:
            return session
        try:
            stored = yield from self.sessions.load(session.id)
        except ValueError:
            stored = None
        return stored

    def challenge(self, view: RequestView) -> Reply:
        """302 to the login page for a browser navigation; 401 for anything else."""
        return challenge(view, self.prefix, self.sessions.cookie_name,
                         bearer=self.settings.bearer_tokens is not None)

    # -- /.auth/logout, /.auth/logged-out, /.auth/me ----------------------------------------

    def _logout(self, view: RequestView) -> Flow[Outcome]:
        read = yield from self.sessions.read(view)
        session = read.session
        if view.method in ("GET", "HEAD"):
            if session is None:
                return Outcome(redirect_reply(f"{self.prefix}logged-out", headers=[
                    ("set-cookie", c) for c in self.sessions.forget(read.sent)]))
            form = (f'<form method="post" action="{self.prefix}logout">'
                    f'<input type="hidden" name="csrf" value="{session.csrf}">'
                    '<button type="submit">Sign out</button></form>')
            return Outcome(self.pages.render(200, "Sign out", "Sign out of this application?",
                                             body_html=form))
        if view.method != "POST":
            return Outcome(method_not_allowed("GET, POST"))
        if session is None:
            return Outcome(redirect_reply(f"{self.prefix}logged-out", status=303, headers=[
                ("set-cookie", c) for c in self.sessions.forget(read.sent)]))
        sent_token = view.headers.get("x-csrf-token") or view.form().get("csrf") or ""
        if not hmac.compare_digest(sent_token.encode(), session.csrf.encode()):
            self.event("csrf_failure", view, user=session.sub, reason="logout without token")
            return Outcome(html_reply(403, "Sign-out refused",
                                      "The sign-out form had expired. Please try again."))
        cookies = yield from self.sessions.destroy(session, sent=read.sent)
        method = self._method(session)
        if method is not None and method.signing_out is not None:
            yield from method.signing_out(view, session)
        self.event("logout", view, user=session.sub, level=logging.INFO,
                   session=session.digest)
        location = None
        if method is not None and method.signed_out is not None:
            location = yield from method.signed_out(view, session)
        return Outcome(redirect_reply(location or f"{self.prefix}logged-out", status=303,
                                      headers=[("set-cookie", c) for c in cookies]))

    def _logged_out(self, view: RequestView) -> Flow[Outcome]:
        yield from ()
        link = f'<p><a class="button" href="{self.prefix}login">Sign in again</a></p>'
        return Outcome(self.pages.render(200, "Signed out", "You are signed out.",
                                         body_html=link))

    def _me(self, view: RequestView) -> Flow[Outcome]:
        found = yield from self._gate_no_challenge(view)
        if found.identity is None or found.session is None:
            return Outcome(json_reply(401, {"authenticated": False},
                                      headers=[("set-cookie", c) for c in found.cookies]))
        session = found.session
        data = {"authenticated": True, **found.identity.as_dict(),
                "expires_at": int(session.ends_at(self.settings.session.inactivity)),
                "remember_me": session.remember, "csrf_token": session.csrf}
        return Outcome(json_reply(200, data,
                                  headers=[("set-cookie", c) for c in found.cookies]))

    def _gate_no_challenge(self, view: RequestView) -> Flow[_Found]:
        read = yield from self.sessions.read(view)
        if read.session is None:
            return _Found(None, None, self.sessions.forget(read.sent))
        session, cookies = yield from self._maintained(view, read.session, read)
        if session is None:
            return _Found(None, None, cookies)
        return _Found(session, session.identity(), cookies)

    # -- helpers --------------------------------------------------------------------------

    def _unavailable(self, view: RequestView) -> Reply:
        if view.wants_html:
            return html_reply(503, "Sign-in is unavailable",
                              "The identity service cannot be reached right now. "
                              "Please try again in a moment.", headers=[("retry-after", "5")])
        return json_reply(503, {"error": "identity_unavailable"},
                          headers=[("retry-after", "5")])

    def _too_large(self, view: RequestView, cookies: list[str], source: str = "oidc"
                   ) -> Reply:
        """The session does not fit in the cookie store: say why, and what fixes it."""
        headers = [("set-cookie", c) for c in cookies]
        if not view.wants_html:
            return json_reply(503, {"error": "session_too_large"}, headers=headers)
        if source == "local":
            where = "Your groups in this application's users file are"
            fewer = "give the user fewer groups in the users file"
        else:
            where = "Your profile from the identity provider (your groups, most likely) is"
            fewer = ("have the identity provider send fewer groups (filter its groups claim; "
                     "oidc.groups_claim names the claim read)")
        return html_reply(
            503, "Session too large",
            f"{where} too large for this application's cookie-based sessions: you cannot stay "
            "signed in. Administrators: keep sessions in Redis (session.store = \"redis\"), "
            f"or {fewer}.", headers=headers)

    def _refresh_pending(self, view: RequestView) -> Reply:
        headers = [("retry-after", str(RETRY_AFTER))]
        if view.wants_html:
            return html_reply(503, "One moment", "Your session is being renewed. This page "
                              "reloads in a moment.",
                              headers=[*headers, ("refresh", str(RETRY_AFTER))])
        return json_reply(503, {"error": "session_refreshing"}, headers=headers)

    def body_too_large(self, view: RequestView) -> Reply:
        """A POST to our endpoints over the body limit: 413 (a page or JSON) and an audit
        line, before the body is parsed."""
        self.event("request_too_large", view, reason=f"body over {MAX_FORM} bytes")
        return too_large_reply(view)

    def event(self, name: str, view: RequestView, *, level: int = logging.WARNING,
              **fields: Any) -> None:
        """An audit event about ``view``."""
        self.audit.event(name, level=level, remote_ip=view.client, method=view.method,
                         host=view.host, path=view.path, **fields)



@dataclass(slots=True)
class _Found:
    session: Session | None
    identity: Identity | None
    cookies: list[str]


def _asset_route(reply: Callable[[str], Reply]) -> Route:
    """The route serving a file of ``[pages]`` (a stylesheet, a logo)."""
    def route(view: RequestView) -> Flow[Outcome]:
        yield from ()
        return Outcome(reply(view.method))
    return route
