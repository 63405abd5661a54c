"""The protected test app as its own process: ``python -m tests.e2e_app --flavour asgi|wsgi
--port N``, configured like any deployment, from ``SECURE_MW_*`` environment variables."""

from __future__ import annotations

import argparse

from secure_mw import Settings, asgi, wsgi
from tests.apps import asgi_inner, wsgi_inner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flavour", choices=("asgi", "wsgi"), required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings.from_environment()
    if args.flavour == "asgi":
        import uvicorn

        uvicorn.run(asgi.protect(asgi_inner(), settings), host="127.0.0.1", port=args.port,
                    log_level="warning", lifespan="off")
    else:
        from werkzeug.serving import run_simple

        run_simple("127.0.0.1", args.port, wsgi.protect(wsgi_inner, settings), threaded=True)


if __name__ == "__main__":
    main()
