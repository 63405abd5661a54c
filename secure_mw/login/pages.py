"""How secure_mw's own pages look: the app's layout around our forms.

:class:`Pages` renders the sign-in, second-step and sign-out pages. Without ``[pages]``
settings they are the built-in pages; with them, the app's name, a stylesheet and a logo
(a file served under ``server.auth_prefix`` with a content-hashed name and a year of
caching, or an ``https`` URL the page's CSP then allows exactly), and an HTML layout: a
``string.Template`` whose ``$content`` receives the page's form fragment, which we build
(its state or CSRF field included), and whose other placeholders are HTML-escaped text. A
layout cannot drop the protections: it never sees the form, every page gets a fresh CSP
nonce, and a layout with a ``<script>`` or ``<style>`` lacking ``nonce="$nonce"``, an inline
handler, a form of its own or an unknown placeholder is a configuration error at start-up.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from string import Template
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from secure_mw.errors import ConfigError, ConfigProblem, SecureMWError
from secure_mw.http import _STYLE as BASE_STYLE
from secure_mw.http import Reply, html_reply

if TYPE_CHECKING:
    from secure_mw.settings import PagesSettings

__all__ = ["PLACEHOLDERS", "Asset", "Pages", "PagesError", "settings_problems"]

#: What a layout may use; ``content`` is required, exactly once.
PLACEHOLDERS = ("content", "title", "page_title", "app_name", "nonce", "stylesheet_url",
                "logo_url", "lang")
MAX_TEMPLATE = 64 * 1024
MAX_STYLESHEET = 512 * 1024
MAX_LOGO = 512 * 1024
#: Logo types by file extension (an allow-list: the type is never sniffed).
IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
               ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp",
               ".ico": "image/x-icon"}
ASSET_CACHE = "public, max-age=31536000, immutable"
# An SVG opened on its own is a document: no script, no resource, no form in it.
_SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"

_STYLE = BASE_STYLE + ".logo{display:block;max-height:3rem;max-width:100%;margin-bottom:1rem}"
# Tags and attributes the pages' CSP would block, or that would escape the page's own form.
_TAG = re.compile(r"<\s*(script|style)\b([^>]*)>", re.IGNORECASE)
_NONCED = re.compile(r"""\bnonce\s*=\s*(["']?)\$\{?nonce\}?\1""")
_HANDLER = re.compile(r"""<[^>]*\s(on[a-z]+|style)\s*=""", re.IGNORECASE)
_FORBIDDEN = (
    (re.compile(r"<\s*form\b", re.IGNORECASE),
     "has a <form> of its own: the page's form arrives in $content"),
    (re.compile(r"<\s*base\b", re.IGNORECASE), "has a <base> element (the CSP forbids it)"),
    (re.compile(r"javascript\s*:", re.IGNORECASE), "has a javascript: URL"),
)
# Characters that would end a CSP source expression or the header itself.
_URL_BAD = re.compile(r"[\s;,'\"<>{}\\\x00-\x1f\x7f]")


class PagesError(SecureMWError, ValueError):
    """A ``[pages]`` setting that cannot be used; the message names no secret."""


@dataclass(frozen=True, slots=True)
class Asset:
    """A file served at ``{auth_prefix}assets/{name}``."""

    name: str
    content_type: str
    body: bytes

    def reply(self, method: str) -> Reply:
        if method not in ("GET", "HEAD"):
            return html_reply(405, "Method not allowed", "This address only serves a file.",
                              headers=[("allow", "GET, HEAD")])
        headers = [("content-type", self.content_type), ("cache-control", ASSET_CACHE),
                   ("x-content-type-options", "nosniff"),
                   ("content-security-policy",
                    _SVG_CSP if self.content_type == "image/svg+xml"
                    else "default-src 'none'; frame-ancestors 'none'")]
        return Reply(200, headers, self.body)


def _read(path: str, limit: int, what: str) -> bytes:
    """A regular file of at most ``limit`` bytes (a FIFO or a device is never opened)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise PagesError(f"{path!r} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise PagesError(f"{path!r} is not a regular file")
    if info.st_size > limit:
        raise PagesError(f"{path!r} is larger than {limit // 1024} KiB, the most a {what} "
                         "may be")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise PagesError(f"{path!r} cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise PagesError(f"{path!r} is larger than {limit // 1024} KiB, the most a {what} "
                         "may be")
    return data


def check_url(url: str) -> str:
    """An ``https`` URL usable as a CSP source expression (exactly this resource)."""
    if _URL_BAD.search(url):
        raise PagesError("the URL holds a space, quote, comma, semicolon, brace, backslash "
                         "or control character")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise PagesError("is not a URL") from None
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise PagesError("must be an https URL with a host and no user name")
    if parts.fragment:
        raise PagesError("must not have a #fragment")
    return url


def _placeholders(text: str) -> list[str]:
    """The names the layout uses, in order; PagesError for a ``$`` that is none."""
    names = []
    for match in Template.pattern.finditer(text):
        if match.group("invalid") is not None:
            line = text.count("\n", 0, match.start()) + 1
            raise PagesError(f"line {line}: a '$' that starts no placeholder (write $$ for "
                             "a dollar sign)")
        name = match.group("named") or match.group("braced")
        if name is not None:
            names.append(name)
    return names


def check_template(text: str) -> Template:
    """The layout as a Template; PagesError naming what is wrong with it."""
    names = _placeholders(text)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        raise PagesError(f"unknown placeholder {', '.join('$' + n for n in unknown)} (known: "
                         f"{', '.join('$' + n for n in PLACEHOLDERS)})")
    count = names.count("content")
    if count != 1:
        raise PagesError("must hold the placeholder $content exactly once (the page's form "
                         f"goes there); it holds it {count} times")
    for match in _TAG.finditer(text):
        if not _NONCED.search(match.group(2)):
            line = text.count("\n", 0, match.start()) + 1
            raise PagesError(f'line {line}: <{match.group(1).lower()}> without '
                             f'nonce="$nonce" (the pages\' CSP would block it)')
    handler = _HANDLER.search(text)
    if handler:
        line = text.count("\n", 0, handler.start()) + 1
        raise PagesError(f"line {line}: an inline {handler.group(1).lower()}= attribute "
                         "(the pages' CSP would block it; use a nonced <style> or the "
                         "stylesheet)")
    for pattern, message in _FORBIDDEN:
        found = pattern.search(text)
        if found:
            line = text.count("\n", 0, found.start()) + 1
            raise PagesError(f"line {line}: {message}")
    return Template(text)


def _hashed(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class Pages:
    """The look of secure_mw's pages; see the module documentation."""

    def __init__(self, *, prefix: str = "/.auth/", app_name: str = "",
                 template: str | None = None, stylesheet: bytes | None = None,
                 stylesheet_url: str | None = None, logo: tuple[str, bytes] | None = None,
                 logo_url: str | None = None, lang: str = "en") -> None:
        """``template``: the layout's text; ``stylesheet``: CSS to serve; ``logo``: (file
        extension, image) to serve; the ``*_url`` forms: https URLs instead."""
        self.app_name = app_name
        self.lang = lang
        self.template = check_template(template) if template is not None else None
        self.assets: dict[str, Asset] = {}
        self.stylesheet_url = check_url(stylesheet_url) if stylesheet_url else ""
        self.logo_url = check_url(logo_url) if logo_url else ""
        style_src, img_src = [self.stylesheet_url], [self.logo_url]
        if stylesheet is not None:
            name = f"style-{_hashed(stylesheet)}.css"
            self.assets[name] = Asset(name, "text/css; charset=utf-8", stylesheet)
            self.stylesheet_url = f"{prefix}assets/{name}"
            style_src = ["'self'"]
        if logo is not None:
            ext, data = logo
            if ext not in IMAGE_TYPES:
                raise PagesError(f"a logo is one of {', '.join(sorted(IMAGE_TYPES))}")
            name = f"logo-{_hashed(data)}{ext}"
            self.assets[name] = Asset(name, IMAGE_TYPES[ext], data)
            self.logo_url = f"{prefix}assets/{name}"
            img_src = ["'self'"]
        self.custom = bool(app_name or self.template or self.stylesheet_url or self.logo_url
                           or lang != "en")
        sources = " ".join(s for s in style_src if s)
        images = " ".join(s for s in img_src if s)
        self._csp = ("default-src 'none'; script-src {nonce}; style-src {nonce}"
                     + (f" {sources}" if sources else "")
                     + (f"; img-src {images}" if images else "")
                     + "; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

    @classmethod
    def from_settings(cls, pages: PagesSettings | None, prefix: str) -> Pages:
        """From ``[pages]``; a ConfigError naming each key whose file cannot be used now."""
        if pages is None:
            return cls(prefix=prefix)
        problems = settings_problems(pages)
        if problems:
            raise ConfigError([ConfigProblem(f"pages.{key}", message)
                               for key, message in problems])
        try:
            return cls._load(pages, prefix)
        except (PagesError, UnicodeDecodeError) as exc:  # changed since it was checked
            raise ConfigError([ConfigProblem("pages", str(exc))]) from None

    @classmethod
    def _load(cls, pages: PagesSettings, prefix: str) -> Pages:
        template = _read(pages.template, MAX_TEMPLATE, "template").decode("utf-8") \
            if pages.template else None
        stylesheet = _read(pages.stylesheet, MAX_STYLESHEET, "stylesheet") \
            if pages.stylesheet else None
        logo = (os.path.splitext(pages.logo)[1].lower(), _read(pages.logo, MAX_LOGO, "logo")) \
            if pages.logo else None
        return cls(prefix=prefix, app_name=pages.title, template=template,
                   stylesheet=stylesheet, stylesheet_url=pages.stylesheet_url, logo=logo,
                   logo_url=pages.logo_url, lang=pages.lang)

    def render(self, status: int, title: str, message: str, *, body_html: str = "",
               headers: Iterable[tuple[str, str]] = ()) -> Reply:
        """A page: ``title`` and ``message`` are escaped, ``body_html`` (ours) is not."""
        if not self.custom:
            return html_reply(status, title, message, body_html=body_html, headers=headers)
        nonce = base64.b64encode(secrets.token_bytes(16)).decode("ascii")
        logo = f'<img class="logo" src="{html.escape(self.logo_url)}" alt="' \
               f'{html.escape(self.app_name)}">' \
            if self.logo_url and self.template is None else ""   # a layout places its own
        content = (f"{logo}<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
                   f"{body_html}")
        full_title = f"{title} · {self.app_name}" if self.app_name else title
        if self.template is not None:
            page = self.template.substitute(
                content=content, title=html.escape(full_title), page_title=html.escape(title),
                app_name=html.escape(self.app_name), nonce=nonce, lang=html.escape(self.lang),
                stylesheet_url=html.escape(self.stylesheet_url),
                logo_url=html.escape(self.logo_url))
        else:
            link = f'<link rel="stylesheet" href="{html.escape(self.stylesheet_url)}">' \
                if self.stylesheet_url else ""
            page = (
                f'<!doctype html><html lang="{html.escape(self.lang)}"><head>'
                '<meta charset="utf-8">'
                '<meta name="viewport" content="width=device-width,initial-scale=1">'
                f'<title>{html.escape(full_title)}</title><style nonce="{nonce}">{_STYLE}'
                f"</style>{link}</head><body><main>{content}</main></body></html>"
            )
        return Reply(status, [
            ("content-type", "text/html; charset=utf-8"),
            ("content-security-policy", self._csp.replace("{nonce}", f"'nonce-{nonce}'")),
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-store"), ("pragma", "no-cache"),
            *headers,
        ], page.encode())


def settings_problems(pages: PagesSettings) -> list[tuple[str, str]]:
    """Every problem of ``[pages]`` as (key, message): files that cannot be read, layouts
    that would drop a protection, URLs no CSP can name."""
    out: list[tuple[str, str]] = []
    for key in ("stylesheet", "logo"):
        if getattr(pages, key) and getattr(pages, f"{key}_url"):
            out.append((key, f"give either {key} or {key}_url, not both"))
    if pages.template:
        try:
            text = _read(pages.template, MAX_TEMPLATE, "template")
            check_template(text.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(("template", f"{pages.template!r} is not UTF-8 text"))
        except PagesError as exc:
            out.append(("template", str(exc)))
    if pages.stylesheet:
        try:
            _read(pages.stylesheet, MAX_STYLESHEET, "stylesheet")
        except PagesError as exc:
            out.append(("stylesheet", str(exc)))
    if pages.logo:
        ext = os.path.splitext(pages.logo)[1].lower()
        if ext not in IMAGE_TYPES:
            out.append(("logo", f"{pages.logo!r}: a logo is a file ending in one of "
                                f"{', '.join(sorted(IMAGE_TYPES))}"))
        else:
            try:
                _read(pages.logo, MAX_LOGO, "logo")
            except PagesError as exc:
                out.append(("logo", str(exc)))
    for key in ("stylesheet_url", "logo_url"):
        value = getattr(pages, key)
        if value:
            try:
                check_url(value)
            except PagesError as exc:
                out.append((key, str(exc)))
    if not re.fullmatch(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*", pages.lang):
        out.append(("lang", f"{pages.lang!r} is not a language tag like 'en' or 'pt-BR'"))
    return out
