"""The authorization layer remembers its allow verdicts (secure_mw/authz/layer.py) only for
policies whose decisions depend on nothing but host, method, path and subject: a remembered
verdict never crosses users, groups, factors, hosts, methods or paths, refusals are decided
(and audited) every time, and the memory is bounded."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from secure_mw.authz import layer as authz_layer
from secure_mw.authz.layer import AuthorizationLayer
from secure_mw.http import RequestView
from secure_mw.identity import Identity
from secure_mw.settings import Settings

ALICE = Identity(sub="alice", email="alice@example.com", email_verified=True, groups=["admins"])
ALICE_2FA = Identity(sub="alice", email="alice@example.com", email_verified=True,
                     groups=["admins"], auth_level=2)
BOB = Identity(sub="bob", email="bob@example.com", email_verified=True, groups=["dev"])


def layer(*rules: dict[str, Any]) -> AuthorizationLayer:
    settings = Settings.from_mapping({
        "server": {"allowed_hosts": ["app.example.com", "other.example.com"]},
        "access_control": {"default_policy": "deny", "rules": list(rules)}}, environ={})
    return AuthorizationLayer(settings)


def view(path: str = "/admin", *, host: str = "app.example.com", method: str = "GET",
         client: str = "192.0.2.10", query: str = "") -> RequestView:
    return RequestView(method=method, scheme="https", host=host, path=path, query_string=query,
                       headers={"accept": "application/json"}, client=client)


def effect(lay: AuthorizationLayer, identity: Identity | None, **kw: Any) -> int:
    verdict = lay.decide(view(**kw), identity, None)
    return 200 if verdict.reply is None else verdict.reply.status


RULES = (
    {"domain": ["app.example.com"], "resources": ["^/admin"], "methods": ["GET"],
     "subject": ["group:admins"], "policy": "two_factor"},
    {"domain": ["app.example.com"], "resources": ["^/admin"], "subject": ["group:admins"],
     "policy": "authenticated"},
    {"domain": ["app.example.com"], "resources": ["^/public"], "policy": "bypass"},
)


def test_a_remembered_allow_never_reaches_another_user_group_factor_host_method_or_path(
        ) -> None:
    lay = layer(*RULES)
    assert lay._allowed is not None
    for _ in range(3):      # the first decides, the next two are remembered
        assert effect(lay, ALICE_2FA) == 200
        assert effect(lay, ALICE, method="POST") == 200
        assert effect(lay, None, path="/public") == 200
    assert len(lay._allowed) == 3
    assert effect(lay, ALICE) == 401                        # one factor: the GET rule steps up
    assert effect(lay, BOB) == 403                          # another group
    assert effect(lay, BOB, method="POST") == 403
    assert effect(lay, None) == 401                         # anonymous
    assert effect(lay, ALICE_2FA, host="other.example.com") == 403   # another host
    assert effect(lay, ALICE_2FA, path="/elsewhere") == 403          # another path
    assert effect(lay, None, path="/public/../admin") == 401         # normalizes elsewhere
    assert len(lay._allowed) == 3                            # refusals are not remembered


def test_refusals_are_decided_and_audited_every_time(caplog: pytest.LogCaptureFixture) -> None:
    lay = layer(*RULES)
    with caplog.at_level(logging.WARNING, logger="secure_mw.audit"):
        for _ in range(3):
            assert effect(lay, BOB) == 403
    assert sum("authorization_denied" in r.getMessage() for r in caplog.records) == 3


@pytest.mark.parametrize("rule", [
    {"resources": ["^/admin"], "networks": ["192.0.2.0/24"], "policy": "bypass"},
    {"resources": ["^/admin"], "query": [[{"key": "mode", "value": "ro"}]], "policy": "bypass"},
])
def test_policies_that_read_more_than_the_request_line_are_never_remembered(
        rule: dict[str, Any]) -> None:
    lay = layer(rule)
    assert lay._allowed is None
    if "networks" in rule:
        assert effect(lay, None) == 200
        assert effect(lay, None, client="198.51.100.7") == 403
    else:
        assert effect(lay, None, query="mode=ro") == 200
        assert effect(lay, None, query="mode=rw") == 403


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authz_layer, "MEMO_SIZE", 50)
    lay = layer({"resources": ["^/public"], "policy": "bypass"})
    assert lay._allowed is not None
    for i in range(500):
        assert effect(lay, None, path=f"/public/{i}") == 200
        assert len(lay._allowed) <= 50
