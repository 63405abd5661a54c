"""Start-up warnings about how secure_mw is deployed, not about the configuration's validity.

:func:`deployment_warnings` names what a configuration accepts but a hardened deployment
should not do: running as root, a configuration file with secrets written in it that others
can read, a users or TOTP file readable by others, session cookies without ``Secure`` on a
public host, a ``bypass`` default policy, HSTS turned off on an https site. ``protect()``
logs each once per process (logger ``secure_mw.deployment``); ``secure-mw check-config``
prints them with the other warnings. The memory store in several workers has its own
check (:mod:`secure_mw.session.memory_store`). The list is in SECURITY.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import sys
import threading
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from secure_mw.guards.hosts import LOOPBACK_HOSTS
from secure_mw.settings import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["deployment_warnings", "log_deployment_warnings"]

log = logging.getLogger("secure_mw.deployment")

_LOOPBACK = (*LOOPBACK_HOSTS, "::1")        # urlsplit gives IPv6 hosts without brackets
_logged: set[str] = set()
_lock = threading.Lock()


def deployment_warnings(settings: Settings, *, config_file: str | os.PathLike[str] | None = None,
                        euid: Callable[[], int] | None = None) -> list[str]:
    """What a hardened deployment of ``settings`` should change (each a sentence naming the
    setting or file and the fix); empty when there is nothing to say. ``config_file`` is the
    TOML file ``settings`` came from, when known; ``euid`` the effective user id (default
    :func:`os.geteuid` where the platform has it)."""
    out: list[str] = []
    uid = euid if euid is not None else getattr(os, "geteuid", None)
    if uid is not None and uid() == 0:
        out.append("running as root: a flaw in the application or a library then has the "
                   "whole machine; run the server as an unprivileged user")
    if config_file is not None:
        out += _config_file_warnings(Path(config_file))
    for key, path in (("local_users.file", settings.local_users.file),
                      ("local_users.totp_file", settings.local_users.totp_file)):
        mode = _mode(Path(path))
        if mode is not None and mode & 0o077:
            what = "password hashes" if key == "local_users.file" else "encrypted TOTP secrets"
            out.append(f"{key} {str(path)!r} has mode {mode:04o}: it holds {what}; make it "
                       f"readable by the server's user only (chmod 600 {path})")
    public = _public_hosts(settings)
    if not settings.session.cookie_secure and public:
        out.append(f"session.cookie_secure is false while the app answers for "
                   f"{', '.join(public)}: the session cookie would also be sent over plain "
                   "http, where anyone on the path can take it; set it to true (false is for "
                   "plain-http development on localhost)")
    if settings.access_control.default_policy == "bypass":
        out.append("access_control.default_policy is \"bypass\": every request no rule "
                   "matches reaches the app without a login; use \"deny\" and list what is "
                   "public in bypass rules")
    if _https(settings) and _hsts_off(settings):
        out.append("HSTS is off on an https site (headers.hsts_max_age is 0, or an override "
                   "removes Strict-Transport-Security for \"/\"): a first visit over http can "
                   "be taken over; keep headers.hsts_max_age at a year or more")
    return out


def log_deployment_warnings(settings: Settings, **kwargs: Any) -> None:
    """Log :func:`deployment_warnings` at WARNING, each message once per process."""
    for message in deployment_warnings(settings, **kwargs):
        with _lock:
            if message in _logged:
                continue
            _logged.add(message)
        log.warning(message)


def _mode(path: Path) -> int | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def _config_file_warnings(path: Path) -> list[str]:
    """A configuration file readable by group or others with secret values written in it."""
    mode = _mode(path)
    if mode is None or not mode & 0o044:
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return []                      # its problems are reported as problems
    inline = _inline_secrets(Settings, data, "")
    if not inline:
        return []
    return [f"{str(path)!r} has mode {mode:04o} and holds secrets written in it "
            f"({', '.join(inline)}): others on this machine can read them; chmod 600 it, or "
            f"move each into a file of its own (<key>_file = \"/path\", mode 0600)"]


def _inline_secrets(cls: type[Any], data: Mapping[str, Any], prefix: str) -> list[str]:
    """The key paths of ``data`` that give a secret field of ``cls`` its value directly."""
    found: list[str] = []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            continue
        if f.metadata.get("secret"):
            if _holds_secret(key, value):
                found.append(prefix + key)
        elif isinstance(value, Mapping):
            tp = hints.get(key)
            sub = next((c for c in (tp, *typing.get_args(tp))
                        if isinstance(c, type) and dataclasses.is_dataclass(c)), None)
            if sub is not None:
                found += _inline_secrets(sub, value, f"{prefix}{key}.")
    return found


def _holds_secret(key: str, value: object) -> bool:
    if not value:
        return False
    if (key.endswith("redis_url") or key == "url") and isinstance(value, str):
        try:
            return urlsplit(value).password is not None    # a URL without one is no secret
        except ValueError:
            return True
    return True


def _public_hosts(settings: Settings) -> list[str]:
    """The non-loopback host names the app answers for."""
    hosts = list(settings.server.allowed_hosts)
    if settings.server.external_url:
        host = urlsplit(settings.server.external_url).hostname
        if host:
            hosts.append(host)
    out = []
    for host in hosts:
        name = host.lower().rsplit(":", 1)[0] if host.count(":") == 1 else host.lower()
        if name and name not in _LOOPBACK and name not in out:
            out.append(name)
    return out


def _https(settings: Settings) -> bool:
    url = settings.server.external_url
    return bool(url) and urlsplit(str(url)).scheme == "https"


def _hsts_off(settings: Settings) -> bool:
    if settings.headers.hsts_max_age <= 0:
        return True
    root = settings.headers.overrides.get("/", {})
    return any(name.lower() == "strict-transport-security" and not value
               for name, value in root.items())
