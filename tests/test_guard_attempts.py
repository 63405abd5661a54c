"""The regulated login attempt: the device cookie (sealed, purpose-bound, per user, with a
lifetime) and the reserve/settle sequence, including every way the store can fail (a
regulator that raises stands in for the store: the faults are injected, the rest is real)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from secure_mw._driver import run_sync
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.errors import StoreUnavailable
from secure_mw.guards.attempts import DeviceCookies, LoginAttempts, StoreFailures
from secure_mw.guards.regulation import MemoryRegulator, Reservation
from secure_mw.http import RequestView
from secure_mw.session.cookies import CookieJarSpec
from tests.clock import Clock

T0 = 1_700_000_000.0
NAME = "__Host-app_device"


def view(cookie: str | None = None, client: str = "192.0.2.10") -> RequestView:
    headers = {"cookie": f"{NAME}={cookie}"} if cookie else {}
    return RequestView(method="POST", scheme="https", host="app.example.com",
                       path="/login", query_string="", headers=headers, client=client)


def value_of(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def devices(clock: Clock) -> DeviceCookies:
    return DeviceCookies(KeyRing.generate(), CookieJarSpec(), "app", lifetime=3600,
                         clock=clock)


# -- device cookies ---------------------------------------------------------------------------


def test_a_device_cookie_names_its_user_exactly(devices: DeviceCookies) -> None:
    line = devices.issue("Alice")
    assert line.startswith(f"{NAME}=") and "Max-Age=3600" in line
    assert "HttpOnly" in line and "Secure" in line and "SameSite=Strict" in line
    device = devices.read(view(value_of(line)), "Alice")
    assert device and len(device) >= 16
    assert devices.read(view(value_of(devices.issue("alice", device))), "alice") == device
    assert devices.read(view(value_of(line)), "bob") is None        # another user
    # The name as the app was given it: an account ALICE of an app whose names are
    # case-sensitive earns no cookie for alice (the outside review minted them so).
    for other in ("alice", " Alice", "ALICE", "\uff21lice"):
        assert devices.read(view(value_of(line)), other) is None


def test_a_device_cookie_of_before_a_users_epoch_is_ignored(devices: DeviceCookies,
                                                             clock: Clock) -> None:
    """``not_before``: a user added again under the name (or whose sessions were ended)
    inherits no device of the earlier one."""
    line = devices.issue("bob")
    clock.advance(10)
    assert devices.read(view(value_of(line)), "bob", not_before=T0 - 1)
    assert devices.read(view(value_of(line)), "bob", not_before=T0 + 5) is None


def test_a_device_cookie_expires(devices: DeviceCookies, clock: Clock) -> None:
    line = devices.issue("alice")
    clock.advance(3599)
    assert devices.read(view(value_of(line)), "alice")
    clock.advance(1)
    assert devices.read(view(value_of(line)), "alice") is None
    with pytest.raises(ValueError):
        DeviceCookies(KeyRing.generate(), CookieJarSpec(), "app", lifetime=0)


def test_a_forged_or_foreign_device_cookie_is_ignored(devices: DeviceCookies,
                                                      clock: Clock) -> None:
    good = value_of(devices.issue("alice"))
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    other_purpose = DeviceCookies(devices.keyring, CookieJarSpec(), "other", clock=clock)
    foreign = value_of(other_purpose.issue("alice"))        # same keys, another cookie
    other_keys = DeviceCookies(KeyRing.generate(), CookieJarSpec(), "app", clock=clock)
    # Another application: same keys and cookie name, another key prefix.
    other_app = DeviceCookies(devices.keyring, CookieJarSpec(), "app", purpose="appB:",
                              clock=clock)
    aad = devices._aad
    for value in (tampered, foreign, value_of(other_keys.issue("alice")),
                  value_of(other_app.issue("alice")), "x" * 3000, "",
                  devices.keyring.encrypt(b'["alice",1]', f"secure_mw/device:{NAME}".encode()),
                  devices.keyring.encrypt(b'["alice","d"]', aad),
                  devices.keyring.encrypt(b'["alice","d",true]', aad)):
        assert devices.read(view(value), "alice") is None
    assert other_app.read(view(value_of(other_app.issue("alice"))), "alice")


# -- the sequence -------------------------------------------------------------------------------


class Faulty:
    """A memory regulator whose named steps raise StoreUnavailable."""

    def __init__(self, *failing: str) -> None:
        self.inner = MemoryRegulator()
        self.failing = set(failing)
        self.nonblocking = True

    def __getattr__(self, name: str) -> Any:
        step = name.removeprefix("a")
        if step in self.failing:
            def broken(*args: Any, **kwargs: Any) -> Any:
                raise StoreUnavailable("regulation store unavailable: 127.0.0.1:6379")
            return broken
        return getattr(self.inner, name)


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "test.audit"]


@pytest.fixture
def audit() -> AuditLogger:
    return AuditLogger(logger=logging.getLogger("test.audit"))


def test_a_failure_is_counted_and_a_success_gets_the_device_cookie(
        devices: DeviceCookies, audit: AuditLogger, caplog: pytest.LogCaptureFixture) -> None:
    attempts = LoginAttempts(MemoryRegulator(), devices=devices, audit=audit)
    turn = run_sync(attempts.begin(view(), "alice"))
    assert isinstance(turn.reservation, Reservation) and turn.refusal is None
    assert run_sync(attempts.failed(turn, view(), "invalid credentials")) is None
    turn = run_sync(attempts.begin(view(), "alice"))
    cookies = run_sync(attempts.succeeded(turn, view()))
    assert len(cookies) == 1 and cookies[0].startswith(f"{NAME}=")
    device_turn = run_sync(attempts.begin(view(value_of(cookies[0])), "alice"))
    assert device_turn.device and [s.kind for s in device_turn.reservation.subjects] == \
        ["device", "devices", "ip"]  # type: ignore[union-attr]
    assert [e["event"] for e in events(caplog)] == ["login_failure"]


def test_a_second_factor_is_not_regulated_by_a_device(devices: DeviceCookies,
                                                      audit: AuditLogger) -> None:
    """``device=False`` (the code step of the built-in login): the cookie's id is kept for
    the cookie issued next, but the user's budgets regulate the attempt."""
    attempts = LoginAttempts(MemoryRegulator(), devices=devices, audit=audit)
    cookie = value_of(devices.issue("alice"))
    turn = run_sync(attempts.begin(view(cookie), "alice", device=False))
    assert turn.device and [s.kind for s in turn.reservation.subjects] == \
        ["pair", "user", "ip"]  # type: ignore[union-attr]
    again = run_sync(attempts.succeeded(turn, view(cookie)))
    assert devices.read(view(value_of(again[0])), "alice") == turn.device


def test_a_first_factor_keeps_the_failures_and_gets_no_device(devices: DeviceCookies,
                                                              audit: AuditLogger) -> None:
    regulator = MemoryRegulator()
    attempts = LoginAttempts(regulator, devices=devices, audit=audit)
    for _ in range(2):
        turn = run_sync(attempts.begin(view(), "alice"))
        run_sync(attempts.failed(turn, view(), "invalid credentials"))
    turn = run_sync(attempts.begin(view(), "alice"))
    assert run_sync(attempts.succeeded(turn, view(), complete=False)) == []
    turn = run_sync(attempts.begin(view(), "alice"))          # the two failures stand
    assert run_sync(attempts.failed(turn, view(), "second factor: wrong code")) is not None


def test_the_guard_spelling_names_the_cookie_and_keeps_failures(devices: DeviceCookies,
                                                                audit: AuditLogger) -> None:
    regulator = MemoryRegulator()
    attempts = LoginAttempts(regulator, devices=devices, audit=audit)
    turn = run_sync(attempts.begin(view(), "alice"))
    run_sync(attempts.failed(turn, view(), "rejected"))
    own = run_sync(attempts.begin(view(), "alice", spelling="ALICE", clears=False))
    cookie = value_of(run_sync(attempts.succeeded(own, view()))[0])
    assert devices.read(view(cookie), "ALICE") and not devices.read(view(cookie), "alice")
    other = run_sync(attempts.begin(view(cookie), "alice"))
    assert other.device is None
    run_sync(attempts.released(other, view()))
    for _ in range(2):     # alice's first failure is still counted: the third bans
        turn = run_sync(attempts.begin(view(), "alice"))
        ban = run_sync(attempts.failed(turn, view(), "rejected"))
    assert ban is not None and ban.subject == "pair"


def test_attempts_without_an_address_share_one_address_budget(
        audit: AuditLogger, caplog: pytest.LogCaptureFixture) -> None:
    attempts = LoginAttempts(MemoryRegulator(), audit=audit)
    with caplog.at_level(logging.WARNING, logger="secure_mw.guards"):
        for n in range(20):
            turn = run_sync(attempts.begin(view(client=""), f"user{n}"))
            assert turn.reservation is not None
            assert [s.kind for s in turn.reservation.subjects] == ["pair", "user", "ip"]
            run_sync(attempts.failed(turn, view(client=""), "invalid credentials"))
    refused = run_sync(attempts.begin(view(client=""), "user99"))
    assert refused.refusal is not None and refused.refusal.subject == "ip"
    warnings = [r for r in caplog.records if r.name == "secure_mw.guards"
                and "without a client address" in r.getMessage()]
    assert len(warnings) <= 1    # once per process (an earlier test may have had it)
    assert isinstance(run_sync(attempts.begin(view(), "user99")).reservation, Reservation)


def test_refusals_are_logged(audit: AuditLogger, caplog: pytest.LogCaptureFixture) -> None:
    attempts = LoginAttempts(MemoryRegulator(max_retries=1), audit=audit)
    turn = run_sync(attempts.begin(view(), "alice"))
    busy = run_sync(attempts.begin(view(), "alice"))
    assert busy.refusal is not None and busy.refusal.reason == "busy"
    ban = run_sync(attempts.failed(turn, view(), "invalid credentials"))
    assert ban is not None and ban.subject == "pair"
    banned = run_sync(attempts.begin(view(), "alice"))
    assert banned.refusal is not None and banned.refusal.reason == "banned"
    assert [(e["event"], e.get("reason")) for e in events(caplog)] == [
        ("login_failure", "attempts in flight (pair)"),
        ("login_failure", "invalid credentials"), ("ban", "pair"),
        ("login_failure", "banned (pair)")]


@pytest.mark.parametrize("step", ["reserve", "fail"])
def test_a_store_that_cannot_reserve_or_record_refuses(
        step: str, audit: AuditLogger, caplog: pytest.LogCaptureFixture) -> None:
    attempts = LoginAttempts(Faulty(step), audit=audit)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable):
        turn = run_sync(attempts.begin(view(), "alice"))
        run_sync(attempts.failed(turn, view(), "invalid credentials"))
    assert attempts.without_store.as_dict() == {"refused": 1}
    lines = [e for e in events(caplog) if e["event"] == "regulation_unavailable"]
    assert [(e["step"], e["outcome"]) for e in lines] == [(step, "refused")]
    assert "127.0.0.1:6379" in lines[0]["reason"]


@pytest.mark.parametrize("step", ["succeed", "release"])
def test_a_success_or_release_that_cannot_be_recorded_stands(
        step: str, devices: DeviceCookies, audit: AuditLogger,
        caplog: pytest.LogCaptureFixture) -> None:
    attempts = LoginAttempts(Faulty(step), devices=devices,  # type: ignore[arg-type]
                             audit=audit)
    turn = run_sync(attempts.begin(view(), "alice"))
    if step == "succeed":
        assert len(run_sync(attempts.succeeded(turn, view()))) == 1
    else:
        assert run_sync(attempts.released(turn, view())) is None
    assert attempts.without_store["unrecorded"] == 1 and attempts.without_store.total == 1
    lines = [e for e in events(caplog) if e["event"] == "regulation_unavailable"]
    assert [(e["step"], e["outcome"]) for e in lines] == [(step, "unrecorded")]


def test_store_failures_count_by_outcome() -> None:
    counts = StoreFailures()
    for outcome in ("refused", "allowed", "refused"):
        counts.add(outcome)
    assert counts["refused"] == 2 and counts["allowed"] == 1 and counts["other"] == 0
    assert counts.total == 3 and "refused" in repr(counts)
