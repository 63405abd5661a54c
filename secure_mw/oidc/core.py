"""The session gate and the ``/.auth/`` endpoints, framework-free.

:class:`OIDCSessionCore` decides every request once, as a flow: the ASGI and WSGI
middlewares only translate I/O. For an ordinary request it finds the session, keeps it alive
(refreshing tokens and the profile when due) and hands back the identity, or a challenge when
login is required. Under the reserved prefix it serves ``login``, ``callback``, ``logout``,
``logged-out`` and ``me``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from secure_mw._driver import Flow
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.errors import InvalidToken, SecureMWError, SessionTooLarge, StoreUnavailable
from secure_mw.guards.hosts import public_base
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
from secure_mw.oidc.client import (
    ID_TOKEN_HINT_MAX,
    GrantRefused,
    OIDCClient,
    TokenSet,
    TokenTooLarge,
    pkce_pair,
)
from secure_mw.oidc.prelogin import LIFETIME, PendingLogin, PreLoginCookie
from secure_mw.session.manager import SessionManager, SessionRead, SessionStore, index_name
from secure_mw.session.model import ClaimsTooLarge, Session, identity_claims
from secure_mw.settings import OIDCSettings, Settings

__all__ = ["OIDCSessionCore", "Outcome", "challenge", "local_target", "return_target",
           "sibling_hosts"]

log = logging.getLogger("secure_mw.oidc")

MAX_FORM = MAX_FORM_BODY   # what the flavours read of a POST to our pages
ROTATION_GRACE = 3600.0   # how long a rotation is remembered for stale copies of a session
REFRESH_CLAIM = 30.0      # how long one process holds the right to refresh a token at most
# A request that finds another refreshing the session's access token is served the session
# while the token is valid or ended less than this long ago, or while the refresh it waits
# for started less than this long ago; otherwise it gets 503 + Retry-After (fail closed).
REFRESH_GRACE = 10.0
RETRY_AFTER = 2           # seconds, for a request refused while another refreshes
_RELEASE_BEFORE = REFRESH_CLAIM - 5.0   # a claim older than this may be another's by now
# Rotation records followed at most, in this process and through the store, for one request.
_MAX_HOPS = 64
_MAX_SHARED_HOPS = 8
_MAX_TARGET = 1024


@dataclass(slots=True)
class Outcome:
    """Either a complete ``reply``, or go on to the app with ``identity`` (maybe ``None``);
    ``cookies`` are Set-Cookie values to add to whatever response goes out."""

    reply: Reply | None = None
    identity: Identity | None = None
    cookies: list[str] = field(default_factory=list)


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


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _BadRequest(f"the parameter {name!r} appears more than once")
    return values[0]


class _BadRequest(Exception):
    pass


class _StillRefreshing(Exception):
    """The access token has ended (beyond :data:`REFRESH_GRACE`) and another request is
    refreshing it: this request cannot be served as signed in right now."""

    def __init__(self, user: str) -> None:
        super().__init__("another request is refreshing the session")
        self.user = user


class _Wait:
    """Another process holds the refresh claim: serve the session as it is (see
    :meth:`OIDCSessionCore._renew`)."""


_WAIT = _Wait()


class _NotKept(Exception):
    """A refreshed session could not be saved (too large for the cookie store): it has been
    ended; ``cookies`` expire the client's copy."""

    def __init__(self, cookies: list[str], source: str) -> None:
        super().__init__("the refreshed session cannot be kept")
        self.cookies = cookies
        self.source = source


def _tokens_due(tokens: Mapping[str, Any], now: float) -> bool:
    """Whether the access token in ``tokens`` is due for a refresh at ``now``."""
    due_at = tokens.get("rd", tokens.get("ae"))
    return isinstance(due_at, int | float) and now >= due_at


class _Rotations:
    """Refresh-token rotations done in this process, by token generation (see
    :func:`_generation`), kept for :data:`ROTATION_GRACE` seconds so that a request still
    carrying the old tokens (the cookie store; a request that read the session just before)
    reuses the result instead of presenting a spent token, which would make the provider
    revoke the grant. (With a Redis store the same record is also kept, encrypted, in Redis
    for every process.)"""

    def __init__(self, limit: int = 5_000) -> None:
        self._items: OrderedDict[bytes, tuple[float, dict[str, Any]]] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, tokens: Mapping[str, Any], now: float) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(_generation(tokens))
            if item is None or item[0] <= now or not _moves(tokens, item[1]):
                return None
            return dict(item[1])

    def follow(self, tokens: Mapping[str, Any], now: float) -> dict[str, Any] | None:
        """``tokens`` with every rotation this process knows applied in turn (at most
        :data:`_MAX_HOPS`), or ``None`` when there is none."""
        current: dict[str, Any] | None = None
        for _ in range(_MAX_HOPS):
            fields = self.get(current or tokens, now)
            if fields is None:
                break
            current = {**(current or tokens), **fields}
        return current

    def put(self, tokens: Mapping[str, Any], fields: dict[str, Any], now: float) -> None:
        with self._lock:
            items = self._items
            items[_generation(tokens)] = (now + ROTATION_GRACE, dict(fields))
            while items and (len(items) > self._limit or next(iter(items.values()))[0] <= now):
                items.popitem(last=False)


def _generation(tokens: Mapping[str, Any]) -> bytes:
    """The digest of a session's token generation: its refresh token *and* access token. A
    provider that keeps its refresh token (Google, Auth0, Okta by default) answers the same
    one at every refresh, so the refresh token alone does not tell one refresh from the
    next; the access token does."""
    refresh_token, access_token = str(tokens.get("rt") or ""), str(tokens.get("at") or "")
    text = f"{len(refresh_token)}:{refresh_token}{access_token}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _moves(tokens: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    """Whether the recorded rotation ``fields`` lead ``tokens`` to another generation (a
    record that names the session's own tokens is not the result of refreshing them)."""
    return _generation({**tokens, **fields}) != _generation(tokens)


def rotation_key(tokens: Mapping[str, Any], kind: str = "rotation") -> str:
    """The store name of the rotation record (``kind="rotation"``) or the refresh claim
    (``"refreshing"``) of the token generation ``tokens`` holds."""
    return f"{kind}:{_generation(tokens).hex()}"


class OIDCSessionCore:
    """Sessions backed by an OpenID provider, for one application."""

    def __init__(self, settings: Settings, *, keyring: KeyRing | None = None,
                 store: SessionStore | None = None, client: OIDCClient | None = None,
                 clock: Callable[[], float] = time.time, audit: AuditLogger | None = None,
                 require_login: bool = True,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if settings.oidc is None:
            raise ValueError("OIDCSessionCore needs an [oidc] section in the settings")
        self._setup(settings, keyring=keyring, store=store, clock=clock, audit=audit,
                    require_login=require_login)
        self.oidc = settings.oidc
        self._monotonic = monotonic
        self.client = client or OIDCClient(settings.oidc, clock=clock, monotonic=monotonic)
        self._routes.update({
            "login": self._login,
            "callback": self._callback,
            "logout": self._logout,
            "logged-out": self._logged_out,
            "me": self._me,
        })
        self._add_logout_routes(settings.oidc)

    def _add_logout_routes(self, oidc: OIDCSettings) -> None:
        """``backchannel-logout`` and (opt-in) ``frontchannel-logout``, where the stores can
        find the sessions of a provider session."""
        if not (oidc.backchannel_logout or oidc.frontchannel_logout):
            return
        if not self.sessions.can_end_all:
            log.warning("oidc.backchannel_logout: the session store %s keeps no index of "
                        "sessions by provider session and subject; the back-channel and "
                        "front-channel logout endpoints are not served",
                        type(self.sessions.store).__name__)
            return
        if oidc.backchannel_logout:
            self._routes["backchannel-logout"] = self._backchannel_logout
        if oidc.frontchannel_logout:
            self._routes["frontchannel-logout"] = self._frontchannel_logout

    def _setup(self, settings: Settings, *, keyring: KeyRing | None,
               store: SessionStore | None, clock: Callable[[], float],
               audit: AuditLogger | None, require_login: bool) -> None:
        """What every identity source shares: sessions, the pre-login cookie, audit."""
        self.settings = settings
        self.keyring = keyring if keyring is not None else KeyRing.from_settings(settings.keys)
        self.clock = clock
        self._monotonic = time.monotonic    # elapsed times (claims); ``clock`` is for tokens
        self.sessions = SessionManager(settings.session, keyring=self.keyring, store=store,
                                       clock=clock, secure=settings.session.cookie_secure,
                                       on_refused=self._cookie_refused,
                                       on_unreadable=self._record_unreadable,
                                       sqlite=settings.sqlite)
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
        self.refresh_margin = 60.0
        # Session id -> when a request of this process started refreshing it.
        self._refreshing: dict[str, float] = {}
        # Refresh claim -> when this process first found it held by another process.
        self._contended: OrderedDict[str, float] = OrderedDict()
        self._rotations = _Rotations()
        self._refreshing_lock = threading.Lock()
        self._routes: dict[str, Callable[[RequestView], Flow[Outcome]]] = {}
        from secure_mw.login.pages import Pages

        # The look of our pages ([pages]); its files are served under the prefix.
        self.pages = Pages.from_settings(settings.pages, self.prefix)
        for name, asset in self.pages.assets.items():
            self._routes[f"assets/{name}"] = _asset_route(asset.reply)

    def _cookie_refused(self, view: RequestView, problem: str) -> None:
        """A session cookie that is malformed, forged or made with other keys (another
        application's) is audited wherever it is read."""
        self._event("invalid_session_cookie", view, reason=problem)

    def _record_unreadable(self, view: RequestView, problem: str) -> None:
        """A server-side record the client's session id names cannot be read: audited under
        an event of its own, which fail2ban does not count (the client cannot have forged
        it; one page load after a key left the ring would otherwise ban its user)."""
        self._event("session_record_unreadable", view, reason=problem)

    def _foreign(self, session: Session) -> str | None:
        """Why ``session`` is not one this application accepts, or ``None``."""
        if session.source == "oidc" and session.tokens.get("cid") != self.client.client_id:
            return "session of another OpenID client"
        return None

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
            self._event("session_too_large", view, reason=str(exc))
            return Outcome(self._too_large(view, []))
        except StoreUnavailable as exc:
            self._event("store_unavailable", view, reason=str(exc))
            return Outcome(self._unavailable(view))
        except _StillRefreshing as exc:
            self._event("session_refresh_pending", view, user=exc.user, level=logging.INFO,
                        reason="access token expired while another request refreshes it")
            return Outcome(self._refresh_pending(view))
        except _BadRequest as exc:
            self._event("bad_request", view, reason=str(exc))
            return Outcome(html_reply(400, "Bad request", str(exc)))

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
                    ) -> Flow[tuple[Session | None, list[str]]]:
        """:meth:`_maintain`, ending a session whose updated record cannot be saved (too
        large for the cookie store after a refresh brought hundreds of groups) for every
        copy: the record of before, with the groups of before, is never served instead."""
        try:
            return (yield from self._maintain(view, session, read))
        except SessionTooLarge as exc:
            self._event("session_ended", view, user=session.sub,
                        reason=f"the updated session cannot be kept: {exc}")
            ended = yield from self.sessions.destroy(session, sent=read.sent)
            raise _NotKept(ended, session.source) from None

    def _maintain(self, view: RequestView, session: Session, read: SessionRead
                  ) -> Flow[tuple[Session | None, list[str]]]:
        """Refresh tokens and profile when due; write back last-active now and then.

        Providers rotate refresh tokens and revoke the whole grant when a spent one is
        presented again, so nothing here may ever present one twice or write back a record
        older than the last refresh: while one request of a session refreshes, the others
        neither refresh nor write; a write-back starts from the stored record (and from any
        rotation this process made); refreshes are claimed across processes in the store.
        """
        now = self.clock()
        foreign = self._foreign(session)
        if foreign is not None:    # a session another application created: not ours
            self._event("invalid_session_cookie", view, user=session.sub, reason=foreign)
            return None, self.sessions.forget(read.sent)
        if session.source == "oidc":
            due_tokens, due_profile = self._due(session, now)
            if due_tokens or due_profile:
                started = self._claim_refresh(session.id, now)
                if started is not None:
                    # Another request of this session is refreshing it: serve the session
                    # within the grace, else fail closed.
                    self._within_grace(session, now, started)
                    return session, []
                try:
                    refreshed, changed = yield from self._refresh(view, session)
                    if refreshed is None:
                        ended = yield from self.sessions.destroy(session, sent=read.sent)
                        return None, ended
                    if not changed:
                        return refreshed, []
                    return (yield from self._write_back(refreshed, read, now))
                finally:
                    self._release_refresh(session.id)
        if not self.sessions.needs_touch(session):
            return session, []
        base = yield from self._latest(session)
        if base is None:
            return None, self.sessions.forget(read.sent)
        return (yield from self._write_back(base, read, now))

    def _write_back(self, session: Session, read: SessionRead, now: float
                    ) -> Flow[tuple[Session | None, list[str]]]:
        updated = session.evolve(last_active=now)
        saved = yield from self.sessions.save(updated, sent=read.sent)
        if saved is None:     # deleted meanwhile (a logout): stays deleted
            return None, self.sessions.forget(read.sent)
        return updated, saved

    def _latest(self, session: Session) -> Flow[Session | None]:
        """The newest version of ``session``: the stored record (server-side stores) with any
        rotation this process made applied; ``None`` if it is gone."""
        if self.sessions.store is not None:
            try:
                stored = yield from self.sessions.load(session.id)
            except ValueError:
                stored = None
            if stored is None:
                return None
            session = stored
        rotated = self._rotations.follow(session.tokens, self.clock())
        if rotated is not None:
            session = session.evolve(tokens=rotated)
        return session

    def _due(self, session: Session, now: float) -> tuple[bool, bool]:
        """(access token due for refresh, profile due for re-fetch)."""
        tokens = session.tokens
        due_tokens = _tokens_due(tokens, now)
        interval = self.oidc.refresh_interval
        due_profile = interval > 0 and now - float(tokens.get("pa", 0)) >= interval
        return due_tokens, due_profile

    def _within_grace(self, session: Session, now: float, since: float) -> None:
        """Raise :class:`_StillRefreshing` unless ``session``'s access token ended less than
        :data:`REFRESH_GRACE` seconds ago, or the refresh this request cannot do itself was
        seen under way ``since`` less than that long ago."""
        if now < since + REFRESH_GRACE:
            return
        ends = session.tokens.get("ae")
        if isinstance(ends, int | float) and now >= ends + REFRESH_GRACE:
            raise _StillRefreshing(session.sub)

    def _held_since(self, claim: str, now: float) -> float:
        """When this process first found ``claim`` held by another (bounded memory)."""
        with self._refreshing_lock:
            seen = self._contended.setdefault(claim, now)
            while len(self._contended) > 10_000:
                self._contended.popitem(last=False)
            return seen

    def _release_claim(self, claim: str, claimed_at: float) -> Flow[None]:
        """Give the refresh claim back, so a later request may refresh (after a failure) at
        once; a claim held too long may have run out and been taken by another: left alone.
        ``claimed_at`` is monotonic time (a wall clock stepped back would make an old claim
        look fresh)."""
        if self._monotonic() - claimed_at < _RELEASE_BEFORE:
            yield from self.sessions.release(claim)
        return None

    def _claim_refresh(self, session_id: str, now: float) -> float | None:
        """``None`` when this request may refresh the session, else when the request of
        this process that is refreshing it started."""
        with self._refreshing_lock:
            started = self._refreshing.get(session_id)
            if started is not None:
                return started
            self._refreshing[session_id] = now
            return None

    def _release_refresh(self, session_id: str) -> None:
        with self._refreshing_lock:
            self._refreshing.pop(session_id, None)

    def _refresh(self, view: RequestView, session: Session
                 ) -> Flow[tuple[Session | None, bool]]:
        """Returns ``(session, changed)``; ``(None, _)`` ends the session.

        It starts from the newest version of the session (the stored record, rotations of
        this process applied) and decides again what is due: a copy refreshed meanwhile is
        served as it is only while its rotated tokens are not due. The refresh grant is used
        only when the access token is due (a profile re-fetch uses userinfo); a rotation made
        by this process or, through the store, by another is reused; the store arbitrates
        which process refreshes a token generation; the new tokens are kept before anything
        else can fail.
        """
        user = session.sub
        latest = yield from self._latest(session)
        if latest is None:
            return None, False
        due_tokens, due_profile = self._due(latest, self.clock())
        if not (due_tokens or due_profile):
            return latest, False           # refreshed by another request meanwhile
        session = latest
        tokens = dict(session.tokens)
        fresh: dict[str, Any] = {}        # the new id_token's claims
        if due_tokens:
            renewed = yield from self._renew(view, session, tokens)
            if renewed is None:
                return None, False
            if isinstance(renewed, _Wait):   # another process refreshes this generation
                return session.evolve(tokens=tokens), False
            fresh.update(renewed)
        try:
            info = yield from self.client.userinfo(tokens["at"], sub=user)
        except (GrantRefused, InvalidToken) as exc:
            self._event("session_ended", view, user=user, reason=str(exc))
            return None, False
        except StoreUnavailable:
            if not due_tokens:
                raise            # nothing changed: fail closed (503)
            # The new tokens must not be lost (the old refresh token is spent): keep them and
            # the old profile; the profile is fetched again on a later request.
            return session.evolve(tokens=tokens), True
        tokens["pa"] = self.clock()
        claims = dict(session.claims)
        if fresh or info:
            try:
                kept = identity_claims(profile(fresh, info), self.oidc.groups_claim,
                                       assume_email_verified=self.oidc.assume_email_verified,
                                       keep=self.kept_claims)
            except ClaimsTooLarge as exc:
                self._event("session_ended", view, user=user, reason=str(exc))
                return None, False
            claims = {**{k: v for k, v in claims.items() if k != "groups"}, **kept,
                      "sub": user}
        return session.evolve(claims=claims, tokens=tokens), True

    def _renew(self, view: RequestView, session: Session, tokens: dict[str, Any]
               ) -> Flow[dict[str, Any] | _Wait | None]:
        """Bring the due access token in ``tokens`` up to date, in place: from the rotation
        records of its generation while there are some (each may be due in turn), else with
        the refresh grant under the store's claim of that generation. Returns the new
        id_token's claims (``{}`` when a recorded rotation was reused), :data:`_WAIT` when
        another process holds the claim (within the grace), ``None`` when the session ends.
        """
        for _ in range(_MAX_SHARED_HOPS):
            refresh_token = tokens.get("rt")
            if not isinstance(refresh_token, str) or not refresh_token:
                self._event("session_ended", view, user=session.sub,
                            reason="access token expired and there is no refresh token")
                return None
            fields = self._rotations.get(tokens, self.clock())
            if fields is None:
                fields = yield from self._recalled(tokens)
            if fields is None:
                claim = rotation_key(tokens, "refreshing")
                claimed = yield from self.sessions.claim_once(claim, REFRESH_CLAIM)
                if not claimed:     # another process is refreshing this generation now
                    now = self.clock()
                    self._within_grace(session.evolve(tokens=tokens), now,
                                       self._held_since(claim, now))
                    return _WAIT
                claimed_at = self._monotonic()
                with self._refreshing_lock:
                    self._contended.pop(claim, None)
                # A refresh that ended (and gave the claim back) between the look-up above
                # and this claim left its result: use it, never present the spent token.
                fields = self._rotations.get(tokens, self.clock())
                if fields is None:
                    fields = yield from self._recalled(tokens)
                if fields is None:
                    result = yield from self._refresh_grant(
                        view, session, refresh_token, claim=claim, claimed_at=claimed_at,
                        tokens=tokens)
                    return None if result is None else dict(result.id_claims or {})
                yield from self._release_claim(claim, claimed_at)
            tokens.update(fields)
            if not _tokens_due(tokens, self.clock()):
                return {}
        # A copy this many refreshes behind: its tokens are spent, and presenting them would
        # make the provider end the grant. Not served now (fail closed).
        raise _StillRefreshing(session.sub)

    def _recalled(self, tokens: Mapping[str, Any]) -> Flow[dict[str, Any] | None]:
        """The rotation of ``tokens``' generation another process kept in the store."""
        fields = yield from self.sessions.recall(rotation_key(tokens))
        return fields if fields is not None and _moves(tokens, fields) else None

    def _refresh_grant(self, view: RequestView, session: Session, refresh_token: str, *,
                       claim: str, claimed_at: float, tokens: dict[str, Any]
                       ) -> Flow[TokenSet | None]:
        """Use the refresh grant under ``claim``; the new tokens go into ``tokens`` (and are
        kept for stale copies of the session) before anything else can fail. ``None``: the
        provider refused, the session ends."""
        user = session.sub
        try:
            data = yield from self.client.refresh_grant(refresh_token)
        except GrantRefused as exc:
            yield from self._release_claim(claim, claimed_at)
            self._event("session_ended", view, user=user, reason=str(exc))
            return None            # the caller destroys (revokes) the session
        except StoreUnavailable:
            yield from self._release_claim(claim, claimed_at)
            raise
        fields = self._token_fields(self.client.token_set(data, refresh_token))
        self._rotations.put(tokens, fields, self.clock())
        yield from self.sessions.keep(rotation_key(tokens), fields, ROTATION_GRACE)
        yield from self._release_claim(claim, claimed_at)
        tokens.update(fields)
        try:
            result = yield from self.client.finish_refresh(data, refresh_token, sub=user)
        except InvalidToken as exc:
            self._event("session_ended", view, user=user, reason=str(exc))
            return None
        return result

    def _token_fields(self, result: TokenSet) -> dict[str, Any]:
        """What a session keeps of a token response: the tokens, when the access token ends
        (``ae``) and when to refresh it (``rd``: a minute early, or a quarter of a short
        lifetime early)."""
        lifetime = max(0.0, result.expires_at - self.clock())
        fields: dict[str, Any] = {
            "at": result.access_token, "ae": result.expires_at,
            "rd": result.expires_at - min(self.refresh_margin, lifetime / 4),
        }
        if result.refresh_token:
            fields["rt"] = result.refresh_token
        if result.id_token and len(result.id_token) <= ID_TOKEN_HINT_MAX:
            fields["it"] = result.id_token
        return fields

    def challenge(self, view: RequestView) -> Reply:
        """302 to the login page for a browser navigation; 401 for anything else."""
        return challenge(view, self.prefix, self.sessions.cookie_name,
                         bearer=self.settings.bearer_tokens is not None)

    # -- /.auth/login ---------------------------------------------------------------------

    def redirect_uri(self, view: RequestView) -> str:
        if self.oidc.redirect_uri:
            return self.oidc.redirect_uri
        base = public_base(self.settings.server, view)
        if base is None:     # never a URL on a host we do not serve
            raise _BadRequest("this site does not answer for that host name")
        return base.rstrip("/") + f"{self.prefix}callback"

    def _login(self, view: RequestView) -> Flow[Outcome]:
        if view.method != "GET":
            return Outcome(_method_not_allowed("GET"))
        params = view.query()
        target = self.return_target(_one(params, "rd")) or "/"
        # Remember-me only when the user asked on this site (or typed the address): a link on
        # another site must not make a victim's session outlive the browser.
        remember = _one(params, "remember_me") in ("1", "true", "on") and \
            view.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
        meta = yield from self.client.metadata()
        verifier, challenge = pkce_pair()
        pending = PendingLogin.start(verifier=verifier, return_to=target, now=self.clock(),
                                     remember=remember)
        url = self.client.authorization_url(meta, redirect_uri=self.redirect_uri(view),
                                            state=pending.state, nonce=pending.nonce,
                                            code_challenge=challenge)
        return Outcome(redirect_reply(url, headers=[
            ("set-cookie", self.prelogin.add(view, pending))]))

    # -- /.auth/callback ------------------------------------------------------------------

    def _callback(self, view: RequestView) -> Flow[Outcome]:
        if view.method != "GET":
            return Outcome(_method_not_allowed("GET"))
        params = view.query()
        state = _one(params, "state")
        if not state:
            self._event("login_failure", view, reason="callback without state")
            return Outcome(self._login_again(view, 400, "The sign-in response is incomplete."))
        pending, prelogin_cookie = self.prelogin.take(view, state)
        if pending is None:
            self._event("login_failure", view, reason="unknown, expired or replayed state")
            return Outcome(self._login_again(
                view, 400, "This sign-in attempt is unknown or has expired."))
        assert prelogin_cookie is not None
        cookies = [prelogin_cookie]
        first_use = yield from self.sessions.claim_once(f"state:{pending.state}", LIFETIME)
        if not first_use:
            self._event("login_failure", view, reason="replayed state")
            return Outcome(self._login_again(
                view, 400, "This sign-in attempt was already used.", cookies))
        error = _one(params, "error")
        if error is not None:
            error_code = "".join(c for c in error if c.isalnum() or c == "_")[:64] or "error"
            self._event("login_failure", view, reason=f"provider error {error_code}")
            status = 403 if error_code in ("access_denied", "login_required",
                                     "consent_required", "interaction_required") else 400
            return Outcome(self._login_again(
                view, status, f"The identity provider did not sign you in ({error_code}).",
                cookies))
        try:
            meta = yield from self.client.metadata()
        except StoreUnavailable as exc:
            return Outcome(self._retry_login(view, pending, exc, cookies))
        iss = _one(params, "iss")
        if (iss is not None and iss != self.client.issuer) or \
                (iss is None and meta.iss_parameter_supported):
            self._event("login_failure", view, reason="authorization response iss mismatch")
            return Outcome(self._login_again(view, 400, "The sign-in response is not from "
                                             "the expected identity provider.", cookies))
        code = _one(params, "code")
        if not code:
            self._event("login_failure", view, reason="callback without code")
            return Outcome(self._login_again(view, 400, "The sign-in response is incomplete.",
                                             cookies))
        try:
            result = yield from self.client.exchange_code(
                code=code, code_verifier=pending.verifier,
                redirect_uri=self.redirect_uri(view), nonce=pending.nonce)
            claims = dict(result.id_claims or {})
            info = yield from self.client.userinfo(result.access_token, sub=claims["sub"])
        except GrantRefused as exc:
            self._event("login_failure", view, reason=f"code refused: {exc.error}")
            return Outcome(self._login_again(
                view, 400, "The identity provider refused this sign-in.", cookies))
        except StoreUnavailable as exc:     # our side (JWKS, network): not the user's fault
            return Outcome(self._retry_login(view, pending, exc, cookies))
        except TokenTooLarge as exc:
            self._event("login_failure", view, reason=f"id_token refused: {exc}")
            return Outcome(self._login_again(
                view, 401, "The identity provider's answer is larger than this application "
                "accepts. Please ask its administrator to raise the setting "
                "oidc.max_token_size.", cookies))
        except InvalidToken as exc:
            self._event("login_failure", view, reason=f"id_token refused: {exc}")
            return Outcome(self._login_again(
                view, 401, "The identity provider's answer could not be verified.", cookies))
        try:
            kept = identity_claims(profile(claims, info), self.oidc.groups_claim,
                                   assume_email_verified=self.oidc.assume_email_verified,
                                   keep=self.kept_claims)
        except ClaimsTooLarge as exc:
            self._event("login_failure", view, reason=f"id_token refused: {exc}")
            return Outcome(self._login_again(
                view, 401, "The identity provider's answer is larger than this application "
                "accepts. Please ask its administrator.", cookies))
        old = yield from self.sessions.read(view)
        if old.session is not None:    # a new id at every login: the old one is gone
            yield from self.sessions.destroy(old.session)
        tokens = self._token_fields(result)
        tokens["pa"] = self.clock()
        tokens["cid"] = self.client.client_id
        provider_session = claims.get("sid")   # for back- and front-channel logout
        if isinstance(provider_session, str) and 0 < len(provider_session) <= 255:
            tokens["ps"] = provider_session
        session = self.sessions.new(claims=kept, remember=pending.remember, tokens=tokens)
        cookies += (yield from self.sessions.save(session, sent=old.sent, new=True)) or []
        self._event("login_success", view, user=session.sub, level=logging.INFO,
                    session=session.digest)
        set_cookies = [("set-cookie", c) for c in cookies]
        if self.sessions.jar.same_site == "Strict":
            # This response ends a chain of cross-site redirects, so a browser would not send
            # a Strict cookie with a redirect; a page of ours navigating on is same-site.
            target = html.escape(pending.return_to)
            return Outcome(html_reply(
                200, "Signed in", "You are signed in.",
                body_html=f'<p><a class="button" href="{target}">Continue</a></p>',
                headers=[("refresh", f"0; url={pending.return_to}"), *set_cookies]))
        return Outcome(redirect_reply(pending.return_to, headers=set_cookies))

    # -- /.auth/logout --------------------------------------------------------------------

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
            return Outcome(_method_not_allowed("GET, POST"))
        if session is None:
            return Outcome(redirect_reply(f"{self.prefix}logged-out", status=303, headers=[
                ("set-cookie", c) for c in self.sessions.forget(read.sent)]))
        sent_token = view.headers.get("x-csrf-token") or view.form().get("csrf") or ""
        if not hmac.compare_digest(sent_token.encode(), session.csrf.encode()):
            self._event("csrf_failure", view, user=session.sub, reason="logout without token")
            return Outcome(html_reply(403, "Sign-out refused",
                                      "The sign-out form had expired. Please try again."))
        cookies = yield from self.sessions.destroy(session, sent=read.sent)
        refresh_token = session.tokens.get("rt")
        if refresh_token:
            try:
                yield from self.client.revoke(refresh_token)
            except SecureMWError as exc:
                self._event("token_revocation_failed", view, user=session.sub,
                            reason=str(exc))
        self._event("logout", view, user=session.sub, level=logging.INFO,
                    session=session.digest)
        location = f"{self.prefix}logged-out"
        if session.source == "oidc":
            try:
                meta = yield from self.client.metadata()
                base = public_base(self.settings.server, view)
                back = self.oidc.post_logout_redirect_uri or (
                    base.rstrip("/") + f"{self.prefix}logged-out" if base else None)
                if back is not None:    # never a return URL on a host we do not serve
                    location = self.client.end_session_url(
                        meta, id_token_hint=session.tokens.get("it"),
                        post_logout_redirect_uri=back, state=session.digest) or location
            except StoreUnavailable as exc:   # signed out here; the provider can't be told
                self._event("idp_logout_failed", view, user=session.sub, reason=str(exc))
        return Outcome(redirect_reply(location, status=303,
                                      headers=[("set-cookie", c) for c in cookies]))

    # -- /.auth/backchannel-logout and /.auth/frontchannel-logout -------------------------

    def _backchannel_logout(self, view: RequestView) -> Flow[Outcome]:
        """OpenID Connect Back-Channel Logout 1.0: the provider POSTs a signed logout token;
        every session of its ``sid`` (or, without one, of its ``sub``) ends, in the store
        every instance reads. No session, CSRF token or redirect: a server-to-server call."""
        if view.method != "POST":
            return Outcome(json_reply(405, {"error": "invalid_request",
                                            "error_description": "use POST"},
                                      headers=[("allow", "POST")]))
        content_type = view.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            self._event("backchannel_logout_refused", view, reason="wrong content type")
            return Outcome(json_reply(415, {"error": "invalid_request", "error_description":
                                            "send application/x-www-form-urlencoded"}))
        token = view.form().get("logout_token", "")
        if not token:
            return Outcome(self._logout_token_refused(view, "no single logout_token"))
        try:
            claims = yield from self.client.validate_logout_token(
                token, max_age=self.oidc.logout_token_max_age)
        except InvalidToken as exc:
            return Outcome(self._logout_token_refused(view, str(exc)))
        except StoreUnavailable as exc:     # the provider's keys cannot be fetched
            return Outcome(self._logout_unavailable(view, str(exc)))
        # Single use, across instances (the shared store), for as long as it could be
        # accepted: until it expires or grows too old, whichever comes first (+ a margin).
        # Per issuer and client: two apps sharing a store each get their own token.
        once = "\x00".join((self.client.issuer, self.client.client_id, str(claims["jti"])))
        replay = f"logout-jti:{hashlib.sha256(once.encode()).hexdigest()}"
        until = min(float(claims["exp"]), float(claims["iat"]) + self.oidc.logout_token_max_age)
        ttl = max(1.0, until - self.clock() + 120.0)
        try:
            first = yield from self.sessions.claim_once(replay, ttl)
        except StoreUnavailable as exc:
            return Outcome(self._logout_unavailable(view, str(exc)))
        if not first:
            return Outcome(self._logout_token_refused(view, "logout token replayed"))
        sid, sub = claims.get("sid"), claims.get("sub")
        try:
            if isinstance(sid, str):
                ended = yield from self.sessions.end_all(
                    index_name("sid", self.client.client_id, sid))
                if isinstance(sub, str):   # and the subject's sessions that had no sid
                    more = yield from self.sessions.end_all(
                        index_name("nosid", self.client.client_id, sub))
                    ended = None if ended is None or more is None else ended + more
            else:
                ended = yield from self.sessions.end_all(
                    index_name("sub", self.client.client_id, str(sub)))
        except StoreUnavailable as exc:
            with contextlib.suppress(StoreUnavailable):   # the provider may send it again
                yield from self.sessions.release(replay)
            return Outcome(self._logout_unavailable(view, str(exc)))
        self._event("backchannel_logout", view, level=logging.INFO,
                    user=sub if isinstance(sub, str) else None,
                    reason="provider session" if isinstance(sid, str) else "all sessions",
                    ended=ended)
        # Back-Channel Logout 1.0 §2.8: 200, no body, not to be cached.
        return Outcome(Reply(200, [("cache-control", "no-store"),
                                   ("x-content-type-options", "nosniff")], b""))

    def _logout_token_refused(self, view: RequestView, reason: str) -> Reply:
        self._event("backchannel_logout_refused", view, reason=reason)
        return json_reply(400, {"error": "invalid_request",
                                "error_description": "the logout token is not valid"})

    def _logout_unavailable(self, view: RequestView, reason: str) -> Reply:
        """The store or the provider's keys cannot be reached: 503 with Retry-After, never
        200 (a session would stay signed in while the provider believes it ended)."""
        self._event("store_unavailable", view, reason=f"back-channel logout: {reason}")
        return json_reply(503, {"error": "temporarily_unavailable"},
                          headers=[("retry-after", "5")])

    def _frontchannel_logout(self, view: RequestView) -> Flow[Outcome]:
        """Front-Channel Logout 1.0: the provider's logout page frames this address with its
        ``iss`` and the ``sid`` it ended; the sessions of that sid end, and the session whose
        cookie came with the request (SameSite=None deployments) too."""
        if view.method not in ("GET", "HEAD"):
            return Outcome(_method_not_allowed("GET"))
        params = view.query()
        iss, sid = _one(params, "iss"), _one(params, "sid")
        if iss is None or sid is None or not 0 < len(sid) <= 255 or \
                not hmac.compare_digest(iss.encode(), self.client.issuer.encode()):
            self._event("frontchannel_logout_refused", view,
                        reason="iss of another provider or no sid")
            return Outcome(html_reply(400, "Bad request", "This sign-out request is not "
                                      "from this application's identity provider."))
        ended = yield from self.sessions.end_all(index_name("sid", self.client.client_id, sid))
        # The session whose cookie came along ends only when it is of that provider
        # session: a link on any site can send this request (SameSite=Lax lets a
        # navigation carry the cookie), and iss is public.
        read = yield from self.sessions.read(view)
        cookies: list[str] = []
        own = read.session.tokens.get("ps") if read.session is not None else None
        if read.session is not None and isinstance(own, str) and \
                hmac.compare_digest(own.encode(), sid.encode()):
            cookies = yield from self.sessions.destroy(read.session, sent=read.sent)
        self._event("frontchannel_logout", view, level=logging.INFO, ended=ended)
        origin = _origin(self.client.issuer)
        reply = Reply(200, [
            ("content-type", "text/html; charset=utf-8"),
            ("content-security-policy", f"default-src 'none'; frame-ancestors {origin}"),
            ("x-content-type-options", "nosniff"), ("cache-control", "no-store"),
            *(("set-cookie", c) for c in cookies)],
            b'<!doctype html><meta charset="utf-8"><title>Signed out</title>')
        return Outcome(reply)

    def _logged_out(self, view: RequestView) -> Flow[Outcome]:
        yield from ()
        link = f'<p><a class="button" href="{self.prefix}login">Sign in again</a></p>'
        return Outcome(self.pages.render(200, "Signed out", "You are signed out.",
                                         body_html=link))

    # -- /.auth/me ------------------------------------------------------------------------

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

    def _retry_login(self, view: RequestView, pending: PendingLogin, exc: StoreUnavailable,
                     cookies: list[str]) -> Reply:
        """The callback failed on our side (the provider's keys or endpoints unreachable):
        503 with a link that starts the login again for the same target; the provider still
        has its session, so it sends the user straight back without asking again."""
        # Not a login_failure: those count towards bans (fail2ban), and this one is ours.
        self._event("store_unavailable", view,
                    reason=f"the sign-in could not be completed: {exc}")
        again = f"{self.prefix}login?rd={quote(pending.return_to, safe='/')}"
        if pending.remember:
            again += "&remember_me=1"
        link = f'<p><a class="button" href="{html.escape(again)}">Try again</a></p>'
        return html_reply(503, "Sign-in is unavailable",
                          "The sign-in could not be completed on our side. Please try again "
                          "in a moment; you will not need to enter your password again.",
                          body_html=link,
                          headers=[("retry-after", "5"), *(("set-cookie", c) for c in cookies)])

    def _login_again(self, view: RequestView, status: int, message: str,
                     cookies: list[str] | None = None) -> Reply:
        link = f'<p><a class="button" href="{self.prefix}login">Sign in again</a></p>'
        return html_reply(status, "Sign-in failed", message, body_html=link,
                          headers=[("set-cookie", c) for c in cookies or ()])

    def body_too_large(self, view: RequestView) -> Reply:
        """A POST to our endpoints over the body limit: 413 (a page or JSON) and an audit
        line, before the body is parsed."""
        self._event("request_too_large", view, reason=f"body over {MAX_FORM} bytes")
        return too_large_reply(view)

    def _event(self, name: str, view: RequestView, *, level: int = logging.WARNING,
               **fields: Any) -> None:
        self.audit.event(name, level=level, remote_ip=view.client, method=view.method,
                         host=view.host, path=view.path, **fields)


def profile(id_claims: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """The claims of an id_token and of userinfo, merged (userinfo wins, ``sub`` from the
    id_token when it has one), with ``email_verified`` from the same source as ``email``:
    an address only userinfo sends never inherits the id_token's flag for another one."""
    merged = {**id_claims, **info}
    if "sub" in id_claims:
        merged["sub"] = id_claims["sub"]
    source = id_claims
    if "email" in info and ("email_verified" in info
                            or info.get("email") != id_claims.get("email")):
        source = info
    merged.pop("email_verified", None)
    if "email_verified" in source:
        merged["email_verified"] = source["email_verified"]
    return merged


@dataclass(slots=True)
class _Found:
    session: Session | None
    identity: Identity | None
    cookies: list[str]


def _origin(url: str) -> str:
    """The origin (scheme://host[:port]) of ``url``, for a CSP source expression."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _method_not_allowed(allow: str) -> Reply:
    return html_reply(405, "Method not allowed", "This address does not accept that method.",
                      headers=[("allow", allow)])


def _asset_route(reply: Callable[[str], Reply]) -> Callable[[RequestView], Flow[Outcome]]:
    """The route serving a file of ``[pages]`` (a stylesheet, a logo)."""
    def route(view: RequestView) -> Flow[Outcome]:
        yield from ()
        return Outcome(reply(view.method))
    return route
