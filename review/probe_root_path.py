"""The docs' layout under a mount point: uvicorn --root-path /app, and a WSGI server with
SCRIPT_NAME=/app. Resources are matched against root_path + path, the app routes the rest."""
from __future__ import annotations
import logging, sys, tempfile, threading
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.harness import app_saw, asgi_echo, base_config, cookie, raw, settings_of, wsgi_echo
from review.probe_paths import example
from secure_mw import asgi, wsgi
from tests.servers import free_port, wait_for_port

def main():
    tmp = Path(tempfile.mkdtemp())
    cfg = base_config(tmp, example("layout")["access_control"])
    st = settings_of(cfg)
    bob = cookie(st, "bob", groups=("staff",))
    import uvicorn
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi.protect(asgi_echo(), st), host="127.0.0.1", port=port,
                                           log_level="critical", lifespan="off", root_path="/app"))
    t = threading.Thread(target=server.run, daemon=True); t.start(); wait_for_port(port)
    for target in ["/admin/users", "/app/admin/users"]:
        status, _, body = raw(f"127.0.0.1:{port}", target, cookie_=bob)
        seen = app_saw(body)
        print(f"uvicorn --root-path /app  bob GET {target:18} -> {status} app routed {seen and seen['path']!r}")
    server.should_exit = True; t.join(5)

    from werkzeug.serving import make_server
    inner = wsgi.protect(wsgi_echo, st)
    def mounted(environ, start_response):       # what a proxy-set SCRIPT_NAME looks like
        path = environ.get("PATH_INFO", "")
        if path.startswith("/app"):
            environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/app", path[4:]
        return inner(environ, start_response)
    port = free_port()
    srv = make_server("127.0.0.1", port, mounted, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start(); wait_for_port(port)
    status, _, body = raw(f"127.0.0.1:{port}", "/app/admin/users", cookie_=bob)
    seen = app_saw(body)
    print(f"werkzeug SCRIPT_NAME=/app  bob GET /app/admin/users -> {status} app routed {seen and seen['path']!r}")
    srv.shutdown()

if __name__ == "__main__":
    main()
