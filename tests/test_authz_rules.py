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

ALICE = Identity(sub="alice", email="Alice@Example.com", email_verified=True,
                 groups=["admins", "dev"],
                 claims={"sub": "alice", "org": {"team": "blue"}, "roles": ["ops", "qa"],
                         "level": 3, "flag": True})
ALICE_2FA = Identity(sub="alice", email="alice@example.com", email_verified=True,
                     groups=["admins", "dev"], auth_level=2)
BOB = Identity(sub="bob", email="bob@other.org", email_verified=True, groups=["dev"])


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


def test_resources_match_the_normalized_path_never_the_query() -> None:
    p = policy({"resources": [r"^/admin(/|$)"], "policy": "deny"},
               {"resources": [r"^/exact$"], "policy": "deny"},
               {"resources": [r"[?&]debug=1"], "policy": "deny"},     # can never match
               {"policy": "bypass"})
    v = view(path="/public/../admin/")
    assert p.evaluate(v, None, path=normalize_path(v.path)).effect == "deny"
    assert decide(p, path="/adminx").effect == "allow"
    for query in ("x=1", "", "a=b&c", "?", "/"):
        assert decide(p, path="/admin", query=query).rule == 0, query
        assert decide(p, path="/exact", query=query).rule == 1, query
    assert decide(p, path="/x", query="a=2&debug=1").effect == "allow"


def test_query_conditions_select_on_the_query() -> None:
    p = policy({"query": [{"key": "debug", "value": "1"}], "policy": "deny"},
               {"policy": "bypass"})
    assert decide(p, path="/x", query="a=2&debug=1").effect == "deny"
    assert decide(p, path="/x", query="debug=2").effect == "allow"


def test_a_query_too_large_to_read_is_denied_by_a_rule_with_query_conditions() -> None:
    p = policy({"resources": ["^/open$"], "policy": "bypass"},
               {"query": [{"key": "debug", "value": "1"}], "policy": "deny"},
               {"policy": "bypass"})
    padded = "&".join(["a=1"] * 80) + "&debug=1"     # RequestView.query reads none of it
    assert view(query=padded).query() == {}
    assert decide(p, path="/x", query=padded) == Decision(
        "deny", 1, "rule 1: query string too large to evaluate")
    assert decide(p, path="/x", query="debug=1&" + "b" * 9000).effect == "deny"
    assert decide(p, path="/open", query=padded).effect == "allow"   # no query conditions
    assert decide(p, path="/x", query="&".join(["a=1"] * 40)).effect == "allow"


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
    carol = Identity(sub="carol", email="carol@example.com", email_verified=True,
                     groups=["admins"])
    assert decide(p, carol) == Decision("deny", 0, "rule 0: subject does not match")


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
    assert decide(p, query="mode=user&mode=admin") == Decision(
        "bad_request", 0, "rule 0: repeated query key mode")     # ambiguous: refused
    assert decide(p, query="token=").effect == "allow"
    assert decide(p, query="v=12").effect == "allow"
    assert decide(p, query="v=12&x=1").rule == 2      # x present: the AND fails
    assert decide(p, query="lang=en").rule is None
    assert decide(p, ALICE, query="lang=fr").effect == "two_factor"
    assert decide(p, ALICE, query="").effect == "two_factor"   # absent counts as not equal


def test_a_repeated_key_a_value_condition_reads_is_refused_as_ambiguous() -> None:
    """F3 of the review: Starlette reads the last value, werkzeug the first; a bypass for
    format=csv must not admit format=csv&format=pdf, nor a deny for mode=admin miss
    mode=user&mode=admin."""
    p = policy({"resources": ["^/export$"], "query": [{"key": "format", "value": "csv"}],
                "policy": "bypass"},
               {"resources": ["^/tags$"], "query": [{"key": "tag", "operator": "present"}],
                "policy": "bypass"},
               {"policy": "authenticated"})
    assert decide(p, path="/export", query="format=csv").effect == "allow"
    assert decide(p, path="/export", query="format=pdf").effect == "login"
    for query in ("format=csv&format=pdf", "format=pdf&format=csv", "format=csv&format=csv",
                  "format=csv&%66ormat=pdf", "format=csv&format"):
        assert decide(p, path="/export", query=query) == Decision(
            "bad_request", 0, "rule 0: repeated query key format"), query
    # present/absent read no value; a rule the request does not reach judges nothing
    assert decide(p, path="/tags", query="tag=a&tag=b").effect == "allow"
    assert decide(p, BOB, path="/other", query="format=a&format=b").effect == "allow"
    ex = p.explain(view(path="/export", query="format=csv&format=pdf"), None, path="/export")
    assert ex.decision.effect == "bad_request" and ex.steps[0].decides


def test_a_get_rule_selects_head() -> None:
    """F2 of the review: a server runs the GET handler for HEAD."""
    p = policy({"resources": ["^/admin(/|$)"], "methods": ["GET", "POST"],
                "subject": [["group:admins"]], "policy": "authenticated"},
               {"methods": ["put"], "policy": "deny"},
               {"policy": "authenticated"})
    for method in ("GET", "HEAD", "POST"):
        assert decide(p, BOB, path="/admin/users", method=method) == Decision(
            "deny", 0, "rule 0: subject does not match"), method
    assert decide(p, BOB, path="/admin/users", method="OPTIONS").effect == "allow"
    assert decide(p, BOB, path="/x", method="PUT").effect == "deny"
    # HEAD is not a GET: a HEAD-only rule does not select GET
    head = policy({"methods": ["HEAD"], "policy": "deny"}, {"policy": "bypass"})
    assert decide(head, method="GET").effect == "allow"
    assert decide(head, method="HEAD").effect == "deny"
    # the blocks' http_method: HEAD matches what GET matches
    blocks = policy({"allow": {"or": [{"accept": True}]},
                     "deny": {"and": [{"http_method": "GET"}, {"groups": "dev"}]}})
    assert decide(blocks, BOB, method="HEAD").effect == "deny"
    assert decide(blocks, BOB, method="POST").effect == "allow"
    only_get = policy({"allow": {"or": [{"http_method": {"in": ["get"]}}]}})
    assert decide(only_get, BOB, method="HEAD").effect == "allow"
    assert decide(only_get, BOB, method="DELETE").effect == "deny"


def test_a_get_rule_covers_a_later_head_rule() -> None:
    assert policy({"methods": ["GET"], "policy": "deny"},
                  {"methods": ["HEAD"], "policy": "bypass"}).unreachable() == [(1, 0)]


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
    carol = Identity(sub="carol", email="carol@EXAMPLE.com", email_verified=True)
    assert decide(p, carol).effect == "allow"
    dave = Identity(sub="dave", email="dave@elsewhere.test", email_verified=True)
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
    carol = Identity(sub="carol", email="carol@example.com", email_verified=True)
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


# -- subjects are gates ----------------------------------------------------------------------


def test_a_subject_rule_refuses_signed_in_users_it_does_not_name() -> None:
    p = policy({"resources": ["^/admin(/|$)"], "subject": [["group:admins"]],
                "policy": "authenticated"},
               {"policy": "authenticated"})              # the catch-all after it
    assert decide(p, BOB, path="/admin") == Decision("deny", 0,
                                                     "rule 0: subject does not match")
    assert decide(p, BOB, path="/admin/x", query="y=1").rule == 0
    assert decide(p, ALICE, path="/admin").effect == "allow"
    assert decide(p, None, path="/admin") == Decision(
        "login", 0, "rule 0: needs a login to match its subject")
    assert decide(p, BOB, path="/elsewhere") == Decision("allow", 1, "rule 1: authenticated")


def test_a_deny_rule_with_a_subject_passes_the_others_on() -> None:
    p = policy({"subject": ["user:bob"], "policy": "deny", "allow": {"or": [{"accept": True}]}},
               {"policy": "authenticated"})
    assert decide(p, BOB).rule == 0 and decide(p, BOB).effect == "deny"
    assert decide(p, ALICE) == Decision("allow", 1, "rule 1: authenticated")


def test_subject_mismatch_continue_is_authelias_fall_through() -> None:
    p = policy({"resources": ["^/admin(/|$)"], "subject": ["group:admins"],
                "subject_mismatch": "continue", "policy": "two_factor"},
               {"resources": ["^/admin(/|$)"], "policy": "authenticated"})
    assert decide(p, ALICE, path="/admin").effect == "two_factor"
    assert decide(p, ALICE_2FA, path="/admin").effect == "allow"
    assert decide(p, BOB, path="/admin") == Decision("allow", 1, "rule 1: authenticated")
    assert decide(p, None, path="/admin").rule == 0          # a login first, as Authelia
    explicit = policy({"subject": ["group:admins"], "subject_mismatch": "deny",
                       "policy": "authenticated"}, {"policy": "bypass"})
    assert decide(explicit, BOB).rule == 0 and decide(explicit, BOB).effect == "deny"


def test_subject_mismatch_configuration_errors() -> None:
    err = config_error({"subject_mismatch": "continue", "policy": "authenticated"},
                       {"subject": ["user:x"], "subject_mismatch": "deny", "policy": "deny"},
                       {"subject": ["user:x"], "subject_mismatch": "contnue",
                        "policy": "authenticated"})
    assert paths(err) == [f"access_control.rules[{i}].subject_mismatch" for i in range(3)]
    assert "has no subject" in str(err) and "did you mean 'continue'" in str(err)
    loaded = Settings.from_mapping({"access_control": {"rules": [
        {"subject": ["user:x"], "subject_mismatch": "continue", "policy": "authenticated"}]}},
        environ={})
    assert loaded.access_control.rules[0].subject_mismatch == "continue"
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"access_control": {"rules": [
            {"subject": ["user:x"], "subject_mismatch": "maybe", "policy": "deny"}]}},
            environ={})
    assert "access_control.rules[0].subject_mismatch" in str(info.value)


# -- emails must be verified -----------------------------------------------------------------


UNVERIFIED_BOSS = Identity(sub="impostor", email="boss@example.com")
UNVERIFIED_CORP = Identity(sub="x", email="x@corp.example", email_verified=False)
BOSS = Identity(sub="boss", email="Boss@Example.com", email_verified=True)


@pytest.mark.parametrize("rule", [
    {"subject": ["email:boss@example.com"], "policy": "authenticated"},
    {"allow": {"or": [{"email": "boss@example.com"}]}},
    {"allow": {"or": [{"email": {"ends_with": "@example.com"}}]}},
    {"allow": {"or": [{"domain": "example.com"}]}},
])
def test_email_criteria_match_only_a_verified_email(rule: dict[str, Any]) -> None:
    p = policy(rule, {"policy": "bypass"})
    assert decide(p, BOSS).effect == "allow"
    refused = decide(p, UNVERIFIED_BOSS)
    assert refused.effect == "deny" and refused.rule == 0
    assert UNVERIFIED_BOSS.email == "boss@example.com"          # still shown
    assert UNVERIFIED_BOSS.as_dict()["email_verified"] is False


def test_an_unverified_email_grants_nothing_in_the_blocks() -> None:
    p = policy({"allow": {"or": [{"domain": "corp.example"}]}})
    assert decide(p, UNVERIFIED_CORP).effect == "deny"
    assert decide(p, None).effect == "login"


# -- emails and polarity: a criterion that can only refuse sees the claimed email -------------

MALLORY = Identity(sub="m", email="Mallory@Evil.test", email_verified=True)
CLAIMS_MALLORY = Identity(sub="m2", email="mallory@evil.test")          # no email_verified
OTHER = Identity(sub="o", email="other@good.test", email_verified=True)
CLAIMS_OTHER = Identity(sub="o2", email="other@good.test")
NO_EMAIL = Identity(sub="n")
WHO = (MALLORY, CLAIMS_MALLORY, OTHER, CLAIMS_OTHER, NO_EMAIL)
ACCEPT = {"accept": True}


def _email(c: str) -> dict[str, Any]:
    return {"email": "mallory@evil.test"} if c == "email" else {"domain": "evil.test"}


# (rules, the effect for each of WHO); "email" in a rule is replaced by both criteria.
POLARITY = [
    # subjects: a deny rule's restricts, a gate's or a continue rule's grants
    ([{"subject": ["email:mallory@evil.test"], "policy": "deny"}, {"policy": "bypass"}],
     ("deny", "deny", "allow", "allow", "allow")),
    ([{"subject": [["email:mallory@evil.test", "user:m2"]], "policy": "deny"},
      {"policy": "bypass"}],
     ("allow", "deny", "allow", "allow", "allow")),
    ([{"subject": ["email:mallory@evil.test"], "policy": "authenticated"}],
     ("allow", "deny", "deny", "deny", "deny")),
    ([{"subject": ["email:mallory@evil.test"], "subject_mismatch": "continue",
       "policy": "authenticated"}, {"policy": "deny"}],
     ("allow", "deny", "deny", "deny", "deny")),
    # allow blocks: a criterion grants; under one not/nor it restricts; under two, grants
    ([{"allow": {"or": ["email"]}}], ("allow", "deny", "deny", "deny", "deny")),
    ([{"allow": {"not": ["email"]}}], ("deny", "deny", "allow", "allow", "allow")),
    ([{"allow": {"nor": ["email"]}}], ("deny", "deny", "allow", "allow", "allow")),
    ([{"allow": {"and": [ACCEPT, {"not": [{"or": ["email"]}]}]}}],
     ("deny", "deny", "allow", "allow", "allow")),
    ([{"allow": {"not": [{"not": ["email"]}]}}], ("allow", "deny", "deny", "deny", "deny")),
    ([{"allow": {"nor": [{"nor": ["email"]}]}}], ("allow", "deny", "deny", "deny", "deny")),
    # deny blocks: a criterion restricts; under one not/nor it grants; under two, restricts
    ([{"allow": {"or": [ACCEPT]}, "deny": {"or": ["email"]}}],
     ("deny", "deny", "allow", "allow", "allow")),
    ([{"allow": {"or": [ACCEPT]}, "deny": {"and": [{"or": ["email"]}]}}],
     ("deny", "deny", "allow", "allow", "allow")),
    ([{"allow": {"or": [ACCEPT]}, "deny": {"not": ["email"]}}],
     ("allow", "deny", "deny", "deny", "deny")),
    ([{"allow": {"or": [ACCEPT]}, "deny": {"nor": ["email"]}}],
     ("allow", "deny", "deny", "deny", "deny")),
    ([{"allow": {"or": [ACCEPT]}, "deny": {"nor": [{"not": ["email"]}]}}],
     ("deny", "deny", "allow", "allow", "allow")),
]


def _with(rules: list[dict[str, Any]], criterion: str) -> list[dict[str, Any]]:
    def swap(node: Any) -> Any:
        if node == "email":
            return _email(criterion)
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node
    return [swap(r) for r in rules]


@pytest.mark.parametrize(("rules", "effects", "criterion"), [
    (rules, effects, criterion) for rules, effects in POLARITY
    for criterion in (("email",) if "subject" in rules[0] else ("email", "domain"))])
def test_email_criteria_follow_their_polarity(rules: list[dict[str, Any]],
                                              effects: tuple[str, ...], criterion: str) -> None:
    """A claimed but unverified email counts where the criterion can only refuse (the
    subject of a deny rule, a deny block, under an odd number of not/nor in an allow
    block) and never where it grants."""
    p = policy(*_with(rules, criterion))
    assert tuple(decide(p, who).effect for who in WHO) == effects
    anonymous = decide(p, None).effect
    assert anonymous in ("login", "allow")       # never decided on an email nobody has


def test_the_reviewed_deny_lists_deny_the_claimed_email() -> None:
    """F4 of the review: mallory's provider sends no email_verified."""
    p = policy({"subject": ["email:mallory@evil.test"], "policy": "deny"},
               {"allow": {"or": [{"accept": True}]}, "deny": {"or": [{"domain": "evil.test"}]},
                "resources": ["^/blocks(/|$)"]},
               {"policy": "authenticated"})
    assert decide(p, CLAIMS_MALLORY, path="/page") == Decision("deny", 0, "rule 0: deny")
    assert decide(p, Identity(sub="m3", email="x@evil.test"), path="/blocks").effect == "deny"
    assert decide(p, CLAIMS_OTHER, path="/blocks").effect == "allow"


# -- case folding: ASCII letters only ---------------------------------------------------------


@pytest.mark.parametrize("rule", [
    {"subject": ["email:kate@example.com"], "policy": "authenticated"},
    {"allow": {"or": [{"email": "kate@example.com"}]}},
    {"allow": {"or": [{"email": {"in": ["KATE@example.com"]}}]}},
    {"allow": {"or": [{"domain": "kelvin.test"}]}},
])
def test_a_kelvin_sign_is_not_a_k(rule: dict[str, Any]) -> None:
    p = policy(rule)
    kelvin = Identity(sub="x", email="\u212aate@example.com", email_verified=True)
    kelvin_domain = Identity(sub="y", email="a@\u212aelvin.test", email_verified=True)
    assert "\u212aate".lower() == "kate"                        # what str.lower() did
    assert decide(p, kelvin).effect == "deny"
    assert decide(p, kelvin_domain).effect == "deny"
    kate = Identity(sub="k", email="Kate@Example.COM", email_verified=True)
    ascii_domain = Identity(sub="z", email="a@KELVIN.test", email_verified=True)
    assert "allow" in (decide(p, kate).effect, decide(p, ascii_domain).effect)


def test_email_verified_needs_an_email() -> None:
    assert Identity(sub="s", email_verified=True).email_verified is False


# -- resources that look for a query; rules that can never apply ----------------------------


def test_resources_that_need_a_question_mark_are_a_warning() -> None:
    p = policy({"resources": ["^/ok$", r"[?&]debug=1"], "policy": "deny"},
               {"resources": [r"^/api\?v=2", r"^/x/?$"], "policy": "deny"})
    assert p.warnings() == [
        "access_control.rules[0].resources[1] matches only a path with a '?' in it, but "
        "resources never see the query string: put conditions on the query string in 'query'",
        "access_control.rules[1].resources[0] matches only a path with a '?' in it, but "
        "resources never see the query string: put conditions on the query string in 'query'"]


@pytest.mark.parametrize(("pattern", "warns"), [
    (r"^/files/[^?]+\.pdf$", False),       # a negated class: works on paths
    (r"^/api([/?].*)?$", False),            # Authelia's idiom: /api, /api/..., /api?...
    (r"^/api(\?.*)?$", False),              # optional: matches /api
    (r"^/x(/|\?)", False),                  # an alternative without "?"
    (r"^/x[ -@]", False),                    # a range holding "/" too
    (r"^/x\??$", False),
    (r"^/x[^/?]*$", False),
    (r"[?&]debug=1", True),
    (r"^/api\?v=2", True),
    (r"^/a[?]b", True),
    (r"(?i)^/A\?", True),
    (r"^/x(\?a|\?b)", True),                # every alternative needs one
    (r"^/x(?:\?)+", True),
    (r"^/x(?=.*\?)", True),
])
def test_the_question_mark_warning_names_only_patterns_that_need_one(
        pattern: str, warns: bool) -> None:
    p = policy({"resources": [pattern], "policy": "bypass"}, {"policy": "authenticated"})
    assert bool(p.warnings()) is warns
    if not warns:
        assert decide(p, path="/api").effect in ("allow", "login")


def unreachable(*rules: dict[str, Any]) -> list[tuple[int, int]]:
    return policy(*rules).unreachable()


def test_everything_after_a_catch_all_can_never_apply() -> None:
    assert unreachable({"resources": ["^/a"], "policy": "bypass"},
                       {"policy": "authenticated"},
                       {"resources": ["^/b"], "policy": "bypass"},
                       {"policy": "deny"}) == [(2, 1), (3, 1)]
    # a catch-all with Pomerium-style blocks decides too (its allow block or a deny)
    assert unreachable({"allow": {"or": [{"groups": "x"}]}}, {"policy": "bypass"}) == [(1, 0)]
    # and so does a subject gate without request fields
    assert unreachable({"subject": ["group:admins"], "policy": "authenticated"},
                       {"policy": "bypass"}) == [(1, 0)]


def test_the_old_deny_after_a_subject_rule_is_reported() -> None:
    rules = [{"resources": ["^/admin(/|$)"], "subject": [["group:admins"]],
              "policy": "authenticated"},
             {"resources": ["^/admin(/|$)"], "policy": "deny"},
             {"policy": "authenticated"}]
    p = policy(*rules)
    assert p.unreachable() == [(1, 0)]
    assert p.warnings() == [
        "access_control.rules[1] can never apply: rule 0 (resources = [\"^/admin(/|$)\"], "
        "subject = [[\"group:admins\"]], policy = \"authenticated\") selects every request "
        "it would and decides them first"]


@pytest.mark.parametrize(("earlier", "later"), [
    ({"domain": ["a.example.com", "b.example.com"]}, {"domain": ["a.example.com"],
                                                      "resources": ["^/x"]}),
    ({"domain": ["*.example.com"]}, {"domain": ["a.example.com", "*.b.example.com"]}),
    ({"domain_regex": [r".*\.test"]}, {"domain": ["a.test"]}),
    ({"resources": ["^/a", "^/b"]}, {"resources": ["^/b"], "methods": ["GET"]}),
    ({"methods": ["GET", "HEAD"]}, {"methods": ["HEAD"]}),
    ({"networks": ["10.0.0.0/8"]}, {"networks": ["10.1.0.0/16", "10.2.3.4"]}),
    ({"query": [{"key": "a"}]}, {"query": [{"key": "a"}, {"key": "b", "value": "1"}]}),
])
def test_a_rule_covered_by_an_earlier_one_is_reported(earlier: dict[str, Any],
                                                      later: dict[str, Any]) -> None:
    assert unreachable({**earlier, "policy": "deny"}, {**later, "policy": "bypass"}) == [
        (1, 0)]


@pytest.mark.parametrize(("earlier", "later"), [
    ({"domain": ["a.example.com"]}, {"domain": ["a.example.com", "c.example.com"]}),
    ({"domain": ["a.example.com"]}, {"resources": ["^/x"]}),
    ({"domain": ["a.example.com"]}, {"domain": ["*.a.example.com"]}),
    ({"domain_regex": [r".*\.test"]}, {"domain_regex": [r"a\.test"]}),   # not provable
    ({"resources": ["^/a"]}, {"resources": ["^/a", "^/b"]}),
    ({"resources": ["^/a"]}, {"resources": ["^/a/b"]}),                  # not compared
    ({"methods": ["GET"]}, {"methods": ["GET", "POST"]}),
    ({"networks": ["10.1.0.0/16"]}, {"networks": ["10.0.0.0/8"]}),
    ({"query": [{"key": "a"}]}, {"policy": "bypass"}),
    ({"subject": ["user:x"], "subject_mismatch": "continue"}, {"resources": ["^/a"]}),
])
def test_a_rule_an_earlier_one_may_pass_on_is_not_reported(earlier: dict[str, Any],
                                                           later: dict[str, Any]) -> None:
    assert unreachable({**earlier, "policy": "authenticated"}, {"policy": "bypass", **later}
                       ) == []


def test_a_deny_rule_for_some_subjects_shadows_nothing() -> None:
    assert unreachable({"subject": ["user:bob"], "policy": "deny"},
                       {"policy": "authenticated"}) == []


def test_the_analysis_of_a_long_rule_list_is_bounded() -> None:
    rules = [{"methods": ["GET"], "networks": [f"10.{i // 256}.{i % 256}.0/24"],
              "policy": "deny"} for i in range(3000)]
    p = policy(*rules, {"policy": "authenticated"}, {"resources": ["^/x"], "policy": "deny"})
    assert p.unreachable() == [(3001, 3000)]
    assert policy(*_many(10_000)).unreachable() == []


# -- explain ---------------------------------------------------------------------------------

EXPLAINED = [
    {"resources": ["^/healthz$"], "policy": "bypass"},
    {"domain": ["app.example.com"], "resources": ["^/admin(/|$)"],
     "subject": [["group:admins"]], "policy": "two_factor"},
    {"methods": ["POST"], "policy": "deny"},
    {"networks": ["10.0.0.0/8"], "policy": "bypass"},
    {"query": [{"key": "debug"}], "policy": "deny"},
    {"subject": ["user:mallory"], "policy": "deny"},
    {"domain": ["*.internal.test"], "policy": "authenticated"},
]


def test_explain_names_the_first_field_each_earlier_rule_missed() -> None:
    p = policy(*EXPLAINED)
    v = view(path="/x", query="a=1", client="192.0.2.1")
    ex = p.explain(v, BOB, path="/x")
    assert ex.decision == Decision("deny", None, "default policy: deny")
    assert (ex.host, ex.path) == ("app.example.com", "/x")
    assert [(s.rule, s.decides) for s in ex.steps] == [(i, False) for i in range(7)]
    assert [s.reason.split(":")[0] for s in ex.steps] == [
        "resources", "resources", "methods", "networks", "query", "subject", "domain"]
    assert ex.steps[0].text == 'resources = ["^/healthz$"], policy = "bypass"'
    assert ex.steps[6].reason == "domain: the host 'app.example.com' is not among its domains"
    admin = p.explain(view(path="/admin"), BOB, path="/admin")
    assert [s.decides for s in admin.steps] == [False, True]
    assert admin.steps[1].reason == "rule 1: subject does not match"


@pytest.mark.parametrize("identity", [None, ALICE, ALICE_2FA, BOB,
                                      Identity(sub="mallory", email="m@x.test")])
@pytest.mark.parametrize(("host", "path", "method", "query", "client"), [
    ("app.example.com", "/healthz", "GET", "", "192.0.2.1"),
    ("app.example.com", "/admin/x", "GET", "a=1", "192.0.2.1"),
    ("other.test", "/admin/x", "POST", "", "10.1.1.1"),
    ("a.internal.test", "/y", "GET", "debug", "10.1.1.1"),
    ("a.internal.test", "/y", "GET", "z", ""),
    ("a.internal.test", "/y", "GET", "&".join(["a"] * 99), ""),
])
def test_explain_always_agrees_with_evaluate(identity: Identity | None, host: str, path: str,
                                             method: str, query: str, client: str) -> None:
    p = policy(*EXPLAINED)
    v = view(host, path, method=method, query=query, client=client)
    ex = p.explain(v, identity, path=path)
    assert ex.decision == p.evaluate(v, identity, path=path)
    deciding = [s for s in ex.steps if s.decides]
    assert [s.rule for s in deciding] == ([] if ex.decision.rule is None
                                          else [ex.decision.rule])
    assert [s.rule for s in ex.steps] == list(range(len(ex.steps)))


# -- the examples of docs/authorization.md ----------------------------------------------------


def _doc_examples() -> dict[str, str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "authorization.md").read_text()
    examples = {}
    for chunk in text.split("<!-- example: ")[1:]:
        name, _, rest = chunk.partition(" -->")
        block = rest.split("```", 2)[1]
        examples[name] = block.split("\n", 1)[1]
    return examples


def doc_policy(name: str) -> AccessPolicy:
    import textwrap

    import tomllib

    data = tomllib.loads(textwrap.dedent(_doc_examples()[name]))
    s = Settings.from_mapping(data, environ={})
    return AccessPolicy.from_settings(s.access_control)


def test_every_documented_example_compiles_without_a_warning() -> None:
    examples = _doc_examples()
    assert set(examples) == {"layout", "query", "deny-subject", "fall-through", "email",
                             "explain"}
    for name in examples:
        if name != "explain":
            assert doc_policy(name).warnings() == [], name


def test_the_documented_examples_do_what_the_docs_say() -> None:
    layout = doc_policy("layout")
    for path, query in (("/admin", ""), ("/admin/", ""), ("/admin/users", ""),
                        ("/admin", "tab=users")):
        assert decide(layout, BOB, path=path, query=query).effect == "deny"
        assert decide(layout, ALICE, path=path, query=query).effect == "two_factor"
        assert decide(layout, None, path=path, query=query).effect == "login"
    assert decide(layout, BOB, path="/page").effect == "allow"
    assert decide(layout, None, path="/healthz").effect == "allow"
    query = doc_policy("query")
    assert decide(query, BOB, path="/reports", query="format=csv").effect == "two_factor"
    assert decide(query, BOB, path="/reports/q1", query="a=1&format=csv").rule == 0
    assert decide(query, BOB, path="/reports", query="format=pdf").rule is None
    deny = doc_policy("deny-subject")
    assert decide(deny, Identity(sub="mallory")).effect == "deny"
    assert decide(deny, BOB).effect == "allow" and decide(deny, None).effect == "login"
    fall = doc_policy("fall-through")
    assert decide(fall, ALICE, path="/admin").effect == "two_factor"
    assert decide(fall, BOB, path="/admin").effect == "allow"
    email = doc_policy("email")
    staff = Identity(sub="s", email="s@example.com", email_verified=True)
    assert decide(email, staff, path="/staff").effect == "allow"
    assert decide(email, Identity(sub="s", email="s@example.com"), path="/staff"
                  ).effect == "deny"
    contractor = Identity(sub="c", email="contractor@partner.test", email_verified=True)
    assert decide(email, contractor, path="/staff/x").effect == "allow"


# -- the claims the rules read -----------------------------------------------------------------


def test_the_policy_names_the_top_level_claims_its_rules_read() -> None:
    from secure_mw.authz.rules import claim_names

    p = policy({"allow": {"or": [{"claim/department": "sales"},
                                 {"not": [{"claim/org/team": "blue"}]}]},
                "deny": {"and": [{"nor": [{"claim/roles": "r"}]}]}},
               {"resources": ["^/x"], "policy": "authenticated"})
    assert p.claim_names == {"department", "org", "roles"}
    assert policy({"policy": "bypass"}).claim_names == frozenset()
    # the names of rules that do not compile are still found (check-config reports those)
    odd = AccessControlSettings(rules=[AccessRule(allow={"or": [{"claim/": 1}, "x", 3]}),
                                       AccessRule(deny={"claim/level": 3})])
    assert claim_names(odd) == {"level"}
    assert decide(p, ALICE, path="/y").effect == "deny"              # team blue, no dept
