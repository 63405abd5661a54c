"""Rules that unreachable() names must never decide: random rule sets, random requests,
in-process (AccessPolicy.evaluate). Any decision by a flagged rule is a false positive."""
from __future__ import annotations
import random, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.differential_explain import HOSTS, METHODS, PATHS, QUERIES, USERS, random_rule
from secure_mw.authz.paths import PathRefused, normalize_path
from secure_mw.authz.rules import AccessPolicy
from secure_mw.http import RequestView
from secure_mw.identity import Identity
from secure_mw.settings import Settings
from urllib.parse import unquote

EXTRA_PATHS = PATHS + ["/admin/x.pdf", "/api/", "/public", "/secret", "/x", "/admin?", "/%3F"]
IPS = ["127.0.0.1", "10.1.2.3", "::1", "::ffff:10.0.0.1", "192.168.0.1", "", "garbage"]

def identity(u):
    if u is None:
        return None
    sub, groups, email, verified, two = u
    return Identity(sub=sub, groups=groups, email=email, email_verified=verified,
                    auth_level=2 if two else 1, claims={"sub": sub, "email_verified": verified})

def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    n_sets = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    per = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    rng = random.Random(seed)
    flagged_sets = flagged_rules = false_pos = requests = 0
    for n in range(n_sets):
        rules = [random_rule(rng) for _ in range(rng.randint(2, 7))]
        # bias toward covering layouts: copy an earlier rule's request fields sometimes
        if rng.random() < 0.5 and len(rules) >= 2:
            i, j = sorted(rng.sample(range(len(rules)), 2))
            for k in ("domain", "domain_regex", "resources", "methods", "networks", "query"):
                if k in rules[i] and rng.random() < 0.8:
                    rules[j][k] = rules[i][k]
        try:
            st = Settings.from_mapping({"access_control": {"rules": rules}}, environ={})
            policy = AccessPolicy.from_settings(st.access_control)
        except Exception:
            continue
        flagged = dict(policy.unreachable())
        if not flagged:
            continue
        flagged_sets += 1
        flagged_rules += len(flagged)
        for _ in range(per):
            path = rng.choice(EXTRA_PATHS)
            try:
                norm = normalize_path(unquote(path))
            except PathRefused:
                continue
            view = RequestView(method=rng.choice(METHODS), scheme="https", host=rng.choice(HOSTS).lower(),
                               path=norm, query_string=rng.choice(QUERIES), headers={}, client=rng.choice(IPS),
                               websocket=rng.random() < 0.05)
            d = policy.evaluate(view, identity(rng.choice(USERS)), path=norm)
            requests += 1
            if d.rule in flagged:
                false_pos += 1
                print("FALSE POSITIVE: rule", d.rule, "said unreachable (by", flagged[d.rule], ") decided", d, view, rules)
                break
    print(f"rule sets with warnings {flagged_sets}, rules flagged {flagged_rules}, requests {requests}, false positives {false_pos}")

if __name__ == "__main__":
    main()
