"""IssueLayer's table of issued assertions (tokens/headers.py): a warm request gets the
token already issued to its session and host without signing, until near expiry; another
identity, session or host never gets it; the table is bounded. Clock injected."""

from __future__ import annotations

import json
from typing import Any

import pytest

from secure_mw import Settings
from secure_mw.http import RequestView
from secure_mw.identity import Identity
from secure_mw.tokens import AssertionSigner, AssertionVerifier, KeySet, generate_private_jwks
from secure_mw.tokens.headers import IssueLayer
from secure_mw.tokens.keys import public_jwks
from tests.clock import Clock

PRIVATE = generate_private_jwks(("ES256",))
HOSTS = ["a.test", "b.test"]


class CountingSigner(AssertionSigner):
    """The real signer, counting the times it is asked (a reused token is not asked for)."""

    signed = 0

    def sign_reusable(self, identity_claims: Any, **options: Any) -> tuple[str, float, float]:
        self.signed += 1
        return super().sign_reusable(identity_claims, **options)


def _layer(clock: Clock, cache_size: int = 64) -> tuple[IssueLayer, CountingSigner]:
    signer = CountingSigner(jwks=PRIVATE, clock=clock, lifetime=300, reuse_margin=60,
                            cache_size=cache_size)
    settings = Settings.from_mapping({"keys": {"signing_jwks": json.dumps(PRIVATE)},
                                      "server": {"allowed_hosts": HOSTS}}, environ={})
    return IssueLayer(settings, signer=signer), signer


def _view(host: str = "a.test") -> RequestView:
    return RequestView("GET", "https", host, "/", "", {}, "203.0.113.9")


def _claims(token: str | None, host: str, clock: Clock) -> dict[str, Any]:
    assert token is not None
    verifier = AssertionVerifier(jwks=KeySet.from_dict(public_jwks(PRIVATE)), issuer=host,
                                 audience=host, clock=clock)
    return verifier.verify(token)


ALICE = Identity(sub="alice", email="alice@a.test", groups=["staff"], session_id="s-alice")


def test_a_warm_request_reuses_the_token_without_signing_until_near_expiry() -> None:
    clock = Clock(1_000_000.0)
    layer, signer = _layer(clock)
    first = layer.assertion(_view(), ALICE)
    assert signer.signed == 1
    for step in range(1, 48):                # to 235 s: before lifetime - reuse_margin
        clock.now = 1_000_000.0 + 5 * step
        assert layer.assertion(_view(), ALICE) == first
    assert signer.signed == 1
    clock.now = 1_000_240.0                  # 240 s after iat: near expiry, signed afresh
    fresh = layer.assertion(_view(), ALICE)
    assert fresh != first and signer.signed == 2
    assert _claims(fresh, "a.test", clock)["iat"] == int(clock.now)


def test_an_equal_identity_object_reuses_but_no_other_identity_ever_does() -> None:
    clock = Clock(1_000_000.0)
    layer, _ = _layer(clock)
    token = layer.assertion(_view(), ALICE)
    same = Identity(sub="alice", email="alice@a.test", groups=["staff"], session_id="s-alice")
    assert layer.assertion(_view(), same) == token
    others = [
        Identity(sub="alice", email="alice@a.test", groups=["staff", "admins"],
                 session_id="s-alice"),                     # same session, new groups
        Identity(sub="mallory", email="m@a.test", groups=["staff"], session_id="s-alice"),
        Identity(sub="alice", email="alice@a.test", groups=["staff"], session_id="s-other"),
        Identity(sub="alice", email="alice@a.test", groups=["staff"]),   # no session
        Identity(sub="alice", email="evil@a.test", groups=["staff"], session_id="s-alice"),
    ]
    for other in others:
        got = layer.assertion(_view(), other)
        assert got != token
        claims = _claims(got, "a.test", clock)
        assert (claims["sub"], claims["email"], claims["groups"]) == (
            other.sub, other.email, list(other.groups))


def test_a_host_never_gets_anothers_token() -> None:
    clock = Clock(1_000_000.0)
    layer, signer = _layer(clock)
    a = layer.assertion(_view("a.test"), ALICE)
    b = layer.assertion(_view("b.test"), ALICE)
    assert a != b and signer.signed == 2
    assert _claims(b, "b.test", clock)["aud"] == "b.test"
    assert layer.assertion(_view("a.test"), ALICE) == a
    assert layer.assertion(_view("b.test:8443"), ALICE) == b
    assert layer.assertion(_view("evil.test"), ALICE) is None


def test_the_table_is_bounded() -> None:
    clock = Clock(1_000_000.0)
    layer, _ = _layer(clock, cache_size=8)
    for i in range(100):
        user = Identity(sub=f"u{i}", session_id=f"s{i}")
        assert layer.assertion(_view(), user) is not None
        assert len(layer._issued) <= 8
    assert len(layer._issued) == 8


@pytest.mark.parametrize("cache_size", [0])
def test_without_reuse_every_request_is_signed(cache_size: int) -> None:
    clock = Clock(1_000_000.0)
    layer, _ = _layer(clock, cache_size=cache_size)
    tokens = {layer.assertion(_view(), ALICE) for _ in range(3)}
    assert len(tokens) == 3 and not layer._issued
