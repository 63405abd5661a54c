"""Malformed [access_control] values: start-up must answer a ConfigError naming the key,
never another exception."""
from __future__ import annotations
import random, sys, traceback
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from secure_mw.authz.rules import AccessPolicy
from secure_mw.errors import ConfigError
from secure_mw.settings import Settings

WEIRD = [None, True, False, 0, 1, -1, 1.5, "", "x", "^/a", "(", [], [None], [1], [[]], [[1]], {}, {"a": 1},
         [{}], [{"key": 1}], ["GET", 5], "GET", {"is": 1}, [[["deep"]]], "user:", "group:x", ["email:"],
         [["user:a", "bogus"]], "continue", "deny", "bypass", ["*"], ["*."], ["*.*.x"], [".x"], ["a/b"],
         ["10.0.0.0/33"], ["name-nope"], {"or": []}, {"or": [{}]}, {"or": [{"a": 1, "b": 2}]},
         {"and": [{"email": 5}]}, {"and": [{"email": {"in": "x"}}]}, {"and": [{"claim/": 1}]},
         {"and": [{"claim/a": {}}]}, {"and": [{"time_of_day": {"after": "25:00"}}]},
         {"and": [{"time_of_day": {"after": 8}}]}, {"and": [{"day_of_week": "funday"}]},
         {"and": [{"day_of_week": {"is": "mon", "timezone": "Mars/Base"}}]},
         {"and": [{"day_of_week": 3}]}, {"and": [{"day_of_week": ""}]}, {"and": [{"day_of_week": ["mon", 1]}]},
         {"and": [{"source_ip": 5}]}, {"and": [{"source_ip": [None]}]}, {"and": [{"groups": []}]},
         {"and": [{"client_certificate": {"fingerprint": "zz"}}]}, {"and": [{"client_certificate": []}]},
         {"and": [{"accept": 1}]}, {"nor": [{"reject": True}]}, {"and": [{"http_method": {"starts_with": 1}}]},
         [{"key": "a", "operator": "pattern", "value": "("}], [{"key": "a", "operator": 5}],
         [{"key": "a", "operator": ["x"]}], [[{"key": "a"}], {"key": "b"}], [{"key": "a", "value": 1}],
         {"key": "a"}, [{"key": "a", "operator": "present", "value": "x"}],
         {"and": [{"time_of_day": {"before": "9:60"}}]}, {"and": [{"time_of_day": {"timezone": 5, "after": "08:00"}}]},
         {"and": [{"day_of_week": {"is": "mon", "timezone": ["x"]}}]}, [float("nan")], "\x00", ["\ud800"]]
FIELDS = ["domain", "domain_regex", "resources", "methods", "networks", "subject", "subject_mismatch",
          "query", "policy", "allow", "deny", "nonsense"]

def main():
    rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    crashes: dict[str, str] = {}
    ok = refused = 0
    for _ in range(n):
        rule = {"policy": rng.choice(["authenticated", "deny", "bypass", None, "two_factor"])}
        for f in rng.sample(FIELDS, rng.randint(1, 3)):
            rule[f] = rng.choice(WEIRD)
        rule = {k: v for k, v in rule.items() if v is not None}
        ac = {"rules": [rule], "default_policy": rng.choice(["deny", "deny", 5, "nope", None])}
        if rng.random() < 0.2:
            ac["networks"] = rng.choice([[{"name": "a", "networks": ["10.0.0.0/8"]}], [{"name": 5}], [{}], "x", [{"name": "a", "networks": "10.0.0.0/8"}], [{"name": "a", "networks": [5]}]])
        ac = {k: v for k, v in ac.items() if v is not None}
        try:
            st = Settings.from_mapping({"access_control": ac}, environ={})
            policy = AccessPolicy.from_settings(st.access_control)
            policy.warnings()
            ok += 1
        except ConfigError:
            refused += 1
        except Exception as exc:   # noqa: BLE001
            key = f"{type(exc).__name__}: {str(exc)[:80]}"
            if key not in crashes:
                crashes[key] = repr(ac)[:300] + "\n" + "".join(traceback.format_exception(exc)[-3:])
    print(f"configs {n}: accepted {ok}, ConfigError {refused}, other exceptions {len(crashes)} kinds")
    for k, v in crashes.items():
        print("==", k)
        print(v)

if __name__ == "__main__":
    main()
