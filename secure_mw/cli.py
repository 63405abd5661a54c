"""The ``secure-mw`` command.

    secure-mw check-config FILE        print a summary, or every problem (exit 1)
    secure-mw hash-password            Argon2id PHC string; password from a prompt or stdin
    secure-mw gen-keys [--jwks FILE] [--encryption FILE]
                                       private signing JWKS (0600; public JWKS printed) and/or
                                       an encryption key file (0600)
    secure-mw demo [--host H] [--port P]
                                       run the protected demo app
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence

from secure_mw import __version__
from secure_mw._files import write_secret_file
from secure_mw.errors import ConfigError

__all__ = ["main"]


def _check_config(args: argparse.Namespace) -> int:
    from secure_mw.settings import Settings

    try:
        settings = Settings.from_file(args.file, environ=None if args.no_env else _environ())
    except ConfigError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: configuration is valid")
    print(settings.summary())
    return 0


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def _hash_password(args: argparse.Namespace) -> int:
    from secure_mw.crypto.passwords import PasswordHasher

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            print("the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("no password given (type it at the prompt or pipe it on stdin)", file=sys.stderr)
        return 1
    try:
        print(PasswordHasher().hash(password))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def _gen_keys(args: argparse.Namespace) -> int:
    if not args.jwks and not args.encryption:
        print("say what to generate: --jwks FILE and/or --encryption FILE", file=sys.stderr)
        return 2
    if args.jwks:
        from secure_mw.tokens import generate_private_jwks, public_jwks

        private = generate_private_jwks(tuple(args.alg or ["ES256"]))
        try:
            write_secret_file(args.jwks, json.dumps(private, indent=2).encode() + b"\n",
                              overwrite=args.force)
        except FileExistsError as exc:
            print(f"{exc} (use --force)", file=sys.stderr)
            return 1
        print(f"wrote private signing JWKS to {args.jwks} (mode 0600); public JWKS:",
              file=sys.stderr)
        print(json.dumps(public_jwks(private), indent=2))
    if args.encryption:
        from secure_mw.crypto import KeyRing

        text = "# secure_mw encryption keys: the first line encrypts, every line decrypts\n"
        text += KeyRing.new_key_text() + "\n"
        try:
            write_secret_file(args.encryption, text.encode(), overwrite=args.force)
        except FileExistsError as exc:
            print(f"{exc} (use --force)", file=sys.stderr)
            return 1
        print(f"wrote a new encryption key to {args.encryption} (mode 0600)", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import os

    sys.path.insert(0, os.getcwd())
    try:
        from sample_apps.fastapi_demo.run import run
    except ImportError:
        print("the demo lives in the source checkout: run `python3 dev.py demo` there",
              file=sys.stderr)
        return 1

    return run(host=args.host, port=args.port, state_dir=args.state_dir)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secure-mw", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"secure-mw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file")
    p.add_argument("--no-env", action="store_true", help="ignore SECURE_MW_* overrides")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("hash-password", help="Argon2id hash of a password read from stdin")
    p.set_defaults(func=_hash_password)

    p = sub.add_parser("gen-keys", help="generate signing and/or encryption keys")
    p.add_argument("--jwks", metavar="FILE", help="write a private signing JWKS here")
    p.add_argument("--alg", action="append", choices=["ES256", "EdDSA", "RS256", "PS256"],
                   help="signing algorithm (repeat for several keys; default ES256)")
    p.add_argument("--encryption", metavar="FILE", help="write an encryption key file here")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_gen_keys)

    p = sub.add_parser("demo", help="run the protected demo app")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--state-dir", default=".secure-mw-demo",
                   help="where the demo keeps its generated keys (default ./.secure-mw-demo)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
