"""Checks of a settings tree that need more than one field: those that span sections, and
those of one section that ask code outside the settings package (the guards, the token keys,
the login pages). That code is imported when a check runs, never when settings are imported.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from secure_mw.errors import ConfigProblem

if TYPE_CHECKING:
    from secure_mw.settings.schema import (
        HeadersSettings,
        PagesSettings,
        RedirectsSettings,
        ServerSettings,
        Settings,
    )


def with_shared_redis(s: Any) -> Any:
    """``s`` with ``session.redis_url`` taken from the ``[redis]`` section when it has none of
    its own: every Redis-backed store follows ``session.redis_url`` unless its own section
    names another (``rate_limits.redis_url``)."""
    if s is None or s.redis is None or s.session.redis_url:
        return s
    try:
        url = s.redis.composed_url()
    except ValueError:          # reported by the section's own checks
        return s
    return dataclasses.replace(s, session=dataclasses.replace(s.session, redis_url=url))


def cross_checks(s: Settings | None, problems: list[ConfigProblem]) -> None:
    """Checks that span sections (those within one section live in its ``_problems``)."""
    if s is None:
        return
    if s.session.store == "redis" and not s.session.redis_url and s.redis is None:
        problems.append(ConfigProblem(
            "session.redis_url", "required when session.store = 'redis' (or a [redis] section)"))
    if s.rate_limits.store == "redis" and not (s.rate_limits.redis_url or s.session.redis_url) \
            and s.redis is None:      # else the section's own problems say what is wrong
        problems.append(ConfigProblem(
            "rate_limits.redis_url",
            "required when rate_limits.store = 'redis' (or set session.redis_url, or a [redis] "
            "section)",
        ))
    for where, store in (("session.store", s.session.store),
                         ("rate_limits.store", s.rate_limits.store)):
        if store == "sqlite" and not s.sqlite.path:
            problems.append(ConfigProblem(
                "sqlite.path", f"required when {where} = 'sqlite' (the file every worker "
                "process of this host shares)"))
    if s.session.store in ("cookie", "redis", "sqlite") and not (
            s.keys.encryption_keys or s.keys.encryption_passphrase):
        problems.append(ConfigProblem(
            "keys.encryption_keys",
            f"required when session.store = {s.session.store!r}: sessions must outlive this "
            "process and be readable by every process (`secure-mw gen-keys --encryption`)",
        ))
    if s.bearer_tokens is not None and s.signed_headers.verify is not None:
        problems.append(ConfigProblem(
            "bearer_tokens",
            "cannot be combined with signed_headers.verify (the proxy's assertion is the "
            "identity there; let the proxy check the bearer tokens)",
        ))


# ---------------------------------------------------------------------------------------------
# environment overrides


# ---------------------------------------------------------------------------------------------
# checks that ask the code which uses the section


def allowed_hosts_problem(values: list[str]) -> str | None:
    """``server.allowed_hosts``: entries the host guard understands."""
    from secure_mw.guards.hosts import check_entries

    return check_entries(values)


def client_jwks_problem(jwks: str) -> str | None:
    """``oidc.client_jwks``: a private JWKS whose first key can sign client assertions."""
    from secure_mw.tokens.keys import client_signing_key

    try:
        client_signing_key(jwks)
    except ValueError as exc:
        return str(exc)
    return None


def headers_problems(headers: HeadersSettings) -> list[tuple[str, str]]:
    """``[headers]``: the header set the guard would build from it."""
    from secure_mw.guards.headers import SecurityHeaders

    try:
        SecurityHeaders.from_settings(headers)
    except (ValueError, TypeError) as exc:
        return [("", str(exc))]
    return []


def redirects_problems(redirects: RedirectsSettings) -> list[tuple[str, str]]:
    """``[redirects]``: the policy the redirect guard would build, and its default target."""
    from secure_mw.guards.redirect import RedirectPolicy

    try:
        policy = RedirectPolicy(redirects.allowed_hosts)
    except (ValueError, TypeError) as exc:
        return [("allowed_hosts", str(exc))]
    if not policy.is_safe(redirects.default):
        return [("default", f"{redirects.default!r} is not a safe redirect target itself")]
    return []


def pages_problems(pages: PagesSettings) -> list[tuple[str, str]]:
    """``[pages]``: the files and URLs the login pages would serve."""
    from secure_mw.login.pages import settings_problems

    return settings_problems(pages)


def describe_hosts(server: ServerSettings) -> str:
    """The summary line of the hosts the app answers for."""
    from secure_mw.guards.hosts import describe

    return describe(server)
