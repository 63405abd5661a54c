"""Every encoding trick on a gated path, on every server, for the docs' layout example."""
from __future__ import annotations
import logging, re, sys, tempfile, tomllib
logging.getLogger('secure_mw').setLevel(logging.CRITICAL)
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.harness import SERVERS, app_saw, base_config, cookie, raw, serve, settings_of

DOC = (Path(__file__).resolve().parents[1] / "docs/authorization.md").read_text()
def example(name):
    return tomllib.loads(DOC.split(f"<!-- example: {name} -->", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0])

TARGETS = ["/admin", "/admin?x", "/admin?x=1", "/admin#x", "/admin%3Fx", "/admin%3fx=1", "/ADMIN",
           "/Admin", "/admin/", "//admin", "///admin/users", "/admin;x", "/admin;x/users", "/%61dmin",
           "/%41DMIN", "/admin%2f", "/admin%2Fusers", "/./admin", "/x/../admin", "/x/%2e%2e/admin",
           "/x/%2E./admin", "/admin/.", "/admin/..", "/admin/./users", "/%2fadmin", "/admin%00",
           "/admin%20", "/admin ", "/admin%09", "/admin%C0%AF", "/%C0%AEadmin", "/%E2%80%8Badmin",
           "/\u0430dmin", "/admin\u200b", "/ａdmin", "/admin%EF%BC%8Fusers", "/adm%69n",
           "/admin%252f", "/admin/%2e", "/admin?", "/admin/?", "/admin%23x", "/admin\\users",
           "/admin%5cusers", "http://app.example.com/admin", "*", "admin", "/admin/users?x=%2F",
           "/%2561dmin", "/.auth/../admin", "/.auth/%2e%2e/admin", "/%2e/admin", "/admin..;/x"]

def main():
    cfg_ac = example("layout")["access_control"]
    tmp = Path(tempfile.mkdtemp())
    cfg = base_config(tmp, cfg_ac)
    st = settings_of(cfg)
    who = {"anon": "", "bob": cookie(st, "bob", groups=("staff",)),
           "alice1": cookie(st, "alice", groups=("admins",)),
           "alice2": cookie(st, "alice", groups=("admins",), two_factor=True)}
    servers = sys.argv[1:] or SERVERS
    bad = total = 0
    for server in servers:
        with serve(server, cfg, st) as addr:
            for t in TARGETS:
                row = []
                for name, c in who.items():
                    status, h, body = raw(addr, t, cookie_=c)
                    seen = app_saw(body)
                    total += 1
                    reached_admin = seen is not None and (re.match(r"^/admin(/|$)", seen["path"]) is not None or seen["app"] == "admin-site")
                    flag = ""
                    if status == 200 and reached_admin and name != "alice2":
                        flag = "!!"
                        bad += 1
                    row.append(f"{name}={status}{flag}" + (f"[{seen['path']!r}]" if seen else ""))
                print(f"{server:18} {t!r:34} " + " ".join(row))
    print(f"requests {total}, suspicious {bad}")

if __name__ == "__main__":
    main()
