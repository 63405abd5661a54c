"""Sign-in with an OpenID provider, framework-free.

:class:`ProviderLogin` is the OpenID Connect login method of a
:class:`~secure_mw.session.gate.SessionGate`: it serves ``login`` (or ``login/oidc`` beside
the built-in password login), ``callback`` and the provider's back- and front-channel logout,
keeps its sessions' tokens and profile fresh (refresh tokens are never presented twice, across
processes), and signs out at the provider. :class:`OIDCSessionCore` is the gate with this one
method, for an application whose users all come from the provider.
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
from typing import Any
from urllib.parse import quote, urlsplit

from secure_mw._driver import Flow
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.errors import InvalidToken, SecureMWError, StoreUnavailable
from secure_mw.guards.hosts import public_base
from secure_mw.http import Reply, RequestView, html_reply, json_reply, redirect_reply
from secure_mw.oidc.client import (
    ID_TOKEN_HINT_MAX,
    GrantRefused,
    OIDCClient,
    TokenSet,
    TokenTooLarge,
    pkce_pair,
)
from secure_mw.oidc.prelogin import LIFETIME, PendingLogin
from secure_mw.session.gate import (
    MAX_FORM,
    RETRY_AFTER,
    BadRequest,
    LoginMethod,
    Maintained,
    Outcome,
    RefreshPending,
    Route,
    SessionGate,
    challenge,
    local_target,
    method_not_allowed,
    return_target,
    sibling_hosts,
    single,
)
from secure_mw.session.manager import SessionRead, SessionStore, index_name
from secure_mw.session.model import ClaimsTooLarge, Session, identity_claims
from secure_mw.settings import OIDCSettings, Settings

__all__ = ["MAX_FORM", "RETRY_AFTER", "OIDCSessionCore", "Outcome", "ProviderLogin",
           "challenge", "local_target", "return_target", "rotation_key", "sibling_hosts"]

log = logging.getLogger("secure_mw.oidc")

ROTATION_GRACE = 3600.0   # how long a rotation is remembered for stale copies of a session
REFRESH_CLAIM = 30.0      # how long one process holds the right to refresh a token at most
# A request that finds another refreshing the session's access token is served the session
# while the token is valid or ended less than this long ago, or while the refresh it waits
# for started less than this long ago; otherwise it gets 503 + Retry-After (fail closed).
REFRESH_GRACE = 10.0
_RELEASE_BEFORE = REFRESH_CLAIM - 5.0   # a claim older than this may be another's by now
# Rotation records followed at most, in this process and through the store, for one request.
_MAX_HOPS = 64
_MAX_SHARED_HOPS = 8


class _Wait:
    """Another process holds the refresh claim: serve the session as it is (see
    :meth:`ProviderLogin._renew`)."""


_WAIT = _Wait()


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


class ProviderLogin:
    """The OpenID provider's login method for ``gate`` (see :meth:`method`)."""

    def __init__(self, gate: SessionGate, oidc: OIDCSettings, *,
                 client: OIDCClient | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.gate = gate
        self.oidc = oidc
        self.settings = gate.settings
        self.sessions = gate.sessions
        self.prelogin = gate.prelogin
        self.prefix = gate.prefix
        self.pages = gate.pages
        self.kept_claims = gate.kept_claims
        self._event = gate.event
        self.return_target = gate.return_target
        self.clock = clock
        self._monotonic = monotonic   # elapsed times (claims); ``clock`` is for tokens
        self.client = client or OIDCClient(oidc, clock=clock, monotonic=monotonic)
        self.refresh_margin = 60.0
        # Session id -> when a request of this process started refreshing it.
        self._refreshing: dict[str, float] = {}
        # Refresh claim -> when this process first found it held by another process.
        self._contended: OrderedDict[str, float] = OrderedDict()
        self._rotations = _Rotations()
        self._refreshing_lock = threading.Lock()

    def method(self, *, login_route: str = "login") -> LoginMethod:
        """The method for the gate: its login page at ``login_route``, the callback and,
        where the stores can find the sessions of a provider session, ``backchannel-logout``
        and (opt-in) ``frontchannel-logout``."""
        routes: dict[str, Route] = {login_route: self._login, "callback": self._callback}
        oidc = self.oidc
        if oidc.backchannel_logout or oidc.frontchannel_logout:
            if not self.sessions.can_end_all:
                log.warning("oidc.backchannel_logout: the session store %s keeps no index of "
                            "sessions by provider session and subject; the back-channel and "
                            "front-channel logout endpoints are not served",
                            type(self.sessions.store).__name__)
            else:
                if oidc.backchannel_logout:
                    routes["backchannel-logout"] = self._backchannel_logout
                if oidc.frontchannel_logout:
                    routes["frontchannel-logout"] = self._frontchannel_logout
        return LoginMethod("oidc", routes, foreign=self._foreign, maintain=self._maintain,
                           signing_out=self._revoke, signed_out=self._end_session,
                           fresh=self._fresh)

    def _foreign(self, session: Session) -> str | None:
        if session.tokens.get("cid") != self.client.client_id:
            return "session of another OpenID client"
        return None

    # -- keeping a session fresh ----------------------------------------------------------

    def _maintain(self, view: RequestView, session: Session, read: SessionRead
                  ) -> Flow[Maintained | None]:
        """Refresh tokens and profile when due; write back last-active now and then.

        Providers rotate refresh tokens and revoke the whole grant when a spent one is
        presented again, so nothing here may ever present one twice or write back a record
        older than the last refresh: while one request of a session refreshes, the others
        neither refresh nor write; a write-back starts from the stored record (and from any
        rotation this process made); refreshes are claimed across processes in the store.
        """
        now = self.clock()
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
                return (yield from self.gate.write_back(refreshed, read, now))
            finally:
                self._release_refresh(session.id)
        return (yield from self.gate.touch(view, session, read, latest=self._latest))

    def _fresh(self, session: Session) -> bool:
        """Whether :meth:`_maintain` has nothing to refresh now (it then only touches)."""
        due_tokens, due_profile = self._due(session, self.clock())
        return not (due_tokens or due_profile)

    def _latest(self, session: Session) -> Flow[Session | None]:
        """The newest version of ``session``: the gate's (the stored record) with any
        rotation this process made applied; ``None`` if it is gone."""
        latest = yield from self.gate.latest(session)
        if latest is None:
            return None
        rotated = self._rotations.follow(latest.tokens, self.clock())
        if rotated is not None:
            latest = latest.evolve(tokens=rotated)
        return latest

    def _due(self, session: Session, now: float) -> tuple[bool, bool]:
        """(access token due for refresh, profile due for re-fetch)."""
        tokens = session.tokens
        due_tokens = _tokens_due(tokens, now)
        interval = self.oidc.refresh_interval
        due_profile = interval > 0 and now - float(tokens.get("pa", 0)) >= interval
        return due_tokens, due_profile

    def _within_grace(self, session: Session, now: float, since: float) -> None:
        """Raise :class:`~secure_mw.session.gate.RefreshPending` unless ``session``'s access
        token ended less than :data:`REFRESH_GRACE` seconds ago, or the refresh this request
        cannot do itself was seen under way ``since`` less than that long ago."""
        if now < since + REFRESH_GRACE:
            return
        ends = session.tokens.get("ae")
        if isinstance(ends, int | float) and now >= ends + REFRESH_GRACE:
            raise RefreshPending(session.sub)

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
        raise RefreshPending(session.sub)

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

    # -- /.auth/login ---------------------------------------------------------------------

    def redirect_uri(self, view: RequestView) -> str:
        if self.oidc.redirect_uri:
            return self.oidc.redirect_uri
        base = public_base(self.settings.server, view)
        if base is None:     # never a URL on a host we do not serve
            raise BadRequest("this site does not answer for that host name")
        return base.rstrip("/") + f"{self.prefix}callback"

    def _login(self, view: RequestView) -> Flow[Outcome]:
        if view.method != "GET":
            return Outcome(method_not_allowed("GET"))
        params = view.query()
        target = self.return_target(single(params, "rd")) or "/"
        # Remember-me only when the user asked on this site (or typed the address): a link on
        # another site must not make a victim's session outlive the browser.
        remember = single(params, "remember_me") in ("1", "true", "on") and \
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
            return Outcome(method_not_allowed("GET"))
        params = view.query()
        state = single(params, "state")
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
        error = single(params, "error")
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
        iss = single(params, "iss")
        if (iss is not None and iss != self.client.issuer) or \
                (iss is None and meta.iss_parameter_supported):
            self._event("login_failure", view, reason="authorization response iss mismatch")
            return Outcome(self._login_again(view, 400, "The sign-in response is not from "
                                             "the expected identity provider.", cookies))
        code = single(params, "code")
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

    # -- /.auth/logout (the provider's part) ----------------------------------------------

    def _revoke(self, view: RequestView, session: Session) -> Flow[None]:
        """The session is destroyed here: revoke its refresh token at the provider."""
        refresh_token = session.tokens.get("rt")
        if refresh_token:
            try:
                yield from self.client.revoke(refresh_token)
            except SecureMWError as exc:
                self._event("token_revocation_failed", view, user=session.sub,
                            reason=str(exc))
        return None

    def _end_session(self, view: RequestView, session: Session) -> Flow[str | None]:
        """Where the browser goes next: the provider's end-session endpoint, when it has
        one and there is a return address on a host we serve."""
        try:
            meta = yield from self.client.metadata()
            base = public_base(self.settings.server, view)
            back = self.oidc.post_logout_redirect_uri or (
                base.rstrip("/") + f"{self.prefix}logged-out" if base else None)
            if back is not None:    # never a return URL on a host we do not serve
                return self.client.end_session_url(
                    meta, id_token_hint=session.tokens.get("it"),
                    post_logout_redirect_uri=back, state=session.digest)
        except StoreUnavailable as exc:   # signed out here; the provider can't be told
            self._event("idp_logout_failed", view, user=session.sub, reason=str(exc))
        return None

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
            return Outcome(method_not_allowed("GET"))
        params = view.query()
        iss, sid = single(params, "iss"), single(params, "sid")
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


class OIDCSessionCore(SessionGate):
    """Sessions backed by an OpenID provider, for one application: the session gate with
    :class:`ProviderLogin` as its login method."""

    def __init__(self, settings: Settings, *, keyring: KeyRing | None = None,
                 store: SessionStore | None = None, client: OIDCClient | None = None,
                 clock: Callable[[], float] = time.time, audit: AuditLogger | None = None,
                 require_login: bool = True,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if settings.oidc is None:
            raise ValueError("OIDCSessionCore needs an [oidc] section in the settings")
        super().__init__(settings, keyring=keyring, store=store, clock=clock, audit=audit,
                         require_login=require_login)
        self.provider = ProviderLogin(self, settings.oidc, client=client, clock=clock,
                                      monotonic=monotonic)
        self.oidc = settings.oidc
        self.client = self.provider.client
        self.use(self.provider.method())

    def redirect_uri(self, view: RequestView) -> str:
        return self.provider.redirect_uri(view)


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


def _origin(url: str) -> str:
    """The origin (scheme://host[:port]) of ``url``, for a CSP source expression."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"

