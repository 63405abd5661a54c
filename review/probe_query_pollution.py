"""A repeated query key satisfies a `query` condition with one value while the app reads
another (Starlette: the last, werkzeug: the first)."""
from __future__ import annotations
import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.harness import SERVERS, app_saw, base_config, raw, serve, settings_of

AC = {"default_policy": "deny", "rules": [
    {"resources": ["^/export$"], "query": [{"key": "format", "value": "csv"}], "policy": "bypass"},
    {"resources": ["^/export$"], "policy": "two_factor"},
    {"policy": "authenticated"}]}

def main():
    tmp = Path(tempfile.mkdtemp())
    cfg = base_config(tmp, AC)
    st = settings_of(cfg)
    hits = total = 0
    for server in sys.argv[1:] or SERVERS:
        with serve(server, cfg, st) as addr:
            for target in ["/export?format=csv", "/export?format=pdf", "/export?format=csv&format=pdf",
                           "/export?format=pdf&format=csv"]:
                status, _, body = raw(addr, target)
                seen = app_saw(body)
                total += 1
                values = [v for k, v in (seen["query"] if seen else []) if k == "format"]
                # what a handler reads: Starlette's query_params[k] is the last, werkzeug's args[k] the first
                read = (values[-1] if server.startswith("uvicorn") else values[0]) if values else None
                flag = "  <-- anonymous export as " + read if status == 200 and read != "csv" else ""
                hits += bool(flag)
                print(f"{server:18} {target!r:34} anonymous -> {status} handler reads format={read!r}{flag}")
    print(f"requests {total}, anonymous non-csv exports {hits}")

if __name__ == "__main__":
    main()
