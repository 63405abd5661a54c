"""Structured audit events: one line per security decision.

Each event is one line, either JSON (default) or logfmt, with a fixed leading order
``time event remote_ip`` followed by the other fields given, so a fail2ban filter can anchor
on the client address before any value a client controls::

    {"time":"2026-11-22T17:10:21.123Z","event":"login_failure","remote_ip":"203.0.113.9",...}
    time=2026-11-22T17:10:21.123Z event=login_failure remote_ip=203.0.113.9 user=alice ...

Values are made safe before they are written: control characters are escaped, long values are
cut, and any field whose name suggests a secret (password, token, secret, cookie,
authorization, key material) is replaced by ``[redacted]``: the audit log never holds a secret.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Literal

from secure_mw import _observe

__all__ = ["AuditLogger", "audit_logger", "format_event"]

AuditFormat = Literal["json", "logfmt"]

_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|cookie|authori[sz]ation|credential|private|"
    r"(^|_)key$|assertion|otp|totp|session_id|sid$",
    re.IGNORECASE,
)
# Control characters, NEL and the C1 range, line/paragraph separators and the bidirectional
# overrides/isolates (which could make a line read differently from what it holds).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_MAX_VALUE = 512
_LOGFMT_BARE = re.compile(r"^[A-Za-z0-9_.:/@+\-\[\]]+$")

Scalar = str | int | float | bool | None


def _redacted(value: object, depth: int = 0) -> object:
    """A mapping (headers, claims …) with secret-named entries redacted, at any depth."""
    if depth > 4:
        return "…"
    if isinstance(value, Mapping):
        return {str(k): "[redacted]" if _SECRET_NAME.search(str(k))
                else _redacted(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v, depth + 1) for v in value]
    return value


def _clean(value: object) -> Scalar:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping | list | tuple):
        value = json.dumps(_redacted(value), ensure_ascii=False, default=str)
    text = str(value)
    if len(text) > _MAX_VALUE:
        text = text[:_MAX_VALUE] + "…"
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _utc_stamp(now: float) -> str:
    whole = int(now)
    millis = int((now - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _logfmt_value(value: Scalar) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _LOGFMT_BARE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_event(
    event: str, fields: Mapping[str, object], *, fmt: AuditFormat = "json", now: float
) -> str:
    """Render one audit line. Secret-looking fields are redacted; values are sanitised."""
    record: dict[str, Scalar] = {"time": _utc_stamp(now), "event": _clean(event)}
    if "remote_ip" in fields:  # third, so a log filter can anchor on it before any user input
        record["remote_ip"] = _clean(fields["remote_ip"])
    for name, value in fields.items():
        if name in record:
            continue
        record[name] = "[redacted]" if _SECRET_NAME.search(name) else _clean(value)
    if fmt == "json":
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return " ".join(f"{k}={_logfmt_value(v)}" for k, v in record.items())


class AuditLogger:
    """Writes audit events to a :mod:`logging` logger (default ``secure_mw.audit``)."""

    def __init__(
        self,
        *,
        fmt: AuditFormat = "json",
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if fmt not in ("json", "logfmt"):
            raise ValueError(f"audit format must be 'json' or 'logfmt', not {fmt!r}")
        self.fmt: AuditFormat = fmt
        self.logger = logger or logging.getLogger("secure_mw.audit")
        self._clock = clock

    def event(self, event: str, /, *, level: int = logging.WARNING, **fields: object) -> str:
        """Write one event; returns the line written (handy for tests)."""
        line = format_event(event, fields, fmt=self.fmt, now=self._clock())
        self.logger.log(level, line)
        if _observe.active and (seen := _observe.current.get()) is not None:
            seen.observer.audited(seen, event, fields)   # metrics and traces count it too
        return line


_default = AuditLogger()


def audit_logger() -> AuditLogger:
    """The process-wide default audit logger (JSON lines on ``secure_mw.audit``)."""
    return _default
