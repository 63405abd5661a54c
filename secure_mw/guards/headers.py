"""Security response headers, encoded once at start-up and spliced per response.

:class:`SecurityHeaders` holds the header lines secure_mw adds to every response. Everything
that can be decided at start-up is: each combination of (path override, https or not) gets a
ready list of ``(name, value)`` byte pairs, so :meth:`SecurityHeaders.for_response` costs a
prefix match, a dict lookup and, when the page has a CSP nonce, one ``bytes.join``.

The ``page`` preset (the default)::

    X-Content-Type-Options: nosniff
    Referrer-Policy: strict-origin-when-cross-origin
    X-Frame-Options: DENY
    Permissions-Policy: accelerometer=(), ambient-light-sensor=(), ...   (every powerful feature)
    X-DNS-Prefetch-Control: off
    Cross-Origin-Opener-Policy: same-origin
    Cross-Origin-Resource-Policy: same-origin
    Content-Security-Policy: default-src 'self'; script-src 'self' 'nonce-…';
        style-src 'self' 'nonce-…'; object-src 'none'; base-uri 'none';
        frame-ancestors 'none'; form-action 'self'
    Strict-Transport-Security: max-age=31536000; includeSubDomains          (https only)

The ``api`` preset adds ``Cache-Control: no-store`` and ``Pragma: no-cache`` and uses
``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'`` (nothing to nonce).

Decisions worth knowing:

* **X-XSS-Protection is never sent**, and cannot be configured: the filter it controlled is
  gone from every current browser, and where it survived its "block" mode could be abused to
  leak data cross-site. CSP is the replacement. An app that sets the header keeps its value
  (secure_mw does not touch app headers it does not own); if legacy browsers matter, ``0``
  is the only value worth sending.
* **HSTS only over https**: browsers ignore it on plain http, and sending it there would only
  advertise a policy the connection cannot vouch for. ``preload`` requires
  ``includeSubDomains`` and a max-age of at least one year (the preload list's rules), so a
  configuration that would be refused by the list fails at start-up instead.
* **The CSP nonce**: a CSP value may contain the marker ``{nonce}``; with a nonce it becomes
  ``'nonce-<value>'``, without one the marker (and the space before it) disappears, which
  leaves ``script-src 'self'``: inline scripts stay blocked either way.
* **App headers win by default**: a header the app already set is left alone and ours is not
  added. With ``replace_app_headers=True`` ours are returned regardless, and the caller must
  drop the app's lines with the same names (the names of the returned pairs) so no header is
  sent twice.
* **Overrides per path prefix**: ``{"/api/": {"cache-control": "no-store",
  "x-frame-options": None}}``. ``None`` removes one of our headers for that prefix (the app's
  own header, if any, is untouched). A prefix ending in ``/`` matches what starts with it; a
  prefix without the trailing slash matches the path itself and everything below it
  (``/api`` matches ``/api`` and ``/api/x``, never ``/apix``). Overrides nest: a longer
  prefix inherits the overrides of the shorter prefixes that contain it and wins where both
  name the same header.

The defaults earn an A+ from the MDN HTTP Observatory on an https site (CSP without
``'unsafe-inline'``/``'unsafe-eval'``, ``frame-ancestors``, HSTS of at least six months,
nosniff, a private referrer policy, CORP); cookies are the session layer's business
(``Secure``, ``HttpOnly``, ``SameSite``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from secure_mw.guards.nonces import new_nonce

if TYPE_CHECKING:
    from secure_mw.settings import HeadersSettings

__all__ = [
    "API_CSP",
    "NONCE_MARKER",
    "PAGE_CSP",
    "POWERFUL_FEATURES",
    "SecurityHeaders",
    "permissions_policy",
]

#: Where a CSP value receives the per-response nonce source (``'nonce-…'``).
NONCE_MARKER = "{nonce}"

PAGE_CSP = (
    "default-src 'self'; script-src 'self' {nonce}; style-src 'self' {nonce}; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"

#: Policy-controlled features that reach hardware, personal data or the user's attention.
#: All are disabled (``feature=()``) by default; a page that needs one re-enables it with an
#: override built by :func:`permissions_policy`. ``clipboard-write`` is deliberately absent
#: (copy buttons are common and harmless); ``sync-xhr`` and other non-powerful features too.
#: Browsers that do not know a name log a console note and ignore it.
POWERFUL_FEATURES: tuple[str, ...] = (
    "accelerometer",
    "ambient-light-sensor",
    "autoplay",
    "battery",
    "bluetooth",
    "browsing-topics",
    "camera",
    "clipboard-read",
    "compute-pressure",
    "display-capture",
    "document-domain",
    "encrypted-media",
    "fullscreen",
    "gamepad",
    "geolocation",
    "gyroscope",
    "hid",
    "identity-credentials-get",
    "idle-detection",
    "local-fonts",
    "magnetometer",
    "microphone",
    "midi",
    "otp-credentials",
    "payment",
    "picture-in-picture",
    "publickey-credentials-create",
    "publickey-credentials-get",
    "screen-wake-lock",
    "serial",
    "speaker-selection",
    "storage-access",
    "usb",
    "web-share",
    "window-management",
    "xr-spatial-tracking",
)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FEATURE = re.compile(r"[a-z][a-z0-9-]*")
# A field value: visible ASCII, space, tab and obs-text (latin-1 high half); no other CTLs.
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NONCE = re.compile(r"[A-Za-z0-9+/_-]{16,256}={0,2}")
_HSTS_MAX_AGE = re.compile(r"(?:^|;)\s*max-age\s*=\s*\"?\d+\"?\s*(?:;|$)", re.IGNORECASE)
_ONE_YEAR = 31536000

# Headers that frame the message or belong to other layers: never ours to set.
_FORBIDDEN = frozenset({
    "connection", "content-encoding", "content-length", "content-type", "host", "keep-alive",
    "location", "proxy-connection", "set-cookie", "te", "trailer", "transfer-encoding",
    "upgrade",
})
_NONCE_HEADERS = frozenset({"content-security-policy", "content-security-policy-report-only"})
_NEVER = "x-xss-protection"


def permissions_policy(*, allow: Mapping[str, str] | Iterable[str] = (),
                       features: Iterable[str] = POWERFUL_FEATURES) -> str:
    """A ``Permissions-Policy`` value disabling ``features`` except those in ``allow``.

    ``allow`` is a list of features to grant to the page's own origin (``feature=(self)``) or
    a mapping of feature to allowlist (``{"fullscreen": "(self \\"https://a.example\\")"}``).
    Features named in ``allow`` but not in ``features`` are added.
    """
    allowed = dict(allow) if isinstance(allow, Mapping) else dict.fromkeys(allow, "(self)")
    names = list(dict.fromkeys([*features, *allowed]))
    for name in names:
        if not _FEATURE.fullmatch(name):
            raise ValueError(f"{name!r} is not a permissions-policy feature name")
    return ", ".join(f"{name}={allowed.get(name, '()')}" for name in names)


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(f"{where}: {name!r} is not a valid HTTP header name")
    lower = name.lower()
    if lower == _NEVER:
        raise ValueError(
            f"{where}: secure_mw never sends X-XSS-Protection (the filter is gone from current "
            "browsers and its block mode leaked data); rely on the Content-Security-Policy")
    if lower in _FORBIDDEN:
        raise ValueError(f"{where}: {name!r} is not a security header secure_mw may set")
    return lower


def _check_value(name: str, value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: the value of {name!r} must be a string (or None to remove "
                         f"it), not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: the value of {name!r} is empty; use None to remove it")
    if value != value.strip(" \t"):
        raise ValueError(f"{where}: the value of {name!r} has leading or trailing whitespace")
    if _BAD_VALUE_CHAR.search(value):
        raise ValueError(f"{where}: the value of {name!r} contains a control character "
                         "(CR, LF, NUL or another); that would split or corrupt the response")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: the value of {name!r} has characters outside latin-1; "
                         "HTTP header values must be ASCII (percent- or punycode-encode it)"
                         ) from None
    if NONCE_MARKER in value and name not in _NONCE_HEADERS:
        raise ValueError(f"{where}: {NONCE_MARKER} may appear only in a Content-Security-Policy, "
                         f"not in {name!r}")
    if name == "strict-transport-security" and not _HSTS_MAX_AGE.search(value):
        raise ValueError(f"{where}: the value of {name!r} needs a max-age directive")
    return value


def _covers(prefix: str, path: str) -> bool:
    """Whether the override ``prefix`` applies to ``path`` (segment-aware, see module doc)."""
    if not path.startswith(prefix):
        return False
    return prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] == "/"


@dataclass(frozen=True, slots=True)
class _Plan:
    """The lines for one (override, https) combination."""

    # (name, value when no nonce, parts to join around the nonce source or None)
    entries: tuple[tuple[bytes, bytes, tuple[bytes, ...] | None], ...]
    plain: tuple[tuple[bytes, bytes], ...]    # the lines when there is no nonce
    uses_nonce: bool
    names: frozenset[bytes] = frozenset()
    # The one line with a nonce slot, and the plain lines before and after it (None when
    # no line, or more than one, has a slot).
    around: tuple[tuple[tuple[bytes, bytes], ...], bytes, tuple[bytes, ...],
                  tuple[tuple[bytes, bytes], ...]] | None = None
    # The same as text, for WSGI's start_response.
    plain_text: tuple[tuple[str, str], ...] = ()
    around_text: tuple[tuple[tuple[str, str], ...], str, tuple[str, ...],
                       tuple[tuple[str, str], ...]] | None = None


def _plan(headers: Mapping[str, str]) -> _Plan:
    entries = []
    for name, value in headers.items():
        raw = value.encode("latin-1")
        parts: tuple[bytes, ...] | None = None
        if name in _NONCE_HEADERS and NONCE_MARKER in value:
            parts = tuple(raw.split(NONCE_MARKER.encode()))
            raw = re.sub(rb" ?\{nonce\}", b"", raw)
        entries.append((name.encode("latin-1"), raw, parts))
    plain = tuple((name, raw) for name, raw, _ in entries)
    slots = [i for i, (_, _, parts) in enumerate(entries) if parts is not None]
    plain_text = tuple((name.decode("latin-1"), raw.decode("latin-1")) for name, raw in plain)
    around = around_text = None
    if len(slots) == 1:
        i = slots[0]
        parts = entries[i][2] or ()
        around = (plain[:i], entries[i][0], parts, plain[i + 1:])
        around_text = (plain_text[:i], plain_text[i][0],
                       tuple(part.decode("latin-1") for part in parts), plain_text[i + 1:])
    return _Plan(
        entries=tuple(entries),
        plain=plain,
        uses_nonce=bool(slots),
        names=frozenset(name for name, _ in plain),
        around=around,
        plain_text=plain_text,
        around_text=around_text,
    )


class SecurityHeaders:
    """The security headers to add to each response; see the module documentation."""

    __slots__ = ("_plans", "_prefixes", "preset", "replace_app_headers")

    def __init__(
        self,
        *,
        preset: str = "page",
        hsts_max_age: float = 31536000,
        hsts_include_subdomains: bool = True,
        hsts_preload: bool = False,
        overrides: Mapping[str, Mapping[str, str | None]] | None = None,
        replace_app_headers: bool = False,
        csp: str | None = None,
    ) -> None:
        if preset not in ("page", "api"):
            raise ValueError(f"preset must be 'page' or 'api', not {preset!r}")
        self.preset = preset
        self.replace_app_headers = bool(replace_app_headers)

        base: dict[str, str] = {
            "x-content-type-options": "nosniff",
            "referrer-policy": "strict-origin-when-cross-origin",
            "x-frame-options": "DENY",
            "permissions-policy": permissions_policy(),
            "x-dns-prefetch-control": "off",
            "cross-origin-opener-policy": "same-origin",
            "cross-origin-resource-policy": "same-origin",
            "content-security-policy": PAGE_CSP if preset == "page" else API_CSP,
        }
        if preset == "api":
            base["cache-control"] = "no-store"
            base["pragma"] = "no-cache"
        if csp is not None:
            base["content-security-policy"] = _check_value(
                "content-security-policy", csp, "csp")

        hsts = self._hsts(hsts_max_age, hsts_include_subdomains, hsts_preload)
        if hsts is not None:
            base["strict-transport-security"] = hsts

        layers = self._overrides(overrides or {})
        # Each prefix inherits the overrides of every shorter prefix that covers it.
        merged: list[tuple[str, dict[str, str]]] = []
        for prefix, _ in layers:
            headers = dict(base)
            for other, changes in layers:          # shortest first, so longer ones win
                if _covers(other, prefix):
                    for name, value in changes.items():
                        if value is None:
                            headers.pop(name, None)
                        else:
                            headers[name] = value
            merged.append((prefix, headers))

        plans: dict[tuple[int, bool], _Plan] = {}
        for index, headers in enumerate([base, *(h for _, h in merged)]):
            plans[(index, True)] = _plan(headers)
            plans[(index, False)] = _plan(
                {k: v for k, v in headers.items() if k != "strict-transport-security"})
        self._plans = plans
        # Longest prefix first; index 0 is "no override".
        self._prefixes = tuple(sorted(
            ((prefix, index + 1) for index, (prefix, _) in enumerate(merged)),
            key=lambda item: len(item[0]), reverse=True))

    @staticmethod
    def _hsts(max_age: float, include_subdomains: bool, preload: bool) -> str | None:
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) \
                or not math.isfinite(max_age) or max_age < 0:
            raise ValueError(f"hsts_max_age must be a non-negative number of seconds, "
                             f"not {max_age!r}")
        seconds = int(max_age)
        if preload and (not include_subdomains or seconds < _ONE_YEAR):
            raise ValueError(
                "Strict-Transport-Security: hsts_preload needs hsts_include_subdomains and an "
                f"hsts_max_age of at least one year ({_ONE_YEAR}s); the preload list refuses "
                "anything less")
        value = f"max-age={seconds}"
        if include_subdomains:
            value += "; includeSubDomains"
        if preload:
            value += "; preload"
        return value

    @staticmethod
    def _overrides(
        overrides: Mapping[str, Mapping[str, str | None]],
    ) -> list[tuple[str, dict[str, str | None]]]:
        layers: list[tuple[str, dict[str, str | None]]] = []
        for prefix, changes in overrides.items():
            where = f"overrides[{prefix!r}]"
            if not isinstance(prefix, str) or not prefix.startswith("/") \
                    or _BAD_VALUE_CHAR.search(prefix):
                raise ValueError(f"{where}: a path prefix must start with '/'")
            if not isinstance(changes, Mapping):
                raise ValueError(f"{where}: expected a mapping of header name to value")
            checked: dict[str, str | None] = {}
            for name, value in changes.items():
                lower = _check_name(name, where)
                if lower in checked:
                    raise ValueError(f"{where}: {name!r} is given twice (names are "
                                     "case-insensitive)")
                checked[lower] = None if value is None else _check_value(lower, value, where)
            layers.append((prefix, checked))
        layers.sort(key=lambda item: len(item[0]))
        return layers

    @classmethod
    def from_settings(cls, headers: HeadersSettings) -> SecurityHeaders:
        """Build from ``[headers]``; optional keys (``overrides``, ``csp``,
        ``replace_app_headers``) are used when the settings tree has them. TOML has no null,
        so an empty string in an override removes that header."""
        raw_overrides = getattr(headers, "overrides", None) or {}
        overrides = {
            prefix: {name: (value if value != "" else None) for name, value in changes.items()}
            for prefix, changes in raw_overrides.items()
        }
        return cls(
            preset=headers.preset,
            hsts_max_age=headers.hsts_max_age,
            hsts_include_subdomains=headers.hsts_include_subdomains,
            hsts_preload=headers.hsts_preload,
            overrides=overrides or None,
            replace_app_headers=bool(getattr(headers, "replace_app_headers", False)),
            csp=getattr(headers, "csp", None) or None,
        )

    @staticmethod
    def new_nonce() -> str:
        """A fresh CSP nonce: 128 random bits, base64 (24 characters), from a buffered pool
        of the system's randomness (:mod:`secure_mw.guards.nonces`)."""
        return new_nonce()

    def _plan_for(self, path: str, https: bool) -> _Plan:
        for prefix, index in self._prefixes:
            if _covers(prefix, path):
                return self._plans[(index, https)]
        return self._plans[(0, https)]

    def uses_nonce(self, path: str) -> bool:
        """Whether responses for ``path`` carry a CSP with a nonce slot (so a nonce is worth
        generating and handing to the templates)."""
        return self._plan_for(path, True).uses_nonce

    def for_response(
        self, *, path: str, https: bool, nonce: str | None, present: Collection[bytes],
    ) -> list[tuple[bytes, bytes]]:
        """The header lines to add to one response.

        ``present`` holds the lowercase names the app already set (a set is fastest); those
        are skipped unless ``replace_app_headers``, in which case the caller removes the app's
        lines named in the result. Raises ValueError for a nonce that is not base64.
        """
        plan = self._plan_for(path, https)
        skip = present if present and not self.replace_app_headers else ()
        if nonce is None or not plan.uses_nonce:
            if not skip:
                return list(plan.plain)
            return [line for line in plan.plain if line[0] not in skip]
        if not _NONCE.fullmatch(nonce):
            raise ValueError("a CSP nonce must be 16 to 256 base64 characters")
        source = b"'nonce-" + nonce.encode("ascii") + b"'"
        return [(name, value if parts is None else source.join(parts))
                for name, value, parts in plan.entries if name not in skip]

    def add_to(self, lines: list[tuple[bytes, bytes]], *, path: str, https: bool,
               nonce: str | None, drawn: bool = False) -> None:
        """Add the header lines of one response to ``lines`` (its raw lines, edited in
        place): the app's own lines of these names stay unless ``replace_app_headers``.
        ``drawn``: the nonce is one :meth:`new_nonce` gave (base64 by construction), not
        checked again."""
        present = {name.lower() for name, _ in lines}
        plan = self._plan_for(path, https)
        if not self.replace_app_headers and present.isdisjoint(plan.names):
            # The usual case, none of ours set by the app: whole prepared lines.
            if nonce is None or not plan.uses_nonce:
                lines.extend(plan.plain)
                return
            if plan.around is not None and (drawn or _NONCE.fullmatch(nonce)):
                before, name, parts, after = plan.around
                lines.extend(before)
                lines.append((name, (b"'nonce-" + nonce.encode("ascii") + b"'").join(parts)))
                lines.extend(after)
                return
        extra = self.for_response(path=path, https=https, nonce=nonce, present=present)
        if self.replace_app_headers and present:
            names = {name for name, _ in extra}
            lines[:] = [line for line in lines if line[0].lower() not in names]
        lines.extend(extra)

    def add_to_text(self, lines: list[tuple[str, str]], *, path: str, https: bool,
                    nonce: str | None, drawn: bool = False) -> None:
        """:meth:`add_to` for text header lines (WSGI's ``start_response``)."""
        present = {name.lower().encode("latin-1") for name, _ in lines}
        plan = self._plan_for(path, https)
        if not self.replace_app_headers and present.isdisjoint(plan.names):
            if nonce is None or not plan.uses_nonce:
                lines.extend(plan.plain_text)
                return
            if plan.around_text is not None and (drawn or _NONCE.fullmatch(nonce)):
                before, name, parts, after = plan.around_text
                lines.extend(before)
                lines.append((name, f"'nonce-{nonce}'".join(parts)))
                lines.extend(after)
                return
        extra = self.for_response(path=path, https=https, nonce=nonce, present=present)
        if self.replace_app_headers and present:
            names = {name.decode("latin-1") for name, _ in extra}
            lines[:] = [line for line in lines if line[0].lower() not in names]
        lines.extend((n.decode("latin-1"), v.decode("latin-1")) for n, v in extra)
