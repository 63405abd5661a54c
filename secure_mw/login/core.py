"""The built-in password login: the session gate with a login form instead of a provider.

:class:`LocalLoginCore` serves ``login`` (a server-rendered form: no JavaScript, labelled,
keyboard-friendly), ``logout``, ``logged-out``, ``me`` and, for single-page apps, the JSON
``api/login`` and ``api/2fa`` (:mod:`secure_mw.login.api`) under ``server.auth_prefix`` and
guards every other request exactly as the OpenID session core does. A login attempt is
regulated (bans by user and address), held by the enumeration-resistant delay on every exit
path, and an unknown user, a wrong password, a disabled user and a banned attempt all get
the same answer. The session id is new at every login; a password hash with outdated
parameters is upgraded after a successful login. Sessions follow the users file: every
``local_users.refresh_interval`` a session's user is looked up again, and a user deleted,
disabled or whose sessions were revoked loses the session, while changed groups, e-mail or
display name are applied to it.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import math
import time
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from secure_mw._driver import Flow, Op
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.errors import DecryptError, StoreUnavailable
from secure_mw.guards.attempts import LoginAttempts, Turn
from secure_mw.guards.layers import device_cookies
from secure_mw.guards.regulation import Regulator, regulator_from_settings
from secure_mw.guards.timing import Attempt, LoginDelay
from secure_mw.http import Reply, RequestView, html_reply, json_reply, redirect_reply
from secure_mw.login.api import (
    BUSY,
    EXPIRED,
    FAILED,
    USED,
    APIRefused,
    api_error,
    api_fields,
    api_refusal,
    signed_in,
)
from secure_mw.login.policy import PasswordPolicy
from secure_mw.login.totp import (
    TOTP,
    FileTOTPStore,
    SecretBox,
    TOTPStore,
    UsedCodeStore,
    acheck_code,
    check_code,
    used_codes_from_settings,
)
from secure_mw.login.users import User, UsersFile, normalize_username
from secure_mw.oidc.client import OIDCClient
from secure_mw.oidc.core import ProviderLogin
from secure_mw.oidc.prelogin import LIFETIME, PendingLogin
from secure_mw.session.gate import LoginMethod, Maintained, Outcome, SessionGate
from secure_mw.session.manager import SessionRead, SessionStore
from secure_mw.session.model import Session
from secure_mw.settings import Settings

__all__ = ["LocalLoginCore"]

BAD_CODE = "That code is not valid."
#: Longest user name an attempt may give (as the login guard): a longer one is refused
#: (400) before it is regulated, so no counter keeps it.
MAX_NAME = 256
#: The session field holding when its user was last looked up in the users file.
CHECKED = "pa"


class LocalLoginCore(SessionGate):
    """Sessions backed by the users file (``local_users.file``): the session gate with the
    password login as its method, and the OpenID provider's as a second one when ``[oidc]``
    is set."""

    def __init__(self, settings: Settings, *, keyring: KeyRing | None = None,
                 store: SessionStore | None = None, users: UsersFile | None = None,
                 regulator: Regulator | None = None, delay: LoginDelay | None = None,
                 totp: TOTP | None = None, totp_store: TOTPStore | None = None,
                 used_codes: UsedCodeStore | None = None, client: OIDCClient | None = None,
                 clock: Callable[[], float] = time.time, audit: AuditLogger | None = None,
                 require_login: bool = True) -> None:
        super().__init__(settings, keyring=keyring, store=store, clock=clock, audit=audit,
                         require_login=require_login)
        self.users = users or UsersFile(
            settings.local_users.file,
            policy=PasswordPolicy.from_settings(settings.local_users))
        # 0 ("always"): the users file is consulted at every request of a local session.
        self.users_refresh = settings.local_users.refresh_interval
        self.regulator = regulator if regulator is not None else regulator_from_settings(settings)
        self.delay = delay or LoginDelay()
        self.totp = totp or TOTP(issuer=settings.local_users.totp_issuer, clock=clock)
        self.totp_secrets = totp_store if totp_store is not None else FileTOTPStore(
            settings.local_users.totp_file)
        self.used_codes = used_codes if used_codes is not None else \
            used_codes_from_settings(settings)
        self.attempts = LoginAttempts(self.regulator, audit=self.audit,
                                      devices=device_cookies(settings, self.keyring, clock))
        self.secret_box = SecretBox(self.keyring)
        self.use(LoginMethod("local", {
            "2fa": self._second_factor,
            "login": self._local_login,
            "api/login": self._api_login,
            "api/2fa": self._api_second_factor,
        }, maintain=self._maintain_local, fresh=self._checked_recently))
        # With an OpenID provider configured too, the login page offers both.
        self.provider: ProviderLogin | None = None
        if settings.oidc is not None:
            self.provider = ProviderLogin(self, settings.oidc, client=client, clock=clock)
            self.use(self.provider.method(login_route="login/oidc"))

    def _foreign(self, session: Session) -> str | None:
        if session.source == "oidc" and self.provider is None:
            return "session of an OpenID login, and this application has none"
        return super()._foreign(session)

    # -- sessions follow the users file -----------------------------------------------------

    def _maintain_local(self, view: RequestView, session: Session, read: SessionRead
                        ) -> Flow[Maintained | None]:
        """A local session whose user was looked up more than ``refresh_interval`` ago (or,
        by another clock, in the future) is checked against the users file first; anything
        else costs one comparison (``None``: the gate keeps it alive)."""
        if not self._checked_recently(session):
            return (yield from self._follow_users(view, session, read))
        return None

    def _checked_recently(self, session: Session) -> bool:
        """Whether ``session``'s user was looked up in the users file less than
        ``refresh_interval`` ago (by this clock)."""
        checked = session.tokens.get(CHECKED, session.created)
        return isinstance(checked, int | float) and \
            0 <= self.clock() - checked < self.users_refresh

    def _follow_users(self, view: RequestView, session: Session, read: SessionRead
                      ) -> Flow[Maintained | None]:
        """End the session of a user who is gone, disabled or whose sessions were revoked;
        write changed claims (and when this check was made) back into the session."""
        user = yield Op(self.users.lookup_now, self.users.alookup_now, session.sub)
        ended = None
        if user is None:
            ended = "user deleted"
        elif user.disabled:
            ended = "user disabled"
        elif session.created < user.sessions_not_before:
            ended = "sessions revoked in the users file"
        if ended is not None:
            self.event("session_ended", view, user=session.sub, reason=ended,
                       session=session.digest)
            cookies = yield from self.sessions.destroy(session, sent=read.sent)
            return None, cookies
        assert user is not None
        now = self.clock()
        profile = {"email": user.email, "name": user.display_name,
                   "groups": list(user.groups)}
        changed = sorted(k for k, v in profile.items() if session.claims.get(k) != v)
        if changed:
            self.event("session_updated", view, user=session.sub, level=logging.INFO,
                       reason=", ".join(changed) + " changed in the users file",
                       session=session.digest)
        record = self.users_refresh > 0   # "always" records nothing
        if not changed and not record:
            return None
        tokens = {**session.tokens, CHECKED: now} if record else dict(session.tokens)
        claims = {**session.claims, **profile} if changed else session.claims
        return (yield from self.write_back(session.evolve(claims=claims, tokens=tokens),
                                           read, now))

    # -- the form ---------------------------------------------------------------------------

    def _form(self, view: RequestView, *, status: int = 200, error: str = "",
              return_to: str = "/", remember: bool = False,
              used: PendingLogin | None = None, retry_after: int | None = None) -> Reply:
        pending, cookie = self._next_form(view, return_to, remember, used)
        remember_box = ""
        if self.settings.session.remember_me > 0:
            remember_box = ('<p><label><input type="checkbox" name="remember_me" value="1"> '
                            'Keep me signed in on this device</label></p>')
        alert = f'<p role="alert"><strong>{html.escape(error)}</strong></p>' if error else ""
        form = (
            f'{alert}<form method="post" action="{self.prefix}login">'
            f'<input type="hidden" name="state" value="{pending.state}">'
            '<p><label for="username">User name</label><br>'
            '<input id="username" name="username" autocomplete="username" required '
            'autocapitalize="none" spellcheck="false" autofocus></p>'
            '<p><label for="password">Password</label><br>'
            '<input id="password" name="password" type="password" '
            'autocomplete="current-password" required></p>'
            f'{remember_box}<p><button type="submit">Sign in</button></p></form>'
        )
        if self.provider is not None:
            provider = html.escape(urlsplit(self.provider.oidc.issuer).netloc)
            link = f"{self.prefix}login/oidc?rd={quote(return_to, safe='/')}"
            form += (f'<p>or</p><p><a class="button" id="provider" href="{html.escape(link)}">'
                     f"Sign in with {provider}</a></p>")
        headers = [("set-cookie", cookie)]
        if retry_after is not None:
            headers.append(("retry-after", str(retry_after)))
        return self.pages.render(status, "Sign in", "Sign in to continue.", body_html=form,
                                 headers=headers)

    def _next_form(self, view: RequestView, return_to: str, remember: bool,
                   used: PendingLogin | None) -> tuple[PendingLogin, str]:
        """A new attempt's state and the attempts cookie holding it."""
        pending = PendingLogin.start(verifier="", return_to=return_to, now=self.clock(),
                                     remember=remember)
        # One Set-Cookie for the attempts cookie: the request's attempts less the one just
        # used (each works once), plus this form's — a browser keeps only the last of two.
        kept = [p for p in self.prelogin.read(view) if used is None or p.state != used.state]
        return pending, self.prelogin.write([*kept, pending])

    def _answer(self, api: bool, view: RequestView, *, status: int, error: str,
                return_to: str = "/", remember: bool = False,
                used: PendingLogin | None = None, retry_after: int | None = None) -> Reply:
        """The form again (HTML), or its JSON equivalent with the next attempt's state."""
        if not api:
            return self._form(view, status=status, error=error, return_to=return_to,
                              remember=remember, used=used, retry_after=retry_after)
        return api_refusal(status, error, self._next_form(view, return_to, remember, used),
                           retry_after=retry_after)

    def _local_login(self, view: RequestView) -> Flow[Outcome]:
        if view.method in ("GET", "HEAD"):
            params = view.query()
            values = params.get("rd") or []
            target = self.return_target(values[0] if len(values) == 1 else None) or "/"
            return Outcome(self._form(view, return_to=target))
        if view.method != "POST":
            return Outcome(html_reply(405, "Method not allowed", "Use the sign-in form.",
                                      headers=[("allow", "GET, POST")]))
        return (yield from self._password_step(view, view.form(max_fields=16), api=False))

    def _password_step(self, view: RequestView, form: dict[str, str], *, api: bool
                       ) -> Flow[Outcome]:
        """A sign-in attempt, from the form or the JSON endpoint (``api``): one decision."""
        state = form.get("state", "")
        pending, prelogin_cookie = self.prelogin.take(view, state) if state else (None, None)
        if pending is None:
            self.event("login_failure", view, reason="sign-in form expired or forged")
            return Outcome(self._answer(api, view, status=400, error=EXPIRED))
        cookies = [prelogin_cookie] if prelogin_cookie else []
        username = form.get("username", "")
        password = form.get("password", "")
        remember = form.get("remember_me") == "1"
        # A form's state works once, success or failure, in every process: claimed in the
        # store before anything else (a replay of the same POST, in parallel too, fails).
        first_use = yield from self.sessions.claim_once(f"login-form:{pending.state}",
                                                        LIFETIME)
        if not first_use:
            self.event("login_failure", view, reason="sign-in form used twice")
            return Outcome(self._answer(api, view, status=400, used=pending, error=USED,
                                        return_to=pending.return_to))
        if len(username) > MAX_NAME:
            attempt = self.delay.start()
            self.event("login_failure", view, reason="user name too long")
            yield Op(attempt.finish, attempt.afinish, success=False)
            return Outcome(self._answer(api, view, status=400, used=pending,
                                        error=f"A user name has at most {MAX_NAME} "
                                              "characters.",
                                        return_to=pending.return_to, remember=remember))
        name = normalize_username(username) if username else ""
        # Device cookies from before the user's sessions_not_before (a user added again
        # under this name, or whose sessions were ended) are ignored.
        known = (yield Op(self.users.lookup_now, self.users.alookup_now, username)) \
            if name else None
        turn = yield from self.attempts.begin(
            view, name or None, not_before=known.sessions_not_before if known else 0.0)
        if turn.refusal is not None and turn.refusal.reason == "busy":
            return Outcome(self._answer(
                api, view, status=429, used=pending, return_to=pending.return_to,
                remember=remember, retry_after=turn.refusal.retry_after(0.0), error=BUSY))
        attempt = self.delay.start()
        user: User | None = None
        if turn.reservation is not None and name and password:
            user = yield Op(self.users.verify, self._averify, username, password)
        if user is None:
            if turn.reservation is not None:
                yield from self._failed(turn, view, attempt, "invalid credentials")
            yield Op(attempt.finish, attempt.afinish, success=False)
            return Outcome(self._answer(api, view, status=401, error=FAILED, used=pending,
                                        return_to=pending.return_to, remember=remember))
        # With a second factor enrolled, the sign-in is complete (failures cleared, device
        # cookie) only once the code is accepted at /.auth/2fa.
        enrolled = yield from self._enrolled(user.username)
        cookies += yield from self.attempts.succeeded(turn, view, complete=not enrolled)
        if self.users.needs_rehash(user):
            yield Op(self._rehash, self._arehash, user, password)
        old = yield from self.sessions.read(view)
        if old.session is not None:       # a new id at every login
            yield from self.sessions.destroy(old.session)
        session = self.sessions.new(claims={
            "sub": user.username, "email": user.email, "email_verified": bool(user.email),
            "name": user.display_name, "groups": list(user.groups)}, source="local",
            remember=remember)
        cookies += (yield from self.sessions.save(session, sent=old.sent, new=True)) or []
        self.event("login_success", view, user=user.username, level=logging.INFO,
                   session=session.digest)
        yield Op(attempt.finish, attempt.afinish, success=True)
        set_cookies = [("set-cookie", c) for c in cookies]
        if api:
            return Outcome(json_reply(200, {
                **signed_in(session, pending.return_to), "second_factor_enrolled": enrolled},
                headers=set_cookies))
        return Outcome(redirect_reply(pending.return_to, status=303, headers=set_cookies))

    # -- the second factor ---------------------------------------------------------------

    def _second_factor(self, view: RequestView) -> Flow[Outcome]:
        """``/.auth/2fa?rd=/path``: enrol a TOTP authenticator (first time) or enter a code;
        success gives the session a second factor under a new id."""
        read = yield from self.sessions.read(view)
        session = read.session
        params = view.query()
        values = params.get("rd") or []
        target = self.return_target(values[0] if len(values) == 1 else None) or "/"
        if session is None or session.source != "local":
            return Outcome(self.challenge(view))
        if session.auth_level >= 2:
            return Outcome(redirect_reply(target))
        user = session.sub
        sealed = yield Op(self.totp_secrets.get, self.totp_secrets.aget, user)
        if view.method in ("GET", "HEAD"):
            return Outcome(self._code_form(session, target, enrolled=sealed is not None))
        if view.method != "POST":
            return Outcome(html_reply(405, "Method not allowed", "Use the form.",
                                      headers=[("allow", "GET, POST")]))
        form = view.form(max_fields=16)
        return (yield from self._code_step(view, read=read, session=session, sealed=sealed,
                                           target=target, form=form,
                                           csrf=form.get("csrf", ""), api=False))

    def _code_step(self, view: RequestView, *, read: SessionRead, session: Session,
                   sealed: str | None, target: str, form: dict[str, str], csrf: str,
                   api: bool) -> Flow[Outcome]:
        """A second-factor code, from the form or the JSON endpoint (``api``)."""
        user = session.sub
        if not hmac.compare_digest(csrf.encode(), session.csrf.encode()):
            self.event("csrf_failure", view, user=user, reason="second-factor form")
            if api:
                return Outcome(api_error(403, "csrf", "The CSRF token is missing or wrong."))
            return Outcome(html_reply(403, "Refused", "The form had expired. Please try again."))
        enrolling = sealed is None
        try:
            token = sealed if sealed is not None else str(form.get("enrol", ""))
            secret = self.secret_box.open(user, token)
        except DecryptError:
            self.event("login_failure", view, user=user, reason="second factor: bad enrolment")
            if api:
                return Outcome(api_error(400, "enrolment_expired",
                                         "The enrolment had expired. Start again."))
            return Outcome(self._code_form(session, target, enrolled=False, status=400,
                                           error="The enrolment had expired. Scan again."))
        # A code is regulated by the user's budgets, never by a device cookie's (one is
        # only issued once every factor passed); the cookie's id is kept for the new one.
        known = yield Op(self.users.lookup_now, self.users.alookup_now, user)
        turn = yield from self.attempts.begin(
            view, normalize_username(user), device=False,
            not_before=known.sessions_not_before if known else math.inf)
        if turn.refusal is not None and turn.refusal.reason == "busy":
            if api:
                return Outcome(api_error(
                    429, "too_many_attempts", "Several codes are being checked already.",
                    headers=[("retry-after", str(turn.refusal.retry_after(0.0)))]))
            return Outcome(html_reply(
                429, "Too many attempts", "Several codes are being checked already. Please "
                "wait a moment.", headers=[("retry-after",
                                             str(turn.refusal.retry_after(0.0)))]))
        attempt = self.delay.start()
        code = str(form.get("code", ""))
        ok = False
        if turn.reservation is not None:
            ok = yield Op(check_code, acheck_code, self.totp, self.used_codes, user, secret,
                          code)
        if not ok:
            if turn.reservation is not None:
                yield from self._failed(turn, view, attempt, "second factor: wrong code")
            yield Op(attempt.finish, attempt.afinish, success=False)
            if api:
                return Outcome(api_error(401, "invalid_code", BAD_CODE))
            return Outcome(self._code_form(
                session, target, enrolled=not enrolling, status=401,
                error=BAD_CODE, enrol_token=None if not enrolling else token))
        device = yield from self.attempts.succeeded(turn, view)
        if enrolling:
            yield Op(self.totp_secrets.set, self.totp_secrets.aset, user,
                     self.secret_box.seal(user, secret))
            self.event("totp_enrolled", view, user=user, level=logging.INFO)
        # A new auth level, a new session id: the one-factor session is gone.
        upgraded = self.sessions.rotate(session, auth_level=2)
        yield from self.sessions.destroy(session)
        cookies = (yield from self.sessions.save(upgraded, sent=read.sent, new=True)) or []
        cookies += device
        self.event("login_success", view, user=user, level=logging.INFO,
                   reason="second factor", session=upgraded.digest)
        yield Op(attempt.finish, attempt.afinish, success=True)
        if api:
            return Outcome(json_reply(200, signed_in(upgraded, target),
                                      headers=[("set-cookie", c) for c in cookies]))
        return Outcome(redirect_reply(target, status=303,
                                      headers=[("set-cookie", c) for c in cookies]))

    def _code_form(self, session: Session, target: str, *, enrolled: bool, status: int = 200,
                   error: str = "", enrol_token: str | None = None) -> Reply:
        user = session.sub
        alert = f'<p role="alert"><strong>{html.escape(error)}</strong></p>' if error else ""
        enrol = ""
        if not enrolled:
            if enrol_token is None:
                enrol_token = self.secret_box.seal(user, self.totp.new_secret())
            secret = self.secret_box.open(user, enrol_token)
            enrol = (
                "<p>Scan this code with an authenticator app, then enter the six digits it "
                "shows.</p>"
                f'<figure>{self.totp.qr_svg(secret, user)}'
                f"<figcaption>Or type the key: <code>{html.escape(secret)}</code>"
                "</figcaption></figure>"
                f'<input type="hidden" name="enrol" value="{html.escape(enrol_token)}">'
            )
        form = (
            f'{alert}<form method="post" action="{self.prefix}2fa?rd='
            f'{html.escape(quote(target, safe="/"))}">{enrol}'
            f'<input type="hidden" name="csrf" value="{session.csrf}">'
            '<p><label for="code">Six-digit code</label><br>'
            '<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" '
            'pattern="[0-9 ]{6,8}" required autofocus></p>'
            '<p><button type="submit">Verify</button></p></form>'
        )
        title = "Set up two-step sign-in" if not enrolled else "Two-step sign-in"
        return self.pages.render(status, title, "A second step protects this page.",
                                 body_html=form)

    # -- the JSON endpoints (single-page apps) ------------------------------------------------

    def _api_login(self, view: RequestView) -> Flow[Outcome]:
        """``GET api/login?rd=/path``: an attempt's state; ``POST``: the attempt (JSON)."""
        if view.method in ("GET", "HEAD"):
            yield from ()
            values = view.query().get("rd") or []
            target = self.return_target(values[0] if len(values) == 1 else None) or "/"
            pending, cookie = self._next_form(view, target, False, None)
            return Outcome(json_reply(200, {
                "state": pending.state, "expires_in": int(LIFETIME),
                "remember_me": self.settings.session.remember_me > 0,
                "login_url": f"{self.prefix}api/login"}, headers=[("set-cookie", cookie)]))
        if view.method != "POST":
            return Outcome(_api_method_not_allowed())
        try:
            fields = api_fields(view, strings=("username", "password", "state"),
                                flags=("remember_me",))
        except APIRefused as exc:
            self.event(exc.event, view, reason=exc.reason)
            return Outcome(exc.reply)
        return (yield from self._password_step(view, fields, api=True))

    def _api_second_factor(self, view: RequestView) -> Flow[Outcome]:
        """``GET api/2fa``: enrolled or not (with a sealed enrolment when not); ``POST``:
        ``{"code", "enrol"}`` with the session's CSRF token in ``X-CSRF-Token``."""
        read = yield from self.sessions.read(view)
        session = read.session
        if session is None or session.source != "local":
            return Outcome(json_reply(401, {"error": "unauthenticated",
                                            "login_url": f"{self.prefix}api/login"}))
        if session.auth_level >= 2:
            return Outcome(json_reply(200, {"enrolled": True, "auth_level": 2}))
        sealed = yield Op(self.totp_secrets.get, self.totp_secrets.aget, session.sub)
        if view.method in ("GET", "HEAD"):
            if sealed is not None:
                return Outcome(json_reply(200, {"enrolled": True, "auth_level": 1}))
            token = self.secret_box.seal(session.sub, self.totp.new_secret())
            secret = self.secret_box.open(session.sub, token)
            return Outcome(json_reply(200, {
                "enrolled": False, "auth_level": 1, "enrol": token, "secret": secret,
                "otpauth_uri": self.totp.provisioning_uri(secret, session.sub)}))
        if view.method != "POST":
            return Outcome(_api_method_not_allowed())
        try:
            fields = api_fields(view, strings=("code", "enrol"))
        except APIRefused as exc:
            self.event(exc.event, view, user=session.sub, reason=exc.reason)
            return Outcome(exc.reply)
        return (yield from self._code_step(view, read=read, session=session, sealed=sealed,
                                           target="/", form=fields,
                                           csrf=view.headers.get("x-csrf-token", ""),
                                           api=True))

    def _enrolled(self, user: str) -> Flow[bool]:
        """Whether ``user`` has a second factor (when the store cannot say: as if so)."""
        try:
            sealed = yield Op(self.totp_secrets.get, self.totp_secrets.aget, user)
        except StoreUnavailable:
            return True
        return sealed is not None

    def _failed(self, turn: Turn, view: RequestView, attempt: Attempt, reason: str
                ) -> Flow[None]:
        """Record a failure; one that cannot be recorded still waits for the delay, then
        refuses the attempt (503: the reservation keeps counting until find_time)."""
        try:
            yield from self.attempts.failed(turn, view, reason)
        except StoreUnavailable:
            yield Op(attempt.finish, attempt.afinish, success=False)
            raise

    # -- blocking work, off the event loop under ASGI --------------------------------------

    async def _averify(self, username: str, password: str) -> User | None:
        return await asyncio.to_thread(self.users.verify, username, password)

    def _rehash(self, user: User, password: str) -> None:
        try:
            self.users.set_hash(user.username, self.users.hasher.hash(password),
                                expected=user.password_hash)
        except (OSError, ValueError, LookupError) as exc:   # the login stands; log why
            logging.getLogger("secure_mw.login").warning(
                "could not upgrade the password hash of %r: %s", user.username, exc)

    async def _arehash(self, user: User, password: str) -> None:
        await asyncio.to_thread(self._rehash, user, password)


def _api_method_not_allowed() -> Reply:
    return json_reply(405, {"error": "method_not_allowed"}, headers=[("allow", "GET, POST")])
