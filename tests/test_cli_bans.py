"""``secure-mw bans list|lift``, run as a real process against a real redis-server holding
the bans of a real regulator (what another process of the application wrote)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from secure_mw.crypto import KeyRing
from secure_mw.guards.regulation import RedisRegulator, Refusal, Reservation, label
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    environ |= {"PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "secure_mw.cli", "bans", *args],
                          capture_output=True, text=True, timeout=120, env=environ,
                          check=False)


def config(tmp_path: Path, server: RedisServer, prefix: str = "appC:") -> Path:
    path = tmp_path / "secure-mw.toml"
    path.write_text(f'[keys]\nencryption_keys = ["{KeyRing.new_key_text()}"]\n'
                    f'[session]\nstore = "redis"\nredis_url = "{server.url}"\n'
                    f'redis_key_prefix = "{prefix}"\n', encoding="utf-8")
    return path


def fail(reg: RedisRegulator, user: str, ip: str) -> None:
    turn = reg.reserve(user=user, ip=ip)
    if isinstance(turn, Reservation):
        reg.fail(turn)


def rows(stdout: str) -> list[list[str]]:
    import re

    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]


def test_bans_are_listed_and_lifted_across_processes(tmp_path: Path,
                                                     redis_server: RedisServer) -> None:
    path = config(tmp_path, redis_server)
    reg = RedisRegulator(redis_server.url, prefix="appC:")
    other_app = RedisRegulator(redis_server.url, prefix="appD:")
    try:
        empty = cli("list", "--config", str(path))
        assert empty.returncode == 0 and empty.stdout == "" and "no bans" in empty.stderr
        for _ in range(3):
            fail(reg, "Ivan", "203.0.113.5")            # the pair (ivan, 203.0.113.5)
        for n in range(20):
            fail(reg, f"spray{n}", "198.51.100.9")       # the address
        for _ in range(3):
            fail(other_app, "ivan", "203.0.113.5")       # another app: not listed here
        listed = cli("list", "--config", str(path))
        assert listed.returncode == 0, listed.stderr
        table = rows(listed.stdout)
        assert table[0] == ["KIND", "USER", "ADDRESS", "UNTIL (UTC)"]
        assert sorted(r[:3] for r in table[1:]) == [
            ["ip", "-", label("ip", "198.51.100.9")],
            ["pair", label("user", "ivan"), label("ip", "203.0.113.5")]]
        assert "ivan" not in listed.stdout.lower() and "203.0.113" not in listed.stdout
        lifted = cli("lift", "--user", " IVAN ", "--config", str(path))
        assert lifted.returncode == 0 and "lifted 1 ban(s)" in lifted.stderr
        assert isinstance(reg.reserve(user="ivan", ip="203.0.113.5"), Reservation)
        assert not isinstance(other_app.reserve(user="ivan", ip="203.0.113.5"), Reservation)
        by_env = cli("lift", "--ip", "198.51.100.9", env={"SECURE_MW_CONFIG": str(path)})
        assert by_env.returncode == 0 and "lifted 1 ban(s)" in by_env.stderr
        assert cli("list", "--config", str(path)).stdout == ""
    finally:
        reg.close()
        other_app.close()


def test_bans_in_memory_cannot_be_managed_from_outside(tmp_path: Path) -> None:
    path = tmp_path / "memory.toml"
    path.write_text("[regulation]\nmax_retries = 3\n", encoding="utf-8")
    result = cli("list", "--config", str(path))
    assert result.returncode == 1 and "memory of each application process" in result.stderr


def test_bans_with_redis_down_or_bad_arguments(tmp_path: Path,
                                               redis_server: RedisServer) -> None:
    path = config(tmp_path, redis_server)
    redis_server.stop()
    down = cli("list", "--config", str(path))
    assert down.returncode == 1 and "regulation store unavailable" in down.stderr
    assert f"127.0.0.1:{redis_server.port}" in down.stderr and "redis://" not in down.stderr
    both = cli("lift", "--user", "a", "--ip", "192.0.2.1", "--config", str(path))
    assert both.returncode == 2 and "not allowed with" in both.stderr
    neither = cli("lift", "--config", str(path))
    assert neither.returncode == 2
    broken = tmp_path / "broken.toml"
    broken.write_text("[regulation]\nmax_retrys = 3\n", encoding="utf-8")
    bad = cli("list", "--config", str(broken))
    assert bad.returncode == 1 and "regulation.max_retrys" in bad.stderr


def test_lift_refuses_what_names_no_ban(tmp_path: Path, redis_server: RedisServer) -> None:
    """The review: ``bans lift --user ''`` printed "lifted 0 ban(s) of address None" and
    exited 0, and ``--ip 1.2.3.4/24`` silently lifted nothing. Both are usage errors now; an
    IPv6 network inside one /64 names its subject, ``unknown`` the attempts without an
    address."""
    path = config(tmp_path, redis_server)
    reg = RedisRegulator(redis_server.url, prefix="appC:")
    try:
        for args, words in ((("--user", ""), "--user needs a user name"),
                            (("--user", "   "), "--user needs a user name"),
                            (("--ip", "1.2.3.4/24"), "not of a network"),
                            (("--ip", "2001:db8::/48"), "not of a network"),
                            (("--ip", "not-an-address"), "not an IP address")):
            refused = cli("lift", *args, "--config", str(path))
            assert refused.returncode == 2 and words in refused.stderr, (args, refused.stderr)
            assert "None" not in refused.stderr
        for target, banned in (("2001:db8:1:2::/64", "2001:db8:1:2::7"),
                               ("2001:db8:1:2:ffff::/80", "2001:db8:1:2::8"),
                               ("unknown", "unknown"), ("192.0.2.1/32", "192.0.2.1")):
            for n in range(20):
                fail(reg, f"spray{n}", banned)
            assert isinstance(reg.reserve(user="x", ip=banned), Refusal)
            lifted = cli("lift", "--ip", target, "--config", str(path))
            assert lifted.returncode == 0, lifted.stderr
            assert f"lifted 1 ban(s) of address {target!r}" in lifted.stderr
            free = reg.reserve(user="x", ip=banned)
            assert isinstance(free, Reservation)
            reg.release(free)
    finally:
        reg.close()


def test_bans_in_sqlite_are_listed_and_lifted_from_outside(tmp_path: Path) -> None:
    """The bans another process wrote to the [sqlite] file: listed by label, lifted by
    name, seen by that process at its next attempt."""
    from secure_mw._sqlite import Database
    from secure_mw.guards.regulation_sqlite import SqliteRegulator

    db_path = tmp_path / "state" / "store.sqlite3"
    path = tmp_path / "secure-mw.toml"
    path.write_text(f'[keys]\nencryption_keys = ["{KeyRing.new_key_text()}"]\n'
                    f'[session]\nstore = "sqlite"\n[sqlite]\npath = "{db_path}"\n',
                    encoding="utf-8")
    db = Database(db_path)
    db.check()
    reg = SqliteRegulator(db)
    for _ in range(3):
        turn = reg.reserve(user="Ivan", ip="203.0.113.5")
        assert isinstance(turn, Reservation)
        reg.fail(turn)
    listed = cli("list", "--config", str(path))
    assert listed.returncode == 0, listed.stderr
    assert rows(listed.stdout)[1][:3] == ["pair", label("user", "ivan"),
                                          label("ip", "203.0.113.5")]
    assert "Ivan" not in listed.stdout
    lifted = cli("lift", "--user", "ivan", "--config", str(path))
    assert lifted.returncode == 0 and "lifted 1 ban(s)" in lifted.stderr
    assert not isinstance(reg.reserve(user="ivan", ip="203.0.113.5"), Refusal)
