"""Start the demo: ``python -m sample_apps.fastapi_demo`` (or ``python3 dev.py demo``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from secure_mw import Settings
from secure_mw._files import write_secret_file
from secure_mw.crypto import KeyRing
from secure_mw.errors import ConfigError


def _key_ring(state_dir: Path, settings: Settings) -> tuple[KeyRing, str]:
    """Keys from settings when configured; otherwise a key file made on first run (0600)."""
    keys = settings.keys
    if keys.encryption_keys or keys.encryption_passphrase:
        return KeyRing.from_settings(keys), "from settings"
    path = state_dir / "encryption.keys"
    if not path.exists():
        write_secret_file(path, (KeyRing.new_key_text() + "\n").encode())
        return KeyRing.from_file(path, algorithm=keys.encryption_algorithm), \
            f"generated into {path} (mode 0600)"
    return KeyRing.from_file(path, algorithm=keys.encryption_algorithm), f"read from {path}"


def run(*, host: str = "127.0.0.1", port: int = 8000, state_dir: str = ".secure-mw-demo") -> int:
    import uvicorn

    from sample_apps.fastapi_demo.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    try:
        settings = Settings.from_environment()
        ring, where = _key_ring(Path(state_dir), settings)
    except ConfigError as exc:
        print(f"secure_mw demo: {exc}", file=sys.stderr)
        return 1
    from secure_mw.asgi import (
        ClientAddressMiddleware,
        RedirectGuardMiddleware,
        SecurityHeadersMiddleware,
    )

    # The guards a public page gets; the login stack arrives with the built-in login.
    app = SecurityHeadersMiddleware(ClientAddressMiddleware(
        RedirectGuardMiddleware(create_app(settings, ring), settings=settings),
        trusted_proxies=settings.server.trusted_proxies), settings=settings)
    print(f"secure_mw demo: encryption key {where}")
    print(f"secure_mw demo: open http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    print("secure_mw demo: stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sample_apps.fastapi_demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--state-dir", default=".secure-mw-demo")
    args = parser.parse_args(argv)
    return run(host=args.host, port=args.port, state_dir=args.state_dir)
