"""Cost of the secure_mw envelope over the raw AEAD primitives.

For each payload size this measures one encrypt + one decrypt per operation:

  (a) raw XChaCha20-Poly1305 (libsodium via nacl.bindings, random 24-byte nonce)  baseline
  (b) KeyRing.encrypt_bytes + decrypt_bytes (binary envelope, XChaCha20-Poly1305)
  (c) (a) + base64.urlsafe_b64encode/decode of nonce||ciphertext   baseline for a text token
  (d) KeyRing.encrypt + decrypt (text envelope, XChaCha20-Poly1305)
  (e) raw AES-256-GCM (cryptography AESGCM, random 12-byte nonce)
  (f) KeyRing.encrypt_bytes + decrypt_bytes with "aes-256-gcm": XAES-256-GCM (0x03), one
      derived key per batch of entries, the opener's cache of recent N1 keys warm
  (g) XAES-256-GCM with one key derivation per seal and per open (no batch, cold cache):
      an entry opened by a process that has not seen its N1
  (h) the 0x02 envelope written before 0.x (HKDF-SHA256 entry key per entry), for comparison
  (i) reference floor, NOT a sound envelope: a seal and an open function with the same
      header, key-id lookup and slicing around one AESGCM object with random 96-bit
      nonces; what any envelope behind a function call costs in Python

Every variant of a size is timed in the same repeat loop, in alternating order, so machine
noise hits them alike; the median of the repeats is reported.

Run from the repository root::

    python -m benchmarks.crypto            # or: python benchmarks/crypto.py
    python -m benchmarks.crypto --repeats 31 --run-ms 40
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl import bindings as sodium

from secure_mw.crypto import KeyRing
from secure_mw.crypto.envelope import ALG_AES256GCM, SymmetricKey, XaesKdf

SIZES: tuple[int, ...] = (200, 1024, 16 * 1024)
AAD = b"cookie:secure_mw_session"
TARGET_RATIO = 0.80

Op = Callable[[], object]


@dataclass(frozen=True)
class Variant:
    tag: str
    label: str
    op: Op


def view(blob: bytes, start: int) -> bytes | memoryview:
    """``blob[start:]`` as the envelope takes it: copied when short, a view when long."""
    return blob[start:] if len(blob) <= 2048 else memoryview(blob)[start:]


def variants(size: int) -> list[Variant]:
    """The encrypt+decrypt operations for one payload size, each checked once."""
    data = os.urandom(size)
    key = os.urandom(32)
    x_enc = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
    x_dec = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
    urandom = os.urandom
    b64e, b64d = base64.urlsafe_b64encode, base64.urlsafe_b64decode
    ring_x = KeyRing([key])
    ring_g = KeyRing([key], algorithm="aes-256-gcm")
    aes = AESGCM(key)
    old = SymmetricKey(key)
    kid = old.kid
    kdf = XaesKdf(key)  # cached ECB encryptor, as the envelope keeps one per key

    def raw_x() -> bytes:
        nonce = urandom(24)
        return x_dec(x_enc(data, AAD, nonce, key), AAD, nonce, key)

    def env_x() -> bytes:
        return ring_x.decrypt_bytes(ring_x.encrypt_bytes(data, AAD), AAD)

    def raw_x_b64() -> bytes:
        nonce = urandom(24)
        token = b64e(nonce + x_enc(data, AAD, nonce, key))
        blob = b64d(token)
        return x_dec(blob[24:], AAD, blob[:24], key)

    def env_x_text() -> bytes:
        return ring_x.decrypt(ring_x.encrypt(data, AAD), AAD)

    def raw_g() -> bytes:
        nonce = urandom(12)
        return aes.decrypt(nonce, aes.encrypt(nonce, data, AAD), AAD)

    def env_g() -> bytes:
        return ring_g.decrypt_bytes(ring_g.encrypt_bytes(data, AAD), AAD)

    def xaes_cold() -> bytes:
        nonce = urandom(24)
        header = b"\x03" + kid + nonce
        blob = header + AESGCM(kdf.key(nonce[:12])).encrypt(nonce[12:], data, header + AAD)
        return AESGCM(kdf.key(blob[5:17])).decrypt(blob[17:29], view(blob, 29), blob[:29] + AAD)

    def env_old() -> bytes:
        return old.open(old.seal(data, AAD, ALG_AES256GCM), AAD)

    by_kid = {kid: aes}

    def floor_seal(data: bytes, aad: bytes) -> bytes:
        nonce = urandom(12)
        header = b"\x03" + kid + nonce
        return header + aes.encrypt(nonce, data, header + aad)

    def floor_open(blob: bytes, aad: bytes) -> bytes:
        return by_kid[blob[1:5]].decrypt(blob[5:17], view(blob, 17), blob[:17] + aad)

    def floor() -> bytes:
        return floor_open(floor_seal(data, AAD), AAD)

    out = [
        Variant("a", "raw XChaCha20-Poly1305 (libsodium)", raw_x),
        Variant("b", "KeyRing binary envelope (xchacha)", env_x),
        Variant("c", "raw xchacha + urlsafe_b64 (stdlib)", raw_x_b64),
        Variant("d", "KeyRing text envelope (xchacha)", env_x_text),
        Variant("e", "raw AES-256-GCM (cryptography)", raw_g),
        Variant("f", "KeyRing binary envelope (aes-gcm 0x03)", env_g),
        Variant("g", "XAES-256-GCM, key derived per op", xaes_cold),
        Variant("h", "old 0x02 envelope (HKDF per entry)", env_old),
        Variant("i", "floor: header around 1 AESGCM (unsound)", floor),
    ]
    for v in out:
        if v.op() != data:
            raise AssertionError(f"variant {v.tag} does not round-trip")
    return out


def calibrate(op: Op, run_seconds: float) -> int:
    """Iterations per timed run so that one run takes about ``run_seconds``."""
    number = 1
    while True:
        elapsed = timeit.Timer(op).timeit(number)
        if elapsed >= run_seconds / 4 or number >= 1 << 22:
            return max(1, int(number * run_seconds / max(elapsed, 1e-9)))
        number *= 4


def measure(vs: list[Variant], repeats: int, run_seconds: float) -> dict[str, float]:
    """Median seconds per operation of each variant; variants alternate within a repeat."""
    numbers = {v.tag: calibrate(v.op, run_seconds) for v in vs}
    samples: dict[str, list[float]] = {v.tag: [] for v in vs}
    for r in range(repeats):
        order = vs if r % 2 == 0 else vs[::-1]  # a b c ... then ... c b a
        for v in order:
            n = numbers[v.tag]
            samples[v.tag].append(timeit.Timer(v.op).timeit(n) / n)
    return {tag: statistics.median(times) for tag, times in samples.items()}


def human_size(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per variant")
    parser.add_argument("--run-ms", type=float, default=25.0, help="length of one timed run")
    args = parser.parse_args(argv)

    print(f"secure_mw crypto benchmark: encrypt+decrypt per op, aad={len(AAD)} B, "
          f"median of {args.repeats} interleaved runs of ~{args.run_ms:g} ms; "
          f"Python {sys.version.split()[0]}")
    summary: list[str] = []
    for size in SIZES:
        vs = variants(size)
        sec = measure(vs, args.repeats, args.run_ms / 1000)
        rate = {tag: 1.0 / s for tag, s in sec.items()}
        print()
        print(f"payload {human_size(size)}")
        print(f"  {'':3}{'variant':38}{'ops/s':>12}{'us/op':>10}")
        for v in vs:
            print(f"  ({v.tag}) {v.label:36}{rate[v.tag]:>12,.0f}{sec[v.tag] * 1e6:>10.2f}")
        ratios = [
            ("(b)/(a) binary envelope / raw", rate["b"] / rate["a"]),
            ("(d)/(c) text envelope / raw+b64", rate["d"] / rate["c"]),
            ("(d)/(a) text envelope / raw", rate["d"] / rate["a"]),
            ("(f)/(e) aes-gcm envelope 0x03 / raw aes-gcm", rate["f"] / rate["e"]),
            ("(g)/(e) xaes, derivation per op / raw aes-gcm", rate["g"] / rate["e"]),
            ("(h)/(e) old 0x02 envelope / raw aes-gcm", rate["h"] / rate["e"]),
            ("(i)/(e) floor (unsound) / raw aes-gcm", rate["i"] / rate["e"]),
        ]
        for name, value in ratios:
            print(f"  {name:46}{value:>6.2f}")
        line = (f"{human_size(size)}: binary envelope keeps {rate['b'] / rate['a']:.2f} "
                f"of the raw rate (target >= {TARGET_RATIO:.2f})")
        print("  " + line)
        summary.append(line)
        line = (f"{human_size(size)}: aes-gcm envelope keeps {rate['f'] / rate['e']:.2f} of raw "
                f"AES-GCM (0x02 before: {rate['h'] / rate['e']:.2f}; floor of any envelope "
                f"{rate['i'] / rate['e']:.2f}; target >= {TARGET_RATIO:.2f})")
        print("  " + line)
        summary.append(line)
    print()
    print("summary")
    for line in summary:
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
