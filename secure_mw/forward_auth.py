"""Forward authentication, framework-free: what ``secure-mw serve`` reads from a reverse
proxy's authorization subrequest (nginx ``auth_request``: ``X-Original-URL`` and
``X-Original-Method``; Traefik ``ForwardAuth`` and Caddy ``forward_auth``:
``X-Forwarded-Proto/Host/Uri/Method``), the ``Remote-*`` headers it answers with, and how a
refusal of the protect() stack is told to each proxy. The decision itself is the stack's,
on the original request (docs/forward-auth.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from secure_mw.errors import SecureMWError
from secure_mw.identity import Identity

__all__ = [
    "AUTH_REQUEST",
    "ENDPOINTS",
    "FORWARDING_HEADERS",
    "FORWARD_AUTH",
    "ForwardedRequest",
    "NotForwardable",
    "ambiguous_path",
    "forwarded_request",
    "remote_headers",
]

#: What the endpoints answer with on 200 (the signed assertion comes too).
REMOTE_HEADERS = ("remote-user", "remote-groups", "remote-email", "remote-name")
AUTH_REQUEST = "/api/authz/auth-request"
FORWARD_AUTH = "/api/authz/forward-auth"
#: Endpoint path -> which proxy contract it speaks.
ENDPOINTS = {AUTH_REQUEST: "auth-request", FORWARD_AUTH: "forward-auth"}

#: Request headers describing the original request or the proxy hops: read once by the
#: adapter, never seen by the layers (they would describe the subrequest twice).
FORWARDING_HEADERS = frozenset({
    b"host", b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-forwarded-port", b"x-forwarded-uri", b"x-forwarded-method", b"x-forwarded-prefix",
    b"x-forwarded-ssl", b"x-original-url", b"x-original-uri", b"x-original-method",
    b"x-real-ip", b"content-length", b"transfer-encoding",
})

_METHOD = re.compile(r"[A-Z]{3,16}")
# Printable ASCII only: browsers percent-encode everything else; a raw byte is a trick.
_URI = re.compile(r"/[\x21-\x7e]*")
_HOST = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_URL = re.compile(r"(https?)://([^/?#]*)(.*)", re.IGNORECASE | re.DOTALL)
_MAX_URI = 8192


class NotForwardable(SecureMWError):
    """The proxy's description of the original request is missing or ambiguous; ``reason``
    is safe to log (it never quotes the header values)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """The original request as the proxy received it: ``target`` is the raw (still
    percent-encoded) path and query, as a server would put in ``raw_path`` and
    ``query_string``."""

    method: str
    scheme: str
    host: str
    target: str

    @property
    def raw_path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.target}"


def _single(headers: dict[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip(" \t"):
        raise NotForwardable(f"{name} is missing")
    if "," in value and name not in {"x-forwarded-uri", "x-original-url"}:
        raise NotForwardable(f"{name} has several values")
    return value.strip(" \t")


def _method(headers: dict[str, str], name: str) -> str:
    value = _single(headers, name)
    if not _METHOD.fullmatch(value):
        raise NotForwardable(f"{name} is not a method")
    return value


def _host(value: str, name: str) -> str:
    if not _HOST.fullmatch(value):
        raise NotForwardable(f"{name} is not a host")
    return value.lower()


def _target(value: str, name: str) -> str:
    if len(value) > _MAX_URI:
        raise NotForwardable(f"{name} is too long")
    if not _URI.fullmatch(value):
        raise NotForwardable(f"{name} is not an origin-form path (printable ASCII from '/')")
    if "#" in value:
        raise NotForwardable(f"{name} has a fragment: a browser never sends one")
    return value


def forwarded_request(kind: str, headers: dict[str, str]) -> ForwardedRequest:
    """The original request described by ``headers`` (lower-case names) for ``kind``
    (``auth-request`` or ``forward-auth``), or :class:`NotForwardable`."""
    if kind == "auth-request":
        url = _single(headers, "x-original-url")
        found = _URL.fullmatch(url)
        if found is None:
            raise NotForwardable("x-original-url is not an absolute http(s) URL")
        scheme, host, rest = found.groups()
        return ForwardedRequest(_method(headers, "x-original-method"), scheme.lower(),
                                _host(host, "x-original-url"),
                                _target(rest or "/", "x-original-url"))
    scheme = _single(headers, "x-forwarded-proto").lower()
    if scheme not in ("http", "https"):
        raise NotForwardable("x-forwarded-proto is not http or https")
    return ForwardedRequest(_method(headers, "x-forwarded-method"), scheme,
                            _host(_single(headers, "x-forwarded-host"), "x-forwarded-host"),
                            _target(_single(headers, "x-forwarded-uri"), "x-forwarded-uri"))


# Printable ASCII but '%' (and ',' in a list item) stays as it is; everything else is
# percent-encoded UTF-8, so a value is always read back with one percent-decoding.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_SAFE_ITEM = _SAFE.replace(",", "")


def _value(text: str, safe: str = _SAFE) -> str:
    # Never trimmed: " admin" is not "admin". A space at either end is encoded, since a
    # proxy or a service's header parser would drop it and make the two names one.
    out = quote(text, safe=safe)
    inner = out.strip(" ")
    if inner == out:
        return out
    if not inner:
        return "%20" * len(out)
    lead = len(out) - len(out.lstrip(" "))
    trail = len(out) - len(out.rstrip(" "))
    return "%20" * lead + inner + "%20" * trail


def ambiguous_path(path: str) -> str | None:
    """Why a servlet container, IIS or another non-Python server could route the decoded
    ``path`` to another resource than the rules match (None: it cannot): ``;`` path
    parameters (Tomcat, Jetty, Spring drop them: ``/admin;x`` is ``/admin``), a segment
    ending in a dot or a space (Windows drops them: ``/admin.`` is ``/admin``)."""
    if ";" in path:
        return "a path parameter (;) in the forwarded URI"
    for segment in path.split("/"):
        if segment not in (".", "..") and segment[-1:] in (".", " "):
            return "a path segment ending in a dot or a space"
    return None


def remote_headers(identity: Identity | None) -> list[tuple[str, str]]:
    """``Remote-User``, ``Remote-Groups`` (comma-joined), ``Remote-Email`` and
    ``Remote-Name`` of ``identity``, each percent-encoded outside printable ASCII, so no
    CR, LF or other control character can reach a header. Always all four, empty when
    unknown or anonymous: a proxy that copies them then never keeps a client's own copy
    (Caddy 2.6's copy_headers leaves a placeholder for a header that is missing)."""
    if identity is None:
        return [(name, "") for name in REMOTE_HEADERS]
    groups = ",".join(_value(g, _SAFE_ITEM) for g in identity.groups if g)
    return list(zip(REMOTE_HEADERS, (_value(identity.sub), groups, _value(identity.email),
                                     _value(identity.name)), strict=True))
