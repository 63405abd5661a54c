"""The settings tree: the value parsers, the section dataclasses and the root
:class:`Settings`. A field is declared with :func:`_opt`, whose metadata (secret, duration,
choices, check, parse, path, doc) the builder and the documentation generator read; checks
within one section are its ``_problems``; those that need code outside the settings package
live in :mod:`secure_mw.settings.checks`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from secure_mw.settings import builder, checks

ENV_PREFIX = builder.ENV_PREFIX

# ---------------------------------------------------------------------------------------------
# value parsers

# value parsers


# ASCII only (re.ASCII, and before lower()): no Arabic-Indic digits, no Kelvin sign for "k".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """``"90s"`` → 90.0; ``"1h30m"`` → 5400.0; ``"0"``/``0`` → 0.0. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '90s', '5m', '1h' or '30d'")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"{value!r} is too large for a duration") from None
    elif isinstance(value, str) and value.isascii():
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text, re.ASCII):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for m in _DURATION_PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"{value!r} is not a duration; write e.g. '90s', '5m', '1h' or '30d'"
                )
    else:
        raise ValueError("expected a duration like '90s', '5m', '1h' or '30d'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a non-negative finite duration")
    return seconds


_SIZE = re.compile(r"(\d{1,12})\s*(b|kib|mib)?", re.ASCII)
_SIZE_UNITS = {None: 1, "b": 1, "kib": 1024, "mib": 1024 * 1024}


def parse_size(value: object) -> int:
    """``"64KiB"`` → 65536; ``"1MiB"`` → 1048576; ``4096`` or ``"4096"`` → 4096 (bytes).
    Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12:
        return value
    m = _SIZE.fullmatch(value.strip().lower()) \
        if isinstance(value, str) and value.isascii() else None
    if m is None:
        raise ValueError(f"{value!r} is not a size; write e.g. '64KiB', '1MiB' or a number "
                         "of bytes")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def _check_token_size(value: int) -> str | None:
    if not 1024 <= value <= 1024 * 1024:
        return "must be from 1KiB to 1MiB (the largest answer read from the provider)"
    return None


_RATE_PART = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|day|s|m|h|d)s?\s*",
                        re.ASCII)
_RATE_UNITS = {"second": 1, "s": 1, "minute": 60, "m": 60, "hour": 3600, "h": 3600,
               "day": 86400, "d": 86400}


def parse_rate_limit(text: str) -> tuple[tuple[int, float], ...]:
    """``"20/second;600/minute"`` → ``((20, 1.0), (600, 60.0))``; also ``"5/10minutes"``."""
    limits = []
    for part in text.split(";"):
        m = _RATE_PART.fullmatch(part)
        if not m or int(m.group(1)) <= 0:
            raise ValueError(
                f"{part.strip()!r} is not a rate; write e.g. '20/second;600/minute'"
            )
        multiple = int(m.group(2)) if m.group(2) else 1
        if multiple <= 0:
            raise ValueError(f"{part.strip()!r} has a zero period")
        limits.append((int(m.group(1)), float(multiple * _RATE_UNITS[m.group(3)])))
    return tuple(limits)


def _check_url(value: str, *, https_only: bool = False) -> str | None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
    except ValueError:
        return f"{value!r} is not a URL"
    schemes = ("https",) if https_only else ("http", "https")
    if parts.scheme not in schemes or not parts.hostname:
        return f"{value!r} must be an absolute {' or '.join(schemes)} URL"
    if parts.username or parts.password:
        return "must not contain credentials"
    return None


def _check_issuer(value: str) -> str | None:
    problem = _check_url(value)
    if problem:
        return problem
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return "an issuer must use https (plain http is allowed only for loopback test providers)"
    if parts.query or parts.fragment:
        return "an issuer must not have a query or fragment"
    return None


def _check_cidrs(values: list[str]) -> str | None:
    bad = []
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            bad.append(v)
    return f"not CIDR networks: {', '.join(map(repr, bad))}" if bad else None


def _check_proxies(values: list[str]) -> str | None:
    """CIDR networks, and "unix" for a proxy on a Unix socket."""
    return _check_cidrs([v for v in values if v.strip().lower() != "unix"])


def _check_statuses(values: list[int]) -> str | None:
    bad = [v for v in values if not 200 <= v <= 399]
    if bad:
        return f"success statuses are 2xx or 3xx, not {', '.join(map(str, bad))}"
    return None if values else "give at least one status"


def _check_certificates_directory(value: str) -> str | None:
    from secure_mw.tls import client_context

    try:
        client_context(ca_directory=value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_header_name(value: str) -> str | None:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        return f"{value!r} is not a valid HTTP header name"
    return None


def _check_cookie_name(value: str) -> str | None:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        return f"{value!r} is not a valid cookie name"
    if value.lower().startswith(("__host-", "__secure-")):
        return "give the name without a __Host-/__Secure- prefix; secure_mw adds the right one"
    return None


def _check_auth_prefix(value: str) -> str | None:
    if not re.fullmatch(r"/([A-Za-z0-9._~-]+/)+", value):
        return "must be a path that starts and ends with '/', such as '/.auth/'"
    return None


def _check_cookie_domain(value: str) -> str | None:
    if not value:
        return None
    domain = value.lower().lstrip(".")
    label = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
    if not re.fullmatch(rf"{label}(\.{label})+", domain):
        return f"{value!r} is not a domain name (a host-only cookie needs an empty value)"
    from publicsuffixlist import PublicSuffixList

    if PublicSuffixList().is_public(domain):
        return (f"{value!r} is a public suffix: a cookie for it would reach every site "
                "under it")
    return None


def _check_positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than zero"


def _check_rate(value: str) -> str | None:
    try:
        parse_rate_limit(value)
    except ValueError as exc:
        return str(exc)
    return None


def _normalize_subject(value: object) -> list[list[str]]:
    """``"group:a"`` → ``[["group:a"]]``; ``["a", "b"]`` → ``[["a"], ["b"]]`` (OR);
    ``[["a", "b"], ["c"]]`` stays (OR of ANDs)."""
    if isinstance(value, str):
        value = [[value]]
    if not isinstance(value, list):
        raise ValueError("expected a string, a list of strings or a list of lists of strings")
    out: list[list[str]] = []
    for item in value:
        group = [item] if isinstance(item, str) else item
        if not isinstance(group, list) or not group or not all(isinstance(s, str) for s in group):
            raise ValueError("expected a string, a list of strings or a list of lists of strings")
        for s in group:
            if not re.fullmatch(r"(user|group|email):.+", s):
                raise ValueError(f"{s!r} must start with 'user:', 'group:' or 'email:'")
        out.append(list(group))
    return out


def _opt(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    secret: bool = False,
    duration: bool = False,
    choices: tuple[str, ...] | None = None,
    check: Callable[[Any], str | None] | None = None,
    parse: Callable[[Any], Any] | None = None,
    path: bool = False,
    doc: str = "",
) -> Any:
    """A settings field. ``secret`` fields accept ``<key>_file`` and never show in a repr;
    ``path`` fields are resolved against the configuration file's directory."""
    meta = {"secret": secret, "duration": duration, "choices": choices, "check": check,
            "parse": parse or (parse_duration if duration else None), "path": path,
            "doc": doc, "env_text": duration or parse is parse_size}
    if factory is not None:
        return field(default_factory=factory, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


# ---------------------------------------------------------------------------------------------
# the tree


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    external_url: str | None = _opt(
        None, check=_check_url,
        doc="public URL of the app: the iss/aud of assertions and the base of the login URLs "
            "(otherwise the request's origin, when its host is allowed)")
    auth_prefix: str = _opt("/.auth/", check=_check_auth_prefix,
                            doc="where secure_mw serves login, callback, logout, logged-out "
                                "and me")
    forwarded_header: str = _opt(
        "x-forwarded-for", choices=("x-forwarded-for", "forwarded", "auto"),
        doc="which header the trusted proxies set: x-forwarded-for (with -proto, -host), "
            "forwarded (RFC 7239), or auto (Forwarded when present: only if every proxy "
            "overwrites it)")
    client_cert_header: str | None = _opt(
        None, doc="header in which trusted proxies pass the client certificate (URL-escaped "
                  "PEM, as nginx's $ssl_client_escaped_cert); read from trusted peers only")
    trusted_proxies: list[str] = _opt(factory=list, check=_check_proxies,
                                      doc="CIDRs of peers allowed to set Forwarded / "
                                          "X-Forwarded-*; \"unix\" trusts a peer on a Unix "
                                          "socket")
    allowed_hosts: list[str] = _opt(
        factory=list, check=checks.allowed_hosts_problem,
        doc="host names the app answers for: app.example.com (any port), host:8443, "
            "*.example.com, \"*\"; others get 400 (default: external_url's host, else "
            "loopback)")
    certificates_directory: str | None = _opt(
        None, path=True, check=_check_certificates_directory,
        doc="more CA certificates (every .pem/.crt/.cer file) that outbound TLS trusts, as "
            "well as the system's: a private CA of an internal OpenID provider")


@dataclass(frozen=True, kw_only=True)
class KeysSettings:
    encryption_keys: list[str] = _opt(factory=list, secret=True,
                                      doc="the key ring: base64url 32-byte keys, the first "
                                          "encrypts, all decrypt")
    encryption_passphrase: str | None = _opt(None, secret=True,
                                             doc="alternative to keys: the master key is "
                                                 "derived once per process")
    encryption_salt_file: str | None = _opt(None, path=True,
                                            doc="per-installation salt for the passphrase "
                                                "(created 0600 on first use)")
    encryption_kdf: str = _opt("pbkdf2", choices=("pbkdf2", "scrypt"),
                               doc="pbkdf2 (HMAC-SHA256, 600,000 iterations) or scrypt "
                                   "(N=2^17, r=8, p=1)")
    encryption_algorithm: str = _opt("xchacha20-poly1305",
                                     choices=("xchacha20-poly1305", "aes-256-gcm"),
                                     doc="the envelope's AEAD (aes-256-gcm: XAES-256-GCM, "
                                         "keys derived from 192-bit nonces)")
    signing_jwks: str | None = _opt(
        None, secret=True,
        doc="private JWKS for identity assertions (secure-mw gen-keys --jwks); unset: ES256 "
            "keys derived from the key ring")

    def _problems(self) -> list[tuple[str, str]]:
        out = []
        if self.encryption_keys and self.encryption_passphrase:
            out.append(("encryption_passphrase",
                        "give either encryption_keys or a passphrase, not both"))
        if self.encryption_passphrase and not self.encryption_salt_file:
            out.append(("encryption_salt_file",
                        "required with a passphrase (created on first use)"))
        return out


class _Default(str):
    """A default choice: equal to the same text written in a configuration, but told
    apart from it (``session.store`` nobody chose versus ``store = "memory"``)."""

    __slots__ = ()


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    store: str = _opt(_Default("memory"), choices=("memory", "cookie", "redis", "sqlite"),
                      doc="where sessions live: memory (one process), sqlite (every worker of "
                          "one host: sqlite.path), redis, cookie; all but memory need "
                          "keys.encryption_keys (or a passphrase)")
    redis_url: str | None = _opt(None, secret=True,
                                 doc="a server of its own (default: the [redis] section's); "
                                     "required with store = \"redis\" without [redis]; when "
                                     "set, login regulation and used TOTP codes are kept "
                                     "there too")
    redis_key_prefix: str = _opt("secure_mw:",
                                 doc="prefix of every Redis key the application writes (give "
                                     "each app sharing a Redis its own)")
    cookie_name: str = _opt("secure_mw_session", check=_check_cookie_name,
                            doc="without a __Host-/__Secure- prefix: secure_mw adds it")
    cookie_domain: str = _opt("", check=_check_cookie_domain,
                              doc="empty: host-only cookie with the __Host- prefix; a domain "
                                  "(single sign-on across its subdomains) gets __Secure-; a "
                                  "public suffix is refused")
    cookie_secure: bool = _opt(True, doc="false drops Secure and the prefixes: only for "
                                         "plain-http development hosts that are not loopback")
    same_site: str = _opt("lax", choices=("lax", "strict", "none"),
                          doc="the cookie's SameSite attribute")
    expiration: float = _opt(3600.0, duration=True, check=_check_positive,
                             doc="absolute lifetime of a session")
    inactivity: float = _opt(300.0, duration=True, check=_check_positive,
                             doc="idle timeout; must not exceed expiration")
    remember_me: float = _opt(30 * 86400.0, duration=True,
                              doc="lifetime with remember-me; \"0\" disables it")
    memory_max_sessions: int = _opt(100_000, check=_check_positive,
                                    doc="bound of the memory store (with the cookie store and "
                                        "no redis_url: the ended sessions remembered)")
    redis_cache_ttl: float = _opt(1.0, duration=True,
                                  doc="store = \"redis\" on one server: how long a session "
                                      "record read is kept in this process, kept correct by "
                                      "Redis invalidations (CLIENT TRACKING); \"0\" reads "
                                      "Redis every time")

    @property
    def store_explicit(self) -> bool:
        """Whether ``store`` was set (in a file, a mapping, the environment or code) rather
        than left at its default."""
        return not isinstance(self.store, _Default)

    def _problems(self) -> list[tuple[str, str]]:
        out = []
        if self.store == "sqlite" and self.redis_url:
            out.append(("redis_url", "not used with session.store = 'sqlite' (set "
                                     "rate_limits.redis_url to keep limits in Redis)"))
        if self.inactivity > self.expiration:
            out.append(("inactivity",
                        "is longer than session.expiration, so it would never apply"))
        return out


def _check_logout_age(value: float) -> str | None:
    return None if 5 <= value <= 600 else "must be between 5s and 10m"


@dataclass(frozen=True, kw_only=True)
class OIDCSettings:
    issuer: str = _opt(check=_check_issuer,
                       doc="https URL (plain http only for loopback test providers)")
    client_id: str = _opt(doc="the client id registered at the provider")
    client_secret: str | None = _opt(None, secret=True,
                                     doc="required for the client_secret_* methods")
    token_endpoint_auth_method: str = _opt(
        "client_secret_basic",
        choices=("client_secret_basic", "client_secret_post", "private_key_jwt", "none"),
        doc="how the client authenticates at the token endpoint (private_key_jwt: RFC 7523; "
            "none: a public client, PKCE only)",
    )
    client_jwks: str | None = _opt(None, secret=True,
                                   doc="private JWKS for private_key_jwt, the first key signs "
                                       "(register its public half at the provider)")
    scopes: list[str] = _opt(factory=lambda: ["openid", "profile", "email"],
                             doc="must include openid")
    groups_claim: str = _opt("groups", doc="claim holding the user's groups")
    refresh_interval: float = _opt(300.0, duration=True,
                                   doc="how often profile and groups are re-fetched")
    post_logout_redirect_uri: str | None = _opt(
        None, check=_check_url,
        doc="fixed return address after logout at the provider (default: "
            "<origin>/.auth/logged-out, which must be registered)")
    redirect_uri: str | None = _opt(None, check=_check_url,
                                    doc="callback registered at the provider (default: "
                                        "<external_url or request origin>/.auth/callback)")
    assume_email_verified: bool = _opt(
        False, doc="count the provider's emails as verified when it sends no email_verified "
                   "claim (an explicit false stays false)")
    max_token_size: int = _opt(64 * 1024, parse=parse_size, check=_check_token_size,
                               doc="largest id_token accepted: a size (\"256KiB\", \"1MiB\") "
                                   "or bytes, 1 KiB to 1 MiB; raise it for users in thousands "
                                   "of groups")
    backchannel_logout: bool = _opt(
        True, doc="serve auth_prefix + \"backchannel-logout\" (OpenID Connect Back-Channel "
                  "Logout 1.0): the provider's signed logout tokens end the sessions of a "
                  "provider session or user, in every store and instance")
    frontchannel_logout: bool = _opt(
        False, doc="serve auth_prefix + \"frontchannel-logout\" (Front-Channel Logout 1.0); "
                   "unauthenticated by design (whoever knows a provider session id can end "
                   "it): off unless the provider offers nothing better")
    logout_token_max_age: float = _opt(
        120.0, duration=True, check=_check_logout_age,
        doc="a logout token issued (iat) longer ago than this is refused (5 s to 10 min)")

    def _problems(self) -> list[tuple[str, str]]:
        out = []
        if self.token_endpoint_auth_method.startswith("client_secret") and not self.client_secret:
            out.append(("client_secret", "required with token_endpoint_auth_method = "
                                         f"{self.token_endpoint_auth_method!r}"))
        if "openid" not in self.scopes:
            out.append(("scopes", "must include 'openid'"))
        if self.token_endpoint_auth_method == "private_key_jwt":  # noqa: S105
            if not self.client_jwks:
                out.append(("client_jwks", "required with token_endpoint_auth_method = "
                                           "'private_key_jwt' (`secure-mw gen-keys --jwks`)"))
            else:
                problem = checks.client_jwks_problem(self.client_jwks)
                if problem:
                    out.append(("client_jwks", problem))
        return out


def _parse_refresh_interval(value: object) -> float:
    """A duration, or ``"always"`` (0: the users file is consulted at every request)."""
    if isinstance(value, str) and value.strip().lower() == "always":
        return 0.0
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError("expected a duration like '5m' or '1h', or 'always'") from None


def _check_min_length(value: int) -> str | None:
    # 8: NIST SP 800-63B's floor; 1024: the password hasher's limit (MAX_PASSWORD_BYTES).
    if not 8 <= value <= 1024:
        return "must be between 8 and 1024 characters"
    return None


def _check_readable_file(value: str) -> str | None:
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        return f"{value!r} is not a readable file"
    return None


@dataclass(frozen=True, kw_only=True)
class LocalUsersSettings:
    file: str = _opt("users.toml", path=True, doc="users file with Argon2id hashes")
    totp_file: str = _opt("totp.json", path=True,
                          doc="enrolled TOTP secrets, encrypted with the key ring (0600)")
    totp_issuer: str = _opt("secure_mw", doc="the name authenticator apps show")
    refresh_interval: float = _opt(
        300.0, duration=True, parse=_parse_refresh_interval,
        doc="how often a session's user is looked up again in the users file; \"always\" (or "
            "0): at every request")
    password_min_length: int = _opt(12, check=_check_min_length,
                                    doc="new passwords: at least this many characters (code "
                                        "points after NFKC), 8 to 1024")
    password_blocklist_file: str | None = _opt(
        None, path=True, check=_check_readable_file,
        doc="common passwords you supply (UTF-8, one a line) that new passwords must not be, "
            "nor contain with digits or symbols added")


@dataclass(frozen=True, kw_only=True)
class PagesSettings:
    """The look of the sign-in, second-step and sign-out pages (docs/login.md)."""

    title: str = _opt("", doc="the application's name on the sign-in pages")
    template: str | None = _opt(
        None, path=True, doc="HTML layout (string.Template) with $content for the form")
    stylesheet: str | None = _opt(None, path=True,
                                  doc="CSS file served under auth_prefix (cached a year)")
    stylesheet_url: str | None = _opt(None, doc="or an https URL the pages' CSP allows")
    logo: str | None = _opt(None, path=True,
                            doc="image file (png, svg, jpg, gif, webp, ico) served under "
                                "auth_prefix")
    logo_url: str | None = _opt(None, doc="or an https URL the pages' CSP allows")
    lang: str = _opt("en", doc="the pages' language tag")

    def _problems(self) -> list[tuple[str, str]]:
        return checks.pages_problems(self)


@dataclass(frozen=True, kw_only=True)
class NamedNetwork:
    name: str = _opt(doc="the name rules use in networks")
    networks: list[str] = _opt(factory=list, check=_check_cidrs, doc="its CIDRs")


@dataclass(frozen=True, kw_only=True)
class AccessRule:
    domain: list[str] = _opt(factory=list, doc="host names (exact, or *.example.com)")
    domain_regex: list[str] = _opt(factory=list, doc="host name regular expressions")
    resources: list[str] = _opt(factory=list,
                                doc="path regular expressions, matched against the normalized "
                                    "path only (never the query string)")
    methods: list[str] = _opt(factory=list, doc="HTTP methods (empty: all)")
    networks: list[str] = _opt(factory=list, doc="CIDRs or names from access_control.networks")
    subject: list[list[str]] = _opt(factory=list, parse=_normalize_subject,
                                    doc="user:, group: or email: entries; a string, a list "
                                        "(OR), or a list of lists (OR of ANDs)")
    query: list[Any] = _opt(factory=list, doc="query-string conditions")
    policy: str | None = _opt(None, choices=("bypass", "authenticated", "two_factor", "deny"),
                              doc="what a match decides; a rule needs a policy or allow/deny "
                                  "blocks, and a bypass rule cannot have a subject")
    allow: dict[str, Any] | None = _opt(None, doc="a Pomerium-style allow block")
    deny: dict[str, Any] | None = _opt(None, doc="a Pomerium-style deny block")
    subject_mismatch: str | None = _opt(
        None, choices=("deny", "continue"),
        doc="a signed-in user the subject does not name: refused (deny, the default) or "
            "passed on to the next rules (continue)")

    def _problems(self) -> list[tuple[str, str]]:
        out = []
        if self.policy is None and self.allow is None and self.deny is None:
            out.append(("", "needs a policy, or allow/deny blocks"))
        if self.policy == "bypass" and self.subject:
            out.append(("subject", "a 'bypass' rule cannot have a subject"))
        return out


@dataclass(frozen=True, kw_only=True)
class AccessControlSettings:
    default_policy: str = _opt("deny", choices=("bypass", "authenticated", "two_factor", "deny"),
                               doc="the decision when no rule matches")
    networks: list[NamedNetwork] = _opt(factory=list, doc="named groups of CIDRs")
    rules: list[AccessRule] = _opt(factory=list, doc="the access rules, first match wins")


@dataclass(frozen=True, kw_only=True)
class HeadersSettings:
    preset: str = _opt("page", choices=("page", "api"),
                       doc="the header set: page (HTML pages) or api")
    hsts_max_age: float = _opt(365 * 86400.0, duration=True,
                               doc="HSTS max-age (sent on https only)")
    hsts_include_subdomains: bool = _opt(True, doc="HSTS includeSubDomains")
    hsts_preload: bool = _opt(False,
                              doc="HSTS preload, opt-in (needs includeSubDomains and a max-age "
                                  "of a year)")
    csp: str | None = _opt(None, doc="Content-Security-Policy instead of the preset's; "
                                     "{nonce} marks where the per-request nonce goes")
    overrides: dict[str, dict[str, str]] = _opt(
        factory=dict, doc="per path prefix: header name -> value ('' removes ours)")
    replace_app_headers: bool = _opt(False, doc="replace headers the app set itself")

    def _problems(self) -> list[tuple[str, str]]:
        return checks.headers_problems(self)


@dataclass(frozen=True, kw_only=True)
class RedirectsSettings:
    allowed_hosts: list[str] = _opt(factory=list,
                                    doc="exact hosts (optionally with port) and *.example.com "
                                        "patterns redirects may go to")
    params: list[str] = _opt(
        factory=lambda: ["rd", "next", "return_to", "redirect_uri", "post_logout_redirect_uri"],
        doc="query parameters checked"
    )
    default: str = _opt("/", doc="safe replacement for an unsafe Location (must itself be safe)")

    def _problems(self) -> list[tuple[str, str]]:
        return checks.redirects_problems(self)


@dataclass(frozen=True, kw_only=True)
class RateLimitRule:
    key: str = _opt("ip", doc="ip, user, route or a dotted path to a key function")
    limit: str = _opt(check=_check_rate, doc="e.g. \"20/second;600/minute\" or \"5/10minutes\"")
    methods: list[str] = _opt(factory=list, doc="only these methods (empty: all)")
    paths: list[str] = _opt(factory=list, doc="only these path regexes (empty: all)")
    fail_open: bool | None = _opt(
        None, doc="store unreachable: allow (true) or 503 (false); unset: allow, except "
                  "requests to credential endpoints and rules that protect credentials")
    protects_credentials: bool = _opt(
        False, doc="the rule guards credentials (its own token or login endpoints): it "
                   "fails closed whatever the path")

    def _problems(self) -> list[tuple[str, str]]:
        if self.protects_credentials and self.fail_open:
            return [("fail_open", "a rule that protects credentials fails closed")]
        return []


@dataclass(frozen=True, kw_only=True)
class RateLimitsSettings:
    store: str = _opt(_Default("memory"), choices=("memory", "redis", "sqlite"),
                      doc="where the counters live; unset: sqlite when sqlite.path is set, "
                          "else memory")
    redis_url: str | None = _opt(None, secret=True, doc="defaults to session.redis_url")
    rules: list[RateLimitRule] = _opt(factory=list, doc="the limits")

    @property
    def store_explicit(self) -> bool:
        """Whether ``store`` was set rather than left at its default."""
        return not isinstance(self.store, _Default)


@dataclass(frozen=True, kw_only=True)
class RegulationSettings:
    max_retries: int = _opt(3, check=_check_positive,
                            doc="guesses of one user name from one address (and from one "
                                "device) within find_time")
    user_max_retries: int = _opt(10, check=_check_positive,
                                 doc="guesses of one user name from anywhere")
    ip_max_retries: int = _opt(20, check=_check_positive,
                               doc="guesses from one address (IPv6: its /64), any name")
    find_time: float = _opt(120.0, duration=True, check=_check_positive,
                            doc="the window the budgets count in")
    ban_time: float = _opt(300.0, duration=True, check=_check_positive,
                           doc="how long a subject whose budget failed is banned")
    modes: list[str] = _opt(
        factory=lambda: ["pair", "user", "ip"],
        check=lambda v: None if set(v) <= {"pair", "user", "ip"}
        else "modes are 'pair', 'user' and/or 'ip'",
        doc="which budgets apply: pair, user, ip",
    )
    device_lifetime: float = _opt(
        30 * 86400.0, duration=True,
        doc="how long the device cookie of a successful login regulates its owner's "
            "attempts apart from everyone else's; 0 disables device cookies")
    paths: list[str] = _opt(factory=list,
                            doc="the app's own login endpoints (POST) to guard")
    username_field: str = _opt("username", doc="form or JSON field holding the user name")
    success_statuses: list[int] = _opt(
        factory=lambda: [200, 201, 204, 302, 303], check=_check_statuses,
        doc="the statuses of a successful login at regulation.paths (not a 2xx HTML page, "
            "not a redirect back to the login path); every other answer is a failure")
    names_folded: bool = _opt(
        False, doc="the app compares user names as the guard folds them (NFKC, case, "
                   "surrounding space): a success clears the failures of every spelling")


@dataclass(frozen=True, kw_only=True)
class SignedHeadersVerifySettings:
    header: str = _opt("X-Pomerium-Jwt-Assertion", check=_check_header_name, doc="header to verify")
    jwks_url: str | None = _opt(None, check=_check_url,
                                doc="pinned keys (URL); jwks_url or jwks_file is required")
    jwks_file: str | None = _opt(None, path=True,
                                 doc="pinned keys (file); jwks_url or jwks_file is required")
    issuer: str = _opt(doc="exact issuer")
    audience: str | None = _opt(None, doc="exact audience (default: the request host)")
    algorithms: list[str] = _opt(
        factory=lambda: ["ES256", "RS256"],
        check=lambda v: None if v and set(v) <= {"ES256", "RS256", "PS256", "EdDSA"}
        else "algorithms are among ES256, RS256, PS256, EdDSA",
        doc="among ES256, RS256, PS256, EdDSA",
    )
    leeway: float = _opt(30.0, duration=True,
                         check=lambda v: None if v <= 60 else "must be at most 60s",
                         doc="clock leeway, at most 60 s")
    assume_email_verified: bool = _opt(
        False, doc="count the assertion's email as verified when it has no email_verified "
                   "claim (Pomerium's have none)")

    def _problems(self) -> list[tuple[str, str]]:
        if not (self.jwks_url or self.jwks_file):
            return [("", "give jwks_url or jwks_file (keys are only ever pinned)")]
        return []


@dataclass(frozen=True, kw_only=True)
class SignedHeadersSettings:
    issue: bool = _opt(True, doc="sign an identity assertion for the wrapped app")
    header: str = _opt("X-Secure-MW-Jwt-Assertion", check=_check_header_name,
                       doc="header carrying it")
    lifetime: float = _opt(300.0, duration=True, check=_check_positive, doc="assertion lifetime")
    verify: SignedHeadersVerifySettings | None = _opt(
        None, doc="verify an assertion from Pomerium or another secure_mw")


def _parse_audiences(value: object) -> list[str]:
    """``audience``: one string, or a list of them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(
            isinstance(a, str) and a and not any(c in a for c in "\r\n\x00") for a in items):
        raise ValueError("expected a non-empty string or a non-empty list of them")
    return list(items)


def _check_fetch_url(value: str) -> str | None:
    """A URL secure_mw fetches keys or answers from: https, or http to a loopback host."""
    from secure_mw.outbound import check_url

    try:
        check_url(value)
    except ValueError as exc:
        return f"{value!r}: {exc}"
    return None


_ASYMMETRIC = ("ES256", "RS256", "PS256", "EdDSA")


@dataclass(frozen=True, kw_only=True)
class BearerTokensSettings:
    issuer: str = _opt(check=_check_issuer, doc="exact iss of the access tokens")
    audience: list[str] = _opt(parse=_parse_audiences,
                               doc="this API's identifier: one string or a list; a token's "
                                   "aud must hold one of them exactly")
    jwks_url: str | None = _opt(None, check=_check_fetch_url,
                                doc="the issuer's keys (https, http only to loopback); "
                                    "jwks_url or jwks_file, not both")
    jwks_file: str | None = _opt(None, path=True,
                                 doc="the issuer's keys, pinned in a file (a JWK Set)")
    algorithms: list[str] = _opt(
        factory=lambda: ["ES256", "RS256"],
        check=lambda v: None if v and set(v) <= set(_ASYMMETRIC)
        else f"asymmetric algorithms only, among {', '.join(_ASYMMETRIC)} (never none or HS*)",
        doc="accepted signature algorithms, among ES256, RS256, PS256, EdDSA")
    groups_claim: str = _opt("groups", doc="claim holding the caller's groups")
    required_scopes: list[str] = _opt(factory=list,
                                      doc="scopes every token must grant (scope or scp); "
                                          "missing ones: 403 insufficient_scope")
    leeway: float = _opt(30.0, duration=True,
                         check=lambda v: None if 0 <= v <= 60 else "must be at most 60s",
                         doc="clock leeway for exp, nbf and iat, at most 60 s")
    max_token_size: int = _opt(16 * 1024, parse=parse_size,
                               check=lambda v: None if 1024 <= v <= 256 * 1024
                               else "must be between 1 KiB and 256 KiB",
                               doc="longest token accepted (longer: 401 before any parsing)")
    jwks_refetch_interval: float = _opt(60.0, duration=True, check=_check_positive,
                                        doc="an unknown kid refetches jwks_url at most once "
                                            "per this interval")
    cache_ttl: float = _opt(60.0, duration=True, check=_check_positive,
                            doc="longest an introspection answer (or a verified JWT) is "
                                "remembered, never beyond the token's exp: a token revoked "
                                "at the provider is refused at most this late")
    cache_size: int = _opt(10_000, check=lambda v: None if v >= 0 else "must be >= 0",
                           doc="verified tokens remembered at most (0: none)")
    introspection_url: str | None = _opt(
        None, check=_check_fetch_url,
        doc="RFC 7662 endpoint for opaque tokens (https, http only to loopback)")
    client_id: str | None = _opt(None, doc="our client id at the introspection endpoint")
    client_secret: str | None = _opt(None, secret=True,
                                     doc="its secret (client_secret_file: a file or vault:NAME)")

    def _problems(self) -> list[tuple[str, str]]:
        out = []
        if self.jwks_url and self.jwks_file:
            out.append(("jwks_url", "give jwks_url or jwks_file, not both"))
        elif not (self.jwks_url or self.jwks_file or self.introspection_url):
            out.append(("jwks_url", "give jwks_url or jwks_file (keys are only ever pinned), "
                                    "or introspection_url"))
        if self.introspection_url:
            if not self.client_id:
                out.append(("client_id", "required with introspection_url"))
            if not self.client_secret:
                out.append(("client_secret", "required with introspection_url"))
        return out


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    format: str = _opt("json", choices=("json", "logfmt"), doc="the audit line's format")
    logger: str = _opt("secure_mw.audit", doc="name of the logging logger")


@dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    enabled: bool = _opt(False, doc="count decisions, logins, bans, rate-limited requests, "
                                    "store latency and the added latency in "
                                    "prometheus_client's registry (extra: metrics)")
    tracing: bool = _opt(False, doc="one OpenTelemetry span per request with an event per "
                                    "decision (extra: otel)")
    health: bool = _opt(True, doc="answer GET {auth_prefix}health: 200, or 503 when a store "
                                  "does not answer")
    health_timeout: float = _opt(1.0, duration=True, check=_check_positive,
                                 doc="how long the health check waits for each store")
    health_cache: float = _opt(1.0, duration=True,
                               check=lambda v: None if v >= 0 else "must not be negative",
                               doc="how long a health answer is reused (a flood of probes "
                                   "checks the stores once per this)")


_S = TypeVar("_S", bound="Settings")


def _check_sentinel_nodes(values: list[str]) -> str | None:
    for value in values:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "," in value:
            return f"{value!r} is not host:port"
    return None


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    url: str | None = _opt(None, secret=True,
                           doc="redis:// or rediss:// (TLS) of the server, or of any one node "
                               "of a Redis Cluster; with Sentinel only its credentials and "
                               "database (redis://:PASSWORD@/0), or leave it out")
    cluster: bool = _opt(False, doc="a Redis Cluster: the other nodes are discovered from "
                                    "url's; every script touches one slot (hash-tagged keys)")
    sentinel_master: str = _opt("", doc="the master's name the sentinels watch (Sentinel)")
    sentinel_nodes: list[str] = _opt(factory=list, check=_check_sentinel_nodes,
                                     doc="the sentinels, \"host:port\" each")
    sentinel_password: str | None = _opt(None, secret=True,
                                         doc="the sentinels' own password, when they have one")
    connect_timeout: float | None = _opt(None, check=_check_positive,
                                         doc="seconds to open a connection (default: "
                                             "command_timeout)")
    command_timeout: float | None = _opt(None, check=_check_positive,
                                         doc="seconds a command may take before the store "
                                             "counts as unavailable (default 2 for sessions, "
                                             "0.5 for the guards)")
    pool_size: int | None = _opt(None, check=_check_positive,
                                 doc="connections per server and event loop (default 64); a "
                                     "request beyond waits for a free one")
    ca_file: str | None = _opt(None, path=True, check=_check_readable_file,
                               doc="with rediss://: the CA that signed the servers' "
                                   "certificates (default: the system's)")
    cert_file: str | None = _opt(None, path=True, check=_check_readable_file,
                                 doc="with rediss://: a client certificate (mutual TLS)")
    key_file: str | None = _opt(None, path=True, check=_check_readable_file,
                                doc="the client certificate's private key")

    def _problems(self) -> list[tuple[str, str]]:
        from secure_mw._redis_url import Topology

        out: list[tuple[str, str]] = []
        if self.cluster and self.sentinel_master:
            out.append(("cluster", "give either cluster = true or sentinel_master, not both"))
        if self.sentinel_nodes and not self.sentinel_master:
            out.append(("sentinel_master", "required with sentinel_nodes"))
        if self.sentinel_master and not self.sentinel_nodes:
            out.append(("sentinel_nodes", "required with sentinel_master"))
        if not self.url and not self.sentinel_master:
            out.append(("url", "required (or sentinel_master and sentinel_nodes)"))
        tls = False
        if self.url:
            try:
                topology = Topology.parse(self.url)
            except ValueError as exc:
                out.append(("url", str(exc)))
            else:
                tls = topology.tls
                if topology.kind != "server":
                    out.append(("url", "give redis:// or rediss:// here; cluster and "
                                       "sentinel_master say the topology"))
                elif self.sentinel_master and topology.label != "localhost:6379":
                    out.append(("url", "with sentinel_master the sentinels name the master: "
                                       "give url without a host (redis://:PASSWORD@/0)"))
                elif (self.cluster or self.sentinel_master) and self.url.startswith("unix:"):
                    out.append(("url", "a Unix socket is one server, not a cluster"))
        for name in ("ca_file", "cert_file", "key_file"):
            if getattr(self, name) and not tls:
                out.append((name, "only with a rediss:// url (TLS)"))
        if bool(self.cert_file) != bool(self.key_file):
            out.append(("key_file" if self.cert_file else "cert_file",
                        "cert_file and key_file go together"))
        return out

    def composed_url(self) -> str:
        """The one URL the stores are given for this section (see :mod:`secure_mw._redis_url`)."""
        from urllib.parse import urlencode

        from secure_mw._redis_url import compose_url

        url = compose_url(self.url, cluster=self.cluster, sentinel_master=self.sentinel_master,
                          sentinel_nodes=self.sentinel_nodes,
                          sentinel_password=self.sentinel_password or "",
                          socket_timeout=self.command_timeout,
                          socket_connect_timeout=self.connect_timeout,
                          max_connections=self.pool_size)
        files = {k: v for k, v in (("ssl_ca_certs", self.ca_file),
                                   ("ssl_certfile", self.cert_file),
                                   ("ssl_keyfile", self.key_file)) if v}
        if files:
            url += ("&" if "?" in url else "?") + urlencode(files)
        return url


@dataclass(frozen=True, kw_only=True)
class SqliteSettings:
    path: str | None = _opt(
        None, path=True,
        doc="the SQLite file every worker process of this host shares (created 0600, its "
            "directory 0700 when missing); when set, rate limits, login regulation, used "
            "TOTP codes and the cookie store's sign-outs are kept there unless a Redis URL "
            "or their own store says otherwise")
    busy_timeout: float = _opt(
        0.5, duration=True,
        check=lambda v: None if 0 < v <= 60 else "must be between 1ms and 60s",
        doc="how long a write waits for another process's lock before the store answers "
            "503 (fail closed)")


@dataclass(frozen=True, kw_only=True)
class VaultSettings:
    file: str | None = _opt(None, path=True,
                            doc="the secrets vault (secure-mw vault) that values "
                                "`<key>_file = \"vault:NAME\"` read")
    passphrase: str | None = _opt(None, secret=True,
                                  doc="the vault's passphrase (give passphrase_file)")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The whole configuration. Build it with :meth:`from_mapping`, :meth:`from_file` or
    :meth:`from_environment`; every problem is reported at once in a ConfigError."""

    server: ServerSettings = _opt(factory=ServerSettings)
    keys: KeysSettings = _opt(factory=KeysSettings)
    session: SessionSettings = _opt(factory=SessionSettings)
    oidc: OIDCSettings | None = _opt(None)
    local_users: LocalUsersSettings = _opt(factory=LocalUsersSettings)
    pages: PagesSettings = _opt(factory=PagesSettings)
    access_control: AccessControlSettings = _opt(factory=AccessControlSettings)
    headers: HeadersSettings = _opt(factory=HeadersSettings)
    redirects: RedirectsSettings = _opt(factory=RedirectsSettings)
    rate_limits: RateLimitsSettings = _opt(factory=RateLimitsSettings)
    regulation: RegulationSettings = _opt(factory=RegulationSettings)
    signed_headers: SignedHeadersSettings = _opt(factory=SignedHeadersSettings)
    audit: AuditSettings = _opt(factory=AuditSettings)
    vault: VaultSettings = _opt(factory=VaultSettings)
    metrics: MetricsSettings = _opt(factory=MetricsSettings)
    redis: RedisSettings | None = _opt(None)
    bearer_tokens: BearerTokensSettings | None = _opt(
        None, doc="bearer tokens (JWT access tokens, RFC 9068; opaque ones by RFC 7662 "
                  "introspection) for API clients")
    sqlite: SqliteSettings = _opt(factory=SqliteSettings)

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_mapping(
        cls: type[_S],
        data: Mapping[str, Any],
        *,
        environ: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> _S:
        """:func:`secure_mw.settings.builder.from_mapping`: the settings of a mapping (as
        a TOML file would give), with the ``SECURE_MW_*`` overrides of ``environ``."""
        return builder.from_mapping(cls, data, environ=environ, base_dir=base_dir)

    @classmethod
    def from_file(
        cls: type[_S],
        path: str | os.PathLike[str],
        *,
        environ: Mapping[str, str] | None = None,
    ) -> _S:
        """Load a TOML file (``.toml``; YAML is not supported) and build settings."""
        return builder.from_file(cls, path, environ=environ)

    @classmethod
    def from_environment(
        cls: type[_S], path: str | os.PathLike[str] | None = None
    ) -> _S:
        """The file at ``path`` or ``$SECURE_MW_CONFIG`` (if any), then ``SECURE_MW_*``
        overrides from the process environment."""
        return builder.from_environment(cls, path)

    # -- reporting ------------------------------------------------------------------------

    def summary(self, *, encryption_source: str | None = None) -> str:
        """A human summary without any secret value (used by ``secure-mw check-config``).
        ``encryption_source`` describes a key ring given to ``protect()`` instead of the
        settings (as the demo's key file)."""
        lines = []
        identity = f"OpenID provider {self.oidc.issuer}" if self.oidc else \
            f"built-in password login (users file {self.local_users.file})"
        lines.append(f"identity source : {identity}")
        lines.append(checks.describe_hosts(self.server))
        lines.append(
            f"session store   : {self.session.store}; expiration {_fmt(self.session.expiration)},"
            f" inactivity {_fmt(self.session.inactivity)}, remember-me "
            f"{_fmt(self.session.remember_me) if self.session.remember_me else 'disabled'}"
        )
        if self.session.redis_url or self.rate_limits.redis_url:
            from secure_mw._redis_url import Topology

            shown = []
            for url in dict.fromkeys(u for u in (self.session.redis_url,
                                                 self.rate_limits.redis_url) if u):
                try:
                    shown.append(Topology.parse(url).label)   # never the credentials
                except ValueError:
                    shown.append("(malformed URL)")
            lines.append(f"redis           : {', '.join(shown)}")
        keys = self.keys
        if encryption_source:
            source = encryption_source
        elif keys.encryption_keys:
            source = f"{len(keys.encryption_keys)} key(s) in the key ring"
        elif keys.encryption_passphrase:
            source = f"derived from a passphrase ({keys.encryption_kdf})"
        else:
            source = "none configured (generated at start-up; sessions do not survive a restart)"
        lines.append(f"encryption      : {keys.encryption_algorithm}, {source}")
        lines.append(
            f"access control  : default {self.access_control.default_policy}, "
            f"{len(self.access_control.rules)} rule(s)"
        )
        lines.append(f"headers preset  : {self.headers.preset}")
        limits_store = "sqlite" if self.sqlite.path and not self.rate_limits.store_explicit \
            else self.rate_limits.store
        lines.append(f"rate limits     : {len(self.rate_limits.rules)} rule(s) in {limits_store}")
        if self.sqlite.path:
            lines.append(f"sqlite file     : {self.sqlite.path} (busy timeout "
                         f"{_fmt(self.sqlite.busy_timeout)})")
        reg = self.regulation
        lines.append(
            f"regulation      : {reg.max_retries} failures (user {reg.user_max_retries}, "
            f"address {reg.ip_max_retries}) in {_fmt(reg.find_time)} ban for "
            f"{_fmt(reg.ban_time)} by {', '.join(reg.modes)}"
        )
        sh = self.signed_headers
        lines.append(
            f"signed headers  : issue {'on' if sh.issue else 'off'} ({sh.header}); verify "
            + (f"{sh.verify.header} from {sh.verify.issuer}" if sh.verify else "off")
        )
        bt = self.bearer_tokens
        if bt is not None:
            how = ", ".join(w for w, on in (("jwks_file", bt.jwks_file), ("jwks_url", bt.jwks_url),
                                            ("introspection", bt.introspection_url)) if on)
            lines.append(f"bearer tokens   : from {bt.issuer} for {', '.join(bt.audience)} "
                         f"({how}; {', '.join(bt.algorithms)})")
        lines.append(f"audit           : {self.audit.format} on logger {self.audit.logger}")
        return "\n".join(lines)


def _fmt(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"

