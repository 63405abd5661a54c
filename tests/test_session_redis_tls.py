"""The Redis session store over TLS (``rediss://``), against a real redis-server with TLS on."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from secure_mw.crypto import KeyRing
from secure_mw.errors import StoreUnavailable
from secure_mw.session.redis_store import RedisSessionStore
from tests.pki import make_pki
from tests.servers import find_program, free_port, wait_for_port


def _write_pki(directory: Path) -> tuple[Path, Path, Path]:
    pki = make_pki(directory)
    return pki.ca, pki.cert, pki.key


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[tuple[str, Path]]:
    program = find_program("redis-server")
    directory = Path(tempfile.mkdtemp(prefix="secure-mw-redis-tls-"))
    ca, cert, key = _write_pki(directory)
    port = free_port()
    proc = subprocess.Popen(
        [program, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"rediss://127.0.0.1:{port}/0", ca
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_sessions_round_trip_over_verified_tls(tls_redis: tuple[str, Path]) -> None:
    url, ca = tls_redis
    store = RedisSessionStore(url, keyring=KeyRing.generate(), ssl_ca_file=str(ca))
    sid = "s" * 43
    assert store.save(sid, b"over tls", 60, only_if_exists=False)
    assert store.load(sid) == b"over tls"
    assert asyncio.run(store.aload(sid)) == b"over tls"
    store.close()


def test_an_unknown_certificate_authority_is_refused(tls_redis: tuple[str, Path]) -> None:
    url, _ = tls_redis
    other = Path(tempfile.mkdtemp(prefix="secure-mw-other-ca-"))
    wrong_ca, _, _ = _write_pki(other)
    store = RedisSessionStore(url, keyring=KeyRing.generate(), ssl_ca_file=str(wrong_ca),
                              socket_timeout=2)
    with pytest.raises(StoreUnavailable):
        store.load("s" * 43)
