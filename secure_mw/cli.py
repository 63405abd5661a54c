"""The ``secure-mw`` command.

    secure-mw check-config FILE        print a summary, or every problem (exit 1)
    secure-mw hash-password            Argon2id PHC string; password from a prompt or stdin
    secure-mw gen-keys [--jwks FILE] [--encryption FILE]
                                       private signing JWKS (0600; public JWKS printed) and/or
                                       an encryption key file (0600)
    secure-mw demo [--host H] [--port P]
                                       run the protected demo app
    secure-mw users add|passwd|disable|enable|list [--file FILE] [--config FILE] ...
                                       manage the built-in login's users file (0600);
                                       passwords from a prompt or stdin, never arguments
    secure-mw bans list|lift [--user NAME | --ip ADDR] [--config FILE]
                                       the login bans in force (in Redis), and lifting them
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from secure_mw import __version__
from secure_mw._files import write_secret_file
from secure_mw.errors import ConfigError

if TYPE_CHECKING:
    from secure_mw.login import UsersFile

__all__ = ["main"]

#: Where ``secure-mw users`` looks when neither --file nor --config says.
USERS_FILE_ENV = "SECURE_MW_USERS_FILE"


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


# -- secure-mw users ------------------------------------------------------------------------


class _UsersCommandError(Exception):
    """A ``secure-mw users`` failure: its message is printed, the exit status is 1."""


def _users_path(args: argparse.Namespace) -> str:
    """--file, else $SECURE_MW_USERS_FILE, else local_users.file of --config, else
    users.toml."""
    if args.file:
        return str(args.file)
    if os.environ.get(USERS_FILE_ENV):
        return os.environ[USERS_FILE_ENV]
    if args.config:
        from secure_mw.settings import Settings

        try:
            return Settings.from_file(args.config, environ=_environ()).local_users.file
        except ConfigError as exc:
            raise _UsersCommandError(f"{args.config}: {exc}") from None
    return "users.toml"


def _open_users(args: argparse.Namespace, *, create: bool = False) -> UsersFile:
    from secure_mw.login import UsersFile

    path = _users_path(args)
    if not create and not os.path.exists(path):
        raise _UsersCommandError(f"users file {path!r} does not exist (create it with "
                                 f"`secure-mw users add --file {path} NAME`)")
    quiet = logging.getLogger("secure_mw.cli.users")  # the command prints its own messages
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return UsersFile(path, logger=quiet)


def _new_password(args: argparse.Namespace) -> str:
    """A generated password (--generate), or one typed twice at a prompt, or the first line
    of stdin when it is not a terminal."""
    if args.generate:
        return secrets.token_urlsafe(18)  # 144 random bits
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("New password: ")
            if password != getpass.getpass("Again: "):
                raise _UsersCommandError("the two passwords differ")
        except EOFError:
            password = ""
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise _UsersCommandError("no password given (type it at the prompt, pipe it on stdin "
                                 "or use --generate)")
    return password


def _users_add(args: argparse.Namespace) -> None:
    users = _open_users(args, create=True)
    existing = users.get(args.name)
    if existing is not None:  # before asking for a password
        raise _UsersCommandError(f"user {existing.username!r} already exists in "
                                 f"{str(users.path)!r}")
    password = _new_password(args)
    users.add(args.name, password=password, display_name=args.display_name or "",
              email=args.email or "", groups=args.group or ())
    print(f"added user {args.name!r} to {str(users.path)!r}", file=sys.stderr)
    if args.generate:
        print("generated password (shown only now):", file=sys.stderr)
        print(password)


def _users_passwd(args: argparse.Namespace) -> None:
    users = _open_users(args)
    if users.get(args.name) is None:
        raise _UsersCommandError(f"no user {args.name!r} in {str(users.path)!r}")
    password = _new_password(args)
    users.set_password(args.name, password)
    print(f"changed the password of {args.name!r} in {str(users.path)!r}", file=sys.stderr)
    if args.generate:
        print("generated password (shown only now):", file=sys.stderr)
        print(password)


def _users_disable(args: argparse.Namespace) -> None:
    users = _open_users(args)
    users.set_disabled(args.name, args.disabled)
    state = "disabled" if args.disabled else "enabled"
    print(f"user {args.name!r} is {state} in {str(users.path)!r}", file=sys.stderr)


def _users_list(args: argparse.Namespace) -> None:
    users = _open_users(args)
    rows = [("NAME", "DISPLAY NAME", "EMAIL", "GROUPS", "DISABLED")]
    rows += [(u.username, u.display_name, u.email, ",".join(u.groups),
              "yes" if u.disabled else "no") for u in users.users()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _users(args: argparse.Namespace) -> int:
    try:
        args.users_func(args)
    except (_UsersCommandError, ValueError, LookupError) as exc:  # ConfigError is a ValueError
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{exc.filename or 'users file'}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _add_users_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--file", metavar="FILE",
                        help=f"the users file (default: ${USERS_FILE_ENV}, else local_users.file "
                             "of --config, else users.toml)")
    common.add_argument("--config", metavar="FILE",
                        help="a secure_mw configuration whose local_users.file to use")

    p = sub.add_parser("users", help="manage the built-in login's users file")
    p.set_defaults(func=_users)
    actions = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    q = actions.add_parser("add", parents=[common], help="add a user (password from a prompt, "
                                                          "stdin or --generate)")
    q.add_argument("name")
    q.add_argument("--display-name", metavar="TEXT")
    q.add_argument("--email", metavar="ADDRESS")
    q.add_argument("--group", action="append", metavar="GROUP",
                   help="a group of the user (repeat for several)")
    q.add_argument("--generate", action="store_true",
                   help="generate a random password and print it once")
    q.set_defaults(users_func=_users_add)

    q = actions.add_parser("passwd", parents=[common], help="set a user's password")
    q.add_argument("name")
    q.add_argument("--generate", action="store_true",
                   help="generate a random password and print it once")
    q.set_defaults(users_func=_users_passwd)

    q = actions.add_parser("disable", parents=[common], help="stop a user from logging in")
    q.add_argument("name")
    q.set_defaults(users_func=_users_disable, disabled=True)

    q = actions.add_parser("enable", parents=[common], help="let a disabled user log in again")
    q.add_argument("name")
    q.set_defaults(users_func=_users_disable, disabled=False)

    q = actions.add_parser("list", parents=[common], help="list the users (never their hashes)")
    q.set_defaults(users_func=_users_list)


# -- secure-mw bans -------------------------------------------------------------------------


def _bans(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from secure_mw.errors import StoreUnavailable
    from secure_mw.guards.regulation import regulator_from_settings
    from secure_mw.settings import Settings

    try:
        settings = Settings.from_file(args.config, environ=_environ()) if args.config \
            else Settings.from_environment()
    except ConfigError as exc:
        print(f"{args.config or 'configuration'}: {exc}", file=sys.stderr)
        return 1
    regulator = regulator_from_settings(settings)
    if not regulator.shared:
        print("bans live in the memory of each application process: they cannot be listed "
              "or lifted from outside it. Keep them in Redis (session.store = \"redis\") to "
              "manage them with this command.", file=sys.stderr)
        return 1
    try:
        if args.bans_command == "lift":
            lifted = regulator.lift(user=args.user, ip=args.ip)
            what = f"user {args.user!r}" if args.user else f"address {args.ip!r}"
            print(f"lifted {lifted} ban(s) of {what}", file=sys.stderr)
            return 0
        entries = regulator.bans()
    except StoreUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        regulator.close()
    if not entries:
        print("no bans in force", file=sys.stderr)
        return 0
    rows = [("KIND", "USER", "ADDRESS", "UNTIL (UTC)")]
    rows += [(e.kind, e.user or "-", e.ip or "-",
              datetime.fromtimestamp(e.until, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
             for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _add_bans_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="the application's configuration (default: $SECURE_MW_CONFIG "
                             "and SECURE_MW_* variables)")
    p = sub.add_parser("bans", help="list or lift the login bans in force (Redis)")
    p.set_defaults(func=_bans)
    actions = p.add_subparsers(dest="bans_command", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common],
                       help="the bans in force: kind, hashed labels, end time")
    q = actions.add_parser("lift", parents=[common],
                           help="end the bans of a user name or of an address")
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", metavar="NAME", help="every ban naming this user")
    which.add_argument("--ip", metavar="ADDR", help="every ban of this address")


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

    _add_users_parser(sub)
    _add_bans_parser(sub)
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
