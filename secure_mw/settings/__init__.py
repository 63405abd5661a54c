"""One typed settings tree for every part of secure_mw.

Settings come from a mapping, a TOML file or both plus environment overrides::

    settings = Settings.from_file("secure-mw.toml")
    settings = Settings.from_mapping({"session": {"store": "redis", "redis_url": "..."}})
    settings = Settings.from_environment()          # $SECURE_MW_CONFIG (optional) + SECURE_MW_*

* Section and key names are those of ``secure-mw.example.toml``.
* Durations are written ``"90s"``, ``"5m"``, ``"1h"``, ``"30d"`` (or combined, ``"1h30m"``;
  a bare number is seconds) and held as float seconds.
* Every secret key ``k`` also accepts ``k_file = "/path"``; a file readable by group or
  others is refused, naming the path and its mode.
* Environment overrides: ``SECURE_MW_<SECTION>__<KEY>`` (``SECURE_MW_SESSION__STORE=redis``,
  ``SECURE_MW_OIDC__CLIENT_SECRET_FILE=/run/secrets/x``); lists as JSON or comma-separated.
* Unknown keys are errors with a did-you-mean suggestion; every problem is collected and
  raised together in one :class:`~secure_mw.errors.ConfigError`, each with its key path.

The package: :mod:`~secure_mw.settings.schema` (the value parsers, the sections and the root
:class:`Settings`), :mod:`~secure_mw.settings.builder` (mapping, TOML file, environment) and
:mod:`~secure_mw.settings.checks` (checks that span sections or ask other packages). Importing
it imports no guard, token or login code.
"""

from secure_mw.settings.builder import ENV_PREFIX
from secure_mw.settings.builder import _unwrap_optional as _unwrap_optional
from secure_mw.settings.schema import (
    AccessControlSettings,
    AccessRule,
    AuditSettings,
    BearerTokensSettings,
    HeadersSettings,
    KeysSettings,
    LocalUsersSettings,
    MetricsSettings,
    NamedNetwork,
    OIDCSettings,
    PagesSettings,
    RateLimitRule,
    RateLimitsSettings,
    RedirectsSettings,
    RedisSettings,
    RegulationSettings,
    ServerSettings,
    SessionSettings,
    Settings,
    SignedHeadersSettings,
    SignedHeadersVerifySettings,
    SqliteSettings,
    VaultSettings,
    parse_duration,
    parse_rate_limit,
    parse_size,
)

__all__ = [
    "ENV_PREFIX",
    "AccessControlSettings",
    "AccessRule",
    "AuditSettings",
    "BearerTokensSettings",
    "HeadersSettings",
    "KeysSettings",
    "LocalUsersSettings",
    "MetricsSettings",
    "NamedNetwork",
    "OIDCSettings",
    "PagesSettings",
    "RateLimitRule",
    "RateLimitsSettings",
    "RedirectsSettings",
    "RedisSettings",
    "RegulationSettings",
    "ServerSettings",
    "SessionSettings",
    "Settings",
    "SignedHeadersSettings",
    "SignedHeadersVerifySettings",
    "SqliteSettings",
    "VaultSettings",
    "parse_duration",
    "parse_rate_limit",
    "parse_size",
]
