"""The Host allow-list: which host names this application answers for.

:class:`HostPolicy` is ``server.allowed_hosts`` compiled once (exact hosts, ``*.example.com``
patterns, optional ``:port``; ``"*"`` for any host), defaulting to the host of
``server.external_url`` and, when neither is set, to the loopback names only.
:class:`HostGuardLayer` is the decision the outermost middleware of ``protect()`` makes for
every request and WebSocket handshake, before any other layer runs: the effective host (the
``Host`` header, or the forwarded host a trusted proxy vouches for) must be listed, and the
path must percent-decode to UTF-8. :func:`public_base` is the origin secure_mw writes into
assertions and login URLs: ``server.external_url``, or the request's own origin only when its
host is listed. The long explanation is in docs/guards.md.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from secure_mw.audit import AuditLogger, audit_logger
from secure_mw.authz.paths import PathRefused, check_utf8_path
from secure_mw.guards.clientaddr import TrustedProxies
from secure_mw.guards.redirect import _parse_authority, _parse_entry
from secure_mw.http import Reply, RequestView, html_reply, json_reply
from secure_mw.settings import ServerSettings, Settings

__all__ = ["LOOPBACK_HOSTS", "HostGuardLayer", "HostPolicy", "public_base", "public_host"]

log = logging.getLogger("secure_mw.guards")

#: What is allowed when neither ``server.allowed_hosts`` nor ``server.external_url`` is set.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_MAX_LOGGED_HOST = 100
_CACHE_LIMIT = 1024

# host -> ports; None in the set stands for "any port".
_Table = dict[str, frozenset[int | None]]


def _port_ok(ports: frozenset[int | None], port: int | None) -> bool:
    return None in ports or port in ports


class HostPolicy:
    """A compiled Host allow-list; :meth:`allows` never raises.

    An entry without a port matches the host on any port (as Django's ``ALLOWED_HOSTS`` and
    Starlette's ``TrustedHostMiddleware`` do); ``host:port`` matches that port only.
    ``*.example.com`` matches subdomains at any depth, not ``example.com`` itself. ``"*"``
    matches every host. Invalid entries raise :class:`ValueError` naming the entry.
    """

    __slots__ = ("_cache", "_exact", "_fixed_host", "_wildcards", "any_host", "entries",
                 "external_url", "source")

    def __init__(self, allowed_hosts: Iterable[str], *, source: str = "allowed_hosts",
                 external_url: str | None = None) -> None:
        """``external_url``: the application's public URL, which :meth:`public_host` and
        :meth:`public_base` prefer to anything a request says."""
        entries = (allowed_hosts,) if isinstance(allowed_hosts, str) else tuple(allowed_hosts)
        exact: dict[str, set[int | None]] = {}
        wildcards: dict[str, set[int | None]] = {}
        any_host = False
        for entry in entries:
            if entry == "*":
                any_host = True
                continue
            wildcard, host, port = _parse_entry(entry)
            (wildcards if wildcard else exact).setdefault(host, set()).add(port)
        self.entries = entries
        self.source = source
        self.any_host = any_host
        self._exact: _Table = {h: frozenset(p) for h, p in exact.items()}
        self._wildcards: _Table = {h: frozenset(p) for h, p in wildcards.items()}
        self._cache: dict[str, bool] = {}
        self.external_url = external_url
        fixed = _url_host(external_url) if external_url else None
        self._fixed_host = fixed.lower() if fixed else None

    @classmethod
    def from_settings(cls, server: ServerSettings) -> HostPolicy:
        """From :class:`~secure_mw.settings.ServerSettings`: ``allowed_hosts``, else the host
        of ``external_url``, else :data:`LOOPBACK_HOSTS`."""
        return _policy_for(tuple(server.allowed_hosts), server.external_url)

    def __repr__(self) -> str:
        return f"HostPolicy({list(self.entries)!r}, source={self.source!r})"

    @property
    def loopback_only(self) -> bool:
        return self.source == "loopback"

    def public_host(self, view: RequestView) -> str | None:
        """The host name (no port) that names this application in what secure_mw signs
        (an assertion's ``iss`` and ``aud``): the host of ``external_url``, else the
        request's host when it is listed, else None."""
        if self._fixed_host is not None:
            return self._fixed_host
        return _strip_port(view.host) if self.allows(view.host) else None

    def public_base(self, view: RequestView) -> str | None:
        """The base of secure_mw's own absolute URLs (the OpenID redirect URI, the return
        after logout): ``external_url``, else the request's origin when its host is listed,
        else None."""
        if self.external_url:
            return self.external_url
        return view.origin if self.allows(view.host) else None

    def allows(self, host: str) -> bool:
        """Whether ``host`` (a ``Host`` header value: ``name[:port]``) is listed."""
        hit = self._cache.get(host)
        if hit is not None:
            return hit
        verdict = self._judge(host)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[host] = verdict
        return verdict

    def _judge(self, host: object) -> bool:
        if not isinstance(host, str) or not host or not host.isascii() or len(host) > 300:
            return False
        try:
            name, port = _parse_authority(host.lower())
        except ValueError:
            return False
        if self.any_host:
            return True
        ports = self._exact.get(name)
        if ports is not None and _port_ok(ports, port):
            return True
        dot = name.find(".")
        while dot > 0 and self._wildcards:
            ports = self._wildcards.get(name[dot + 1:])
            if ports is not None and _port_ok(ports, port):
                return True
            dot = name.find(".", dot + 1)
        return False


@functools.lru_cache(maxsize=16)
def _policy_for(allowed: tuple[str, ...], external_url: str | None) -> HostPolicy:
    if allowed:
        return HostPolicy(allowed, source="allowed_hosts", external_url=external_url)
    if external_url:
        host = _url_host(external_url)
        if host:
            return HostPolicy([host], source="external_url", external_url=external_url)
    return HostPolicy(LOOPBACK_HOSTS, source="loopback", external_url=external_url)


def _url_host(url: str) -> str | None:
    """The host of ``url`` as an allow-list entry (brackets kept for IPv6), or None."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return None
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        return host[: host.find("]") + 1] or None
    return host.partition(":")[0] or None


def check_entries(entries: list[str]) -> str | None:
    """What is wrong with a ``server.allowed_hosts`` list (every bad entry), or None."""
    problems = []
    for entry in entries:
        try:
            HostPolicy([entry])
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    if problems:
        return "; ".join(problems) + " (entries are host names: 'app.example.com', " \
            "'*.example.com', 'app.example.com:8443', or '*' for any host)"
    return None


def describe(server: ServerSettings) -> str:
    """One summary line for ``secure-mw check-config`` (with a warning where one is due)."""
    policy = HostPolicy.from_settings(server)
    listed = ", ".join(policy.entries)
    if policy.any_host:
        return (f"allowed hosts   : {listed} -- WARNING: any Host is answered; list the "
                "public host names in server.allowed_hosts")
    if policy.loopback_only:
        return (f"allowed hosts   : {listed} only -- requests for any other host get 400; "
                "set server.allowed_hosts or server.external_url")
    origin = "" if policy.source == "allowed_hosts" else " (the host of server.external_url)"
    return f"allowed hosts   : {listed}{origin}"


def public_host(server: ServerSettings, view: RequestView) -> str | None:
    """:meth:`HostPolicy.public_host` for the policy of ``server``."""
    return HostPolicy.from_settings(server).public_host(view)


def public_base(server: ServerSettings, view: RequestView) -> str | None:
    """:meth:`HostPolicy.public_base` for the policy of ``server``."""
    return HostPolicy.from_settings(server).public_base(view)


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


class HostGuardLayer:
    """The checks every request passes before any other layer: its host is allowed and its
    path decodes to UTF-8. Refusals are 400 (HTML for a browser navigation, JSON otherwise)
    with a ``host_refused`` or ``path_refused`` audit event."""

    def __init__(self, policy: HostPolicy, *, trusted_proxies: TrustedProxies | None = None,
                 audit: AuditLogger | None = None) -> None:
        self.policy = policy
        self.proxies = trusted_proxies if trusted_proxies is not None else TrustedProxies(())
        self.audit = audit or audit_logger()
        if policy.loopback_only:
            _warn_once("neither server.allowed_hosts nor server.external_url is set: only "
                       "requests for localhost, 127.0.0.1 and [::1] are answered, any other "
                       "Host gets 400 (list your host names in server.allowed_hosts)")

    @classmethod
    def from_settings(cls, settings: Settings, *, trusted_proxies: TrustedProxies | None = None,
                      audit: AuditLogger | None = None) -> HostGuardLayer:
        server = settings.server
        if trusted_proxies is None:
            trusted_proxies = TrustedProxies(server.trusted_proxies,
                                             header=server.forwarded_header)
        return cls(HostPolicy.from_settings(server), trusted_proxies=trusted_proxies,
                   audit=audit)

    @classmethod
    def build(cls, *, settings: Settings | None = None,
              allowed_hosts: Iterable[str] | None = None,
              trusted_proxies: TrustedProxies | Iterable[str] | None = None,
              audit: AuditLogger | None = None) -> HostGuardLayer:
        """The layer the host-guard middlewares of both flavours build from their keyword
        arguments: ``allowed_hosts`` when given, else ``settings``."""
        proxies = trusted_proxies if isinstance(trusted_proxies, TrustedProxies | None) \
            else TrustedProxies(trusted_proxies)
        if allowed_hosts is not None:
            return cls(HostPolicy(allowed_hosts), trusted_proxies=proxies, audit=audit)
        if settings is not None:
            return cls.from_settings(settings, trusted_proxies=proxies, audit=audit)
        raise TypeError("give settings, allowed_hosts or layer")

    def effective_host(self, view: RequestView) -> str:
        """The host the later layers and the app will see: a trusted proxy's forwarded host
        when it sent one, else the request's own."""
        if not view.client or not self.proxies.is_trusted(view.client):
            return view.host
        return self.proxies.resolve(view.client, view.headers, scheme=view.scheme,
                                    host=view.host).host

    def check(self, view: RequestView, path: bytes | None, *, encoded: bool) -> Reply | None:
        """``None`` to go on, or the 400 reply. ``path``: the request path as bytes, still
        percent-encoded (``encoded``: ASGI ``raw_path``) or already decoded (WSGI
        ``PATH_INFO`` as latin-1 bytes); ``None`` when the server gives neither."""
        return self.judge(view, path, encoded=encoded)[0]

    def judge(self, view: RequestView, path: bytes | None, *, encoded: bool
              ) -> tuple[Reply | None, str]:
        """:meth:`check`, and the host it judged (:meth:`effective_host`): a middleware
        passes a request on with that host in its ``Host`` header, so what was judged is
        what the app sees."""
        host = self.effective_host(view)
        return self._judge(view, host, path, encoded=encoded), host

    def _judge(self, view: RequestView, host: str, path: bytes | None, *, encoded: bool
               ) -> Reply | None:
        if not self.policy.allows(host):
            self._event("host_refused", view, host, "host not in server.allowed_hosts")
            if view.wants_html:
                return html_reply(400, "Bad request",
                                  "This site does not answer for that host name.")
            return json_reply(400, {"error": "host_not_allowed"})
        return None if path is None else self.path_refusal(view, host, path, encoded=encoded)

    def path_refusal(self, view: RequestView, host: str, path: bytes, *, encoded: bool
                     ) -> Reply | None:
        """The path half of :meth:`judge`, for a request whose ``host`` passed already (a
        WSGI server's request target as sent, after its decoded ``PATH_INFO``)."""
        try:
            check_utf8_path(path, encoded=encoded)
        except PathRefused as exc:
            self._event("path_refused", view, host, exc.reason)
            if view.wants_html:
                return html_reply(400, "Bad request",
                                  "This address is not one this site serves.")
            return json_reply(400, {"error": "bad_path"})
        return None

    def _event(self, name: str, view: RequestView, host: str, reason: str) -> None:
        shown = host if len(host) <= _MAX_LOGGED_HOST else host[:_MAX_LOGGED_HOST] + "…"
        self.audit.event(name, remote_ip=view.client, method=view.method, host=shown,
                         path=view.path[:_MAX_LOGGED_HOST * 4], reason=reason)
