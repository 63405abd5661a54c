"""What the ASGI and WSGI lanes share: the cores they ask and the decisions on a request
that do not depend on the flavour.

A lane (:mod:`secure_mw.asgi._lane`, :mod:`secure_mw.wsgi._lane`) serves a plain request of
the chain ``protect()`` builds in one pass, and hands every other request to the chain
before it has changed anything. Both decide with :class:`LaneCore`: which chains they can
follow (:meth:`LaneCore.parts_of`), what a request line decides
(:meth:`LaneCore.judge_line`, free of side effects), whether the request is theirs up to
its rate limit (:meth:`LaneCore.ticket_of`, then :meth:`LaneCore.admit` on every
request, whose one count counts nothing when it refuses), and the memos of tickets, parsed
cookies and resolved clients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

from secure_mw.authz.paths import PathRefused, check_utf8_path, route_path
from secure_mw.guards.headers import SecurityHeaders
from secure_mw.guards.ratelimit import MemoryRateLimiter, RateDecision, key_prefix
from secure_mw.http import RequestView, parse_cookies
from secure_mw.tokens.headers import JWKS_PATHS

__all__ = ["LaneCore", "Ticket", "keep"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SCHEMES = frozenset({"http", "https"})
#: Entries each memo keeps (emptied when full), and the longest line or header it keeps:
#: at most a few MiB, whatever a client sends.
MEMO_SIZE = 1024
MEMO_CHARS = 2048
#: The layers (by class name, the same in both flavours) a lane follows, in the order
#: ``protect()`` stacks them.
ORDER = ("HostGuardMiddleware", "SecurityHeadersMiddleware", "ClientAddressMiddleware",
         "JWKSMiddleware", "RateLimitMiddleware", "HealthMiddleware",
         "RedirectGuardMiddleware", "SessionMiddleware", "AuthorizationMiddleware",
         "IdentityHeaderMiddleware")


def keep(memo: dict[Any, Any], key: Any, value: Any, size: int) -> None:
    """Keep ``value`` under ``key`` in a bounded memo: emptied when full, and nothing kept
    whose key is longer than :data:`MEMO_CHARS` (``size``)."""
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    if size <= MEMO_CHARS:
        memo[key] = value


class Ticket:
    """What is the same for every request of one key — its request line, ``Cookie`` header,
    peer and server — once the lane has found it plain, its session warm and its path
    allowed: the view, the session record and identity, the rate-limit key and what the
    app is given. A lane keeps tickets in a bounded memo and asks, on every request, only
    what may have changed since: the record (:meth:`LaneCore.kept_ticket`), then the time and
    the count (:meth:`LaneCore.admit`).
    Shared by every thread, and never written once made but for :attr:`issued`, the
    assertion it was last given (replaced whole: :meth:`LaneCore.assertion_of`), and a
    WSGI view's listening port, read once from the server's socket (which is in the key:
    always the same value)."""

    __slots__ = ("entries", "identity", "issued", "known", "rate_key", "rate_prefix", "session",
                 "view")

    def __init__(self, view: RequestView, known: tuple[Any, ...], session: Any, *,
                 identity: Any, rate_key: str | None, entries: dict[str, Any]) -> None:
        self.view = view
        self.known = known
        self.session = session
        self.identity = identity
        self.rate_key = rate_key
        # (the limiter's table of the key, as MemoryRateLimiter.hit_planned finds it)
        self.rate_prefix = "" if rate_key is None else key_prefix(rate_key)
        self.entries = entries
        self.issued: tuple[str, bytes, float, float] | None = None


class LaneCore:
    """The cores a lane asks, taken from the layers of its chain."""

    def __init__(self, layers: Sequence[Any], parts: dict[str, Any]) -> None:
        self.layers = tuple(layers)
        self.hosts = parts["HostGuardMiddleware"].layer
        headers = parts.get("SecurityHeadersMiddleware")
        self.headers = None if headers is None else headers.headers
        client = parts.get("ClientAddressMiddleware")
        self.proxies = None if client is None else client.proxies
        # The public keys are answered by either layer (IdentityHeaderMiddleware too).
        self.jwks = "JWKSMiddleware" in parts or "IdentityHeaderMiddleware" in parts
        self.health = "HealthMiddleware" in parts
        rate = parts.get("RateLimitMiddleware")
        self.rate = None if rate is None or not rate.layer.rules else rate.layer
        self.rule = None if self.rate is None else self.rate.rules[0]
        self.limiter: MemoryRateLimiter | None = None if self.rate is None \
            else self.rate.limiter
        self.plan = None if self.rule is None else self.rule.plan
        redirect = parts.get("RedirectGuardMiddleware")
        self.redirect = None if redirect is None else redirect.layer
        self.session = parts["SessionMiddleware"].core
        self.sessions = self.session.sessions
        authz = parts.get("AuthorizationMiddleware")
        self.authz = None if authz is None else authz.layer
        issue = parts.get("IdentityHeaderMiddleware")
        self.issue = None if issue is None else issue.layer
        # Memos of what depends only on its key (each bounded, emptied when full): the
        # verdict on a request line, parsed Cookie headers, the client of a peer.
        self._lines: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._cookies: dict[str, Mapping[str, str]] = {}
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._tickets: dict[tuple[Any, ...], Ticket] = {}

    @staticmethod
    def parts_of(layers: Sequence[Any], header_keys: Iterable[Any]) -> dict[str, Any] | None:
        """The layers by name when a lane can follow them: layers it knows, in ``protect()``'s
        order, with the host guard and the session, at most one rate-limit rule, keyed by
        address or route, in the in-memory limiter; and no header the layers read (a client
        certificate's, the identity header) among ``header_keys``, those the lane admits."""
        parts: dict[str, Any] = {}
        position = 0
        for layer in layers:
            name = type(layer).__name__
            if name not in ORDER[position:]:
                return None           # a layer the lane does not know, or out of order
            position = ORDER.index(name) + 1
            parts[name] = layer
        if "HostGuardMiddleware" not in parts or "SessionMiddleware" not in parts:
            return None
        rate = parts.get("RateLimitMiddleware")
        if rate is not None and rate.layer.rules:
            rules = rate.layer.rules
            if len(rules) != 1 or rules[0].key not in ("ip", "route") \
                    or type(rate.layer.limiter) is not MemoryRateLimiter:
                return None
        return None if any(True for _ in header_keys) else parts

    def judge_line(self, host_text: str, method: str, scheme: str, path: str, *, query: str,
                   paths: Iterable[tuple[bytes, bool]], endpoints: Iterable[str]
                   ) -> tuple[str, str, str, str] | tuple[()]:
        """What a request line decides, which depends on nothing else: the ``Host`` as sent
        and lowered, the query and the routed path; ``()`` when it is not plain (a method
        or scheme the lane does not know, a host the guard refuses, a path that is not
        UTF-8 in any of ``paths`` (bytes, still percent-encoded?), one of ``endpoints``
        for the public keys or the health answer, a query that may name a redirect
        parameter)."""
        if not host_text or method not in METHODS or scheme not in SCHEMES:
            return ()
        host = host_text.lower()
        if not self.hosts.policy.allows(host):
            return ()
        try:
            for raw, encoded in paths:
                check_utf8_path(raw, encoded=encoded)
        except PathRefused:
            return ()
        for endpoint in endpoints:
            if (self.jwks and endpoint in JWKS_PATHS) or (
                    self.health and endpoint.endswith("health")):
                return ()
        if self.redirect is not None and not self.redirect.names_no_param(query):
            return ()
        return host_text, host, query, route_path(path)

    def ticket_of(self, view: RequestView, known: tuple[Any, ...], raw_path: bytes | None,
                  root: str, path: Any) -> Ticket | None:
        """The :class:`Ticket` of a plain request (``known``: what its line decides), or
        ``None`` to hand it over: its session is not warm, or the rules have not let it in
        before with ``path`` unchanged. Nothing is counted, audited or written."""
        session = self.session.warm_session(view)
        if session is None:
            return None
        identity = session.identity()
        decision = None
        if self.authz is not None:
            decision = self.authz.remembered(view, identity, raw_path, root=root)
            if decision is None or decision.path != path:
                return None
        rate_key = None if self.rate is None else self.rate.key_now(self.rule, view, None)
        entries: dict[str, Any] = {"secure_mw.identity": identity}
        if self.proxies is not None:
            entries["secure_mw.client"] = self.client_of(view)
        if decision is not None:
            entries["secure_mw.decision"] = decision.decision
        entries.update(self.own_entries(identity))
        return Ticket(view, known, session, identity=identity, rate_key=rate_key,
                      entries=entries)

    def own_entries(self, identity: Any) -> dict[str, Any]:
        """What a flavour gives its app besides :meth:`ticket_of`'s entries (none here)."""
        return {}

    def kept_ticket(self, key: tuple[Any, ...]) -> Ticket | None:
        """The ticket kept under ``key`` while its session record is still the one the store
        holds, live; a ticket whose session ended or was replaced is dropped at once
        (nothing of an ended session stays in the memo until it fills), and ``None`` makes
        the lane build a new one. Raises TypeError for an unhashable key."""
        ticket = self._tickets.get(key)
        if ticket is None:
            return None
        session = ticket.session
        if self.sessions.warm_record(session.id) is session:
            return ticket
        self._tickets.pop(key, None)
        return None

    def keep_ticket(self, key: tuple[Any, ...], ticket: Ticket, parts: Iterable[Any]) -> None:
        """Keep ``ticket`` under ``key``, bounded by the size of its text ``parts``."""
        keep(self._tickets, key, ticket,
             sum(len(part) for part in parts if isinstance(part, str | bytes)))

    def admit(self, ticket: Ticket) -> RateDecision | Literal[False] | None:
        """Whether the request of a :meth:`kept_ticket` ticket is the lane's now, asked on every
        request: its session still warm, and its rate limit lets it in (then the decision,
        whose lines go on the response; ``None`` with no rule). ``False`` hands it over; a
        refused hit counts nothing, so the chain then counts, audits and answers it."""
        if not self.session.stays_warm(ticket.view, ticket.session):
            return False
        key = ticket.rate_key
        if key is None:
            return None
        limiter, plan = self.limiter, self.plan
        assert limiter is not None and plan is not None     # (a key: a rule)
        # hit_planned()'s own path for a rule of one limit, its key's prefix found once
        rate = limiter._hit_one(key, ticket.rate_prefix, plan, 1) if len(plan.limits) == 1 \
            else limiter.hit_planned(key, plan)
        return rate if rate.allowed else False

    def assertion_of(self, ticket: Ticket) -> tuple[str, bytes, float, float] | None:
        """The identity assertion for the request of ``ticket`` (text, bytes, ``iat``, reused
        until): the issuer's, kept on the ticket for as long as the issuer would hand the
        same one out again, by its signer's clock."""
        issue = self.issue
        assert issue is not None
        signer = issue.signer
        kept = ticket.issued
        if kept is not None and kept[2] <= signer.clock() < kept[3]:
            return kept
        issued = issue.issued(ticket.view, ticket.identity)
        if issued is None:
            return None
        token, iat, until = issued
        kept = (token, token.encode("ascii"), iat, until)
        if signer.cache_size:       # a signer that never reuses a token: nor does the ticket
            ticket.issued = kept
        return kept

    def nonce_entry(self, ticket: Ticket) -> str | None:
        """A fresh CSP nonce for a response of ``ticket``'s request, when it carries one."""
        return SecurityHeaders.new_nonce() \
            if self.headers is not None and ticket.known[-1] else None

    def cookies_of(self, text: str) -> Mapping[str, str]:
        """The parsed ``Cookie`` header (read, never written)."""
        parsed = self._cookies.get(text)
        if parsed is None:
            parsed = MappingProxyType(parse_cookies(text))
            keep(self._cookies, text, parsed, len(text))
        return parsed

    def client_of(self, view: RequestView) -> Any:
        """The client of a request no trusted proxy forwarded: the peer, scheme and host
        decide it."""
        peer = (view.client, view.scheme, view.host)
        client = self._clients.get(peer)
        if client is None:
            assert self.proxies is not None
            client = self.proxies.resolve(view.client, view.headers, scheme=view.scheme,
                                          host=view.host)
            keep(self._clients, peer, client, 0)
        return client

    def forwarded(self, view: RequestView) -> bool:
        """Whether a trusted proxy's forwarding headers change the host or the client the
        layers see (the chain then rewrites the request); an untrusted peer's are ignored,
        by the chain as here."""
        if self.hosts.effective_host(view) != view.host:
            return True
        proxies = self.proxies
        return proxies is not None and proxies.resolve(
            view.client, view.headers, scheme=view.scheme, host=view.host).via_proxy
