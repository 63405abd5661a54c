"""What the authorization middlewares decide, framework-free: both flavours call this.

The rules match the path the application routes: normalized, and relative to the app's
mount point (ASGI ``root_path``, WSGI ``SCRIPT_NAME``), as Starlette's and werkzeug's routers
take it (docs/authorization.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from secure_mw import _observe
from secure_mw.audit import AuditLogger, audit_logger
from secure_mw.authz.paths import PathRefused, check_raw_path, normalize_path
from secure_mw.authz.rules import AccessPolicy, Decision, Explanation
from secure_mw.http import Reply, RequestView, html_reply, json_reply
from secure_mw.identity import Identity
from secure_mw.oidc.core import challenge
from secure_mw.settings import Settings

__all__ = ["AuthorizationLayer", "Explained", "Verdict"]

log = logging.getLogger("secure_mw.authz")


@dataclass(frozen=True, slots=True)
class Verdict:
    """``reply`` to send instead of calling the app, or ``None`` with the normalized
    ``path`` the app must be given (mount point included, as the request had it) and the
    ``decision`` that let the request in."""

    reply: Reply | None
    path: str
    decision: Decision | None


@dataclass(frozen=True, slots=True)
class Explained:
    """What :meth:`AuthorizationLayer.explain` found: the ``effect`` the layer enforces
    (``allow``, ``deny``, ``login``, ``two_factor``, ``bad_request``, or ``bad_path`` /
    ``not_found`` for a path refused before any rule), a sentence saying what the client
    gets, the path the rules saw, and the rules' :class:`~secure_mw.authz.rules.Explanation`
    (None when the path was refused first)."""

    effect: str
    outcome: str
    path: str
    explanation: Explanation | None


class AuthorizationLayer:
    """``[access_control]`` for every request (and every WebSocket handshake): the path is
    normalized first (ambiguous encodings refused with 400), then the rules decide; every
    refusal is an ``authorization_denied`` audit event."""

    def __init__(self, settings: Settings, *, policy: AccessPolicy | None = None,
                 audit: AuditLogger | None = None, two_factor_step: bool | None = None
                 ) -> None:
        self.policy = policy if policy is not None else AccessPolicy.from_settings(
            settings.access_control)
        for warning in self.policy.warnings():
            log.warning(warning)
        self.prefix = settings.server.auth_prefix
        from secure_mw.session.cookies import CookieJarSpec

        jar = CookieJarSpec(secure=settings.session.cookie_secure,
                            domain=settings.session.cookie_domain)
        self.cookie_name = jar.name(settings.session.cookie_name)
        # The built-in login offers a second step; an OpenID provider's sessions cannot
        # be stepped up here, so a two_factor rule refuses them.
        self.two_factor_step = settings.oidc is None if two_factor_step is None \
            else two_factor_step
        self.audit = audit or audit_logger()
        self.bearer = settings.bearer_tokens is not None   # 401s offer Bearer too
        # Allow verdicts remembered by everything they depend on (memoizable policies only):
        # a warm request then costs one dictionary look-up. Emptied when full.
        self._allowed: dict[tuple[Any, ...], Verdict] | None = \
            {} if self.policy.memoizable else None

    def decide(self, view: RequestView, identity: Identity | None,
               raw_path: bytes | None = None, *, root: str = "") -> Verdict:
        """``root``: the app's mount point (ASGI ``root_path``, WSGI ``SCRIPT_NAME``). The
        rules see the normalized path relative to it; a normalized path that leaves it is
        refused, since the app could not route it."""
        memo = self._allowed
        if memo is None:
            return self._decide(view, identity, raw_path, root.rstrip("/"))
        key = _memo_key(view, identity, raw_path, root)
        verdict = memo.get(key)
        if verdict is None:
            verdict = self._decide(view, identity, raw_path, root.rstrip("/"))
            if verdict.reply is not None:    # refusals are audited, and their replies
                return verdict               # carry the request's own return address
            if len(view.host) + 2 * len(view.path) + len(root) > MEMO_KEY_CHARS:
                return verdict               # an attacker-sized request line is not kept
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = verdict
        elif _observe.active:
            _observe.decided("authorization", "allow")
        return verdict

    def remembered(self, view: RequestView, identity: Identity | None,
                   raw_path: bytes | None = None, *, root: str = "") -> Verdict | None:
        """The allow verdict :meth:`decide` keeps for this request, or ``None`` (not kept,
        or a policy whose verdicts are never kept): nothing is decided or audited."""
        memo = self._allowed
        if memo is None:
            return None
        return memo.get(_memo_key(view, identity, raw_path, root))

    def explain(self, view: RequestView, identity: Identity | None,
                raw_path: bytes | None = None, *, root: str = "") -> Explained:
        """What :meth:`decide` would do with this request, and why (nothing is audited)."""
        path, refusal = self._path(view, raw_path, root.rstrip("/"))
        if refusal is not None:
            effect = "bad_path" if refusal.startswith("path refused") else "not_found"
            status = 400 if effect == "bad_path" else 404
            return Explained(effect, f"refused before any rule ({status}): {refusal}", path,
                             None)
        explanation = self.policy.explain(view, identity, path=routed(path, root))
        effect = explanation.decision.effect
        outcome = {
            "allow": "allowed: the request goes to the application",
            "deny": "refused (403)",
            "login": f"sent to the login ({self.prefix}login: 302 for a browser, 401 "
                     "otherwise)",
            "two_factor": f"sent to the second step ({self.prefix}2fa: 302 for a browser, "
                          "401 otherwise)",
            "bad_request": "refused (400): the request is ambiguous for this rule",
        }[effect]
        if effect == "two_factor" and identity is not None and identity.source == "bearer":
            effect = "deny"
            outcome = "refused (403): two_factor needed, and a bearer token cannot be " \
                      "stepped up"
        elif effect == "two_factor" and not self.two_factor_step:
            effect = "deny"
            outcome = "refused (403): two_factor needed, and an OpenID provider's session " \
                      "cannot be stepped up here"
        return Explained(effect, outcome, path, explanation)

    def _path(self, view: RequestView, raw_path: bytes | None,
              root: str) -> tuple[str, str | None]:
        """The normalized path, and why it is refused before any rule (None: it is not)."""
        try:
            if raw_path is not None:
                check_raw_path(raw_path)
            path = normalize_path(view.path)
        except PathRefused as exc:
            return view.path, f"path refused: {exc.reason}"
        if path.startswith(self.prefix):
            # The session core answers its own pages before this layer runs; a path that
            # only normalizes into them (/x/../.auth/…) must not slip past the rules.
            return path, "path normalizes into the login pages"
        if path != view.path and not inside(path, root):
            return path, "path refused: the normalized path leaves the mount point"
        return path, None

    def _decide(self, view: RequestView, identity: Identity | None,
                raw_path: bytes | None, root: str) -> Verdict:
        path, refusal = self._path(view, raw_path, root)
        if refusal is not None:
            self._refused(view, identity, None, "deny", refusal)
            if refusal.startswith("path refused"):
                return Verdict(_bad_path(view), path, None)
            return Verdict(_not_found(view), path, None)
        decision = self.policy.evaluate(view, identity, path=routed(path, root))
        effect = decision.effect
        if effect == "allow":
            if _observe.active:
                _observe.decided("authorization", "allow")
            return Verdict(None, path, decision)
        if effect == "login":
            if _observe.active:
                _observe.decided("authorization", "login")
            return Verdict(challenge(view, self.prefix, self.cookie_name,
                                     bearer=self.bearer), path, decision)
        if effect == "two_factor" and self.two_factor_step and not (
                identity is not None and identity.source == "bearer"):   # no step-up
            if _observe.active:
                _observe.decided("authorization", "two_factor")
            return Verdict(challenge(view, self.prefix, self.cookie_name, step="2fa"), path,
                           decision)
        self._refused(view, identity, decision.rule, effect, decision.reason)
        if effect == "bad_request":
            if view.wants_html:
                return Verdict(html_reply(400, "Bad request", "This address is ambiguous: "
                                          "a query parameter is given more than once."),
                               path, decision)
            return Verdict(json_reply(400, {"error": "bad_request"}), path, decision)
        if view.wants_html:
            return Verdict(html_reply(403, "Access denied",
                                      "You do not have access to this page."), path, decision)
        return Verdict(json_reply(403, {"error": "forbidden"}), path, decision)

    def _refused(self, view: RequestView, identity: Identity | None, rule: int | None,
                 effect: str, reason: str) -> None:
        self.audit.event("authorization_denied", level=logging.WARNING,
                         remote_ip=view.client, method=view.method, host=view.host,
                         path=view.path, user=identity.sub if identity else None,
                         rule=rule, effect=effect, reason=reason)


#: Allow verdicts an authorization layer remembers before it starts again.
MEMO_SIZE = 4096
#: The longest request line (host, path twice, mount point) whose verdict is remembered:
#: the memory is bounded in bytes too (about 4096 entries of 1 KiB at most).
MEMO_KEY_CHARS = 1024


def _memo_key(view: RequestView, identity: Identity | None, raw_path: bytes | None,
              root: str) -> tuple[Any, ...]:
    """Everything a memoizable policy's verdict depends on."""
    return (view.host, view.method, view.path, raw_path, root, _subject(identity))


def _subject(identity: Identity | None) -> tuple[Any, ...] | None:
    """What the rules can see of ``identity`` (as :meth:`AccessPolicy.evaluate` treats it)."""
    if not isinstance(identity, Identity):
        return None
    return (identity.sub, identity.groups, identity.email, identity.email_verified,
            identity.auth_level, identity.source)


def _bad_path(view: RequestView) -> Reply:
    if view.wants_html:
        return html_reply(400, "Bad request", "This address is not one this site serves.")
    return json_reply(400, {"error": "bad_path"})


def _not_found(view: RequestView) -> Reply:
    if view.wants_html:
        return html_reply(404, "Not found", "There is no such page.")
    return json_reply(404, {"error": "not_found"})


def inside(path: str, root: str) -> bool:
    """Whether ``path`` lies under the mount point ``root`` (segment-wise)."""
    return not root or path == root or path.startswith(root.rstrip("/") + "/")


def routed(path: str, root: str) -> str:
    """The path an application mounted at ``root`` routes for the full ``path``: relative
    to the mount point when under it (the mount point itself is ``/``), else unchanged — as
    Starlette's ``get_route_path`` does, and as WSGI's ``PATH_INFO`` is."""
    root = root.rstrip("/")
    if not root or not inside(path, root):
        return path
    return path[len(root):] or "/"
