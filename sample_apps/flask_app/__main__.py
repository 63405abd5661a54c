"""``python -m sample_apps.flask_app [--host H] [--port P] [--state-dir D]``."""

from __future__ import annotations

import argparse
import os
import sys

from sample_apps.flask_app.app import DEFAULT_STATE_DIR, create_app, prepare
from secure_mw.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sample_apps.flask_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--state-dir",
                        default=os.environ.get("SAMPLE_STATE_DIR", DEFAULT_STATE_DIR))
    args = parser.parse_args(argv)
    try:
        config, passwords = prepare(args.state_dir, new_passwords=True)
        app = create_app(config)
    except ConfigError as exc:
        print(f"flask sample: {exc}", file=sys.stderr)
        return 1
    for name, password in passwords.items():
        print(f"flask sample: sign in as {name!r} with password {password!r} "
              "(new at every start)")
    print(f"flask sample: open http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    app.run(host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
