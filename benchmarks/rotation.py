"""Key rotation throughput: `secure-mw change-key` over sessions in a real redis-server.

It writes ``--entries`` sessions (default 100,000) under an old key, then, in one run:

  (a) baseline: SCAN + pipelined GET + pipelined SET of the same values (the floor of any
      pass that rewrites every value; no cryptography)
  (b) reencrypt_redis: SCAN, TYPE, GET, decrypt, encrypt, compare-and-set script

and prints entries per second, seconds for the whole set, the ratio (b)/(a), the session
reads an app thread served meanwhile (old key or new, none may fail), and the check of
issue 16's target: 100k entries in at most 10 s. Each case runs ``--repeats`` times on a
freshly written set; medians are reported.

Run from the repository root::

    python -m benchmarks.rotation                  # or: python3 dev.py bench rotation
    python -m benchmarks.rotation --entries 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from secure_mw.crypto import KeyRing
from secure_mw.rotation import reencrypt_redis

PREFIX = "bench:"


def _fill(client: Any, ring: KeyRing, entries: int) -> None:
    client.flushdb()
    value = b"x" * 400                      # a typical session record
    pipe = client.pipeline(transaction=False)
    for i in range(entries):
        key = f"{PREFIX}session:{i:08d}"
        pipe.set(key, ring.encrypt_bytes(value, aad=key.encode()), px=3_600_000)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def _serve(url: str, ring: KeyRing, entries: int, stop: threading.Event,
           served: list[int]) -> None:
    """What the app does meanwhile: read sessions (old key or new) until told to stop."""
    import redis

    reader = redis.Redis.from_url(url)
    i = 0
    while not stop.is_set():
        key = f"{PREFIX}session:{(i * 7919) % entries:08d}"
        i += 1
        try:
            ring.decrypt_bytes(reader.get(key) or b"", aad=key.encode())
            served[0] += 1
        except Exception:
            served[1] += 1
    reader.close()


def _copy_pass(client: Any, batch: int) -> int:
    cursor, moved = 0, 0
    while True:
        cursor, keys = client.scan(cursor=cursor, match=PREFIX + "*", count=batch)
        if keys:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            values = pipe.execute()
            pipe = client.pipeline(transaction=False)
            for key, value in zip(keys, values, strict=True):
                pipe.set(key, value, keepttl=True)
            pipe.execute()
            moved += len(keys)
        if cursor == 0:
            return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args(argv)

    import redis

    from tests.servers import RedisServer

    server = RedisServer()
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        old, new = KeyRing.new_key_text(), KeyRing.new_key_text()
        old_ring, new_ring = KeyRing.from_strings([old]), KeyRing.from_strings([new, old])
        base, ours = [], []
        served: list[int] = [0, 0]          # reads served, reads failed (all runs)
        for _ in range(args.repeats):
            _fill(client, old_ring, args.entries)
            start = time.perf_counter()
            assert _copy_pass(client, args.batch) == args.entries
            base.append(time.perf_counter() - start)
            _fill(client, old_ring, args.entries)
            stop = threading.Event()
            reader = threading.Thread(target=_serve, args=(server.url, new_ring, args.entries,
                                                           stop, served), daemon=True)
            reader.start()
            start = time.perf_counter()
            done = reencrypt_redis(new_ring, client, PREFIX, batch=args.batch)
            ours.append(time.perf_counter() - start)
            stop.set()
            reader.join()
            assert done.reencrypted + done.changed == args.entries, done
        client.close()
    finally:
        server.stop()
    a, b = statistics.median(base), statistics.median(ours)
    n = args.entries
    print(f"key rotation over {n:,} sessions in redis-server (medians of {args.repeats})")
    print(f"  {'case':<44}{'entries/s':>12}{'seconds':>10}")
    print(f"  {'(a) copy pass: SCAN + GET + SET (baseline)':<44}{n / a:>12,.0f}{a:>10.2f}")
    print(f"  {'(b) reencrypt_redis (change-key)':<44}{n / b:>12,.0f}{b:>10.2f}")
    print(f"  (b)/(a) throughput ratio {a / b:.2f}")
    print(f"  served during the rotations: {served[0]:,} session reads, {served[1]} failed")
    per_100k = b * 100_000 / n
    verdict = "holds" if per_100k <= 10 else "MISSED"
    print(f"  100k entries in {per_100k:.1f} s (target <= 10 s): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
