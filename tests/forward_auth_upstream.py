"""A service that knows nothing of secure_mw, for the forward-auth end-to-end tests: the
standard library's HTTP server answering every request with the request line's path and
the request headers as JSON. ``python3 tests/forward_auth_upstream.py PORT``."""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = json.dumps({"method": self.command, "path": self.path,
                           "headers": [[k.lower(), v] for k, v in self.headers.items()]})
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        return


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
