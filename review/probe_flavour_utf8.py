"""The same request decided differently by the two flavours: a path whose percent-escapes
are not UTF-8 is read with U+FFFD by ASGI servers and as latin-1 by the WSGI flavour."""
from __future__ import annotations
import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.harness import SERVERS, app_saw, base_config, cookie, raw, serve, settings_of

AC = {"default_policy": "deny", "rules": [
    {"resources": [r"^/files/\w+$"], "policy": "bypass"},          # word characters only
    {"policy": "authenticated"}]}

def main():
    tmp = Path(tempfile.mkdtemp())
    cfg = base_config(tmp, AC)
    st = settings_of(cfg)
    for server in sys.argv[1:] or SERVERS:
        with serve(server, cfg, st) as addr:
            for target in ["/files/abc", "/files/%85", "/files/%C0%AF", "/files/%E9", "/files/%C3", "/files/caf%C3%A9"]:
                status, _, body = raw(addr, target)
                seen = app_saw(body)
                print(f"{server:18} {target!r:22} anonymous -> {status} app-path={seen and seen['path']!r}")

if __name__ == "__main__":
    main()
