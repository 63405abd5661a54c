"""`secure-mw explain` against the live server: random rule sets, random requests, both
flavours (uvicorn-httptools and werkzeug by default). Prints every disagreement."""
from __future__ import annotations
import contextlib, io, json, random, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tomli_w
from review.harness import app_saw, base_config, cookie, raw, serve, settings_of
from secure_mw.cli import main as cli

HOSTS = ["app.example.com", "APP.example.com:8443", "a.app.example.com", "other.test", "app.example.com."]
RESOURCES = ["^/admin(/|$)", "^/admin$", "^/api/", "/secret", "^/public", "\\.pdf$", "^/$"]
PATHS = ["/", "/admin", "/admin/", "/admin/users", "//admin", "/x/../admin", "/api/v1", "/api",
         "/public/a", "/public/../admin", "/docs/a.pdf", "/secret/x", "/a%20b", "/%61dmin",
         "/admin%2fx", "/x/%2e%2e/admin", "/caf%C3%A9", "/admin%C0%AF", "/%E2%80%8Badmin",
         "/.auth/../admin", "/ADMIN", "/admin;x", "/a/./b/", "/%7Euser"]
QUERIES = ["", "x=1", "debug=1", "debug=0&debug=1", "format=csv", "a=%31", "debug", "Debug=1",
           "&".join(["a=1"] * 70) + "&debug=1", "x=%ff", "d%65bug=1", "debug=1;x=2"]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]
SUBJECTS = [["group:admins"], ["user:alice"], [["group:admins", "email:alice@example.com"]],
            ["email:Bob@Example.com"], ["group:staff", "user:carol"]]
QUERY_CONDS = [[{"key": "debug", "value": "1"}], [{"key": "format", "value": "csv"}],
               [{"key": "debug", "operator": "present"}], [{"key": "x", "operator": "absent"}],
               [[{"key": "a", "value": "1"}], [{"key": "debug"}]]]
BLOCKS = [{"or": [{"email": "alice@example.com"}, {"groups": "admins"}]},
          {"and": [{"domain": "example.com"}]},
          {"not": [{"http_method": "POST"}]},
          {"or": [{"http_path": {"starts_with": "/admin"}}, {"user": "bob"}]},
          {"and": [{"claim/email_verified": True}]},
          {"nor": [{"groups": "staff"}, {"authenticated_user": True}]},
          {"or": [{"accept": True}]},
          {"and": [{"source_ip": "127.0.0.0/8"}, {"groups": {"has": "admins", "exclude": "banned"}}]}]
USERS = [None, ("alice", ("admins",), "alice@example.com", True, False),
         ("alice", ("admins",), "alice@example.com", True, True),
         ("bob", ("staff",), "bob@example.com", False, False),
         ("bob", ("staff",), "Bob@Example.com", True, False),
         ("carol", (), "", False, True), ("mallory", ("banned", "admins"), "m@evil.test", True, True)]


def random_rule(rng: random.Random) -> dict:
    r: dict = {}
    if rng.random() < 0.3:
        r["domain"] = rng.sample(["app.example.com", "*.app.example.com", "other.test"], rng.randint(1, 2))
    if rng.random() < 0.1:
        r["domain_regex"] = [r"^a\..*"]
    if rng.random() < 0.6:
        r["resources"] = rng.sample(RESOURCES, rng.randint(1, 2))
    if rng.random() < 0.25:
        r["methods"] = rng.sample(METHODS, rng.randint(1, 3))
    if rng.random() < 0.15:
        r["networks"] = [rng.choice(["127.0.0.0/8", "10.0.0.0/8", "::1/128"])]
    if rng.random() < 0.2:
        r["query"] = rng.choice(QUERY_CONDS)
    blocks = rng.random() < 0.25
    if blocks:
        r[rng.choice(["allow", "deny"])] = rng.choice(BLOCKS)
        if rng.random() < 0.3:
            r["policy"] = rng.choice(["authenticated", "two_factor"])
    else:
        r["policy"] = rng.choice(["bypass", "authenticated", "two_factor", "deny", "deny"])
    if r.get("policy") != "bypass" and rng.random() < 0.35:
        r["subject"] = rng.choice(SUBJECTS)
        if r.get("policy") != "deny" and rng.random() < 0.4:
            r["subject_mismatch"] = rng.choice(["continue", "deny"])
        elif r.get("policy") == "deny" and rng.random() < 0.3:
            r["subject_mismatch"] = "continue"
    return r


def live_effect(status: int, headers: dict, body: bytes) -> str:
    if status == 200:
        return "allow"
    if status in (400, 403, 404):
        return "refused"
    if status == 401:   # the body is empty for HEAD: the header says which step
        return "two_factor" if "/2fa" in headers.get("www-authenticate", "") else "login"
    return f"status {status}"


EXIT = {0: "allow", 3: "refused", 4: "login", 5: "two_factor"}


def explain(config: Path, url: str, user, method: str) -> tuple[str, str]:
    argv = ["explain", url, "--config", str(config), "--no-env", "--method", method, "--ip", "127.0.0.1"]
    if user:
        sub, groups, email, verified, two = user
        argv += ["--user", sub] + [x for g in groups for x in ("--group", g)]
        if email:
            argv += ["--email", email] + (["--email-verified"] if verified else [])
        if two:
            argv.append("--two-factor")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli(argv)
    return EXIT.get(code, f"exit {code}"), out.getvalue()


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    sets = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    per = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    servers = sys.argv[4].split(",") if len(sys.argv) > 4 else ["uvicorn-httptools", "werkzeug"]
    rng = random.Random(seed)
    total = disagreements = 0
    seen_kinds: dict[str, int] = {}
    for n in range(sets):
        tmp = Path(tempfile.mkdtemp())
        ac = {"default_policy": rng.choice(["deny", "authenticated", "bypass"]),
              "rules": [random_rule(rng) for _ in range(rng.randint(1, 6))]}
        cfg = base_config(tmp, ac, server={"external_url": "https://app.example.com"})
        try:
            st = settings_of(cfg)
        except Exception as exc:
            print("config refused:", exc)
            continue
        config = tmp / "secure-mw.toml"
        config.write_text(tomli_w.dumps(cfg))
        cookies = {}
        for u in USERS:
            if u:
                sub, groups, email, verified, two = u
                cookies[u] = cookie(st, sub, groups=groups, email=email, email_verified=verified, two_factor=two)
        for server in servers:
            with serve(server, cfg, st) as addr:
                for _ in range(per):
                    host = rng.choice(HOSTS)
                    path = rng.choice(PATHS)
                    q = rng.choice(QUERIES)
                    method = rng.choice(METHODS)
                    user = rng.choice(USERS)
                    target = path + ("?" + q if q else "")
                    status, hdrs, body = raw(addr, target, method=method, host=host,
                                          cookie_=cookies.get(user, "") if user else "",
                                          headers=[("Content-Length", "0")] if method in ("POST", "PUT") else [])
                    live = live_effect(status, hdrs, body)
                    said, text = explain(config, f"https://{host}{target}", user, method)
                    total += 1
                    if live != said and not (method == "HEAD" and status == 200 and said == "allow"):
                        disagreements += 1
                        family = ("invalid UTF-8 path" if "%C0" in path else
                                  "path through the login prefix" if path.startswith("/.auth/") else
                                  "claim criterion (explain has no claims)" if "claim/" in json.dumps(ac) else "other")
                        kind = f"{family}: {server}: explain {said} / live {live}"
                        seen_kinds[kind] = seen_kinds.get(kind, 0) + 1
                        if seen_kinds[kind] <= 3:
                            print(f"--- set {n} {server} {method} https://{host}{target} user={user and user[0]} "
                                  f"two={user and user[4]}: explain={said} live={live} ({status})")
                            print("    rules:", json.dumps(ac["rules"]))
                            print("    explain says:", " | ".join(l.strip() for l in text.splitlines()[-3:]))
    print(f"requests {total}, disagreements {disagreements}")
    for k, v in sorted(seen_kinds.items()):
        print(f"  {v:4} {k}")


if __name__ == "__main__":
    main()
