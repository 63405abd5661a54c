"""Redis URLs: which topology one describes, and the URL the ``[redis]`` section composes.

No redis-py here (the settings check URLs on a plain install): one server (``redis://``,
``rediss://``, ``unix://``), a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``
and one node's address: the others are discovered) or Sentinel (``redis+sentinel://`` or
``rediss+sentinel://``, the sentinels' ``host:port`` comma-separated, the master's name as
the path, then optionally ``/DB``). Query parameters ``socket_timeout``,
``socket_connect_timeout``, ``max_connections`` and ``sentinel_password`` tune the clients;
the others (``ssl_ca_certs`` ...) go to redis-py as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["Topology", "compose_url"]

_SCHEMES: Final = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster",
                   "redis+sentinel", "rediss+sentinel")
#: Query parameters that tune the clients (the others go to redis-py as they are).
_TUNING: Final = {"socket_timeout": float, "socket_connect_timeout": float,
                  "max_connections": int}


@dataclass(frozen=True)
class Topology:
    """What a Redis URL describes: ``kind`` (``server``, ``cluster`` or ``sentinel``), the
    URL redis-py is given (``plain``: the scheme without ``+cluster``, the tuning parameters
    taken out), the sentinels' ``nodes`` and the ``master``'s name, and the tuning
    ``options``. Never shown: it holds credentials."""

    kind: str
    label: str
    plain: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tls(self) -> bool:
        return self.plain.lower().startswith("rediss://")

    @classmethod
    def parse(cls, url: str) -> Topology:
        if not isinstance(url, str):
            raise TypeError("the Redis URL must be a string")
        try:
            parts = urlsplit(url)
        except ValueError:
            raise ValueError("the Redis URL is malformed") from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError("the Redis URL must start with redis://, rediss:// or unix:// "
                             "(or redis+cluster://, redis+sentinel://: see the [redis] section)")
        options: dict[str, Any] = {}
        kept = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in _TUNING:
                try:
                    number = _TUNING[name](value)
                except ValueError:
                    raise ValueError(f"the Redis URL's {name} is not a number") from None
                if not (number > 0 and math.isfinite(number)):
                    raise ValueError(f"the Redis URL's {name} must be positive")
                options[name] = number
            elif name == "sentinel_password":
                options[name] = value
            else:
                kept.append((name, value))
        base = scheme.partition("+")[0]
        kind = {"cluster": "cluster", "sentinel": "sentinel"}.get(scheme.partition("+")[2],
                                                                 "server")
        if kind == "sentinel":
            return cls._sentinel(parts, base, kept, options)
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the Redis URL is malformed (bad host or port)") from None
        head = url.partition("?")[0].partition("#")[0]
        plain = base + head[len(scheme):] + (f"?{urlencode(kept)}" if kept else "")
        if scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// Redis URL needs a socket path")
            return cls("server", f"unix:{parts.path}", plain, options=options)
        host = parts.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        label = f"{host}:{port or 6379}"
        if kind == "cluster":
            if parts.path not in ("", "/", "/0"):
                raise ValueError("a Redis Cluster has only database 0")
            return cls("cluster", f"cluster {label}", plain, options=options)
        return cls("server", label, plain, options=options)

    @property
    def extra(self) -> dict[str, str]:
        """The query parameters redis-py is given as they are (``ssl_ca_certs`` ...)."""
        return dict(parse_qsl(urlsplit(self.plain).query))

    @classmethod
    def _sentinel(cls, parts: SplitResult, base: str, kept: list[tuple[str, str]],
                  options: dict[str, Any]) -> Topology:
        userinfo, _, hosts = parts.netloc.rpartition("@")
        nodes = []
        for item in hosts.split(","):
            host, _, port_text = item.rpartition(":")
            if not host:
                host, port_text = item, "26379"
            host = host.strip("[]")
            if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError("a Sentinel node must be host:port")
            nodes.append((host, int(port_text)))
        pieces = [p for p in parts.path.split("/") if p]
        if not pieces or len(pieces) > 2 or (len(pieces) == 2 and not pieces[1].isdigit()):
            raise ValueError("a Sentinel URL names the master: redis+sentinel://HOST:PORT/NAME "
                             "(then optionally /DB)")
        master = unquote(pieces[0])
        netloc = f"{userinfo}@localhost" if userinfo else "localhost"
        path = f"/{pieces[1]}" if len(pieces) == 2 else "/0"
        plain = urlunsplit((base, netloc, path, urlencode(kept), ""))
        return cls("sentinel", f"sentinel {master}", plain, tuple(nodes), master,
                   options=options)


def compose_url(url: str | None, *, cluster: bool = False, sentinel_master: str = "",
                sentinel_nodes: Sequence[str] = (), sentinel_password: str = "",
                socket_timeout: float | None = None,
                socket_connect_timeout: float | None = None,
                max_connections: int | None = None) -> str:
    """One URL for what the ``[redis]`` section says (the stores take URLs)."""
    query: dict[str, str] = {}
    for name, value in (("socket_timeout", socket_timeout),
                        ("socket_connect_timeout", socket_connect_timeout),
                        ("max_connections", max_connections)):
        if value is not None:
            query[name] = repr(value) if isinstance(value, float) else str(value)
    if sentinel_master:
        parts = urlsplit(url or "redis://")
        userinfo = parts.netloc.rpartition("@")[0]
        db = parts.path.strip("/") or "0"
        if sentinel_password:
            query["sentinel_password"] = sentinel_password
        netloc = ",".join(sentinel_nodes)
        if userinfo:
            netloc = f"{userinfo}@{netloc}"
        composed = urlunsplit((f"{parts.scheme or 'redis'}+sentinel", netloc,
                               f"/{quote(sentinel_master, safe='')}/{db}", "", ""))
    else:
        if not url:
            raise ValueError("a Redis URL is needed")
        parts = urlsplit(url)
        scheme = f"{parts.scheme}+cluster" if cluster else parts.scheme
        composed = urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))
    if query:
        composed += ("&" if "?" in composed else "?") + urlencode(query)
    return composed



