"""Key rotation (secure_mw.rotation, `secure-mw change-key`) on a real redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from secure_mw.crypto import KeyRing, b64decode
from secure_mw.crypto.envelope import ALG_AES256GCM, SymmetricKey
from secure_mw.errors import DecryptError
from secure_mw.login.totp import TOTP, FileTOTPStore, SecretBox
from secure_mw.rotation import Progress, reencrypt_redis, reencrypt_totp_file
from secure_mw.session.redis_store import RedisSessionStore
from tests.servers import RedisServer

OLD, NEW = KeyRing.new_key_text(), KeyRing.new_key_text()
PREFIX = "app1:"


def ring(*keys: str) -> KeyRing:
    return KeyRing.from_strings(list(keys))


def sessions(url: str, keys: list[str], count: int) -> dict[str, bytes]:
    store = RedisSessionStore(url, keyring=ring(*keys), prefix=PREFIX)
    written = {f"session-{i}": f"value {i}".encode() for i in range(count)}
    for sid, value in written.items():
        store.save(sid, value, 3600)
    return written


def test_every_session_moves_to_the_new_key_and_keeps_its_ttl(
        redis_server: RedisServer) -> None:
    url = redis_server.url
    written = sessions(url, [OLD], 250)
    client = redis.Redis.from_url(url)
    # Things under the prefix that are not sessions, and another app's session.
    client.set(PREFIX + "once:abc", b"1", px=60_000)
    client.hset(PREFIX + "rl:user", mapping={"tat": "1"})
    client.set(PREFIX + "junk", b"\x01" + b"\x00" * 60)          # looks like an envelope
    other = RedisSessionStore(url, keyring=ring(OLD), prefix="app2:")
    other.save("theirs", b"other app", 3600)
    before = client.pttl(RedisSessionStore(url, keyring=ring(OLD), prefix=PREFIX)
                         .redis_key("session-7"))

    progress = reencrypt_redis(ring(NEW, OLD), client, PREFIX, batch=40)

    assert (progress.reencrypted, progress.current, progress.changed) == (250, 0, 0)
    assert progress.foreign == 3 and progress.scanned == 253 and progress.done
    only_new = RedisSessionStore(url, keyring=ring(NEW), prefix=PREFIX)
    assert all(only_new.load(sid) == value for sid, value in written.items())
    after = client.pttl(only_new.redis_key("session-7"))
    assert 0 < after <= before                                    # KEEPTTL
    with pytest.raises(DecryptError):                             # not another prefix's
        RedisSessionStore(url, keyring=ring(NEW), prefix="app2:").load("theirs")
    again = reencrypt_redis(ring(NEW, OLD), client, PREFIX)
    assert (again.reencrypted, again.current) == (0, 250)


class _AppWritesDuringTheRun:
    """The redis client, except that right after the batch's values are read the app writes
    one of those sessions itself (a request served during the rotation)."""

    def __init__(self, client: redis.Redis, write: Any) -> None:
        self._client, self._write, self._pipes = client, write, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pipeline(self, **kwargs: Any) -> Any:
        pipe = self._client.pipeline(**kwargs)
        self._pipes += 1
        if self._pipes != 2:                  # 1: TYPE, 2: GET, 3: the scripts
            return pipe
        real, write = pipe.execute, self._write

        def execute() -> Any:
            values = real()
            write()
            return values

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


def test_a_session_the_app_writes_meanwhile_is_left_as_the_app_wrote_it(
        redis_server: RedisServer) -> None:
    url = redis_server.url
    sessions(url, [OLD], 5)
    app = RedisSessionStore(url, keyring=ring(NEW, OLD), prefix=PREFIX)
    client = _AppWritesDuringTheRun(redis.Redis.from_url(url),
                                    lambda: app.save("session-2", b"written by the app", 3600))
    progress = reencrypt_redis(ring(NEW, OLD), client, PREFIX)
    assert (progress.reencrypted, progress.changed) == (4, 1)
    assert RedisSessionStore(url, keyring=ring(NEW), prefix=PREFIX).load("session-2") == \
        b"written by the app"


def test_an_interrupted_run_resumes_from_its_state(redis_server: RedisServer,
                                                   tmp_path: Path) -> None:
    url = redis_server.url
    written = sessions(url, [OLD], 120)
    client = redis.Redis.from_url(url)
    state = tmp_path / "rotation.json"
    batches: list[Progress] = []

    def stop_after_three(p: Progress) -> None:
        batches.append(p)
        if len(batches) == 3 and not p.done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reencrypt_redis(ring(NEW, OLD), client, PREFIX, batch=10, state=state,
                        report=stop_after_three)
    saved = json.loads(state.read_text())
    assert saved["cursor"] != 0 and not saved["done"] and 0 < saved["reencrypted"] < 120
    done = reencrypt_redis(ring(NEW, OLD), client, PREFIX, batch=10, state=state)
    assert done.done and done.reencrypted + done.current == 120
    assert done.reencrypted >= 120 - 10 * 3 * 2     # the first run's work was not redone
    only_new = RedisSessionStore(url, keyring=ring(NEW), prefix=PREFIX)
    assert all(only_new.load(sid) == value for sid, value in written.items())
    assert reencrypt_redis(ring(NEW, OLD), client, PREFIX, state=state).done
    with pytest.raises(ValueError, match="of another run"):
        reencrypt_redis(ring(KeyRing.new_key_text(), NEW), client, PREFIX, state=state)


def test_totp_secrets_move_to_the_new_key(tmp_path: Path) -> None:
    path = tmp_path / "totp.json"
    store = FileTOTPStore(path)
    secrets = {f"user{i}": TOTP.new_secret() for i in range(5)}
    old_box = SecretBox(ring(OLD))
    for user, secret in secrets.items():
        store.set(user, old_box.seal(user, secret))
    data = json.loads(path.read_text())
    data["stranger"] = SecretBox(ring(KeyRing.new_key_text())).seal("stranger",
                                                                     TOTP.new_secret())
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    progress = reencrypt_totp_file(ring(NEW, OLD), path)
    assert (progress.reencrypted, progress.foreign, progress.current) == (5, 1, 0)
    new_box, fresh = SecretBox(ring(NEW)), FileTOTPStore(path)
    for user, secret in secrets.items():
        sealed = fresh.get(user)
        assert sealed is not None and new_box.open(user, sealed) == secret
    assert (path.stat().st_mode & 0o777) == 0o600


def test_the_change_key_command(redis_server: RedisServer, tmp_path: Path) -> None:
    sessions(redis_server.url, [OLD], 30)
    config = tmp_path / "secure-mw.toml"
    config.write_text(f'[keys]\nencryption_keys = ["{NEW}", "{OLD}"]\n'
                      f'[session]\nstore = "redis"\nredis_url = "{redis_server.url}"\n'
                      f'redis_key_prefix = "{PREFIX}"\n'
                      f'[local_users]\ntotp_file = "{tmp_path / "totp.json"}"\n')
    config.chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "secure_mw.cli", "change-key", "--config",
                             str(config), "--state", str(tmp_path / "state.json")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "redis: 30 scanned, 30 re-encrypted" in result.stderr
    assert NEW not in result.stderr and OLD not in result.stderr
    empty = tmp_path / "nothing.toml"
    empty.write_text(f'[keys]\nencryption_keys = ["{NEW}"]\n'
                     f'[local_users]\ntotp_file = "{tmp_path / "none.json"}"\n')
    nothing = subprocess.run([sys.executable, "-m", "secure_mw.cli", "change-key", "--config",
                              str(empty)], capture_output=True, text=True, timeout=60,
                             check=False)
    assert nothing.returncode == 0 and "nothing stored at rest" in nothing.stderr


def test_sqlite_sessions_move_to_the_new_key(tmp_path: Path) -> None:
    from secure_mw._sqlite import Database
    from secure_mw.rotation import reencrypt_sqlite
    from secure_mw.session.sqlite_store import SqliteSessionStore

    db = Database(tmp_path / "s.sqlite3")
    db.check()
    old_store = SqliteSessionStore(db, keyring=ring(OLD))
    written = {f"session-{i}": f"value {i}".encode() for i in range(120)}
    for sid, value in written.items():
        old_store.save(sid, value, 3600)
    db.write("INSERT INTO sessions (key, value, expires) VALUES ('session:junk', ?, 9e9)",
             (b"\x01" + b"\x00" * 60,))
    progress = reencrypt_sqlite(ring(NEW, OLD), db, batch=25)
    assert (progress.reencrypted, progress.current, progress.foreign) == (120, 0, 1)
    only_new = SqliteSessionStore(db, keyring=ring(NEW))
    assert all(only_new.load(sid) == value for sid, value in written.items())
    assert reencrypt_sqlite(ring(NEW, OLD), db).current == 120      # a second run: no-op


def test_the_change_key_command_covers_sqlite(tmp_path: Path) -> None:
    from secure_mw._sqlite import Database
    from secure_mw.session.sqlite_store import SqliteSessionStore

    path = tmp_path / "state" / "s.sqlite3"
    db = Database(path)
    db.check()
    for i in range(7):
        SqliteSessionStore(db, keyring=ring(OLD)).save(f"s{i}", b"v", 3600)
    config = tmp_path / "secure-mw.toml"
    config.write_text(f'[keys]\nencryption_keys = ["{NEW}", "{OLD}"]\n'
                      f'[session]\nstore = "sqlite"\n[sqlite]\npath = "{path}"\n'
                      f'[local_users]\ntotp_file = "{tmp_path / "totp.json"}"\n')
    config.chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "secure_mw.cli", "change-key", "--config",
                             str(config)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "7 scanned, 7 re-encrypted" in result.stderr
    assert SqliteSessionStore(db, keyring=ring(NEW)).load("s3") == b"v"


def test_aes_gcm_sessions_move_to_the_new_key_in_the_xaes_envelope(
        redis_server: RedisServer) -> None:
    """"aes-256-gcm" writes XAES-256-GCM (0x03) envelopes; sessions written before it (0x02)
    and after it must both move to a new key, and the moved ones count as current."""
    url, gcm = redis_server.url, "aes-256-gcm"
    old_ring = KeyRing.from_strings([OLD], algorithm=gcm)
    store = RedisSessionStore(url, keyring=old_ring, prefix=PREFIX)
    client = redis.Redis.from_url(url)
    written = {f"gcm-{i}": f"value {i}".encode() for i in range(20)}
    for sid, value in written.items():
        store.save(sid, value, 3600)
    legacy = SymmetricKey(b64decode(OLD))
    for sid in list(written)[:10]:  # as the code before 0x03 wrote them
        key = store.redis_key(sid)
        plain = old_ring.decrypt_bytes(client.get(key), aad=key.encode())
        client.set(key, legacy.seal(plain, key.encode(), ALG_AES256GCM), keepttl=True)
    firsts = sorted(bytes(client.get(store.redis_key(s)))[0] for s in written)
    assert firsts == [2] * 10 + [3] * 10

    both = KeyRing.from_strings([NEW, OLD], algorithm=gcm)
    progress = reencrypt_redis(both, client, PREFIX)

    assert (progress.reencrypted, progress.current, progress.foreign) == (20, 0, 0)
    only_new = RedisSessionStore(url, keyring=KeyRing.from_strings([NEW], algorithm=gcm),
                                 prefix=PREFIX)
    assert all(only_new.load(sid) == value for sid, value in written.items())
    assert {bytes(client.get(store.redis_key(s)))[0] for s in written} == {3}
    again = reencrypt_redis(both, client, PREFIX)
    assert (again.reencrypted, again.current, again.foreign) == (0, 20, 0)
