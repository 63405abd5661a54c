"""The real client address, scheme and host behind trusted reverse proxies.

:class:`TrustedProxies` decides, per request, who the client is. The rules:

* **An untrusted peer is the client.** Unless the TCP peer is inside one of the trusted
  networks, ``Forwarded`` and ``X-Forwarded-*`` are ignored entirely: anyone can send them.
* **Which header.** ``X-Forwarded-For`` with ``X-Forwarded-Proto`` / ``X-Forwarded-Host``
  (``header="x-forwarded-for"``, the default, as ``server.forwarded_header``'s), or
  ``Forwarded`` (RFC 7239, ``header="forwarded"``); ``header="auto"`` takes ``Forwarded``
  when present, else the others. Pin the one your proxies set: a proxy that sets only one of
  them usually passes the other through from the client untouched, and "auto" would then
  believe whichever the client forged. (nginx, for instance, sets ``X-Forwarded-For`` and
  forwards a client's ``Forwarded`` as is.)
* **Walk from the right.** Each proxy appends the address of the node it received the
  request from, so the rightmost entry was written by our peer, the one left of it by the
  node that entry names, and so on. Entries naming trusted proxies are skipped; the first
  untrusted address is the client. Everything further left was written by the client itself
  and is never looked at. If every entry is trusted, the leftmost is the client.
* **An unusable entry stops the walk, and the client is unknown** (``ip == ""``, the same
  "no address" the flavours report for a Unix socket). ``unknown``, an obfuscated ``_name``,
  a missing ``for=``, an element that does not parse, an empty list item: such an entry was
  written by a trusted proxy (the walk only ever reads what trusted proxies wrote) that is
  telling us it does not know or will not say who its client was. Nothing beyond it is used,
  so a forged address can never come through; and the address of the proxy that wrote it is
  *not* used either, because trusted proxies usually sit in internal networks that access
  rules privilege, and a stranger must not inherit those privileges.
* **Parsing goes right to left.** ``Forwarded`` is split from the right, quote-aware, and an
  element is parsed only when the walk reaches it, so whatever the client put on the left
  (an unterminated quote, thousands of elements) cannot change how the proxies' part reads.
* **Scheme and host** come from the entries written by trusted proxies that the walk reached,
  preferring the one nearest the client: with ``Forwarded``, the ``proto=`` / ``host=`` of
  the element that named the client (or at which the walk stopped), else of the next element
  to its right, and so on. With ``X-Forwarded-Proto`` / ``-Host``: when they have as many
  items as ``X-Forwarded-For`` (every proxy appended one of each), the item aligned with the
  client, else the nearest one to its right; otherwise only the rightmost item, the one our
  peer vouches for. ``proto`` must be ``http`` or ``https`` and ``host`` a plain
  ``host[:port]`` (no spaces, ``/``, ``@``); anything else is ignored, and without a usable
  value the request's own scheme and host stand.
* **Bounds.** Only the rightmost 8 KiB of a forwarding header is read; what lies further left
  is ignored (and the cut item is unusable). Legitimate chains are far shorter, so only a
  client's padding is lost. Ignoring an overlong header altogether would be worse: the
  client could pad it to make us fall back to the proxy's address or to another header.

IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) are reported, and matched, as IPv4.
The entry ``"unix"`` trusts a peer on a Unix socket (which has no address: a proxy in front
of ``uvicorn --uds`` or ``gunicorn -b unix:``), so its forwarding headers give the client.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from secure_mw.http import RequestView, proxy_client_cert

__all__ = ["MAX_FORWARDING_HEADER", "ClientInfo", "TrustedProxies", "forwarded_client_cert"]

MAX_FORWARDING_HEADER = 8 * 1024
_CACHE_LIMIT = 4096
_CACHEABLE = 1024      # header values longer than this are resolved but not remembered
_MAX_PAIRS = 16        # RFC 7239 defines four parameters; an element with more pairs is junk

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A quoted string with backslash escapes, written "unrolled" so that each character can be
# matched in one way only: no input makes the engine backtrack exponentially.
_QUOTED_STRING = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
# One forwarded-pair (or an empty one) and the ";" after it, or the end of the element.
_PAIR = re.compile(
    r'[ \t]*(?:([!#$%&\'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*'
    r'(?:' + _QUOTED_STRING + r'|([^\s",;\\]*)))?[ \t]*(?:;|\Z)', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_PORT = re.compile(r"[0-9]{1,5}")
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+")
_HOST = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252}[A-Za-z0-9_])?)(?::([0-9]{1,5}))?")
_MAX_NODE = 100        # longer than any address with a port; not parsed, not cached


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who sent the request, as far as the trusted proxies tell.

    ``ip`` is ``""`` when a trusted proxy did not say (see the module documentation), and
    may also be whatever non-address the server reported for the peer (``""`` for a Unix
    socket). ``via_proxy`` is true when the peer is a trusted proxy and its forwarding
    headers were used.
    """

    ip: str
    scheme: str
    host: str
    via_proxy: bool


def _parse_ip(text: str, *, v6_only: bool = False) -> _IPAddress | None:
    try:
        addr = ipaddress.IPv6Address(text) if v6_only else ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _node_address(text: str, *, forwarded: bool) -> _IPAddress | None:
    """The address in one hop: ``192.0.2.1``, ``192.0.2.1:8080``, ``[2001:db8::1]``,
    ``[2001:db8::1]:443`` or a bare IPv6 address; with ``forwarded`` the port may be
    obfuscated (``_p1``). ``unknown``, obfuscated names and anything else: None."""
    if not text:
        return None
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1:]
        if rest and not (rest[0] == ":" and _valid_port(rest[1:], forwarded=forwarded)):
            return None
        return _parse_ip(text[1:end], v6_only=True)
    if text.count(":") == 1:   # IPv4 with a port (a bare IPv6 address has at least two)
        address, _, port = text.partition(":")
        if not _valid_port(port, forwarded=forwarded):
            return None
        addr = _parse_ip(address)
        return addr if isinstance(addr, ipaddress.IPv4Address) else None
    return _parse_ip(text)


def _valid_port(port: str, *, forwarded: bool) -> bool:
    if _PORT.fullmatch(port):
        return int(port) <= 65535
    return forwarded and _OBFUSCATED.fullmatch(port) is not None


def _elements_from_right(value: str, *, cut: bool) -> Iterator[str | None]:
    """The elements of a ``Forwarded`` value, rightmost first, split at commas outside quoted
    strings. An element whose quotes cannot be matched, and the leftmost one when ``cut``
    (the value was truncated), come out as None; nothing left of a None is produced."""
    if '"' not in value:
        items = value.split(",")
        if cut:
            items[0] = ""
        yield from reversed(items)
        return
    end = cursor = len(value)
    while True:
        comma = value.rfind(",", 0, cursor)
        quote = value.rfind('"', 0, cursor)
        if quote > comma:          # the end of a quoted string: jump to its opening quote
            opening = value.rfind('"', 0, quote)
            while opening > 0 and _escaped(value, opening):
                opening = value.rfind('"', 0, opening)
            if opening < 0:
                yield None
                return
            cursor = opening
        elif comma >= 0:
            yield value[comma + 1:end]
            end = cursor = comma
        else:
            yield None if cut else value[:end]
            return


def _escaped(value: str, index: int) -> bool:
    """Whether the character at ``index`` follows an odd number of backslashes."""
    start = index
    while start > 0 and value[start - 1] == "\\":
        start -= 1
    return (index - start) % 2 == 1


def _parse_element(element: str | None) -> dict[str, str] | None:
    """One ``Forwarded`` element as {lowercase parameter: unquoted value}, or None when it
    does not follow RFC 7239 (bad pair, bad quoting, a parameter given twice)."""
    if element is None:
        return None
    params: dict[str, str] = {}
    pos, size = 0, len(element)
    for _ in range(_MAX_PAIRS):
        match = _PAIR.match(element, pos)
        if match is None:
            return None
        name, quoted, token = match.groups()
        if name is not None:
            name = name.lower()
            if name in params:
                return None
            if quoted is None:
                params[name] = token
            elif "\\" in quoted:
                params[name] = _QUOTED_PAIR.sub(r"\1", quoted)
            else:
                params[name] = quoted
        pos = match.end()
        if pos >= size:
            return params
    return None


def _proto(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip(" \t").lower()
    return value if value in ("http", "https") else None


def _host(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip(" \t")
    match = _HOST.fullmatch(value)
    if match is None or (match[1] is not None and int(match[1]) > 65535):
        return None
    return value.lower()


class TrustedProxies:
    """The proxies allowed to tell us who the client is; see the module documentation."""

    __slots__ = ("_cache", "_empty", "_header", "_results", "_unix", "_v4", "_v6")

    def __init__(self, cidrs: Iterable[str], *, header: str = "x-forwarded-for") -> None:
        if header not in ("auto", "forwarded", "x-forwarded-for"):
            raise ValueError(
                f"header must be 'auto', 'forwarded' or 'x-forwarded-for', not {header!r}")
        self._header = header
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        if isinstance(cidrs, str):
            cidrs = [cidrs]
        self._unix = False
        for cidr in cidrs:
            if str(cidr).strip().lower() == "unix":   # a peer on a Unix socket
                self._unix = True
                continue
            try:
                network = ipaddress.ip_network(str(cidr).strip(), strict=False)
            except ValueError:
                raise ValueError(f"trusted proxies: {cidr!r} is not an IP network "
                                 "(write e.g. '10.0.0.0/8', '192.0.2.7' or 'fd00::/8')"
                                 ) from None
            if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
                mapped = network.network_address.ipv4_mapped
                if mapped is not None:   # ::ffff:a.b.c.d/n is the IPv4 network a.b.c.d/(n-96)
                    network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
            networks.append(network)
        self._empty = not networks and not self._unix
        # Per family: (shift, network numbers at that prefix length); membership is one set
        # lookup per distinct prefix length, whatever the number of networks.
        self._v4 = self._table([n for n in networks if n.version == 4], 32)
        self._v6 = self._table([n for n in networks if n.version == 6], 128)
        # raw hop text -> (normalized address or None, trusted), one dict for X-Forwarded-For
        # syntax and one for Forwarded's (which allows obfuscated ports); bounded, cleared
        # when full.
        self._cache: tuple[dict[str, tuple[str | None, bool]], ...] = ({}, {})
        # forwarding header values -> (client, proto, host); the result never depends on the
        # peer once the peer is trusted. Bounded the same way.
        self._results: dict[tuple[str | None, ...], tuple[str, str | None, str | None]] = {}

    @staticmethod
    def _table(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
               bits: int) -> tuple[tuple[int, frozenset[int]], ...]:
        by_length: dict[int, set[int]] = {}
        for network in networks:
            shift = bits - network.prefixlen
            by_length.setdefault(shift, set()).add(int(network.network_address) >> shift)
        return tuple((shift, frozenset(numbers))
                     for shift, numbers in sorted(by_length.items()))

    def _contains(self, addr: _IPAddress) -> bool:
        table = self._v4 if addr.version == 4 else self._v6
        number = int(addr)
        return any((number >> shift) in numbers for shift, numbers in table)

    def _classify(self, text: str, *, forwarded: bool) -> tuple[str | None, bool]:
        """(normalized address or None when ``text`` is no address, whether trusted)."""
        cache = self._cache[forwarded]
        hit = cache.get(text)
        if hit is not None:
            return hit
        if len(text) > _MAX_NODE:
            return None, False
        addr = _node_address(text, forwarded=forwarded)
        result = (None, False) if addr is None else (str(addr), self._contains(addr))
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[text] = result
        return result

    @property
    def trusts_unix_socket(self) -> bool:
        """Whether a peer on a Unix socket (no address) is a trusted proxy (``"unix"``)."""
        return self._unix

    def is_trusted(self, address: str) -> bool:
        """Whether ``address`` (an IP address, IPv4-mapped forms included; ``""`` for a
        Unix-socket peer) is a trusted proxy."""
        if self._empty:
            return False
        if not address:
            return self._unix
        return self._classify(address, forwarded=False)[1]

    def resolve(self, peer: str, headers: Mapping[str, str], *, scheme: str,
                host: str) -> ClientInfo:
        """Who the client is. ``headers`` has lowercase names, repeated headers joined with
        ", " (as :class:`~secure_mw.http.RequestView` builds them); ``scheme`` and ``host``
        are the request's own. Never raises."""
        if self._empty:
            return ClientInfo(_plain_peer(peer), scheme, host, False)
        peer_ip = ""                       # "unix": a proxy on our Unix socket
        if peer or not self._unix:
            address, trusted = self._classify(peer, forwarded=False)
            if not trusted or address is None:
                return ClientInfo(_plain_peer(peer), scheme, host, False)
            peer_ip = address

        forwarded = headers.get("forwarded") if self._header != "x-forwarded-for" else None
        if forwarded is not None and forwarded.strip(" \t"):
            key: tuple[str | None, ...] = (forwarded,)
            found = self._results.get(key)
            if found is None:
                found = self._remember(key, self._walk_forwarded(forwarded))
        elif self._header == "forwarded":
            return ClientInfo(peer_ip, scheme, host, False)
        else:
            xff = headers.get("x-forwarded-for")
            if xff is None or not xff.strip(" \t"):
                return ClientInfo(peer_ip, scheme, host, False)
            xfp, xfh = headers.get("x-forwarded-proto"), headers.get("x-forwarded-host")
            key = (xff, xfp, xfh)
            found = self._results.get(key)
            if found is None:
                found = self._remember(key, self._walk_x_forwarded(xff, xfp, xfh))
        client, proto, forwarded_host = found
        return ClientInfo(client, proto or scheme, forwarded_host or host, True)

    def _remember(self, key: tuple[str | None, ...],
                  found: tuple[str, str | None, str | None]) -> tuple[str, str | None, str | None]:
        if sum(len(part) for part in key if part) <= _CACHEABLE:
            if len(self._results) >= _CACHE_LIMIT:
                self._results.clear()
            self._results[key] = found
        return found

    def _walk_forwarded(self, value: str) -> tuple[str, str | None, str | None]:
        cut = len(value) > MAX_FORWARDING_HEADER
        if cut:
            value = value[-MAX_FORWARDING_HEADER:]
        client = ""
        reached: list[dict[str, str]] = []    # elements written by trusted nodes, right first
        for element in _elements_from_right(value, cut=cut):
            params = _parse_element(element)
            if params is None:
                client = ""
                break
            reached.append(params)
            node = params.get("for")
            ip, trusted = (None, False) if node is None else self._classify(
                node.strip(" \t"), forwarded=True)
            if ip is None:
                client = ""
                break
            client = ip
            if not trusted:
                break
        proto = host = None
        for params in reversed(reached):      # nearest the client first
            if proto is None:
                proto = _proto(params.get("proto"))
            if host is None:
                host = _host(params.get("host"))
        return client, proto, host

    def _walk_x_forwarded(self, xff: str, xfp: str | None,
                          xfh: str | None) -> tuple[str, str | None, str | None]:
        cut = len(xff) > MAX_FORWARDING_HEADER
        hops = (xff[-MAX_FORWARDING_HEADER:] if cut else xff).split(",")
        if cut:
            hops[0] = ""          # the item the cut went through
        client = ""
        reached = len(hops)       # index of the leftmost hop the walk examined
        for index in range(len(hops) - 1, -1, -1):
            reached = index
            ip, trusted = self._classify(hops[index].strip(" \t"), forwarded=False)
            if ip is None:
                client = ""
                break
            client = ip
            if not trusted:
                break
        count = -1 if cut else len(hops)
        return (client, self._aligned(xfp, count, reached, _proto),
                self._aligned(xfh, count, reached, _host))

    @staticmethod
    def _aligned(value: str | None, hops: int, reached: int,
                 check: Callable[[str | None], str | None]) -> str | None:
        """The X-Forwarded-Proto/-Host item for the client (see the module documentation)."""
        if value is None:
            return None
        if len(value) > MAX_FORWARDING_HEADER:
            value = value[-MAX_FORWARDING_HEADER:]
            hops = -1
        items = value.split(",")
        if len(items) != hops:
            return check(items[-1])
        return next((r for r in map(check, items[reached:]) if r is not None), None)


def _plain_peer(peer: str) -> str:
    """The peer as given, except that an IPv4-mapped IPv6 address becomes IPv4."""
    if peer[:7].lower() == "::ffff:":
        addr = _parse_ip(peer)
        if addr is not None:
            return str(addr)
    return peer


def forwarded_client_cert(proxies: TrustedProxies, header: str | None,
                          view: RequestView) -> bytes | None:
    """The client certificate a trusted proxy passed in ``header`` (None from anyone else,
    or when absent or not a certificate)."""
    if not header or not proxies.is_trusted(view.client):
        return None
    return proxy_client_cert(view.headers.get(header))
