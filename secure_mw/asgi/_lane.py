"""The lane: the chain ``protect()`` builds, decided in one pass for a plain request.

Most requests to a protected app are alike: a browser or client with a live session asks
for a page the rules let it see, with no forwarding headers, no bearer token, nothing for
our own endpoints. :class:`Lane` serves those in one function that asks the same cores
the layers ask (the Host policy, the rate limiter, the session gate, the remembered
authorization verdicts, the assertion issuer, the security headers), on a request view
of the two headers that decide it (``Host`` and ``Cookie``), with one ``send`` wrapper.

Anything else goes to the :class:`~secure_mw.asgi._layer.Chain`, which decides every
request as before. The lane hands a request over only before it has changed anything:
every check it makes first is free of side effects (nothing counted, audited or
written), and the one count it makes, the rate limit, counts nothing when it refuses (the
chain then counts and refuses it itself, with its audit line and reply; like every hit,
the refused one may drop a key that has drained, which holds no debt).
So a request the lane serves gets what the chain would give it, and one it does not
serve gets exactly the chain.

A request is plain when:

- it is HTTP (not a WebSocket), with a method the lane knows and an ``http``/``https``
  scheme, and no stack around it observes the request (``[metrics]``);
- every header is one of :data:`INERT` (named once each), plus ``Host`` and ``Cookie``:
  none of the cores reads those on the way to an allowed request, so a view without them
  decides alike. :data:`FORWARDING` headers are admitted when no trusted proxy sent them
  (the chain ignores them then); an ``Authorization`` or identity header, anything else,
  goes to the chain;
- the Host is allowed and the path is UTF-8 (the host guard would pass it, and the
  client address would stay the peer's);
- it is not for the public keys or the health answer, and its query names no redirect
  parameter (and has no ``%``, so none can hide in an escape);
- its session is warm (:meth:`~secure_mw.session.gate.SessionGate.warm_identity`: a
  live record of the in-memory store with nothing due);
- the rules have let the same host, method, path and subject in before (the verdict the
  authorization layer keeps), with the path unchanged.

What a plain request's key (its line, ``Cookie`` header, peer, listening address and root
path) decides is kept as a :class:`~secure_mw._lane.Ticket`; every request asks again what
may have changed (the session record, the time, the count).

The lane is built only for a chain of the layers it knows, in ``protect()``'s order,
with at most one rate-limit layer of one rule keyed by address or route in the
in-memory limiter; any other chain has no lane.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from secure_mw import _observe
from secure_mw._lane import LaneCore, Ticket, keep
from secure_mw.asgi._io import VIEW_KEY, ASGIApp, Message, Receive, Scope, Send
from secure_mw.asgi._layer import Layer, run
from secure_mw.asgi.assertions import _RESET
from secure_mw.asgi.guards import check_redirects
from secure_mw.guards.ratelimit import rate_lines
from secure_mw.http import (
    CLIENT_CERT_KEY,
    RequestView,
    server_of,
)
from secure_mw.http import (
    FORWARDING_HEADERS as FORWARDING,
)
from secure_mw.http import (
    INERT_HEADERS as INERT,
)
from secure_mw.identity import AuthScopes
from secure_mw.tokens.headers import current_assertion

__all__ = ["FORWARDING", "INERT", "Lane"]

_ADMITTED = INERT | FORWARDING | {b"host", b"cookie"}
#: host as sent, host, query, routed path, raw path the rules see, nonce; () when not plain
_Line = tuple[Any, ...]
_STARTS = frozenset({"http.response.start"})
_FORWARDING = tuple(sorted(FORWARDING))


class Lane(LaneCore):
    """One pass for a plain request through ``layers``; every other request is handed to
    ``run(layers, app, …)``, the chain's own loop. Build it with :meth:`for_chain`."""

    def __init__(self, layers: Sequence[Layer], parts: dict[str, Any]) -> None:
        super().__init__(layers, parts)
        issue = parts.get("IdentityHeaderMiddleware")
        self.issue_name = b"" if issue is None else issue.name

    @classmethod
    def for_chain(cls, layers: Sequence[Layer]) -> Lane | None:
        """The lane of these layers, or ``None`` when the chain is not one it can follow."""
        read: list[bytes] = []
        for layer in layers:
            cert = getattr(layer, "cert_header", None)
            if cert is not None:
                read.append(cert.encode("latin-1"))
            read.extend(s.encode("latin-1") for s in getattr(layer, "spellings", ()))
        parts = LaneCore.parts_of(layers, (name for name in read if name in _ADMITTED))
        return None if parts is None else cls(layers, parts)

    def own_entries(self, identity: Any) -> dict[str, Any]:
        return {"user": identity, "auth": AuthScopes.of(identity)}

    async def serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """``app`` behind the layers, for one HTTP request (the chain checked the type)."""
        ticket = self._plain(scope)
        rate = False if ticket is None else self.admit(ticket)
        if rate is False:
            await run(self.layers, app, scope, receive, send, drop_view=True)
            return
        assert ticket is not None
        # From here on the request is ours: what each layer would set, in its order.
        view = ticket.view
        path = ticket.known[3]
        scope.update(ticket.entries)
        policy = self.headers
        nonce = None
        if policy is not None:
            nonce = scope["secure_mw.csp_nonce"] = self.nonce_entry(ticket)
        extra = None if rate is None else rate_lines(rate)
        redirect = self.redirect

        async def wrapped(message: Message) -> None:
            if message["type"] in _STARTS:
                lines = list(message.get("headers", ()))
                if redirect is not None:    # who is there now, as the chain's hook reads it
                    check_redirects(redirect, lines, view, scope.get("secure_mw.identity"))
                if extra is not None:
                    lines.extend(extra)
                if policy is not None:
                    policy.add_to(lines, path=path, https=scope.get("scheme") == "https",
                                  nonce=nonce, drawn=True)
                message["headers"] = lines
            await send(message)

        if self.issue is None:
            await app(scope, receive, wrapped)
            return
        token = None
        kept = self.assertion_of(ticket)
        if kept is not None:
            token = kept[0]
            scope["headers"] = [*scope["headers"], (self.issue_name, kept[1])]
        scope["secure_mw.assertion"] = token
        resets = scope.setdefault(_RESET, [])
        resets.append(current_assertion.set(token))
        try:
            await app(scope, receive, wrapped)
        finally:
            if resets:
                current_assertion.reset(resets.pop())

    def _plain(self, scope: Scope) -> Ticket | None:
        """The ticket of ``scope`` when it is a plain request up to its session and rate
        limit; else None. Nothing here counts, audits or writes."""
        if VIEW_KEY in scope or CLIENT_CERT_KEY in scope or (
                _observe.active and _observe.current.get() is not None):
            return None     # inside an observed stack: the chain reports each decision
        raw_headers = scope.get("headers")
        if raw_headers.__class__ is not list:
            return None
        named = dict(raw_headers)
        if len(named) != len(raw_headers) or not named.keys() <= _ADMITTED:
            return None
        extensions = scope.get("extensions")
        if extensions and (extensions.get("tls") or {}).get("client_cert_chain"):
            return None     # a client certificate: the chain's view reads it
        get = scope.get
        path, client = get("path"), get("client")
        if path.__class__ is not str or not path or (
                client and client[0].__class__ is not str):
            return None     # what the chain's view makes of these is the chain's to say
        line: tuple[Any, ...] = (
            named.get(b"host"), get("method"), get("scheme") or "http", path,
            get("raw_path"), get("query_string") or b"")
        cookie = named.get(b"cookie")
        forwarded = not named.keys().isdisjoint(FORWARDING)
        # Everything a ticket depends on (forwarding headers a trusted proxy did not send,
        # or that change nothing, by their values).
        key = (line, cookie, client[0] if client else None, get("server"),
               get("root_path") or "",
               tuple(named.get(name) for name in _FORWARDING) if forwarded else None)
        try:
            ticket = self.kept_ticket(key)
            if ticket is not None:
                return ticket
            known = self._lines.get(line)
        except TypeError:       # a server's bytearray or list where ASGI says bytes
            return None
        if known is None:
            known = self._line(line)
            keep(self._lines, line, known,
                 sum(len(part) for part in line if isinstance(part, str | bytes)))
        if not known:
            return None
        host_text, host, query, route = known[:4]
        headers = {"host": host_text}
        view = RequestView(
            line[1], line[2], host, line[3], query, headers, str(key[2])
            if client else "", False, b"", None, server_of(get("server")),
            _route=route)
        if cookie is not None:
            text = headers["cookie"] = cookie.decode("latin-1")
            view._cookies = self.cookies_of(text)  # type: ignore[assignment]  # never written
        if forwarded:
            for name in FORWARDING:
                value = named.get(name)
                if value is not None:
                    headers[name.decode("latin-1")] = value.decode("latin-1")
            if self.forwarded(view):
                return None
        ticket = self.ticket_of(view, known, known[4], key[4], path)
        if ticket is not None:
            self.keep_ticket(key, ticket, (*line, cookie, *(key[5] or ())))
        return ticket

    def _line(self, line: tuple[Any, ...]) -> _Line:
        """What :meth:`_plain` keeps of a request line, which depends on nothing else: what
        :meth:`~secure_mw._lane.LaneCore.judge_line` keeps, the raw path the rules see, and
        whether its responses carry a nonce; ``()`` when the line is not plain."""
        host_line, method, scheme, path, raw, query = line
        if not isinstance(host_line, bytes) or not isinstance(path, str) \
                or not isinstance(query, bytes):
            return ()
        target = (raw, True) if isinstance(raw, bytes) else (
            path.encode("utf-8", "surrogatepass"), False)
        judged = self.judge_line(host_line.decode("latin-1"), method, scheme, path,
                                 query=query.decode("latin-1"), paths=(target,),
                                 endpoints=(path,))
        if not judged:
            return ()
        policy = self.headers
        return (*judged, raw.split(b"?", 1)[0] if isinstance(raw, bytes) else None,
                policy is not None and policy.uses_nonce(judged[3]))
