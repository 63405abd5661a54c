"""The ``secure-mw`` command.

    secure-mw check-config FILE        print a summary, or every problem (exit 1)
    secure-mw hash-password            Argon2id PHC string; password from a prompt or stdin
    secure-mw gen-keys [--jwks FILE] [--encryption FILE]
                                       private signing JWKS (0600; public JWKS printed) and/or
                                       an encryption key file (0600)
    secure-mw demo [--host H] [--port P]
                                       run the protected demo app
    secure-mw users add|passwd|delete|set-groups|set-email|set-display-name|disable|enable|
                    end-sessions|list [--file FILE] [--config FILE] ...
                                       manage the built-in login's users file (0600);
                                       passwords from a prompt or stdin, never arguments
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
from typing import TYPE_CHECKING, Any

from secure_mw import __version__
from secure_mw._files import write_secret_file
from secure_mw.errors import ConfigError

if TYPE_CHECKING:
    from secure_mw.login import User, UsersFile
    from secure_mw.login.totp import FileTOTPStore
    from secure_mw.settings import LocalUsersSettings

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


def _users_settings(args: argparse.Namespace) -> LocalUsersSettings | None:
    """``[local_users]`` of --config (read once per run), or ``None`` without --config."""
    if not args.config:
        return None
    cached: LocalUsersSettings | None = getattr(args, "_local_users", None)
    if cached is None:
        from secure_mw.settings import Settings

        try:
            cached = Settings.from_file(args.config, environ=_environ()).local_users
        except ConfigError as exc:
            raise _UsersCommandError(f"{args.config}: {exc}") from None
        args._local_users = cached
    return cached


def _users_path(args: argparse.Namespace) -> str:
    """--file, else $SECURE_MW_USERS_FILE, else local_users.file of --config, else
    users.toml."""
    if args.file:
        return str(args.file)
    if os.environ.get(USERS_FILE_ENV):
        return os.environ[USERS_FILE_ENV]
    configured = _users_settings(args)
    return configured.file if configured is not None else "users.toml"


def _open_users(args: argparse.Namespace, *, create: bool = False) -> UsersFile:
    """The users file, with the password policy of --config (or the default one)."""
    from secure_mw.login import UsersFile
    from secure_mw.login.policy import PasswordPolicy

    path = _users_path(args)
    configured = _users_settings(args)
    if not create and not os.path.exists(path):
        raise _UsersCommandError(f"users file {path!r} does not exist (create it with "
                                 f"`secure-mw users add --file {path} NAME`)")
    quiet = logging.getLogger("secure_mw.cli.users")  # the command prints its own messages
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    policy = PasswordPolicy.from_settings(configured) if configured else PasswordPolicy()
    return UsersFile(path, logger=quiet, policy=policy)


def _totp_store(args: argparse.Namespace) -> FileTOTPStore | None:
    """The TOTP enrolments of --config, or ``None`` when there is no --config."""
    configured = _users_settings(args)
    if configured is None:
        return None
    from secure_mw.login.totp import FileTOTPStore

    return FileTOTPStore(configured.totp_file)


def _new_password(args: argparse.Namespace, users: UsersFile, name: str) -> str:
    """A generated password (--generate), or one typed twice at a prompt, or the first line
    of stdin when it is not a terminal."""
    if args.generate:
        for _ in range(16):   # a random one fails a rule only by a rare chance
            password = secrets.token_urlsafe(18)  # 144 random bits
            if users.policy is None or not users.policy.problems(password, username=name):
                return password
        raise _UsersCommandError("could not generate a password the policy accepts")
    try:
        if sys.stdin.isatty():
            try:
                password = getpass.getpass("New password: ")
                if password != getpass.getpass("Again: "):
                    raise _UsersCommandError("the two passwords differ")
            except EOFError:
                password = ""
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        raise _UsersCommandError("the password is not UTF-8 text") from None
    if not password:
        raise _UsersCommandError("no password given (type it at the prompt, pipe it on stdin "
                                 "or use --generate)")
    return password   # UsersFile.add / set_password apply the policy


def _print_generated(args: argparse.Namespace, password: str) -> None:
    if args.generate:
        print("generated password (shown only now):", file=sys.stderr)
        print(password)


def _users_add(args: argparse.Namespace) -> None:
    users = _open_users(args, create=True)
    existing = users.get(args.name)
    if existing is not None:  # before asking for a password
        raise _UsersCommandError(f"user {existing.username!r} already exists in "
                                 f"{str(users.path)!r}")
    password = _new_password(args, users, args.name)
    users.add(args.name, password=password, display_name=args.display_name or "",
              email=args.email or "", groups=args.group or ())
    print(f"added user {args.name!r} to {str(users.path)!r}", file=sys.stderr)
    _print_generated(args, password)


def _existing_user(users: UsersFile, name: str) -> User:
    user = users.get(name)
    if user is None:
        raise _UsersCommandError(f"no user {name!r} in {str(users.path)!r}")
    return user


def _users_passwd(args: argparse.Namespace) -> None:
    users = _open_users(args)
    user = _existing_user(users, args.name)
    password = _new_password(args, users, user.username)
    users.set_password(user.username, password, end_sessions=not args.keep_sessions)
    ended = "their sessions are kept" if args.keep_sessions else \
        "their sessions end at their next check"
    print(f"changed the password of {user.username!r} in {str(users.path)!r}; {ended}",
          file=sys.stderr)
    _print_generated(args, password)


def _users_disable(args: argparse.Namespace) -> None:
    users = _open_users(args)
    users.set_disabled(args.name, args.disabled)
    state = "disabled (their sessions end at their next check)" if args.disabled \
        else "enabled"
    print(f"user {args.name!r} is {state} in {str(users.path)!r}", file=sys.stderr)


def _users_end_sessions(args: argparse.Namespace) -> None:
    users = _open_users(args)
    users.end_sessions(args.name)
    print(f"the sessions of {args.name!r} end at their next check", file=sys.stderr)


def _users_delete(args: argparse.Namespace) -> None:
    users = _open_users(args)
    user = _existing_user(users, args.name)
    if not args.yes:
        if not sys.stdin.isatty():
            raise _UsersCommandError(f"not deleting {user.username!r}: confirm with --yes "
                                     "(stdin is not a terminal to ask on)")
        try:
            answer = input(f"Delete user {user.username!r} from {str(users.path)!r}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            raise _UsersCommandError(f"not deleting {user.username!r}")
    totp = _totp_store(args)   # opened first: a broken TOTP file stops before any change
    users.delete(user.username)
    note = ""
    if totp is not None:
        if totp.delete(user.username):
            note = " and their TOTP enrolment"
    else:
        note = " (a TOTP enrolment, if any, stays: pass --config to remove it too)"
    print(f"deleted user {user.username!r}{note} from {str(users.path)!r}; their sessions "
          "end at their next check", file=sys.stderr)


def _users_set_groups(args: argparse.Namespace) -> None:
    if not args.groups and not args.none:
        raise _UsersCommandError("give the groups, or --none to remove every group")
    if args.groups and args.none:
        raise _UsersCommandError("give the groups or --none, not both")
    users = _open_users(args)
    user = users.update(args.name, groups=args.groups)
    print(f"groups of {user.username!r}: {', '.join(user.groups) or '(none)'}",
          file=sys.stderr)


def _users_set_email(args: argparse.Namespace) -> None:
    user = _open_users(args).update(args.name, email=args.address)
    print(f"e-mail address of {user.username!r}: {user.email or '(none)'}", file=sys.stderr)


def _users_set_display_name(args: argparse.Namespace) -> None:
    user = _open_users(args).update(args.name, display_name=args.text)
    print(f"display name of {user.username!r}: {user.display_name or '(none)'}",
          file=sys.stderr)


def _users_list(args: argparse.Namespace) -> None:
    users = _open_users(args)
    listed = users.users()
    totp: FileTOTPStore | None = None
    try:
        totp = _totp_store(args)
    except ConfigError as exc:
        print(f"TOTP enrolments unknown: {exc}", file=sys.stderr)
    header = ["NAME", "DISPLAY NAME", "EMAIL", "GROUPS", "DISABLED"]
    if totp is not None:
        header.append("TOTP")
    rows = [header]
    for u in listed:
        row = [u.username, u.display_name, u.email, ",".join(u.groups),
               "yes" if u.disabled else "no"]
        if totp is not None:
            row.append("yes" if totp.get(u.username) is not None else "no")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _users(args: argparse.Namespace) -> int:
    from secure_mw.errors import SecureMWError

    try:
        args.users_func(args)
    except (_UsersCommandError, ValueError, LookupError, SecureMWError) as exc:
        # ConfigError and PasswordPolicyError are ValueErrors
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
                        help="a secure_mw configuration: its local_users.file, password "
                             "policy and TOTP file")

    p = sub.add_parser("users", help="manage the built-in login's users file")
    p.set_defaults(func=_users)
    actions = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    def action(name: str, func: Any, text: str, **defaults: Any) -> argparse.ArgumentParser:
        q = actions.add_parser(name, parents=[common], help=text, description=text)
        q.add_argument("name")
        q.set_defaults(users_func=func, **defaults)
        return q

    q = action("add", _users_add, "add a user (password from a prompt, stdin or --generate)")
    q.add_argument("--display-name", metavar="TEXT")
    q.add_argument("--email", metavar="ADDRESS")
    q.add_argument("--group", action="append", metavar="GROUP",
                   help="a group of the user (repeat for several)")
    q.add_argument("--generate", action="store_true",
                   help="generate a random password and print it once")

    q = action("passwd", _users_passwd, "set a user's password (and end their sessions)")
    q.add_argument("--generate", action="store_true",
                   help="generate a random password and print it once")
    q.add_argument("--keep-sessions", action="store_true",
                   help="do not end the user's existing sessions")

    action("disable", _users_disable, "stop a user from logging in and end their sessions",
           disabled=True)
    action("enable", _users_disable, "let a disabled user log in again", disabled=False)
    action("end-sessions", _users_end_sessions, "end every session of a user")

    q = action("delete", _users_delete, "remove a user (asks first unless --yes)")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    q = action("set-groups", _users_set_groups, "replace a user's groups")
    q.add_argument("groups", nargs="*", metavar="GROUP")
    q.add_argument("--none", action="store_true", help="remove every group")

    q = action("set-email", _users_set_email, "set a user's e-mail address ('' removes it)")
    q.add_argument("address")

    q = action("set-display-name", _users_set_display_name,
               "set a user's display name ('' removes it)")
    q.add_argument("text")

    q = actions.add_parser("list", parents=[common], help="list the users (never their hashes)")
    q.set_defaults(users_func=_users_list)


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
