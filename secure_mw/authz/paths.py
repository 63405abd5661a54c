"""Path normalization before authorization.

An authorization layer that matches a path other than the one the application routes can be
walked around (Pomerium CVE-2023-33189: ``/public/..%2fadmin``). Two checks close the gap:

* :func:`check_raw_path` looks at the bytes the client sent (ASGI ``raw_path``) *before* the
  server's percent-decoding hides what was encoded: an encoded ``/`` or ``\\``, an encoded dot
  segment (``%2e%2e``), double encoding (``%25`` followed by two hex digits), NUL and control
  characters are refused.
* :func:`normalize_path` takes the *decoded* path (ASGI ``path``, WSGI ``PATH_INFO``) and
  returns the one canonical form rules are matched against: duplicate slashes merged, dot
  segments resolved (RFC 3986 §5.2.4), trailing slash kept. Whatever is still ambiguous is
  refused. The middleware is expected to hand the application exactly that normalized path.

* :func:`check_utf8_path` refuses a path whose percent-decoding is not UTF-8 (overlong
  forms such as ``%c0%ae``, lone continuation bytes, encoded surrogates): ASGI servers
  replace such bytes with U+FFFD while WSGI servers pass them on as latin-1, so the app
  would see a different path in each flavour. The Host guard runs it on every request.

All raise :class:`PathRefused` (status 400); none raises anything else.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_to_bytes

from secure_mw.errors import SecureMWError

__all__ = ["MAX_PATH", "PathRefused", "check_raw_path", "check_utf8_path", "normalize_path",
           "route_path"]

#: Longest path accepted, in characters (decoded) or bytes (raw).
MAX_PATH = 8 * 1024

# C0 controls, DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A percent-escape left in a decoded path: the client encoded a "%" (double encoding), and a
# later decoder (the app, a proxy, a file server) might turn it into "/", "\" or "..".
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")

_RAW_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_RAW_FORBIDDEN_ESCAPE = re.compile(
    rb"%(?:2[fF]|5[cC]|25[0-9A-Fa-f]{2}|[01][0-9A-Fa-f]|7[fF])"
)
_RAW_DOT_ESCAPE = re.compile(rb"%2[eE]")


class PathRefused(SecureMWError):
    """The request path is ambiguous or hostile; answered with 400. ``reason`` is safe to log."""

    status = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def check_raw_path(raw: bytes) -> None:
    """Refuse a raw (still percent-encoded) request path whose decoding would be ambiguous.

    Refused: longer than :data:`MAX_PATH`; raw control bytes or backslashes; ``%2F``, ``%5C``,
    ``%00`` to ``%1F``, ``%7F``; ``%25`` followed by two hex digits (double encoding); a segment
    that is a dot segment only once its encoded dots (``%2E``) are decoded. A query part, if
    the caller left one on, is not looked at.
    """
    if len(raw) > MAX_PATH:
        raise PathRefused("path too long")
    raw = raw.split(b"?", 1)[0]
    if _RAW_CONTROL.search(raw):
        raise PathRefused("control character in path")
    if b"\\" in raw:
        raise PathRefused("backslash in path")
    m = _RAW_FORBIDDEN_ESCAPE.search(raw)
    if m:
        what = m.group(0).lower()
        if what in (b"%2f", b"%5c"):
            raise PathRefused("encoded slash or backslash in path")
        if what.startswith(b"%25"):
            raise PathRefused("double-encoded path")
        raise PathRefused("encoded control character in path")
    if _RAW_DOT_ESCAPE.search(raw):
        for segment in raw.split(b"/"):
            if _RAW_DOT_ESCAPE.search(segment) and \
                    _RAW_DOT_ESCAPE.sub(b".", segment) in (b".", b".."):
                raise PathRefused("encoded dot segment in path")


def check_utf8_path(path: bytes, *, encoded: bool) -> None:
    """Refuse ``path`` unless its bytes are UTF-8 once percent-decoded (``encoded``: the raw
    target, as ASGI ``raw_path``) or as given (not ``encoded``: WSGI ``PATH_INFO`` as latin-1
    bytes, already decoded by the server). A query part is not looked at. Python's strict
    decoder refuses overlong forms, surrogates and stray continuation bytes."""
    if encoded:
        path = path.split(b"?", 1)[0]
        if b"%" in path:
            path = unquote_to_bytes(path)
    if path.isascii():
        return
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        raise PathRefused("path is not valid UTF-8") from None


def normalize_path(raw_path: str) -> str:
    """The canonical form of a decoded request path, or :class:`PathRefused`.

    ``"/a//b/./c/../d/"`` → ``"/a/b/d/"``; ``""`` → ``"/"``. Refused: longer than
    :data:`MAX_PATH`; not starting with ``/``; a control character (C0, DEL, C1); a backslash;
    a percent-escape (``%XX``) still present after decoding (double encoding, or an undecoded
    path passed by mistake); a lone surrogate; a dot segment with path parameters (``..;x``,
    ``.;x``), which servlet containers resolve as ``..``. Other non-ASCII characters are
    kept as they are.
    """
    path = raw_path
    if len(path) > MAX_PATH:
        raise PathRefused("path too long")
    if not path:
        return "/"
    if path[0] != "/":
        raise PathRefused("path does not start with '/'")
    if _CONTROL.search(path):
        raise PathRefused("control character in path")
    if "\\" in path:
        raise PathRefused("backslash in path")
    if "%" in path and _ESCAPE.search(path):
        raise PathRefused("percent-escape in decoded path (double encoding)")
    if not path.isascii():
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise PathRefused("path is not valid unicode") from None
    if ";" in path and any(";" in seg and seg.split(";", 1)[0] in (".", "..")
                           for seg in path.split("/")):
        # "/public/..;/admin" is "/admin" to servers that take ";" as path parameters
        # (Tomcat, Jetty: a Java app behind us, or behind a proxy we answer for).
        raise PathRefused("dot segment with path parameters (;) in path")
    if "//" not in path and "/." not in path:
        return path  # the common case: nothing to merge or resolve
    return _remove_dot_segments(path)


@functools.lru_cache(maxsize=4096)
def route_path(path: str) -> str:
    """The path guards match on (rate-limit and regulation paths, header overrides): the
    normalized path the application routes when access rules are set, so ``//login``,
    ``/./login`` and ``/x/../login`` count as ``/login``; the path itself when normalization
    refuses it (the authorization layer answers 400 then). Never raises; memoized."""
    try:
        return normalize_path(path)
    except PathRefused:
        return path


def _remove_dot_segments(path: str) -> str:
    """Merge empty segments and resolve ``.``/``..`` (RFC 3986 §5.2.4 on an absolute path,
    ``..`` above the root staying at the root); a trailing slash is kept, and a final ``.``
    or ``..`` segment leaves one."""
    segments = path.split("/")[1:]   # path starts with "/"
    out: list[str] = []
    last = len(segments) - 1
    trailing = False
    for i, segment in enumerate(segments):
        if segment == "..":
            if out:
                out.pop()
            trailing = i == last
        elif segment in (".", ""):
            trailing = i == last
        else:
            out.append(segment)
            trailing = False
    result = "/" + "/".join(out)
    if trailing and out:
        result += "/"
    return result
