"""The ``secure-mw`` command.

    secure-mw check-config FILE        print a summary and warnings, or every problem (exit 1)
    secure-mw explain URL [--config FILE] [--user NAME --group G ... --email E
                          --email-verified --two-factor --claim NAME=JSON ...]
                          [--method M] [--ip ADDR] [--root PATH]
                                       which access rule decides a request, and why
                                       (exit 0 allowed, 3 refused, 4 login, 5 second factor)
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
    secure-mw bans list|lift [--user NAME | --ip ADDR] [--config FILE]
                                       the login bans in force (in Redis), and lifting them
    secure-mw change-key [--config FILE] [--state FILE] [--batch N]
                                       encrypt the sessions in Redis and the TOTP secrets
                                       under the key ring's first key (resumable)
    secure-mw vault init|set|get|list|delete|rekey --file FILE [NAME]
                                       the secrets vault; values from a prompt or stdin,
                                       passphrase from a prompt, --passphrase-file or
                                       $SECURE_MW_VAULT_PASSPHRASE
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
from secure_mw.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from secure_mw.authz.layer import Explained
    from secure_mw.http import RequestView
    from secure_mw.identity import Identity
    from secure_mw.login import User, UsersFile
    from secure_mw.login.totp import FileTOTPStore
    from secure_mw.settings import LocalUsersSettings, Settings

__all__ = ["main"]

#: Where ``secure-mw users`` looks when neither --file nor --config says.
USERS_FILE_ENV = "SECURE_MW_USERS_FILE"


def _check_config(args: argparse.Namespace) -> int:
    """Every problem in one run: the settings' own, then what building the stack start-up
    builds finds (done even when the settings have problems, on a best-effort copy)."""
    from secure_mw._stack import dry_run
    from secure_mw.settings import Settings

    problems: list[ConfigProblem] = []
    settings: Settings | None
    try:
        settings = Settings.from_file(args.file, environ=None if args.no_env else _environ())
    except ConfigError as exc:
        problems += exc.problems
        settings = exc.partial if isinstance(exc.partial, Settings) else None
    warnings: list[str] = []
    if settings is not None:
        built, warnings = dry_run(settings, config_file=args.file)
        # Skip what follows from a value already reported (it was replaced by its default).
        problems += [p for p in built if not any(
            p.path == q.path or (q.path and p.path.startswith(q.path + ".")) for q in problems)]
    for warning in warnings:
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    if problems:
        print(f"{args.file}: {ConfigError(problems)}", file=sys.stderr)
        return 1
    assert settings is not None
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
    from secure_mw.demo.run import run  # ships in the package; base dependencies only

    return run(host=args.host, port=args.port, state_dir=args.state_dir)


# -- secure-mw serve ------------------------------------------------------------------------

#: The configuration file a ``secure-mw serve --workers N`` worker reads (set by the parent).
SERVE_CONFIG_ENV = "SECURE_MW_SERVE_CONFIG"


def _serve_settings() -> Any:
    """The settings of ``$SECURE_MW_SERVE_CONFIG``; a ConfigError lists serve's own problems
    with the file's."""
    from secure_mw.asgi.forward_auth import serve_problems
    from secure_mw.settings import Settings

    try:
        return Settings.from_file(os.environ[SERVE_CONFIG_ENV], environ=_environ())
    except ConfigError as exc:     # every problem at once: serve's own too
        if not isinstance(exc.partial, Settings):
            raise
        more = [p for p in serve_problems(exc.partial) if p not in exc.problems]
        raise ConfigError([*exc.problems, *more]) from None


def serve_factory() -> Any:
    """The portal app of a ``secure-mw serve`` worker (``uvicorn --factory``)."""
    from secure_mw.asgi.forward_auth import portal_app

    return portal_app(_serve_settings())


def _serve(args: argparse.Namespace) -> int:
    """The login portal and the forward-auth endpoints on uvicorn. The app is built (and
    every configuration problem reported) before uvicorn is imported or started."""
    from secure_mw.asgi.forward_auth import portal_app

    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    os.environ[SERVE_CONFIG_ENV] = os.path.abspath(args.config)
    settings = _serve_settings()        # ConfigError: main() lists every problem
    app = portal_app(settings)
    if args.workers > 1 and settings.session.store == "memory":
        print("--workers: each worker would keep its own sessions and limits in memory; set "
              'session.store = "sqlite" (one host) or "redis"', file=sys.stderr)
        return 2
    try:
        import uvicorn
    except ImportError:
        print("secure-mw serve runs on uvicorn: pip install 'secure-mw[serve]'",
              file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # No access log: it would keep every query string (an OpenID callback's code, each
    # protected URL's query); refusals are in the audit log.
    if args.workers > 1:
        uvicorn.run("secure_mw.cli:serve_factory", factory=True, host=args.host,
                    port=args.port, workers=args.workers, lifespan="off",
                    proxy_headers=False, server_header=False,
                    access_log=False)
    else:
        uvicorn.run(app, host=args.host, port=args.port, lifespan="off",
                    proxy_headers=False, server_header=False,
                    access_log=False)
    return 0


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the login portal and the forward-auth endpoints",
                       description="The login portal and the authorization endpoints for "
                       "reverse proxies: /api/authz/auth-request (nginx auth_request) and "
                       "/api/authz/forward-auth (Traefik ForwardAuth, Caddy forward_auth), "
                       "on uvicorn (pip install 'secure-mw[serve]'). See "
                       "docs/forward-auth.md.")
    p.add_argument("--config", metavar="FILE", required=True,
                   help="the configuration (SECURE_MW_* variables override it)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=9091, help="port to listen on (9091)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (1; more need a shared store: sqlite or redis)")
    p.set_defaults(func=_serve)


# -- secure-mw explain ----------------------------------------------------------------------

#: ``secure-mw explain`` exit statuses by the layer's effect (1: bad configuration, 2: usage).
EXPLAIN_EXIT = {"allow": 0, "own_page": 0, "deny": 3, "bad_path": 3, "not_found": 3,
                "bad_request": 3, "login": 4, "two_factor": 5}


def _explain(args: argparse.Namespace) -> int:
    from urllib.parse import unquote, urlsplit

    from secure_mw.authz.layer import AuthorizationLayer
    from secure_mw.http import RequestView
    from secure_mw.settings import Settings

    environ = None if args.no_env else _environ()
    if args.config:
        settings = Settings.from_file(args.config, environ=environ)
    else:
        settings = Settings.from_mapping({}, environ=environ) if args.no_env \
            else Settings.from_environment()
    try:
        parts = urlsplit(args.url)
    except ValueError as exc:
        raise _ExplainUsage(f"{args.url!r} is not a URL: {exc}") from None
    if args.root is not None and not args.root.startswith("/"):
        raise _ExplainUsage(f"--root {args.root!r} is not a path starting with '/'")
    if not parts.path.startswith("/") and not parts.netloc:
        print(f"{args.url!r} is neither an absolute URL nor a path starting with '/'",
              file=sys.stderr)
        return 2
    host = parts.netloc.rpartition("@")[2]
    if not host and settings.server.external_url:
        host = urlsplit(settings.server.external_url).netloc
    headers = {"host": host}
    for line in args.header or ():
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            print(f"--header {line!r} is not 'Name: value'", file=sys.stderr)
            return 2
        headers[name.strip().lower()] = value.strip()
    raw = parts.path or "/"
    view = RequestView(method=args.method.upper(), scheme=parts.scheme or "https", host=host,
                       path=unquote(raw, errors="surrogateescape"),
                       query_string=parts.query, headers=headers, client=args.ip or "")
    identity = _explain_identity(args)
    print(f"request   {view.method} {args.url}" + ("" if host else "  (no host: rules with "
                                                    "a domain cannot match)"))
    print(f"client    {args.ip}" if args.ip else "client    no address (networks match nothing)")
    print(f"identity  {_describe_identity(identity)}")
    raw_bytes = raw.encode("utf-8", "surrogateescape")
    early = _before_the_rules(settings, view, raw_bytes)
    if early is not None:
        _print_explained(early, settings.access_control.default_policy)
        return EXPLAIN_EXIT[early.effect]
    if not settings.access_control.rules:
        print("rules     none: protect() adds no authorization layer, every request needs "
              "a login")
        effect = "allow" if identity is not None else "login"
        print(f"result    {effect}")
        return EXPLAIN_EXIT[effect]
    quiet = logging.getLogger("secure_mw.authz")   # warnings are printed below instead
    quiet.disabled = True
    try:
        layer = AuthorizationLayer(settings)
    finally:
        quiet.disabled = False
    explained = layer.explain(view, identity, raw_bytes, root=args.root or "")
    _print_explained(explained, settings.access_control.default_policy)
    for warning in layer.policy.warnings():
        print(f"warning   {warning}")
    return EXPLAIN_EXIT[explained.effect]


def _before_the_rules(settings: Settings, view: RequestView, raw: bytes) -> Explained | None:
    """What the layers in front of the rules answer, as a live server does: the Host
    guard's UTF-8 check (400), and the session layer's own pages under
    ``server.auth_prefix``, which it answers for any path starting there (404 when it is
    not one of them, ``/.auth/../x`` included)."""
    from secure_mw.authz.layer import Explained
    from secure_mw.authz.paths import PathRefused, check_utf8_path

    try:
        check_utf8_path(raw, encoded=True)
    except PathRefused as exc:
        return Explained("bad_path", f"refused before any rule (400): path refused: "
                         f"{exc.reason}", view.path, None)
    prefix = settings.server.auth_prefix
    if settings.signed_headers.verify is not None or not view.path.startswith(prefix):
        return None
    page = view.path[len(prefix):]
    if page in _own_pages(settings):
        return Explained("own_page", f"served by secure_mw's own page {prefix}{page}, "
                         "before any rule", view.path, None)
    return Explained("not_found", f"answered by the session layer before any rule (404): "
                     f"no page {page!r} under {prefix}", view.path, None)


def _own_pages(settings: Settings) -> frozenset[str]:
    """The pages the session core of ``settings`` serves under ``server.auth_prefix`` (as
    ``_stack.session_core`` chooses it)."""
    from pathlib import Path

    from secure_mw.login.pages import Pages

    common = {"login", "logout", "logged-out", "me", *(
        f"assets/{name}" for name in Pages.from_settings(
            settings.pages, settings.server.auth_prefix).assets)}
    if settings.oidc is not None:     # logout from the provider's side (docs/logout.md)
        common |= {name for name, on in (
            ("backchannel-logout", settings.oidc.backchannel_logout),
            ("frontchannel-logout", settings.oidc.frontchannel_logout)) if on}
    if settings.oidc is not None and not Path(settings.local_users.file).exists():
        return frozenset({*common, "callback"})
    local = {*common, "2fa", "api/login", "api/2fa"}
    return frozenset({*local, "login/oidc", "callback"} if settings.oidc is not None
                     else local)


#: Claims that ``--user``, ``--email``, ``--email-verified`` and ``--group`` set.
_IDENTITY_OPTIONS = {"sub": "--user", "email": "--email", "email_verified": "--email-verified",
                     "groups": "--group"}


def _explain_claims(values: Sequence[str]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for item in values:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise _ExplainUsage(f"--claim {item!r} is not NAME=JSON_VALUE")
        if name in _IDENTITY_OPTIONS:
            raise _ExplainUsage(f"--claim {name}: use {_IDENTITY_OPTIONS[name]} for it")
        try:
            claims[name] = json.loads(text)
        except ValueError:
            raise _ExplainUsage(f"--claim {item!r}: the value is not JSON (a string is "
                                f"written {name}='\"{text}\"')") from None
    return claims


def _explain_identity(args: argparse.Namespace) -> Identity | None:
    from secure_mw.identity import Identity

    if args.user is None:
        given = [flag for flag, value in (("--group", args.group), ("--email", args.email),
                                          ("--email-verified", args.email_verified),
                                          ("--two-factor", args.two_factor),
                                          ("--claim", args.claim)) if value]
        if given:
            raise _ExplainUsage(f"{', '.join(given)} describe a user: give --user NAME too")
        return None
    if args.email_verified and not args.email:
        raise _ExplainUsage("--email-verified needs --email")
    claims: dict[str, Any] = {"sub": args.user, "groups": list(args.group or ())}
    if args.email:
        claims.update(email=args.email, email_verified=args.email_verified)
    claims.update(_explain_claims(args.claim or ()))
    return Identity(sub=args.user, email=args.email or "", email_verified=args.email_verified,
                    groups=args.group or (), auth_level=2 if args.two_factor else 1,
                    claims=claims, source="explain")


class _ExplainUsage(Exception):
    """A contradictory set of ``secure-mw explain`` options (exit status 2)."""


def _describe_identity(identity: Identity | None) -> str:
    if identity is None:
        return "anonymous (give --user NAME to sign someone in)"
    parts = [identity.sub]
    parts.append("groups " + ", ".join(identity.groups) if identity.groups else "no groups")
    if identity.email:
        state = "verified" if identity.email_verified else "not verified"
        parts.append(f"email {identity.email} ({state})")
    parts.append("two factors" if identity.two_factor else "one factor")
    extra = {k: v for k, v in identity.claims.items() if k not in _IDENTITY_OPTIONS}
    if extra:
        parts.append("claims " + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}"
                                           for k, v in extra.items()))
    return "; ".join(parts)


def _print_explained(explained: Explained, default_policy: str) -> None:
    if explained.explanation is None:
        print(f"path      {explained.path!r}")
        print(f"result    {explained.effect}: {explained.outcome}")
        return
    ex = explained.explanation
    print(f"rules see host {ex.host!r}, path {ex.path!r} (resources never see the query)")
    for step in ex.steps:
        label = f"rule {step.rule}".ljust(9)
        print(f"{label} {'DECIDES' if step.decides else 'skipped'}  {step.text}")
        print(f"{'':9} {'':7}  {step.reason}")
    if ex.decision.rule is None:
        print(f"default   DECIDES  default_policy = {json.dumps(default_policy)}")
        print(f"{'':9} {'':7}  no rule selects the request: {ex.decision.reason}")
    print(f"result    {explained.effect}: {explained.outcome}")


def _run_explain(args: argparse.Namespace) -> int:
    try:
        return _explain(args)
    except _ExplainUsage as exc:
        print(str(exc), file=sys.stderr)
        return 2


def _add_explain_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("explain", help="which access rule decides a request, and why",
                       description="Build the access rules exactly as start-up does, normalize "
                       "the path and say which rule decides, and why each earlier rule did not. "
                       "No --user: an anonymous request. Exit status: 0 allowed, 3 refused, "
                       "4 login needed, 5 second factor needed, 1 bad configuration, 2 usage.")
    p.add_argument("url", metavar="URL",
                   help="https://host/path?query, or /path?query (host from "
                        "server.external_url)")
    p.add_argument("--config", metavar="FILE",
                   help="the configuration (default: $SECURE_MW_CONFIG and SECURE_MW_* "
                        "variables, as at start-up)")
    p.add_argument("--no-env", action="store_true", help="ignore SECURE_MW_* overrides")
    p.add_argument("--user", metavar="NAME", help="a signed-in user with this sub")
    p.add_argument("--group", action="append", metavar="GROUP",
                   help="a group of the user (repeat for several)")
    p.add_argument("--email", metavar="ADDRESS", help="the user's email")
    p.add_argument("--email-verified", action="store_true",
                   help="the email is verified (email rules only match verified emails)")
    p.add_argument("--two-factor", action="store_true",
                   help="the user has passed a second factor")
    p.add_argument("--claim", action="append", metavar="NAME=JSON_VALUE",
                   help="another claim of the user, for claim/... criteria, e.g. "
                        "department='\"sales\"' or level=3 (repeat for several)")
    p.add_argument("--method", default="GET", help="the HTTP method (default GET)")
    p.add_argument("--ip", metavar="ADDR", help="the client address")
    p.add_argument("--header", action="append", metavar="'NAME: VALUE'",
                   help="a request header (repeat for several)")
    p.add_argument("--root", metavar="PATH",
                   help="the app's mount point (WSGI SCRIPT_NAME, uvicorn --root-path): the "
                        "URL's path includes it, the rules see the path after it")
    p.set_defaults(func=_run_explain)


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


# -- secure-mw bans -------------------------------------------------------------------------


def _bans(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from secure_mw.errors import StoreUnavailable
    from secure_mw.guards.regulation import regulator_from_settings
    from secure_mw.settings import Settings

    if args.bans_command == "lift":
        problem = _lift_problem(args.user, args.ip)
        if problem:
            print(f"secure-mw bans lift: {problem}", file=sys.stderr)
            return 2
    try:
        settings = Settings.from_file(args.config, environ=_environ()) if args.config \
            else Settings.from_environment()
    except ConfigError as exc:
        print(f"{args.config or 'configuration'}: {exc}", file=sys.stderr)
        return 1
    try:
        regulator = regulator_from_settings(settings)
    except ConfigError as exc:          # the [sqlite] file cannot be used
        print(f"{args.config or 'configuration'}: {exc}", file=sys.stderr)
        return 1
    if not regulator.shared:
        print("bans live in the memory of each application process: they cannot be listed "
              "or lifted from outside it. Keep them in a shared store (set sqlite.path, or "
              "rate_limits.redis_url or session.redis_url) to manage them with this "
              "command.", file=sys.stderr)
        return 1
    try:
        if args.bans_command == "lift":
            ip = _lift_address(args.ip) if args.ip is not None else None
            lifted = regulator.lift(user=args.user, ip=ip)
            what = f"user {args.user!r}" if args.user is not None else f"address {args.ip!r}"
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


def _lift_problem(user: str | None, ip: str | None) -> str | None:
    """Why ``bans lift --user``/``--ip`` cannot name any ban (a usage error), or None."""
    import ipaddress

    if user is not None and not user.strip():
        return "--user needs a user name (it is empty)"
    if ip is None:
        return None
    text = ip.strip()
    if text.lower() == "unknown":       # the attempts that came without an address
        return None
    if "/" not in text:
        try:
            ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return f"--ip {ip!r} is not an IP address"
        return None
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"--ip {ip!r} is not an IP address or network"
    if network.version == 6 and network.prefixlen >= 64:
        return None                     # inside one /64: the subject it counts for
    if network.version == 4 and network.prefixlen == 32:
        return None
    return (f"--ip {ip!r}: bans are of one address (IPv6: its /64), not of a network; "
            "give an address, or an IPv6 network of /64 or longer")


def _lift_address(ip: str) -> str:
    """The address whose subject ``bans lift --ip`` means (an IPv6 /64 or longer: any of
    its addresses; ``unknown``: the shared subject of attempts without an address)."""
    import ipaddress

    text = ip.strip()
    if text.lower() == "unknown":
        from secure_mw.guards.attempts import UNKNOWN_ADDRESS

        return UNKNOWN_ADDRESS
    if "/" in text:
        return str(ipaddress.ip_network(text, strict=False).network_address)
    return text


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
    which.add_argument("--ip", metavar="ADDR",
                       help="every ban of this address (IPv6: of its /64; 'unknown': of the "
                            "attempts without an address)")

def _change_key(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from secure_mw.crypto import KeyRing
    from secure_mw.rotation import Progress, reencrypt_redis, reencrypt_totp_file
    from secure_mw.settings import Settings

    settings = Settings.from_file(args.config, environ=_environ()) if args.config \
        else Settings.from_environment()
    ring = KeyRing.from_settings(settings.keys)
    print(f"encrypting under key {ring.key_ids[0]} (ring: {', '.join(ring.key_ids)})",
          file=sys.stderr)
    did = False
    url = settings.session.redis_url
    if url:
        try:
            import redis
        except ImportError:
            print("secure-mw change-key: Redis needs the redis extra: pip install "
                  "'secure-mw[redis]'", file=sys.stderr)
            return 1
        from secure_mw._redis import sync_client

        # A Cluster is scanned node by node (a SCAN cursor belongs to one server), each with
        # its own state file when the run is resumable.
        try:
            client = sync_client(url, socket_timeout=10)
            nodes: list[tuple[str | None, Any]] = [(None, client)]
            if hasattr(client, "get_primaries"):
                nodes = [(f"{n.host}:{n.port}", client.get_redis_connection(n))
                         for n in client.get_primaries()]
        except redis.RedisError as exc:
            print(f"secure-mw change-key: Redis cannot be reached ({type(exc).__name__})",
                  file=sys.stderr)
            return 1
        start = time.monotonic()
        tty = sys.stderr.isatty()
        for node, node_client in nodes:
            name = "redis" if node is None else f"redis {node}"

            def report(p: Progress, name: str = name) -> None:
                if tty:
                    rate = p.scanned / max(time.monotonic() - start, 1e-9)
                    print(f"\r{name}: {p.line()} ({rate:,.0f} keys/s)", end="",
                          file=sys.stderr, flush=True)

            state = args.state if node is None or not args.state else \
                f"{args.state}.{node.replace(':', '-')}"
            try:
                done = reencrypt_redis(ring, node_client, settings.session.redis_key_prefix,
                                       state=state, batch=args.batch, report=report)
            except redis.RedisError as exc:
                print(f"\nsecure-mw change-key: Redis failed ({type(exc).__name__}); run the "
                      "command again" + (" to resume" if args.state else ""), file=sys.stderr)
                client.close()
                return 1
            except ValueError as exc:
                print(f"secure-mw change-key: {exc}", file=sys.stderr)
                client.close()
                return 2
            print(("\n" if tty else "") + f"{name}: {done.line()} in "
                  f"{time.monotonic() - start:.1f} s", file=sys.stderr)
        client.close()
        did = True
    if settings.sqlite.path and Path(settings.sqlite.path).exists():
        code = _change_key_sqlite(settings.sqlite, ring, args.batch)
        if code:
            return code
        did = True
    totp = Path(settings.local_users.totp_file)
    if totp.exists():
        result = reencrypt_totp_file(ring, totp)
        print(f"TOTP secrets {str(totp)!r}: {result.line()}", file=sys.stderr)
        did = True
    if not did:
        print("nothing stored at rest to re-encrypt (no session.redis_url, no sqlite.path, "
              "no TOTP secret file); cookies are re-encrypted as they are written: keep the "
              "old key in the ring until they expire", file=sys.stderr)
    return 0


def _change_key_sqlite(sqlite: Any, ring: Any, batch: int) -> int:
    """``change-key`` for the session rows of the ``[sqlite]`` file."""
    import time

    from secure_mw._sqlite import database_from_settings
    from secure_mw.errors import StoreUnavailable
    from secure_mw.rotation import reencrypt_sqlite

    start = time.monotonic()
    try:
        done = reencrypt_sqlite(ring, database_from_settings(sqlite), batch=batch)
    except (StoreUnavailable, ConfigError) as exc:
        print(f"secure-mw change-key: {exc}; run the command again", file=sys.stderr)
        return 1
    print(f"sqlite {sqlite.path!r}: {done.line()} in {time.monotonic() - start:.1f} s",
          file=sys.stderr)
    return 0


def _vault_passphrase(args: argparse.Namespace, *, new: bool = False) -> str:
    """The vault passphrase: ``--passphrase-file`` (``--new-passphrase-file`` for a new
    one), else ``$SECURE_MW_VAULT_PASSPHRASE`` (not for a new one), else a prompt (twice
    for a new one)."""
    from secure_mw._files import read_secret_file

    path = args.new_passphrase_file if new else args.passphrase_file
    if path:
        return read_secret_file(path, key="--new-passphrase-file" if new else
                                "--passphrase-file").decode("utf-8").strip()
    if not new and os.environ.get("SECURE_MW_VAULT_PASSPHRASE"):
        return os.environ["SECURE_MW_VAULT_PASSPHRASE"]
    if not sys.stdin.isatty():
        raise ConfigError([ConfigProblem("", "no vault passphrase: give --passphrase-file, "
                                             "set SECURE_MW_VAULT_PASSPHRASE, or run from a "
                                             "terminal to be asked")])
    first = getpass.getpass("New vault passphrase: " if new else "Vault passphrase: ")
    if new:
        if len(first) < 12:
            raise ConfigError([ConfigProblem("", "a vault passphrase has at least 12 "
                                                 "characters")])
        if first != getpass.getpass("Again: "):
            raise ConfigError([ConfigProblem("", "the passphrases differ")])
    return first


def _vault(args: argparse.Namespace) -> int:
    from secure_mw.vault import Vault, VaultError, check_name

    try:
        if args.vault_command == "init":
            Vault.create(args.file, _vault_passphrase(args, new=True))
            print(f"created {args.file} (mode 0600)", file=sys.stderr)
            return 0
        vault = Vault(args.file, _vault_passphrase(args))
        if args.vault_command == "list":
            for name in vault.names():
                print(name)
        elif args.vault_command == "get":
            sys.stdout.write(vault.get(args.name).decode("utf-8") + "\n")
        elif args.vault_command == "set":
            check_name(args.name)
            if sys.stdin.isatty():
                value = getpass.getpass(f"Value of {args.name}: ")
            else:
                value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
            if not value:
                print("secure-mw vault set: the value is empty", file=sys.stderr)
                return 2
            vault.set(args.name, value.encode("utf-8"))
            print(f"stored {args.name}", file=sys.stderr)
        elif args.vault_command == "delete":
            if not vault.delete(args.name):
                print(f"secure-mw vault delete: no entry {args.name!r}", file=sys.stderr)
                return 1
            print(f"deleted {args.name}", file=sys.stderr)
        else:   # rekey
            count = vault.rekey(_vault_passphrase(args, new=True))
            print(f"re-encrypted {count} entr{'y' if count == 1 else 'ies'} under the new "
                  "passphrase", file=sys.stderr)
    except VaultError as exc:
        print(f"secure-mw vault: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_vault_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--file", required=True, metavar="FILE", help="the vault file")
    common.add_argument("--passphrase-file", metavar="FILE",
                        help="file (mode 0600) holding the passphrase; default "
                             "$SECURE_MW_VAULT_PASSPHRASE, else a prompt")
    p = sub.add_parser("vault", help="the secrets vault that vault:NAME settings read")
    p.set_defaults(func=_vault, new_passphrase_file=None)
    actions = p.add_subparsers(dest="vault_command", required=True, metavar="ACTION")
    for name, text in (("init", "create an empty vault (0600)"),
                       ("rekey", "encrypt every entry again under a new passphrase")):
        q = actions.add_parser(name, parents=[common], help=text)
        q.add_argument("--new-passphrase-file", metavar="FILE",
                       help="file (mode 0600) holding the new passphrase; default a prompt")
    actions.add_parser("list", parents=[common], help="the names of the entries")
    for name, text in (("get", "print an entry's value"),
                       ("set", "store an entry, its value from a prompt or stdin"),
                       ("delete", "remove an entry")):
        q = actions.add_parser(name, parents=[common], help=text)
        q.add_argument("name", metavar="NAME")


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
    _add_explain_parser(sub)
    _add_bans_parser(sub)
    _add_vault_parser(sub)
    _add_serve_parser(sub)
    p = sub.add_parser("change-key", help="encrypt what is stored at rest under the first key")
    p.add_argument("--config", metavar="FILE",
                   help="the application's configuration (default: $SECURE_MW_CONFIG and "
                        "SECURE_MW_* variables)")
    p.add_argument("--state", metavar="FILE",
                   help="keep progress here, so an interrupted run resumes")
    p.add_argument("--batch", type=int, default=1000, metavar="N",
                   help="keys per Redis batch (default 1000)")
    p.set_defaults(func=_change_key)
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
