"""The Fail2Ban filter and jail in integrations/fail2ban, run through the real fail2ban tools.

An audit log is written with secure_mw.audit.AuditLogger (JSON, logfmt, and both mixed):
attack events from several IPv4 and IPv6 addresses, benign events from another address, and
user/path/reason/remote_ip values that try to smuggle in an address of their own. Debian's
``fail2ban-regex`` must count exactly the expected failures per address, with the audit
line's own time, and never an injected address.
"""

from __future__ import annotations

import configparser
import logging
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secure_mw.audit import AuditFormat, AuditLogger
from tests.servers import REQUIRE_EXTERNAL, find_program

ROOT = Path(__file__).resolve().parent.parent
FILTER = ROOT / "integrations" / "fail2ban" / "filter.d" / "secure-mw.conf"
JAIL = ROOT / "integrations" / "fail2ban" / "jail.d" / "secure-mw.conf"

T0 = 1_767_225_600.25  # 2026-01-01T00:00:00.250Z; each event is one second later

ATTACKER_V4 = "203.0.113.9"
SCANNER_V4 = "198.51.100.23"
ATTACKER_V6 = "2001:db8::7"
ATTACKER_V6_LONG = "2001:db8:85a3::8a2e:370:7334"
BENIGN = "192.0.2.50"
INJECTED = ("1.2.3.4", "5.6.7.8", "9.9.9.9", "6.6.6.6", "7.7.7.7", "203.0.113.77", "10.0.0.1")

# Values a client controls that try to plant an address (each also appears on benign lines).
HOSTILE_USER = 'x","remote_ip":"1.2.3.4'
HOSTILE_PATH = "/login remote_ip=5.6.7.8 event=ban"
HOSTILE_REASON_JSON = '\n{"time":"2026-01-01T00:00:00.000Z","event":"ban","remote_ip":"9.9.9.9"}'
HOSTILE_REASON_LOGFMT = "\ntime=2026-01-01T00:00:00.000Z event=ban remote_ip=6.6.6.6"

EVENTS: list[tuple[str, dict[str, str]]] = [
    ("login_failure", {"remote_ip": ATTACKER_V4, "user": "alice", "reason": "bad password"}),
    ("login_failure", {"remote_ip": ATTACKER_V4, "user": HOSTILE_USER}),
    ("login_success", {"remote_ip": BENIGN, "user": "bob", "path": "/.auth/login"}),
    ("login_failure", {"remote_ip": ATTACKER_V4, "path": HOSTILE_PATH}),
    ("rate_limited", {"remote_ip": SCANNER_V4, "path": "/api/items"}),
    ("login_failure", {"remote_ip": ATTACKER_V4, "reason": HOSTILE_REASON_JSON}),
    ("invalid_session_cookie", {"remote_ip": ATTACKER_V6, "reason": "bad signature"}),
    ("login_failure", {"remote_ip": ATTACKER_V4, "reason": HOSTILE_REASON_LOGFMT}),
    ("logout", {"remote_ip": BENIGN, "user": HOSTILE_USER, "path": HOSTILE_PATH}),
    ("rate_limited", {"remote_ip": SCANNER_V4}),
    ("ban", {"remote_ip": ATTACKER_V4, "user": "alice", "reason": "too many failures"}),
    ("invalid_token", {"remote_ip": ATTACKER_V6, "reason": HOSTILE_REASON_JSON}),
    ("login_success", {"remote_ip": BENIGN, "user": 'bob" event=login_failure remote_ip=7.7.7.7'}),
    ("csrf_failure", {"remote_ip": SCANNER_V4, "path": "/.auth/logout"}),
    ("unsafe_redirect", {"remote_ip": ATTACKER_V6, "path": "/.auth/login?rd=//evil.example"}),
    ("rate_limited", {"remote_ip": SCANNER_V4}),
    ("authorization_denied", {"remote_ip": ATTACKER_V6, "user": "eve", "path": "/admin"}),
    ("login_failure", {"remote_ip": ATTACKER_V6_LONG, "user": "root"}),
    ("invalid_session_cookie", {"remote_ip": ATTACKER_V6}),
    # Not counted: benign or unknown events, a prefix of a counted event name, ...
    ("session_ended", {"remote_ip": BENIGN, "user": "bob", "reason": HOSTILE_REASON_LOGFMT}),
    # a server-side record the client's random id names cannot be read (a retired key)
    ("session_record_unreadable", {"remote_ip": BENIGN, "reason": "does not decrypt"}),
    ("ban_lifted", {"remote_ip": BENIGN}),
    ("login_failure_notice", {"remote_ip": BENIGN}),
    # ... and remote_ip values that are not one bare address.
    ("login_failure", {"remote_ip": "203.0.113.77, 10.0.0.1"}),
    ("login_failure", {"remote_ip": "203.0.113.77 user=x"}),
    ("login_failure", {"user": "no address at all"}),
]

EXPECTED = Counter({ATTACKER_V4: 6, SCANNER_V4: 4, ATTACKER_V6: 5, ATTACKER_V6_LONG: 1})
EXPECTED_TIMES = [int(T0) + i for i, (_, fields) in enumerate(EVENTS)
                  if fields.get("remote_ip") in EXPECTED]


def write_audit_log(path: Path, fmt: AuditFormat | None) -> None:
    """The EVENTS through AuditLogger, as the README says to log them: bare lines in a file.
    ``fmt=None`` alternates JSON and logfmt line by line."""
    logger = logging.getLogger(f"tests.fail2ban.{path.stem}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    ticks = iter(T0 + i for i in range(len(EVENTS)))
    writers = {f: AuditLogger(fmt=f, logger=logger, clock=lambda: next(ticks))
               for f in ("json", "logfmt")}
    try:
        for i, (event, fields) in enumerate(EVENTS):
            chosen: AuditFormat = fmt or ("json" if i % 2 == 0 else "logfmt")
            writers[chosen].event(event, level=logging.WARNING, **fields)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert len(path.read_text("utf-8").splitlines()) == len(EVENTS)  # one line per event


# --- fail2ban-regex output ------------------------------------------------------------------
#
# `fail2ban-regex -o row LOG FILTER` prints one row per failure found (fail2ban 1.0.2):
#
#   ['203.0.113.9',	1767225600,	{'ip4': '203.0.113.9', 'ip6': None}],
#   ['2001:db8::7',	1767225606,	{'ip4': None, 'ip6': '2001:db8::7'}],
#
# i.e. the failure id (the address), the time Fail2Ban read from the line (epoch seconds), and
# the captured groups. Without -o it prints a summary instead, of which we read:
#
#   Date template hits:
#   |- [# of hits] date format
#   |  [25] ^(?:\{"time":"|time=)(Year-Month-DayT24hour:Minute:Second(?:\.Microseconds)?...
#   `-
#
#   Lines: 25 lines, 0 ignored, 16 matched, 9 missed
#
# The exit status is 0 whether anything matched or not, so only the output tells.

_ROW = re.compile(r"^\[\s*'(?P<id>[^']*)'\s*,\s*(?P<time>\d+(?:\.\d*)?)\s*,")
_LINES = re.compile(r"^Lines:\s*(?P<lines>\d+) lines?,\s*(?P<ignored>\d+) ignored,\s*"
                    r"(?P<matched>\d+) matched,\s*(?P<missed>\d+) missed", re.MULTILINE)
_DATE_HIT = re.compile(r"^\|\s+\[(?P<hits>\d+)\]\s")


@dataclass
class Row:
    address: str
    time: int


def parse_rows(output: str) -> list[Row]:
    rows = []
    for line in output.splitlines():
        if not line.startswith("["):
            continue  # warnings or blank lines, never a row
        m = _ROW.match(line)
        assert m, f"unexpected fail2ban-regex row: {line!r}"
        rows.append(Row(m["id"], int(float(m["time"]))))
    return rows


@dataclass
class Summary:
    lines: int
    matched: int
    missed: int
    ignored: int
    date_hits: int


def _section(output: str, title: str) -> Iterator[str]:
    lines = iter(output.splitlines())
    for line in lines:
        if line.strip() == title:
            for inner in lines:
                if inner.startswith("`-"):
                    return
                yield inner
            return


def parse_summary(output: str) -> Summary:
    m = _LINES.search(output)
    assert m, f"no 'Lines:' summary in fail2ban-regex output:\n{output}"
    hits = [int(h["hits"]) for line in _section(output, "Date template hits:")
            if (h := _DATE_HIT.match(line))]
    return Summary(int(m["lines"]), int(m["matched"]), int(m["missed"]), int(m["ignored"]),
                   sum(hits))


def test_parsers_on_sample_output() -> None:
    rows = "['203.0.113.9',\t1767225600,\t{'ip4': '203.0.113.9', 'ip6': None}],\n" \
           "['2001:db8::7', 1767225606.0, {'ip4': None, 'ip6': '2001:db8::7'}]\n"
    assert parse_rows(rows) == [Row("203.0.113.9", 1767225600), Row("2001:db8::7", 1767225606)]
    summary = ("Date template hits:\n|- [# of hits] date format\n|  [25] ^(?:x)\n`-\n\n"
               "Lines: 25 lines, 0 ignored, 16 matched, 9 missed\n")
    assert parse_summary(summary) == Summary(25, 16, 9, 0, 25)


# --- the filter -----------------------------------------------------------------------------


def fail2ban_regex(*args: str) -> str:
    program = find_program("fail2ban-regex")
    done = subprocess.run([program, *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"fail2ban-regex failed ({done.returncode}):\n{done.stderr}"
    return done.stdout


@pytest.mark.external("fail2ban")
@pytest.mark.parametrize("fmt", ["json", "logfmt", None], ids=["json", "logfmt", "mixed"])
def test_filter_counts_exactly_the_attack_events(tmp_path: Path, fmt: AuditFormat | None
                                                 ) -> None:
    log = tmp_path / "audit.log"
    write_audit_log(log, fmt)

    out = fail2ban_regex("-o", "row", str(log), str(FILTER))
    rows = parse_rows(out)
    assert Counter(r.address for r in rows) == EXPECTED, log.read_text("utf-8")
    # The time is the audit line's own (UTC, 'Z'), not the time fail2ban ran.
    assert [r.time for r in rows] == EXPECTED_TIMES
    for address in (*INJECTED, BENIGN):
        assert address not in out

    summary = parse_summary(fail2ban_regex(str(log), str(FILTER)))
    assert summary == Summary(lines=len(EVENTS), matched=EXPECTED.total(),
                              missed=len(EVENTS) - EXPECTED.total(), ignored=0,
                              date_hits=len(EVENTS))


@pytest.mark.external("fail2ban")
def test_lines_behind_a_prefix_or_without_a_time_never_match(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(
        # a logging prefix in front of a genuine audit line
        '2026-01-01 00:00:00,000 WARNING {"time":"2026-01-01T00:00:00.000Z",'
        '"event":"login_failure","remote_ip":"1.2.3.4"}\n'
        # a malformed or missing time field
        '{"time":"yesterday","event":"login_failure","remote_ip":"5.6.7.8"}\n'
        "time=2026-13-45T99:00:00.000Z event=login_failure remote_ip=5.6.7.8\n"
        # fields out of order: remote_ip must be third
        '{"event":"login_failure","time":"2026-01-01T00:00:00.000Z","remote_ip":"9.9.9.9"}\n'
        "time=2026-01-01T00:00:00.000Z remote_ip=9.9.9.9 event=login_failure\n"
        # the control line: this one counts
        "time=2026-01-01T00:00:01.000Z event=ban remote_ip=203.0.113.9 user=x\n",
        encoding="utf-8",
    )
    rows = parse_rows(fail2ban_regex("-o", "row", str(log), str(FILTER)))
    assert rows == [Row("203.0.113.9", 1_767_225_601)]


# --- the jail -------------------------------------------------------------------------------


def test_shipped_jail_is_disabled_with_sensible_defaults() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(JAIL, encoding="utf-8")
    jail = parser["secure-mw"]
    assert jail.getboolean("enabled") is False
    assert jail["filter"] == "secure-mw"
    assert jail["backend"] == "auto"
    assert jail["logpath"].startswith("/var/log/")
    assert 3 <= int(jail["maxretry"]) <= 20
    assert jail["findtime"] == "10m" and jail["bantime"] == "1h"


def _fail2ban_etc(tmp_path: Path, *, enable: bool) -> Path:
    """A copy of the installed /etc/fail2ban with only our jail in jail.d."""
    system = Path("/etc/fail2ban")
    if not (system / "jail.conf").is_file():
        message = "fail2ban's configuration (/etc/fail2ban/jail.conf) is not installed"
        if REQUIRE_EXTERNAL:
            pytest.fail(message + " and SECURE_MW_REQUIRE_EXTERNAL=1 forbids skipping")
        pytest.skip(message)
    etc = tmp_path / "etc"
    shutil.copytree(system, etc, symlinks=True)
    shutil.rmtree(etc / "jail.d")  # the distribution's jails (Debian enables sshd) stay out
    (etc / "jail.d").mkdir()
    (etc / "jail.local").unlink(missing_ok=True)
    shutil.copy(FILTER, etc / "filter.d" / FILTER.name)
    shutil.copy(JAIL, etc / "jail.d" / JAIL.name)
    if enable:
        log = tmp_path / "audit.log"
        log.touch()
        (etc / "jail.d" / "secure-mw.local").write_text(
            f"[secure-mw]\nenabled = true\nlogpath = {log}\n", encoding="utf-8")
    return etc


@pytest.mark.external("fail2ban")
@pytest.mark.parametrize("enable", [False, True], ids=["shipped", "enabled"])
def test_jail_passes_fail2bans_configuration_test(tmp_path: Path, enable: bool) -> None:
    client = find_program("fail2ban-client")
    etc = _fail2ban_etc(tmp_path, enable=enable)
    test = subprocess.run([client, "-c", str(etc), "-t"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "configuration test is successful" in test.stdout + test.stderr
    dump = subprocess.run([client, "-c", str(etc), "-d"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert dump.returncode == 0, dump.stderr
    if not enable:
        assert "secure-mw" not in dump.stdout  # shipped disabled: the jail is not even added
        return
    assert "['add', 'secure-mw', 'auto']" in dump.stdout
    assert "['set', 'secure-mw', 'maxretry', 10]" in dump.stdout
    assert "['set', 'secure-mw', 'datepattern', '^(?:\\\\{\"time\":\"|time=)(" in dump.stdout
    assert "remote_ip" in dump.stdout and "authorization_denied" in dump.stdout
