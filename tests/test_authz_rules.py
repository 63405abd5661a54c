"""Compiled access rules (secure_mw.authz.rules)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from secure_mw.authz import AccessPolicy, Decision, normalize_path
from secure_mw.errors import ConfigError
from secure_mw.http import RequestView
from secure_mw.identity import Identity
from secure_mw.settings import AccessControlSettings, AccessRule, NamedNetwork, Settings

ALICE = Identity(sub="alice", email="Alice@Example.com", groups=["admins", "dev"],
                 claims={"sub": "alice", "org": {"team": "blue"}, "roles": ["ops", "qa"],
                         "level": 3, "flag": True})
ALICE_2FA = Identity(sub="alice", email="alice@example.com", groups=["admins", "dev"],
                     auth_level=2)
BOB = Identity(sub="bob", email="bob@other.org", groups=["dev"])


def view(host: str = "app.example.com", path: str = "/", *, method: str = "GET",
         query: str = "", client: str = "192.0.2.10",
         headers: dict[str, str] | None = None) -> RequestView:
    return RequestView(method=method, scheme="https", host=host, path=path, query_string=query,
                       headers=headers or {}, client=client)


def policy(*rules: dict[str, Any], default: str = "deny",
           networks: list[dict[str, Any]] | None = None, now: datetime | None = None
           ) -> AccessPolicy:
    ac = AccessControlSettings(
        default_policy=default,
        networks=[NamedNetwork(**n) for n in networks or []],
        rules=[AccessRule(**r) for r in rules],
    )
    return AccessPolicy.from_settings(ac, now=(lambda: now) if now else None)


def decide(p: AccessPolicy, identity: Identity | None = None, **kw: Any) -> Decision:
    v = view(**kw)
    return p.evaluate(v, identity, path=normalize_path(v.path))


def config_error(*rules: dict[str, Any], **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        policy(*rules, **kw)
    return info.value


def paths(err: ConfigError) -> list[str]:
    return [p.path for p in err.problems]


# -- basics ----------------------------------------------------------------------------------


def test_default_deny_with_no_rules() -> None:
    d = decide(policy())
    assert d == Decision("deny", None, "default policy: deny")


@pytest.mark.parametrize(("default", "identity", "effect"), [
    ("bypass", None, "allow"),
    ("authenticated", None, "login"),
    ("authenticated", ALICE, "allow"),
    ("two_factor", ALICE, "two_factor"),
    ("two_factor", ALICE_2FA, "allow"),
    ("deny", ALICE_2FA, "deny"),
])
def test_default_policy(default: str, identity: Identity | None, effect: str) -> None:
    d = decide(policy(default=default), identity)
    assert d.effect == effect and d.rule is None


def test_first_match_wins() -> None:
    p = policy({"domain": ["app.example.com"], "resources": ["^/admin"], "policy": "deny"},
               {"domain": ["app.example.com"], "policy": "bypass"},
               {"policy": "deny"})
    assert decide(p, path="/admin/x").rule == 0
    assert decide(p, path="/admin/x").effect == "deny"
    assert decide(p, path="/public").effect == "allow"
    assert decide(p, path="/public").rule == 1
    assert decide(p, host="elsewhere.test").rule == 2


def test_order_kept_across_index_buckets() -> None:
    p = policy({"policy": "deny", "resources": ["^/x"]},        # general
               {"domain": ["*.example.com"], "policy": "two_factor"},
               {"domain": ["app.example.com"], "policy": "bypass"},
               {"domain_regex": [r".*\.com"], "policy": "authenticated"})
    assert decide(p, ALICE, path="/x").rule == 0
    assert decide(p, ALICE).rule == 1
    assert decide(p, ALICE, host="other.com").rule == 3


# -- fields ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "rule"), [
    ("app.example.com", 0),
    ("APP.Example.COM:8443", 0),
    ("app.example.com.", 0),
    ("x.example.com", 1),
    ("a.b.example.com", 1),
    ("example.com", None),
    ("badexample.com", None),
    ("example.com.evil.test", None),
    ("api.corp.test", 2),
    ("api.corp.testx", None),
])
def test_domain(host: str, rule: int | None) -> None:
    p = policy({"domain": ["app.example.com"], "policy": "bypass"},
               {"domain": ["*.example.com"], "policy": "bypass"},
               {"domain_regex": [r"api\.corp\.test"], "policy": "bypass"})
    assert decide(p, host=host).rule == rule


def test_domain_and_regex_are_or() -> None:
    p = policy({"domain": ["a.test"], "domain_regex": [r"b\d\.test"], "policy": "bypass"})
    assert decide(p, host="a.test").effect == "allow"
    assert decide(p, host="b1.test").effect == "allow"
    assert decide(p, host="c.test").effect == "deny"


def test_ipv6_host_with_port() -> None:
    p = policy({"domain": ["[::1]"], "policy": "bypass"})
    assert decide(p, host="[::1]:8080").effect == "allow"


def test_resources_on_normalized_path_and_query() -> None:
    p = policy({"resources": [r"^/admin(/|$)"], "policy": "deny"},
               {"resources": [r"[?&]debug=1"], "policy": "deny"},
               {"policy": "bypass"})
    v = view(path="/public/../admin/")
    assert p.evaluate(v, None, path=normalize_path(v.path)).effect == "deny"
    assert decide(p, path="/adminx").effect == "allow"
    assert decide(p, path="/x", query="a=2&debug=1").effect == "deny"
    assert decide(p, path="/x", query="debug=2").effect == "allow"


def test_methods() -> None:
    p = policy({"methods": ["post", "DELETE"], "policy": "deny"}, {"policy": "bypass"})
    assert decide(p, method="POST").effect == "deny"
    assert decide(p, method="DELETE").effect == "deny"
    assert decide(p, method="GET").effect == "allow"


def test_networks_cidr_and_named() -> None:
    p = policy({"networks": ["internal", "2001:db8::/32"], "policy": "bypass"},
               {"policy": "authenticated"},
               networks=[{"name": "internal", "networks": ["10.0.0.0/8", "192.168.1.0/24"]}])
    assert decide(p, client="10.1.2.3").effect == "allow"
    assert decide(p, client="192.168.1.9").effect == "allow"
    assert decide(p, client="::ffff:10.1.2.3").effect == "allow"
    assert decide(p, client="2001:db8::5").effect == "allow"
    assert decide(p, client="192.168.2.9").effect == "login"
    assert decide(p, client="").effect == "login"          # empty client: no network
    assert decide(p, client="unix:/sock").effect == "login"


def test_subject_or_of_ands() -> None:
    p = policy({"subject": [["group:admins", "email:alice@example.com"], ["user:bob"]],
                "policy": "authenticated"})
    assert decide(p, ALICE).effect == "allow"        # both of the first group (email folded)
    assert decide(p, BOB).effect == "allow"          # the second group
    carol = Identity(sub="carol", email="carol@example.com", groups=["admins"])
    assert decide(p, carol).effect == "deny"         # only half of the first group: default
    assert decide(p, carol).rule is None


def test_subject_strings_accepted() -> None:
    p = policy({"subject": "group:dev", "policy": "authenticated"})
    assert decide(p, BOB).effect == "allow"
    p = policy({"subject": ["user:alice", "user:bob"], "policy": "authenticated"})
    assert decide(p, BOB).effect == "allow"


def test_subject_from_settings_loader() -> None:
    s = Settings.from_mapping({"access_control": {"rules": [
        {"domain": ["app.example.com"], "subject": ["group:dev"], "policy": "two_factor"}]}})
    p = AccessPolicy.from_settings(s.access_control)
    assert decide(p, BOB).effect == "two_factor"


def test_anonymous_gets_login_for_subject_rule() -> None:
    p = policy({"subject": [["group:admins"]], "policy": "authenticated"})
    d = decide(p, None)
    assert d.effect == "login" and d.rule == 0
    assert decide(p, BOB).effect == "deny"


def test_subject_deny_rule_does_not_concern_anonymous() -> None:
    p = policy({"subject": ["user:bob"], "policy": "deny"}, {"policy": "authenticated"})
    assert decide(p, BOB).effect == "deny"
    assert decide(p, BOB).rule == 0
    assert decide(p, None).effect == "login"
    assert decide(p, None).rule == 1


def test_two_factor_policy() -> None:
    p = policy({"policy": "two_factor"})
    assert decide(p, None).effect == "login"
    assert decide(p, ALICE).effect == "two_factor"
    assert decide(p, ALICE_2FA).effect == "allow"


def test_authenticated_policy() -> None:
    p = policy({"policy": "authenticated"})
    assert decide(p, None).effect == "login"
    assert decide(p, ALICE).effect == "allow"


def test_query_conditions() -> None:
    p = policy(
        {"query": [{"key": "mode", "value": "admin"}], "policy": "deny"},
        {"query": [[{"key": "token", "operator": "present"}],
                   [{"key": "v", "operator": "pattern", "value": r"^\d+$"},
                    {"key": "x", "operator": "absent"}]], "policy": "bypass"},
        {"query": [{"key": "lang", "operator": "not equal", "value": "en"}],
         "policy": "two_factor"},
    )
    assert decide(p, query="mode=admin").effect == "deny"
    assert decide(p, query="mode=user&mode=admin").effect == "deny"
    assert decide(p, query="token=").effect == "allow"
    assert decide(p, query="v=12").effect == "allow"
    assert decide(p, query="v=12&x=1").rule == 2      # x present: the AND fails
    assert decide(p, query="lang=en").rule is None
    assert decide(p, ALICE, query="lang=fr").effect == "two_factor"
    assert decide(p, ALICE, query="").effect == "two_factor"   # absent counts as not equal


# -- configuration errors --------------------------------------------------------------------


def test_bypass_with_subject_names_the_rule() -> None:
    err = config_error({"policy": "bypass"}, {"subject": [["user:x"]], "policy": "bypass"})
    assert "access_control.rules[1].subject" in paths(err)
    assert "access_control.rules[1].subject" in str(err)


def test_invalid_regex_names_rule_and_field() -> None:
    err = config_error({"policy": "bypass"}, {"policy": "deny"},
                       {"resources": ["^/ok", "^/(bad"], "policy": "deny"})
    assert paths(err) == ["access_control.rules[2].resources[1]"]
    err = config_error({"domain_regex": ["(x"], "policy": "deny"})
    assert paths(err) == ["access_control.rules[0].domain_regex[0]"]


def test_unknown_network_name() -> None:
    err = config_error({"networks": ["internl"], "policy": "bypass"},
                       networks=[{"name": "internal", "networks": ["10.0.0.0/8"]}])
    assert paths(err) == ["access_control.rules[0].networks"]
    assert "did you mean 'internal'" in str(err)


def test_unknown_method_and_policy() -> None:
    err = config_error({"methods": ["GTE"], "policy": "deny"}, {"policy": "permit"})
    assert paths(err) == ["access_control.rules[0].methods", "access_control.rules[1].policy"]


def test_every_problem_collected() -> None:
    err = config_error({"resources": ["("], "policy": "bypass", "subject": "user:x"},
                       {"domain": ["a*.test"], "policy": "deny"},
                       {"query": [{"key": "k", "operator": "like", "value": "x"}],
                        "policy": "deny"},
                       {})
    assert paths(err) == ["access_control.rules[0].subject",
                          "access_control.rules[0].resources[0]",
                          "access_control.rules[1].domain",
                          "access_control.rules[2].query[0].operator",
                          "access_control.rules[3].policy"]


@pytest.mark.parametrize(("block", "where"), [
    ({"and": [{"emial": {"is": "x"}}]}, "allow.and[0].emial"),
    ({"xor": [{"email": "x"}]}, "allow.xor"),
    ({"and": []}, "allow.and"),
    ({"and": [{"email": {"equals": "x"}}]}, "allow.and[0].email.equals"),
    ({"and": [{"email": "x", "user": "y"}]}, "allow.and[0]"),
    ({"or": [{"accept": False}]}, "allow.or[0].accept"),
    ({"or": [{"source_ip": "nowhere"}]}, "allow.or[0].source_ip"),
    ({"or": [{"groups": {"in": ["a"]}}]}, "allow.or[0].groups.in"),
    ({"or": [{"time_of_day": {"after": "8am"}}]}, "allow.or[0].time_of_day.after"),
    ({"or": [{"time_of_day": {"after": "08:00", "timezone": "Mars/Base"}}]},
     "allow.or[0].time_of_day.timezone"),
    ({"or": [{"day_of_week": "funday"}]}, "allow.or[0].day_of_week"),
    ({"or": [{"and": [{"claim/": "x"}]}]}, "allow.or[0].and[0].claim/"),
])
def test_ppl_config_errors(block: dict[str, Any], where: str) -> None:
    err = config_error({"policy": "deny"}, {"allow": block})
    assert paths(err) == [f"access_control.rules[1].{where}"]


# -- Pomerium-style blocks -------------------------------------------------------------------


def test_ppl_allow_and_deny_beats_allow() -> None:
    p = policy({"allow": {"or": [{"domain": {"is": "example.com"}}, {"user": "bob"}]},
                "deny": {"or": [{"email": {"is": "alice@example.com"}}]}})
    assert decide(p, ALICE).effect == "deny"          # allowed by domain, denied by email
    assert decide(p, BOB).effect == "allow"
    carol = Identity(sub="carol", email="carol@EXAMPLE.com")
    assert decide(p, carol).effect == "allow"
    dave = Identity(sub="dave", email="dave@elsewhere.test")
    d = decide(p, dave)
    assert d.effect == "deny" and d.rule == 0


def test_ppl_anonymous_is_unknown_not_false() -> None:
    p = policy({"allow": {"not": [{"email": {"ends_with": "@evil.test"}}]}})
    assert decide(p, None).effect == "login"          # `not` cannot admit nobody
    assert decide(p, BOB).effect == "allow"
    p = policy({"allow": {"or": [{"source_ip": "10.0.0.0/8"}, {"groups": "dev"}]}})
    assert decide(p, None, client="10.0.0.1").effect == "allow"
    assert decide(p, None, client="192.0.2.1").effect == "login"
    p = policy({"allow": {"and": [{"accept": True}]},
                "deny": {"or": [{"groups": {"has": "banned"}}]}})
    assert decide(p, None).effect == "login"          # the deny block needs an identity
    assert decide(p, BOB).effect == "allow"


def test_ppl_operators() -> None:
    a = {"groups": {"has": "admins"}}
    b = {"email": {"ends_with": "example.com"}}
    expected = {   # (ALICE: a and b, BOB: neither, CAROL: b only)
        "and": ("allow", "deny", "deny"),
        "or": ("allow", "deny", "allow"),
        "not": ("deny", "allow", "deny"),
        "nor": ("deny", "allow", "allow"),
    }
    carol = Identity(sub="carol", email="carol@example.com")
    for op, effects in expected.items():
        p = policy({"allow": {op: [a, b]}})
        got = tuple(decide(p, who).effect for who in (ALICE, BOB, carol))
        assert got == effects, op


def test_ppl_several_operators_and_nesting() -> None:
    p = policy({"allow": {"and": [{"authenticated_user": True}],
                          "or": [{"user": "bob"},
                                 {"and": [{"groups": "admins"}, {"http_method": "get"}]}]}})
    assert decide(p, BOB, method="POST").effect == "allow"
    assert decide(p, ALICE, method="GET").effect == "allow"
    assert decide(p, ALICE, method="POST").effect == "deny"
    assert decide(p, None).effect == "login"


def test_ppl_string_matchers() -> None:
    p = policy({"allow": {"and": [{"http_path": {"starts_with": "/api/", "ends_with": ".json"}},
                                  {"email": {"in": ["ALICE@example.com", "x@y.z"]}},
                                  {"user": {"contains": "lic"}}]}})
    assert decide(p, ALICE, path="/api/v1/x.json").effect == "allow"
    assert decide(p, ALICE, path="/api/v1/x.xml").effect == "deny"
    assert decide(p, BOB, path="/api/v1/x.json").effect == "deny"


def test_ppl_http_path_is_normalized() -> None:
    p = policy({"allow": {"and": [{"accept": True}]},
                "deny": {"or": [{"http_path": {"starts_with": "/admin"}}]}})
    assert decide(p, ALICE, path="/public/../admin").effect == "deny"
    assert decide(p, ALICE, path="//admin").effect == "deny"


def test_ppl_groups_matchers() -> None:
    p = policy({"allow": {"and": [{"groups": {"has": "dev", "exclude": "contractors"}}]}})
    assert decide(p, BOB).effect == "allow"
    eve = Identity(sub="eve", groups=["dev", "contractors"])
    assert decide(p, eve).effect == "deny"


def test_ppl_claims() -> None:
    def effect(crit: dict[str, Any], who: Identity = ALICE) -> str:
        return decide(policy({"allow": {"and": [crit]}}), who).effect

    assert effect({"claim/org/team": "blue"}) == "allow"
    assert effect({"claim/org/team": "red"}) == "deny"
    assert effect({"claim/roles": "qa"}) == "allow"
    assert effect({"claim/roles": ["x", "ops"]}) == "allow"
    assert effect({"claim/level": 3}) == "allow"
    assert effect({"claim/level": "3"}) == "deny"     # typed comparison
    assert effect({"claim/flag": 1}) == "deny"        # True is not 1 here
    assert effect({"claim/flag": True}) == "allow"
    assert effect({"claim/missing/deep": "x"}) == "deny"


def test_ppl_source_ip_named_and_reject() -> None:
    p = policy({"allow": {"or": [{"source_ip": ["office"]}, {"reject": True}]}},
               networks=[{"name": "office", "networks": ["203.0.113.0/24"]}])
    assert decide(p, None, client="203.0.113.7").effect == "allow"
    assert decide(p, None, client="198.51.100.1").effect == "deny"
    assert decide(p, None, client="").effect == "deny"


def test_ppl_cors_preflight() -> None:
    p = policy({"allow": {"or": [{"cors_preflight": True}]}})
    h = {"origin": "https://a.test", "access-control-request-method": "POST"}
    assert decide(p, None, method="OPTIONS", headers=h).effect == "allow"
    assert decide(p, None, method="OPTIONS").effect == "deny"
    assert decide(p, None, method="GET", headers=h).effect == "deny"


def test_ppl_time_criteria() -> None:
    rule = {"allow": {"and": [
        {"day_of_week": {"is": "mon-fri", "timezone": "Europe/Paris"}},
        {"time_of_day": {"after": "08:00", "before": "18:00", "timezone": "Europe/Paris"}}]}}
    # 2026-11-23 is a Monday; Paris is UTC+1 then
    monday_9 = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
    monday_19 = datetime(2026, 11, 23, 18, 0, tzinfo=timezone.utc)
    sunday_9 = datetime(2026, 11, 22, 8, 0, tzinfo=timezone.utc)
    monday_0730_paris = datetime(2026, 11, 23, 6, 30, tzinfo=timezone.utc)
    assert decide(policy(rule, now=monday_9)).effect == "allow"
    assert decide(policy(rule, now=monday_19)).effect == "deny"
    assert decide(policy(rule, now=sunday_9)).effect == "deny"
    assert decide(policy(rule, now=monday_0730_paris)).effect == "deny"
    night = {"allow": {"and": [{"time_of_day": {"after": "22:00", "before": "06:00"}},
                               {"day_of_week": "fri-mon"}]}}
    assert decide(policy(night, now=datetime(2026, 11, 22, 23, 0, tzinfo=timezone.utc))
                  ).effect == "allow"
    assert decide(policy(night, now=datetime(2026, 11, 24, 23, 0, tzinfo=timezone.utc))
                  ).effect == "deny"   # a Tuesday


def test_ppl_with_two_factor_policy() -> None:
    p = policy({"allow": {"and": [{"groups": "admins"}]}, "policy": "two_factor"})
    assert decide(p, ALICE).effect == "two_factor"
    assert decide(p, ALICE_2FA).effect == "allow"
    assert decide(p, BOB).effect == "deny"


def test_ppl_rule_selected_by_fields_first() -> None:
    p = policy({"domain": ["admin.example.com"], "allow": {"and": [{"groups": "admins"}]}},
               {"policy": "bypass"})
    assert decide(p, BOB, host="admin.example.com").effect == "deny"
    assert decide(p, BOB, host="app.example.com").effect == "allow"


# -- the host index --------------------------------------------------------------------------


def _many(n: int) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for i in range(n):
        if i % 2:
            rules.append({"domain": [f"h{i}.other.test"], "resources": [f"^/r{i}"],
                          "policy": "deny"})
        else:
            rules.append({"domain": [f"*.z{i}.other.test"], "policy": "deny"})
    return rules


@pytest.mark.parametrize("n", [0, 10, 10_000])
def test_evaluation_cost_does_not_grow_with_other_hosts(n: int) -> None:
    p = policy(*_many(n), {"domain": ["app.example.com"], "policy": "authenticated"},
               {"domain": ["*.example.com"], "policy": "bypass"})
    assert len(p) == n + 2
    before = p.rules_tested
    assert decide(p, ALICE).effect == "allow"
    assert decide(p, ALICE).rule == n
    assert decide(p, host="x.y.example.com").rule == n + 1
    assert p.rules_tested - before == 3
    before = p.rules_tested
    assert decide(p, host="nowhere.test").rule is None
    assert p.rules_tested == before


def test_index_still_reaches_other_hosts_rules() -> None:
    p = policy(*_many(1000))
    assert decide(p, host="h999.other.test", path="/r999").rule == 999
    assert decide(p, host="h999.other.test", path="/x").rule is None
    assert decide(p, host="a.z998.other.test").rule == 998


def test_general_rules_are_always_examined() -> None:
    p = policy(*_many(100), {"domain_regex": [r".*\.example\.com"], "policy": "bypass"})
    before = p.rules_tested
    assert decide(p).rule == 100
    assert p.rules_tested - before == 1


def test_anonymous_user_object_is_anonymous() -> None:
    from secure_mw.identity import ANONYMOUS

    p = policy({"policy": "authenticated"})
    v = view()
    assert p.evaluate(v, ANONYMOUS, path="/").effect == "login"  # type: ignore[arg-type]


def test_merge_cache_bounded_by_configuration_not_hosts() -> None:
    p = policy({"domain": ["*.example.com"], "policy": "bypass"},
               {"domain_regex": [r".*"], "policy": "deny"})
    for i in range(500):
        assert decide(p, host=f"h{i}.example.com").rule == 0
        assert decide(p, host=f"h{i}.elsewhere.test").rule == 1
    assert len(p._merged) == 1


def test_domain_with_leading_dot_is_refused() -> None:
    err = config_error({"domain": [".example.com"], "policy": "bypass"})
    assert paths(err) == ["access_control.rules[0].domain"]
