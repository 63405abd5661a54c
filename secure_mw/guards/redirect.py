"""Open-redirect guard: is a ``next=`` / ``return_to=`` URL safe to redirect the browser to?

::

    policy = RedirectPolicy(["app.example.com", "*.example.com", "admin.example.com:8443"])
    policy.is_safe("/account?tab=keys")                  # True: stays on the current host
    policy.is_safe("https://eu.example.com/x")           # True: a listed subdomain pattern
    policy.is_safe("https://app.example.com@evil.com")   # False: user info
    policy.normalize("HTTPS://App.Example.com:443/a/../b")  # 'https://app.example.com/b'
    is_safe_redirect(url, ["app.example.com"], require_https=True)  # cached policy

The string is judged the way a browser would read it (the WHATWG URL parser), and every
construct on which browsers and server-side parsers disagree is refused rather than
interpreted. A URL is safe when it is:

* a relative reference that stays on the current host: ``/a/b?c#d``, ``a/b``, ``?q``, ``#f``
  (never ``///host``, which browsers read as another host); or
* an absolute ``http`` / ``https`` URL (``https`` only with ``require_https``; relative
  references stay safe) written ``scheme://host[:port]...``, whose host and port match the
  allow-list; or
* a scheme-relative ``//host[:port]...`` whose host is on the allow-list (not with
  ``require_https``: the browser keeps the current page's scheme, which may be http). Its
  scheme is unknown, so ``//host`` matches entries without a port and ``//host:8443``
  only an entry with that very port.

Refused everywhere: any control, whitespace or invisible (format) character, backslashes,
non-ASCII characters that compatibility-normalize into ASCII punctuation (U+FF0F, U+FF20),
malformed percent escapes, percent-encoded control characters and backslashes, and
percent-encoded ``/`` outside the query (each checked again through up to eight rounds
of decoding, so ``%252F`` counts as ``%2F``). Refused in the authority: user info (``@``),
any ``%``, an empty host or port, a trailing dot, numeric hosts other than dotted-decimal
IPv4, and non-ASCII hosts that IDNA 2003 (the stdlib codec) and the browsers' UTS #46
would map differently (``ß``, ``ς``). Refused in the path: dot segments that resolve to a
path starting with ``//``, which some later hop could read as a scheme-relative URL.

:class:`RedirectPolicy` checks its entries when it is built (a :class:`ValueError` naming the
entry: configuration time); :meth:`RedirectPolicy.is_safe` and :func:`is_safe_redirect`
never raise, whatever they are given (an invalid entry given to :func:`is_safe_redirect`
matches nothing and is logged once).

``allowed_hosts`` entries are exact hosts — ``app.example.com``, ``app.example.com:8443``,
``[::1]:8080``, ``bücher.example`` (compared in punycode) — and ``*.example.com``
patterns, which match subdomains at any depth but not ``example.com`` itself (list both to
allow both; a pattern over a public suffix such as ``*.co.uk`` is refused). An entry
without a port matches the scheme's default port only (``https://h`` and ``https://h:443``);
an entry with a port matches that port only.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

__all__ = ["DEFAULT_MAX_LENGTH", "RedirectPolicy", "is_safe_redirect"]

DEFAULT_MAX_LENGTH = 2048

log = logging.getLogger("secure_mw.guards")

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Rejected before anything is parsed: C0 controls, space, DEL and the backslash.
_BAD_ASCII = re.compile(r"[\x00-\x20\x7f\\]")
# Up to the first ':' that comes before any '/', '?' or '#': a scheme, when present.
_SCHEME_PREFIX = re.compile(r"[^:/?#]*:")
_AUTHORITY_END = re.compile(r"[/?#]")
# Lower-case ASCII host names (after IDNA): labels of 1-63 characters, no trailing dot.
_HOST = re.compile(r"(?:[a-z0-9_\-]{1,63}\.)*[a-z0-9_\-]{1,63}")
# The WHATWG parser reads a host whose last label is numeric as an IPv4 address.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
# A '%' that does not start an escape; escapes of controls and of the backslash;
# escapes of '/'. The (?:25)* prefix catches one more level of encoding in one go.
_PCT_MALFORMED = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PCT_FORBIDDEN = re.compile(r"%(?:25)*(?:[01][0-9A-Fa-f]|7[Ff]|5[Cc])")
_PCT_SLASH = re.compile(r"%(?:25)*2[Ff]")
_DECODED_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_MAX_DECODE_ROUNDS = 8
# Characters whose IDNA 2003 mapping (stdlib codec) differs from the UTS #46 processing
# that browsers apply: sharp s and final sigma (ZWJ / ZWNJ are refused as format chars).
_IDNA_DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")
# ASCII characters that a browser percent-encodes in each component (besides controls,
# space and non-ASCII, which are refused or always encoded).
_PATH_ENCODE = '"<>`{}'
_QUERY_ENCODE = "\"<>'"
_FRAGMENT_ENCODE = '"<>`'
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_PATH_SAFE = "".join(c for c in _PRINTABLE if c not in _PATH_ENCODE)
_QUERY_SAFE = "".join(c for c in _PRINTABLE if c not in _QUERY_ENCODE)
_FRAGMENT_SAFE = "".join(c for c in _PRINTABLE if c not in _FRAGMENT_ENCODE)

# (scheme, host, port, path, query, fragment); scheme and host are None when relative.
_Parts = tuple[str | None, str | None, int | None, str, str | None, str | None]


class RedirectPolicy:
    """A compiled allow-list; :meth:`is_safe` and :meth:`normalize` never raise."""

    __slots__ = ("_exact", "_wildcards", "max_length", "require_https")

    def __init__(
        self,
        allowed_hosts: Iterable[str],
        *,
        require_https: bool = False,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, not {max_length!r}")
        self.require_https = bool(require_https)
        self.max_length = max_length
        # host -> ports; None stands for "the scheme's default port".
        exact: dict[str, set[int | None]] = {}
        wildcards: dict[str, set[int | None]] = {}
        entries = (allowed_hosts,) if isinstance(allowed_hosts, str) else allowed_hosts
        for entry in entries:
            wildcard, host, port = _parse_entry(entry)
            (wildcards if wildcard else exact).setdefault(host, set()).add(port)
        self._exact = {host: frozenset(ports) for host, ports in exact.items()}
        self._wildcards = {host: frozenset(ports) for host, ports in wildcards.items()}

    def __repr__(self) -> str:
        hosts = sorted(self._exact) + sorted("*." + base for base in self._wildcards)
        return f"RedirectPolicy({hosts!r}, require_https={self.require_https})"

    def is_safe(self, url: str) -> bool:
        """True when redirecting a browser to ``url`` keeps it on an allowed host."""
        return self._parse(url) is not None

    def normalize(self, url: str) -> str | None:
        """``url`` as a browser would resolve it — lower-case scheme and host, punycode, no
        default port, dot segments removed from absolute paths, non-ASCII and unsafe ASCII
        percent-encoded — or None when it is not safe. Relative references stay relative."""
        parts = self._parse(url)
        if parts is None:
            return None
        scheme, host, port, path, query, fragment = parts
        if path.startswith("/") or host is not None:
            path = _remove_dot_segments(path) if path else "/"
        out = _encode(path, _PATH_ENCODE, _PATH_SAFE)
        if query is not None:
            out += "?" + _encode(query, _QUERY_ENCODE, _QUERY_SAFE)
        if fragment is not None:
            out += "#" + _encode(fragment, _FRAGMENT_ENCODE, _FRAGMENT_SAFE)
        if host is None:
            return out
        if scheme is None:       # scheme-relative: the port stays as written
            return f"//{host if port is None else f'{host}:{port}'}{out}"
        authority = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
        return f"{scheme}://{authority}{out}"

    def _parse(self, url: object) -> _Parts | None:
        if not isinstance(url, str) or not url or len(url) > self.max_length:
            return None
        if _BAD_ASCII.search(url) or (not url.isascii() and not _clean_unicode(url)):
            return None
        prefix = _SCHEME_PREFIX.match(url)
        scheme: str | None
        host: str | None
        port: int | None
        if prefix is None and url.startswith("//"):
            # Scheme-relative: another host, unless it is an allowed one. Never with
            # require_https (the current page may be http), never "///host".
            if self.require_https or url.startswith("///"):
                return None
            end = _AUTHORITY_END.search(url, 2)
            cut = len(url) if end is None else end.start()
            try:
                host, port = _parse_authority(url[2:cut])
            except ValueError:
                return None
            if not self._allowed_relative(host, port):
                return None
            scheme = None
            rest = url[cut:]
        elif prefix is None:
            scheme = host = port = None
            rest = url
        else:
            scheme = prefix.group()[:-1].lower()
            if scheme != "https" and (scheme != "http" or self.require_https):
                return None  # also refuses "a:b" and ":b", which some parsers read as paths
            rest = url[prefix.end() :]
            # "https:host", "https:/host" and "https:///host" all reach "host" in a browser.
            if not rest.startswith("//") or rest.startswith("///"):
                return None
            end = _AUTHORITY_END.search(rest, 2)
            cut = len(rest) if end is None else end.start()
            try:
                host, port = _parse_authority(rest[2:cut])
            except ValueError:
                return None
            if not self._allowed(host, port, _DEFAULT_PORTS[scheme]):
                return None
            rest = rest[cut:]
        before_fragment, hash_mark, fragment_text = rest.partition("#")
        path, question_mark, query_text = before_fragment.partition("?")
        query = query_text if question_mark else None
        fragment = fragment_text if hash_mark else None
        if "%" in rest and not (
            _escapes_ok(path, allow_slash=False)
            and (query is None or _escapes_ok(query, allow_slash=True))
            and (fragment is None or _escapes_ok(fragment, allow_slash=False))
        ):
            return None
        # Only an empty segment ('//') can make the resolved path start with '//'. A
        # path-relative reference is resolved against '/': no base segment for '..' to eat.
        if "//" in path and _remove_dot_segments(
            path if path.startswith("/") else "/" + path
        ).startswith("//"):
            return None
        return scheme, host, port, path, query, fragment

    def _allowed_relative(self, host: str, port: int | None) -> bool:
        """For ``//host[:port]``: the scheme, hence the default port, is the page's, so no
        port matches entries without one and a port only an entry with it."""
        return self._allowed(host, port, -1)

    def _allowed(self, host: str, port: int | None, default: int) -> bool:
        effective = default if port is None else port
        ports = self._exact.get(host)
        if ports is not None and _port_matches(ports, effective, default):
            return True
        if self._wildcards:
            dot = host.find(".")
            while dot > 0:
                ports = self._wildcards.get(host[dot + 1 :])
                if ports is not None and _port_matches(ports, effective, default):
                    return True
                dot = host.find(".", dot + 1)
        return False


def is_safe_redirect(
    url: str, allowed_hosts: Iterable[str], *, require_https: bool = False
) -> bool:
    """True when ``url`` is a safe redirect target for ``allowed_hosts``; never raises.

    Compiled policies are cached per (allowed_hosts, require_https). An invalid allow-list
    entry (user info, a scheme, a path …) matches nothing and is logged once — validate
    lists at start-up with :class:`RedirectPolicy`, which raises ValueError naming the
    entry. A bad ``url`` (of any type) only yields False."""
    if isinstance(allowed_hosts, str):
        hosts: tuple[object, ...] = (allowed_hosts,)
    else:
        try:
            hosts = tuple(allowed_hosts)
        except TypeError:
            hosts = ()
    try:
        policy = _cached_policy(hosts, bool(require_https))
    except TypeError:        # an unhashable entry
        policy = _tolerant_policy(hosts, bool(require_https))
    return policy.is_safe(url)


@functools.lru_cache(maxsize=64)
def _cached_policy(allowed_hosts: tuple[object, ...], require_https: bool) -> RedirectPolicy:
    return _tolerant_policy(allowed_hosts, require_https)


def _tolerant_policy(allowed_hosts: tuple[object, ...], require_https: bool) -> RedirectPolicy:
    """The policy of the valid entries; each invalid one is logged (once) and left out."""
    valid: list[str] = []
    for entry in allowed_hosts:
        try:
            _parse_entry(entry)
        except (ValueError, TypeError) as exc:
            message = f"is_safe_redirect: {exc}; the entry is ignored"
            if message not in _warned:
                _warned.add(message)
                log.warning(message)
            continue
        valid.append(entry)  # type: ignore[arg-type]  # _parse_entry checked it is a str
    return RedirectPolicy(valid, require_https=require_https)


_warned: set[str] = set()


def _port_matches(ports: frozenset[int | None], effective: int, default: int) -> bool:
    return effective in ports or (effective == default and None in ports)


def _clean_unicode(url: str) -> bool:
    """False if a non-ASCII character is invisible, a space or separator, private-use,
    unassigned, or compatibility-normalizes to ASCII punctuation (U+FF0F becomes "/", ...)."""
    for char in url:
        if char.isascii():
            continue
        if unicodedata.category(char)[0] in "CZ":
            return False
        folded = unicodedata.normalize("NFKC", char)
        if folded != char and any(c.isascii() and not c.isalnum() for c in folded):
            return False
    return True


def _escapes_ok(component: str, *, allow_slash: bool) -> bool:
    """Percent escapes must be well formed and, at every level of decoding, encode no
    control character, no backslash and (unless ``allow_slash``) no '/'."""
    if _PCT_MALFORMED.search(component):
        return False
    for _ in range(_MAX_DECODE_ROUNDS):
        if "%" not in component:
            return True
        if _PCT_FORBIDDEN.search(component) or (not allow_slash and _PCT_SLASH.search(component)):
            return False
        decoded = unquote(component)
        if decoded == component:
            return True
        if _DECODED_CONTROL.search(decoded):
            return False
        component = decoded
    return False


def _is_dot(segment: str) -> bool:
    return segment == "." or segment.lower() == "%2e"


def _is_dot_dot(segment: str) -> bool:
    return segment in ("..", ".%2e", ".%2E", "%2e.", "%2E.") or segment.lower() == "%2e%2e"


def _remove_dot_segments(path: str) -> str:
    """Resolve '.' and '..' segments (also as %2e) of an absolute path, as browsers do."""
    if "." not in path and "%" not in path:
        return path
    segments = path[1:].split("/")
    out: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if _is_dot_dot(segment):
            if out:
                out.pop()
            if i == last:
                out.append("")
        elif _is_dot(segment):
            if i == last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _encode(component: str, unsafe: str, safe: str) -> str:
    if component.isascii() and not any(c in component for c in unsafe):
        return component
    return quote(component, safe=safe)


def _parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError("the port must be decimal digits")
    port = int(text)
    if port > 65535:
        raise ValueError("the port must be at most 65535")
    return port


@functools.lru_cache(maxsize=512)
def _parse_authority(authority: str) -> tuple[str, int | None]:
    """(normalized host, port or None) of ``host[:port]``; ValueError when not acceptable.
    Cached: a service redirects to a handful of hosts, and IDNA is the costly step."""
    if "@" in authority:
        raise ValueError("user info ('@') is not allowed")
    if "%" in authority:
        raise ValueError("percent escapes are not allowed in a host")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError("unclosed IPv6 literal")
        host = f"[{ipaddress.IPv6Address(authority[1:end]).compressed}]"
        rest = authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after the IPv6 literal")
        return host, _parse_port(rest[1:]) if rest else None
    text, colon, port_text = authority.partition(":")
    return _normalize_host(text), _parse_port(port_text) if colon else None


def _normalize_host(host: str) -> str:
    """Lower-case ASCII (punycode) form of a domain or IPv4 host; ValueError otherwise."""
    if not host:
        raise ValueError("empty host")
    if host.isascii():
        ascii_host = host.lower()
    else:
        if not _IDNA_DEVIATIONS.isdisjoint(host) or not _IDNA_DEVIATIONS.isdisjoint(
            unicodedata.normalize("NFKC", host)
        ):
            raise ValueError("the host has characters that IDNA 2003 and UTS #46 map differently")
        # The stdlib codec (IDNA 2003); UnicodeError is a ValueError.
        ascii_host = host.encode("idna").decode("ascii").lower()
    if len(ascii_host) > 253 or not _HOST.fullmatch(ascii_host):
        raise ValueError("not a valid host name (labels of letters, digits, '-', '_')")
    if _NUMERIC_LABEL.fullmatch(ascii_host.rpartition(".")[2]):
        # Browsers parse this as IPv4 ("0x7f.1", "2130706433"): accept the canonical form only.
        return str(ipaddress.IPv4Address(ascii_host))
    return ascii_host


def _parse_entry(entry: object) -> tuple[bool, str, int | None]:
    """(is_wildcard, normalized host, port) of an allow-list entry; ValueError names it."""
    if not isinstance(entry, str):
        raise TypeError(f"allowed host entries must be str, not {type(entry).__name__}")
    reason = _entry_problem(entry)
    if reason is None:
        wildcard = entry.startswith("*.")
        try:
            host, port = _parse_authority(entry[2:] if wildcard else entry)
        except ValueError as exc:
            reason = str(exc) or "not a host"
        else:
            if wildcard and (host.startswith("[") or host.replace(".", "").isdigit()):
                reason = "a wildcard needs a domain name, not an IP address"
            elif wildcard and _public_suffix(host):
                reason = (f"{host!r} is a public suffix: the wildcard would match every site "
                          f"anyone registers under it; list your own domain ('*.example.{host}')")
            else:
                return wildcard, host, port
    raise ValueError(f"invalid allowed host {entry!r}: {reason}")


@functools.cache
def _suffixes() -> PublicSuffixList:
    from publicsuffixlist import PublicSuffixList

    # Only listed suffixes: names under an unlisted TLD (localhost, internal, corp) are
    # nobody else's to register.
    return PublicSuffixList(accept_unknown=False)


def _public_suffix(host: str) -> bool:
    """Whether ``host`` is on the Public Suffix List (``com``, ``co.uk``, ``github.io``)."""
    return _suffixes().is_public(host)


def _entry_problem(entry: str) -> str | None:
    if not entry:
        return "empty"
    if entry != entry.strip() or any(c.isspace() for c in entry):
        return "whitespace"
    if "/" in entry or "\\" in entry or "?" in entry or "#" in entry:
        return "give a host (optionally host:port), not a URL"
    if "@" in entry:
        return "user info is not part of a host"
    if "*" in entry and (not entry.startswith("*.") or "*" in entry[2:]):
        return "a wildcard must be a whole leading label: '*.example.com'"
    if entry == "*.":
        return "a wildcard needs a domain after '*.'"
    if entry.startswith("."):
        return "use '*.example.com' for subdomains (and list 'example.com' for the domain)"
    if entry.partition(":")[0].endswith("."):
        return "no trailing dot: 'example.com.' is a different origin from 'example.com'"
    return None
