from __future__ import annotations

import json
import logging

import pytest

from secure_mw.audit import AuditLogger, format_event

NOW = 1795000000.125  # fixed clock


def test_json_line_has_time_event_first_and_is_one_line() -> None:
    line = format_event("login_failure", {"user": "alice", "remote_ip": "203.0.113.9",
                                          "method": "POST", "host": "app.example.com",
                                          "path": "/.auth/login", "reason": "bad password"},
                        now=NOW)
    assert "\n" not in line
    record = json.loads(line)
    assert list(record)[:2] == ["time", "event"]
    assert record["time"] == "2026-11-18T11:06:40.125Z"
    assert record["event"] == "login_failure" and record["remote_ip"] == "203.0.113.9"


def test_logfmt_line_quotes_only_when_needed() -> None:
    line = format_event("ban", {"user": "bob smith", "remote_ip": "2001:db8::1", "count": 3,
                                "banned": True, "rule": None, "reason": 'say "hi"'},
                        fmt="logfmt", now=NOW)
    assert line == ('time=2026-11-18T11:06:40.125Z event=ban remote_ip=2001:db8::1 '
                    'user="bob smith" count=3 banned=true rule="" reason="say \\"hi\\""')


@pytest.mark.parametrize("name", ["password", "client_secret", "token", "id_token", "cookie",
                                  "Authorization", "session_id", "sid", "assertion", "totp",
                                  "private_key", "key", "passphrase", "refresh_token"])
def test_secret_fields_are_redacted(name: str) -> None:
    for fmt in ("json", "logfmt"):
        line = format_event("x", {name: "hunter2-value"}, fmt=fmt, now=NOW)  # type: ignore[arg-type]
        assert "hunter2" not in line and "[redacted]" in line


@pytest.mark.parametrize("hostile", ["alice\nevent=login_success", "a\r\nb", "a\x00b",
                                     "a\u2028b", "\x1b[31mred"])
def test_values_cannot_forge_a_second_line(hostile: str) -> None:
    for fmt in ("json", "logfmt"):
        line = format_event("login_failure", {"user": hostile, "remote_ip": "192.0.2.1"},
                            fmt=fmt, now=NOW)  # type: ignore[arg-type]
        assert "\n" not in line and "\r" not in line and "\x00" not in line
        assert "\u2028" not in line and "\x1b" not in line
        # the client address stands before any client-controlled value
        prefix = ('"event":"login_failure","remote_ip":"192.0.2.1",' if fmt == "json"
                  else " event=login_failure remote_ip=192.0.2.1 user=")
        assert prefix in line


def test_long_values_are_cut() -> None:
    line = format_event("x", {"path": "/" + "a" * 10000}, now=NOW)
    assert len(line) < 700


def test_time_and_event_cannot_be_overridden() -> None:
    record = json.loads(format_event("real", {"time": "forged", "event": "forged"}, now=NOW))
    assert record["event"] == "real" and record["time"].startswith("2026-")


def test_logger_writes_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLogger(fmt="logfmt", clock=lambda: NOW)
    with caplog.at_level(logging.INFO, logger="secure_mw.audit"):
        written = audit.event("rate_limited", path="/api", remote_ip="198.51.100.7")
    assert caplog.records[-1].getMessage() == written
    assert caplog.records[-1].levelno == logging.WARNING
    assert written.startswith("time=2026-11-18T11:06:40.125Z event=rate_limited ")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json"):
        AuditLogger(fmt="xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("char", ["\x85", "\u202e", "\u2066", "\u200f", "\x9b", "\u061c"])
def test_line_breaking_and_bidi_characters_are_escaped(char: str) -> None:
    line = format_event("login_failure", {"remote_ip": "203.0.113.9", "user": f"a{char}b"},
                        now=0)
    assert char not in line
    assert ("\\x" if ord(char) < 0x100 else "\\u") + format(ord(char), "02x" if ord(char)
                                                             < 0x100 else "04x") in line


def test_nested_mappings_have_secret_entries_redacted() -> None:
    line = format_event("invalid_token", {
        "remote_ip": "203.0.113.9",
        "headers": {"Authorization": "Bearer abc.def.ghi", "Cookie": "sid=s3cret",
                    "Accept": "text/html", "deep": {"client_secret": "xyz"}},
    }, now=0)
    for secret in ("abc.def.ghi", "s3cret", "xyz"):
        assert secret not in line
    assert "text/html" in line
