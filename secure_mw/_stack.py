"""What ``protect()`` builds, decided once for both flavours."""

from __future__ import annotations

from urllib.parse import urlsplit

from secure_mw.errors import ConfigError, ConfigProblem
from secure_mw.settings import Settings


def check_identity_source(settings: Settings) -> None:
    """``protect()`` needs somewhere to log users in."""
    if settings.oidc is None:
        raise ConfigError([ConfigProblem(
            "oidc", "protect() needs an [oidc] section for now; the built-in password login "
                    "is not available yet")])


def identity_provider_hosts(settings: Settings) -> list[str]:
    """Hosts our own login and logout redirects go to (the open-redirect guard allows
    them)."""
    if settings.oidc is None:
        return []
    parts = urlsplit(settings.oidc.issuer)
    return [parts.netloc.lower()] if parts.netloc else []
