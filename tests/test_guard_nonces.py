"""CSP nonces from the buffered pool (secure_mw/guards/nonces.py): each is 128 bits of the
system's randomness handed out once, across refills, threads and a real fork."""

from __future__ import annotations

import base64
import os
import threading

import pytest

from secure_mw.guards import nonces
from secure_mw.guards.headers import SecurityHeaders


def test_nonces_are_distinct_128_bit_values_across_refills() -> None:
    drawn = [nonces.new_nonce() for _ in range(nonces.BATCH * 3 + 7)]
    assert len(set(drawn)) == len(drawn)
    for nonce in drawn[:5]:
        assert len(nonce) == 24 and len(base64.b64decode(nonce)) == 16
    assert SecurityHeaders.new_nonce() not in drawn


def test_one_system_call_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    pool = nonces._Pool()
    monkeypatch.setattr(nonces.os, "urandom", counting)
    values = [pool.draw() for _ in range(nonces.BATCH * 2 + 1)]
    monkeypatch.undo()
    assert calls == [16 * nonces.BATCH] * 3
    assert len(set(values)) == len(values)


def test_threads_never_get_the_same_nonce() -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [nonces.new_nonce() for _ in range(2000)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 16000 and len(set(seen)) == 16000


def test_a_forked_child_does_not_reuse_the_parents_pool() -> None:
    nonces.new_nonce()          # the parent's pool holds unused nonces now
    parent_next = [nonces._POOL.buffer[nonces._POOL.offset:nonces._POOL.offset + 16]]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:     # the child: report its first nonce and leave at once
        try:
            os.write(write, base64.b64decode(nonces.new_nonce()))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != parent_next[0]                      # not the parent's next one
    assert child not in nonces._POOL.buffer             # nor any the parent holds
