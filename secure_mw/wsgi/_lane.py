"""The WSGI lane: the chain ``protect()`` builds, decided in one pass for a plain request
(the twin of :mod:`secure_mw.asgi._lane`; both decide with :class:`~secure_mw._lane.LaneCore`).

A request is plain when:

- every key of its environ is one :data:`ADMITTED` holds: the CGI and WSGI keys a server
  sets, a few servers' own bookkeeping (``gunicorn.socket``, ``werkzeug.socket``, …), and
  the ``HTTP_`` keys of ``Host``, ``Cookie``, the headers no core reads on the way to an
  allowed request (:data:`~secure_mw.http.INERT_HEADERS`) and the forwarding headers when
  no trusted proxy sent them. Anything else (an ``Authorization`` or identity header, a
  client certificate, a key a layer or a stack around it set) goes to the chain;
- it has a ``Host`` header, a method the lane knows, an ``http``/``https`` scheme (not
  ``https`` on a TLS socket gunicorn hands over: its certificate is the chain's to read;
  ``https`` behind a proxy gunicorn trusts is on a plain socket), and
  no stack around it observes the request (``[metrics]``);
- the Host is allowed and the path is UTF-8, as ``PATH_INFO`` and as the target the server
  kept (``RAW_URI``/``REQUEST_URI``); it is not for the public keys or the health answer,
  and its query names no redirect parameter;
- its session is warm, the rules have let the same host, method, path and subject in
  before with the path unchanged, and its rate limit lets it pass.

Anything else goes to the :class:`~secure_mw.wsgi._layer.Chain`, before the lane has
changed anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from secure_mw import _observe
from secure_mw._lane import LaneCore, Ticket, keep
from secure_mw.authz.paths import route_path
from secure_mw.guards.ratelimit import rate_headers
from secure_mw.http import FORWARDING_HEADERS, INERT_HEADERS, RequestView, environ_path
from secure_mw.tokens.headers import current_assertion
from secure_mw.wsgi._io import Environ, ExcInfo, StartResponse, WSGIApp
from secure_mw.wsgi._layer import Headers, Layer, run
from secure_mw.wsgi.assertions import _RESET, environ_key
from secure_mw.wsgi.guards import check_redirects, path_bytes, rules_path

__all__ = ["ADMITTED", "Lane"]


def _keys(names: Iterable[bytes]) -> frozenset[str]:
    return frozenset(environ_key(name.decode("latin-1")) for name in names)


#: The ``HTTP_`` keys of the forwarding headers.
FORWARDING = {environ_key(name.decode("latin-1")): name.decode("latin-1")
              for name in FORWARDING_HEADERS}
_FORWARDING = tuple(sorted(FORWARDING))
#: The environ keys a plain request may have.
ADMITTED = frozenset({
    # PEP 3333's CGI keys and the request target the servers keep
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
    "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "SERVER_SOFTWARE",
    "GATEWAY_INTERFACE", "REMOTE_ADDR", "REMOTE_HOST", "REMOTE_PORT", "REQUEST_URI",
    "RAW_URI",
    # PEP 3333's wsgi.* keys
    "wsgi.version", "wsgi.url_scheme", "wsgi.input", "wsgi.errors", "wsgi.multithread",
    "wsgi.multiprocess", "wsgi.run_once", "wsgi.file_wrapper", "wsgi.input_terminated",
    "wsgi.early_hints",
    # servers' own bookkeeping, which no core reads
    "gunicorn.socket", "werkzeug.socket", "waitress.client_disconnected",
    "uwsgi.version", "uwsgi.node", "uwsgi.core",
    "HTTP_HOST", "HTTP_COOKIE",
}) | _keys(INERT_HEADERS) | FORWARDING.keys()


class Lane(LaneCore):
    """One pass for a plain request through ``layers``; every other request is handed to
    ``run(layers, app, …)``, the chain's own loop. Build it with :meth:`for_chain`."""

    def __init__(self, layers: Sequence[Layer], parts: dict[str, Any]) -> None:
        super().__init__(layers, parts)
        issue = parts.get("IdentityHeaderMiddleware")
        self.issue_key = "" if issue is None else issue.key

    @classmethod
    def for_chain(cls, layers: Sequence[Layer]) -> Lane | None:
        """The lane of these layers, or ``None`` when the chain is not one it can follow."""
        read: list[str] = []
        for layer in layers:
            cert = getattr(layer, "cert_header", None)
            if cert is not None:
                read.append(environ_key(cert))
            if type(layer).__name__ == "IdentityHeaderMiddleware":
                read.append(layer.key)  # type: ignore[attr-defined]
        parts = LaneCore.parts_of(layers, (key for key in read if key in ADMITTED))
        return None if parts is None else cls(layers, parts)

    def serve(self, app: WSGIApp, environ: Environ, start_response: StartResponse
              ) -> Iterable[bytes]:
        """``app`` behind the layers, for one request."""
        ticket = self._plain(environ)
        rate = False if ticket is None else self.admit(ticket)
        if rate is False:
            return run(self.layers, app, environ, start_response, drop_view=True)
        assert ticket is not None
        # From here on the request is ours: what each layer would set, in its order.
        view = ticket.view
        headers_path = ticket.known[7]
        environ.update(ticket.entries)
        policy = self.headers
        nonce = None
        if policy is not None:
            nonce = environ["secure_mw.csp_nonce"] = self.nonce_entry(ticket)
        extra = None if rate is None else rate_headers(rate)
        redirect = self.redirect

        def wrapped(status: str, headers: Headers, exc_info: ExcInfo | None = None
                    ) -> Callable[[bytes], object]:
            lines = list(headers)
            if redirect is not None:    # who is there now, as the chain's hook reads it
                check_redirects(redirect, lines, view, environ.get("secure_mw.identity"))
            if extra is not None:
                lines.extend(extra)
            if policy is not None:
                policy.add_to_text(lines, path=headers_path,
                                   https=environ.get("wsgi.url_scheme") == "https",
                                   nonce=nonce, drawn=True)
            return start_response(status, lines, exc_info)

        if self.issue is None:
            return app(environ, wrapped)
        token = None
        kept = self.assertion_of(ticket)
        if kept is not None:
            token = environ[self.issue_key] = kept[0]
        environ["secure_mw.assertion"] = token
        resets = environ.setdefault(_RESET, [])
        resets.append(current_assertion.set(token))
        try:
            return app(environ, wrapped)
        finally:
            if resets:
                current_assertion.reset(resets.pop())

    def _plain(self, environ: Environ) -> Ticket | None:
        """The ticket of ``environ`` when it is a plain request up to its session and rate
        limit; else None. Nothing here counts, audits or writes."""
        if not environ.keys() <= ADMITTED or (
                _observe.active and _observe.current.get() is not None):
            return None
        get = environ.get
        scheme = get("wsgi.url_scheme", "http")
        if scheme == "https" and hasattr(get("gunicorn.socket"), "getpeercert"):
            return None     # a TLS socket: the chain's view reads its client certificate
        line: tuple[Any, ...] = (
            get("HTTP_HOST"), get("REQUEST_METHOD"), scheme, get("SCRIPT_NAME", ""),
            get("PATH_INFO", ""), get("RAW_URI") or get("REQUEST_URI"),
            get("QUERY_STRING", ""))
        cookie = get("HTTP_COOKIE")
        forwarded = not environ.keys().isdisjoint(FORWARDING)
        # Everything a ticket depends on (forwarding headers a trusted proxy did not send,
        # or that change nothing, by their values; the view reads the listening port from
        # a server's socket: one ticket each).
        key = (line, cookie, get("REMOTE_ADDR", ""), get("SERVER_PORT", ""),
               get("gunicorn.socket"),
               tuple(get(name) for name in _FORWARDING) if forwarded else None)
        try:
            ticket = self.kept_ticket(key)
            if ticket is not None:
                return ticket
            known = self._lines.get(line)
        except TypeError:       # something unhashable where PEP 3333 says str
            return None
        if known is None:
            known = self._line(line)
            keep(self._lines, line, known,
                 sum(len(part) for part in line if isinstance(part, str)))
        if not known:
            return None
        host_text, host, query, route, path = known[:5]
        headers = {"host": host_text}
        view = RequestView(line[1], scheme, host, path, query, headers,
                           str(key[2]), False, b"", None, str(key[3]), _route=route,
                           _socket=key[4])
        if cookie is not None:
            headers["cookie"] = cookie
            view._cookies = self.cookies_of(cookie)  # type: ignore[assignment]  # never written
        if forwarded:
            for name_key, name in FORWARDING.items():
                value = get(name_key)
                if value is not None:
                    headers[name] = value
            if self.forwarded(view):
                return None
        ticket = self.ticket_of(view, known, known[5], known[6], path)
        if ticket is not None:
            self.keep_ticket(key, ticket, (*line, cookie, *(key[5] or ())))
        return ticket

    def _line(self, line: tuple[Any, ...]) -> tuple[Any, ...]:
        """What :meth:`_plain` keeps of a request line: what
        :meth:`~secure_mw._lane.LaneCore.judge_line` keeps, the path as the view decodes
        it, the raw path and root the rules see, the path the security headers see and
        whether its responses carry a nonce; ``()`` when the line is not plain."""
        host, method, scheme, script, path_info, target, query = line
        if not all(isinstance(part, str) for part in (host, method, scheme, script,
                                                      path_info, query)) \
                or not isinstance(target, str | None):
            return ()
        joined = script + path_info
        path = environ_path(joined) or "/"          # as the chain's view decodes it
        paths = [(path_bytes(joined), False)]       # and as its host guard checks it
        if target is not None:
            paths.append((target.encode("latin-1", "replace"), True))
        judged = self.judge_line(host, method, scheme, path, query=query, paths=paths,
                                 endpoints=(path_info, path))
        if not judged:
            return ()
        raw = rules_path(target, joined)
        policy = self.headers
        headers_path = route_path(joined or "/")
        return (*judged, path, raw, script.rstrip("/"), headers_path,
                policy is not None and policy.uses_nonce(headers_path))
