"""Per-request authorization and signed identity assertions (issue 4, item 9).

Two sections, each timed in one loop of repeats in alternating order (a, b, ... then ..., b,
a) so that machine noise hits every case alike; each figure is the **median** of the repeats.

**Policy evaluation**: one decision = ``normalize_path`` of the request path plus
``AccessPolicy.evaluate`` (a logged-in user, ``GET https://app.example.com/api/items?page=2``),
for 1, 100 and 1000 rules in two layouts:

* ``hosts``: N-1 rules for other hosts (``h<i>.example.com``), the matching rule last — the
  host index must make the cost independent of N;
* ``same``: all N rules for ``app.example.com``, the first N-1 with non-matching
  ``resources`` regexes, so every rule IS examined in order (the worst case the
  configuration can build).

**Assertions**: ``AssertionVerifier.verify`` cold (a new token each call, from a pool signed
beforehand: parse, key lookup, signature, claim checks, cache store) versus cached (the same
token: SHA-256 of the token and an LRU hit), both against the bare signature check with
``cryptography`` (the floor of a cold verification), for ES256 (P-256) and RS256 (2048-bit); and
``AssertionSigner.sign`` fresh (``cache_size=0``: signs every call) versus reused (the same
session: the still-fresh token is returned).

Run from the repository root::

    python -m benchmarks.authz             # or: python benchmarks/authz.py
    python -m benchmarks.authz --quick     # smoke test: a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from secure_mw.authz import AccessPolicy, Decision, normalize_path
from secure_mw.http import RequestView
from secure_mw.identity import Identity
from secure_mw.settings import AccessControlSettings, AccessRule
from secure_mw.tokens import SigningKey, generate_private_jwks, public_jwks
from secure_mw.tokens.assertions import AssertionSigner, AssertionVerifier
from secure_mw.tokens.keys import b64url_decode

HOST = "app.example.com"
RULE_COUNTS: tuple[int, ...] = (1, 100, 1000)
NOW = 1_800_000_000.0
ALICE = Identity(sub="alice", email="alice@example.com", groups=["admins", "dev"])
IDENTITY: dict[str, Any] = {"sub": "alice", "email": "alice@example.com", "name": "Alice",
                            "groups": ["admins", "dev"]}


@dataclass
class Case:
    """A timed case: ``run(n)`` performs ``n`` operations; ``fixed`` pins ``n`` per run
    (cold verification, whose tokens are consumed), otherwise ``n`` is calibrated."""

    tag: str
    label: str
    run: Callable[[int], object]
    fixed: int | None = None
    note: str = ""


def loop(op: Callable[[], object]) -> Callable[[int], object]:
    def run(n: int) -> None:
        for _ in range(n):
            op()
    return run


def calibrate(case: Case, run_seconds: float) -> int:
    """Operations per timed run so that one run takes about ``run_seconds``."""
    if case.fixed is not None:
        return case.fixed
    number = 1
    while True:
        start = time.perf_counter()
        case.run(number)
        elapsed = time.perf_counter() - start
        if elapsed >= run_seconds / 4 or number >= 1 << 22:
            return max(1, int(number * run_seconds / max(elapsed, 1e-9)))
        number *= 4


def measure(cases: list[Case], repeats: int, run_seconds: float) -> dict[str, float]:
    """Median seconds per operation of each case; cases alternate within a repeat."""
    numbers = {c.tag: calibrate(c, run_seconds) for c in cases}
    samples: dict[str, list[float]] = {c.tag: [] for c in cases}
    clock = time.perf_counter
    for r in range(repeats):
        for c in cases if r % 2 == 0 else cases[::-1]:
            n = numbers[c.tag]
            start = clock()
            c.run(n)
            samples[c.tag].append((clock() - start) / n)
    return {tag: statistics.median(times) for tag, times in samples.items()}


def table(cases: list[Case], sec: dict[str, float], unit: str) -> None:
    print(f"  {'':5}{'case':44}{unit + '/s':>13}{'us/op':>10}  note")
    for c in cases:
        print(f"  ({c.tag:>2}) {c.label:43}{1 / sec[c.tag]:>13,.0f}{sec[c.tag] * 1e6:>10.2f}"
              f"  {c.note}")


# -- policy evaluation -------------------------------------------------------------------------


def build_policy(count: int, layout: str) -> AccessPolicy:
    rules: list[AccessRule] = []
    for i in range(count - 1):
        if layout == "hosts":
            rules.append(AccessRule(domain=[f"h{i}.example.com"], resources=["^/api/"],
                                    policy="bypass"))
        else:
            rules.append(AccessRule(domain=[HOST], resources=[f"^/r{i}/"], policy="bypass"))
    rules.append(AccessRule(domain=[HOST], resources=["^/api/"], policy="authenticated"))
    ac = AccessControlSettings(default_policy="deny", rules=rules)
    return AccessPolicy.from_settings(ac)


def policy_cases() -> list[Case]:
    view = RequestView(method="GET", scheme="https", host=HOST, path="/api//items/./",
                       query_string="page=2", headers={"host": HOST}, client="192.0.2.10")
    cases: list[Case] = []

    def norm_only() -> str:
        return normalize_path(view.path)

    cases.append(Case("n", "normalize_path alone", loop(norm_only)))
    tag = iter("abcdefgh")
    for layout in ("hosts", "same"):
        for count in RULE_COUNTS:
            policy = build_policy(count, layout)

            def decide(policy: AccessPolicy = policy) -> Decision:
                return policy.evaluate(view, ALICE, path=normalize_path(view.path))

            decision = decide()
            if decision.effect != "allow" or decision.rule != count - 1:
                raise AssertionError(f"{layout}/{count}: unexpected {decision}")
            before = policy.rules_tested
            decide()
            tested = policy.rules_tested - before
            cases.append(Case(next(tag), f"{count:>4} rule(s), {layout}", loop(decide),
                              note=f"{tested} rule(s) examined per decision"))
    return cases


# -- assertions --------------------------------------------------------------------------------


def fixed_clock() -> float:
    return NOW


def assertion_cases(alg: str, pool_size: int, per_run: int, first_tag: str) -> list[Case]:
    private = generate_private_jwks((alg,))
    pinned = public_jwks(private)
    minting = AssertionSigner(jwks=private, clock=fixed_clock, cache_size=0)
    pool = [minting.sign(IDENTITY, audience=HOST, session_id=f"session-{i}")
            for i in range(pool_size)]
    cold_verifier = AssertionVerifier(jwks=pinned, issuer=HOST, audience=HOST,
                                      clock=fixed_clock, cache_size=pool_size + 16)
    warm_verifier = AssertionVerifier(jwks=pinned, issuer=HOST, audience=HOST,
                                      clock=fixed_clock)
    token = pool[0]
    warm_verifier.verify(token)
    position = [1]  # pool[0] is the cached token; the cold case starts after it

    def cold(n: int) -> None:
        start = position[0]
        if start + n > len(pool):
            raise RuntimeError("token pool exhausted: raise the pool size")
        verify = cold_verifier.verify
        for t in pool[start:start + n]:
            verify(t)
        position[0] = start + n

    def cached() -> object:
        return warm_verifier.verify(token)

    fresh_signer = AssertionSigner(jwks=private, clock=fixed_clock, cache_size=0)
    reusing_signer = AssertionSigner(jwks=private, clock=fixed_clock)
    reusing_signer.sign(IDENTITY, audience=HOST, session_id="session-x")

    def fresh() -> str:
        return fresh_signer.sign(IDENTITY, audience=HOST, session_id="session-x")

    def reused() -> str:
        return reusing_signer.sign(IDENTITY, audience=HOST, session_id="session-x")

    if warm_verifier.verify(fresh())["sub"] != "alice" or reused() != reused():
        raise AssertionError(f"{alg}: signer or verifier misbehaves")

    # The floor: the bare signature check of one token with `cryptography` (key loaded once,
    # no parsing, no claims).
    head, body, signature_b64 = token.split(".")
    signing_input = f"{head}.{body}".encode()
    signature = b64url_decode(signature_b64)
    public_key = SigningKey.from_jwk(private["keys"][0]).private_key.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        ec_key = public_key
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                   int.from_bytes(signature[32:], "big"))

        def raw() -> None:
            ec_key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public_key, rsa.RSAPublicKey):
        rsa_key = public_key

        def raw() -> None:
            rsa_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise AssertionError(f"{alg}: unexpected key type")
    raw()
    base = ord(first_tag)
    return [
        Case(chr(base), f"{alg} raw signature check (cryptography)", loop(raw)),
        Case(chr(base + 1), f"{alg} verify, cold (new token)", cold, fixed=per_run),
        Case(chr(base + 2), f"{alg} verify, cached (same token)", loop(cached)),
        Case(chr(base + 3), f"{alg} sign, fresh (cache_size=0)", loop(fresh)),
        Case(chr(base + 4), f"{alg} sign, reused (same session)", loop(reused)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per case")
    parser.add_argument("--run-ms", type=float, default=40.0, help="length of one timed run")
    parser.add_argument("--cold-per-run", type=int, default=200,
                        help="tokens verified per timed run of a cold case")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 5 repeats of ~5 ms, 40 cold tokens per run")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.run_ms, args.cold_per_run = 5, 5.0, 40
    run_seconds = args.run_ms / 1000
    started = time.perf_counter()
    print(f"secure_mw authz benchmark: medians of {args.repeats} interleaved runs of "
          f"~{args.run_ms:g} ms; Python {sys.version.split()[0]}")

    print()
    print("policy evaluation (normalize_path + AccessPolicy.evaluate, logged-in GET)")
    pcases = policy_cases()
    psec = measure(pcases, args.repeats, run_seconds)
    table(pcases, psec, "decisions")
    one = {"hosts": "a", "same": "d"}
    for layout, tags in (("hosts", "abc"), ("same", "def")):
        ratios = ", ".join(f"{n} rules {psec[t] / psec[one[layout]]:.2f}x"
                           for n, t in zip(RULE_COUNTS, tags, strict=True))
        print(f"  {layout}: time per decision vs 1 rule: {ratios}")

    print()
    print("assertions (verify cold vs cached; sign fresh vs reused)")
    # Pool: every cold run plus the calibration-free warm-up, plus the cached token.
    pool_size = args.cold_per_run * args.repeats + 1
    acases = (assertion_cases("ES256", pool_size, args.cold_per_run, "A")
              + assertion_cases("RS256", pool_size, args.cold_per_run, "F"))
    asec = measure(acases, args.repeats, run_seconds)
    table(acases, asec, "ops")
    for alg, (raw, cold, cached, fresh, reused) in (("ES256", "ABCDE"), ("RS256", "FGHIJ")):
        print(f"  {alg}: cold verify = raw check + {(asec[cold] - asec[raw]) * 1e6:.1f} us "
              f"({asec[cold] / asec[raw]:.2f}x the raw time); "
              f"cached/cold {asec[cold] / asec[cached]:.1f}x faster, "
              f"reused/fresh sign {asec[fresh] / asec[reused]:.1f}x faster, "
              f"cold verify + fresh sign = {(asec[cold] + asec[fresh]) * 1e6:.1f} us")
    print()
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
