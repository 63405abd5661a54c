"""Building a settings tree from a mapping, a TOML file and ``SECURE_MW_*`` environment
overrides. The builder knows no section: it walks the dataclasses and reads each field's
metadata (see :func:`secure_mw.settings.schema._opt`), collecting every problem with its key
path before one :class:`~secure_mw.errors.ConfigError` is raised.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

from secure_mw._files import read_secret_file, secret_file_problem
from secure_mw.errors import ConfigError, ConfigProblem
from secure_mw.settings import checks

if TYPE_CHECKING:
    from secure_mw.settings.schema import VaultSettings
    from secure_mw.vault import Vault

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "SECURE_MW_"

_S = TypeVar("_S")


def from_mapping(
    cls: type[_S],
    data: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> _S:
    """Build settings from a mapping (as a TOML file would give), then apply
    ``SECURE_MW_*`` overrides from ``environ`` when given. Relative ``*_file`` paths
    are resolved against ``base_dir`` (default: the current directory)."""
    problems: list[ConfigProblem] = []
    built = None
    builder = _Builder(problems, Path(base_dir) if base_dir is not None else None)
    try:
        merged = _apply_environment(cls, _plain(data, ""), environ or {}, problems)
        if "vault" in merged:           # first: `*_file = "vault:NAME"` values use it
            merged = {"vault": merged["vault"], **merged}
        built = checks.with_shared_redis(builder.build(cls, merged, ""))
    except _NotPlain as exc:
        problems.append(ConfigProblem(exc.path, str(exc)))
    except (RecursionError, OverflowError):
        problems.append(ConfigProblem("", "the configuration is nested too deeply or holds "
                                          "a number too large to use"))
    cross: list[ConfigProblem] = []
    checks.cross_checks(built, cross)
    problems += [p for p in cross if not any(
        p.path == bad or _mentions(p.message, bad) for bad in builder.invalid)]
    if problems:
        error = ConfigError(problems)
        # What could be built, invalid values replaced by their defaults: lets
        # `secure-mw check-config` go on to the checks start-up makes (every problem in
        # one run). Never used to start anything.
        error.partial = built
        raise error
    return typing.cast(_S, built)


def from_file(
    cls: type[_S],
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
) -> _S:
    """Load a TOML file (``.toml``; YAML is not supported) and build settings."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        where = f" (looked in {str(p.absolute().parent)!r})" if not p.is_absolute() else ""
        raise ConfigError([ConfigProblem(
            "", f"cannot read {str(p)!r}{where}: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem("", f"{str(p)!r} is not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"{str(p)!r} is not valid TOML: {exc}")]) \
            from None
    except RecursionError:
        raise ConfigError([ConfigProblem("", f"{str(p)!r} is nested too deeply")]) from None
    return from_mapping(cls, data, environ=environ, base_dir=p.parent)


def from_environment(
    cls: type[_S], path: str | os.PathLike[str] | None = None
) -> _S:
    """The file at ``path`` or ``$SECURE_MW_CONFIG`` (if any), then ``SECURE_MW_*``
    overrides from the process environment."""
    path = path or os.environ.get("SECURE_MW_CONFIG") or None
    if path:
        return from_file(cls, path, environ=os.environ)
    return from_mapping(cls, {}, environ=os.environ)


# ---------------------------------------------------------------------------------------------
# building


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list of " + _type_name(typing.get_args(tp)[0]).removeprefix("a ") + "s"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, str(tp)
    )


def _mentions(message: str, key: str) -> bool:
    """Whether a problem's message names ``key`` (a key name or a dotted path)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None \
        or re.search(rf"\.{re.escape(key.rpartition('.')[2])}(?![\w])", message) is not None


class _Builder:
    def __init__(self, problems: list[ConfigProblem], base_dir: Path | None) -> None:
        self.problems = problems
        self.base_dir = base_dir
        #: Dotted paths of values found invalid (replaced by their defaults).
        self.invalid: set[str] = set()
        #: ``[vault]`` (built before the other sections) and the vault, once opened.
        self.vault_settings: VaultSettings | None = None
        self.vault: Vault | None = None

    def problem(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message))

    def build(self, cls: type, data: object, path: str) -> Any:
        if not isinstance(data, Mapping):
            self.problem(path, f"expected a table, got {type(data).__name__}")
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = _hints(cls)
        secret_files = {f"{n}_file": n for n, f in fields.items() if f.metadata.get("secret")}
        known = sorted(list(fields) + list(secret_files))
        values: dict[str, Any] = {}
        seen_file: dict[str, Any] = {}
        for key, raw in data.items():
            kpath = f"{path}.{key}" if path else str(key)
            if key in secret_files:
                seen_file[secret_files[key]] = (kpath, raw)
                continue
            if key not in fields:
                self.problem(kpath, "unknown key" + _suggest(str(key), known))
                continue
            values[key] = self.value(fields[key], hints[key], raw, kpath)
            if not path and key == "vault" and dataclasses.is_dataclass(values[key]):
                self.vault_settings = values[key]     # built first: other keys may name it
        for name, (kpath, raw) in seen_file.items():
            if name in data:
                self.problem(kpath, f"give either {name} or {name}_file, not both")
                continue
            values[name] = self.secret_from_file(fields[name], hints[name], raw, kpath)
        missing = [
            n for n, f in fields.items()
            if n not in values and n not in seen_file
            and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        for name in missing:
            self.problem(f"{path}.{name}" if path else name, "required key is missing")
        # Best effort, so that one run reports every problem: an invalid value is replaced
        # by its default and the section's own checks still run, except those that mention
        # a key already found invalid (they would judge the default, not the user's value).
        invalid = {name for name, v in values.items() if v is _INVALID}
        if any(name in invalid for name in missing) or missing or any(
                fields[name].default is dataclasses.MISSING
                and fields[name].default_factory is dataclasses.MISSING for name in invalid):
            return None
        self.invalid.update(f"{path}.{name}" if path else name for name in invalid)
        try:
            obj = cls(**{k: v for k, v in values.items() if k not in invalid})
        except TypeError as exc:  # pragma: no cover - guarded by the checks above
            self.problem(path, str(exc))
            return None
        validate = getattr(obj, "_problems", None)
        if validate is not None:
            for sub, message in validate():
                if sub in invalid or any(_mentions(message, name) for name in invalid):
                    continue
                self.problem(".".join(p for p in (path, sub) if p), message)
        return obj

    def secret_from_file(self, f: dataclasses.Field[Any], tp: Any, raw: object, path: str) -> Any:
        if not isinstance(raw, str) or not raw:
            self.problem(path, "expected a file path")
            return _INVALID
        if raw.startswith("vault:"):
            where, found = f"vault entry {raw[6:]!r}", self.vault_text(raw[6:], path)
        else:
            p = Path(raw)
            if not p.is_absolute() and self.base_dir is not None:
                p = self.base_dir / p
            where, found = f"secret file {str(p)!r}", self.file_text(p, path)
        if found is None:
            return _INVALID
        text = found
        inner, _ = _unwrap_optional(tp)
        if typing.get_origin(inner) is list:
            value: Any = [
                line.strip() for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
        else:
            value = text.strip() if f.name != "signing_jwks" else text
            if f.name != "signing_jwks" and any(c in value for c in "\r\n\x00"):
                self.problem(path, f"{where} holds more than one line")
                return _INVALID
        if not value:
            self.problem(path, f"{where} is empty")
            return _INVALID
        return value

    def file_text(self, p: Path, path: str) -> str | None:
        problem = secret_file_problem(p)
        if problem:
            self.problem(path, problem)
            return None
        try:
            return read_secret_file(p, key=path).decode("utf-8")
        except (ConfigError, UnicodeDecodeError):
            self.problem(path, f"secret file {str(p)!r} is not readable UTF-8 text")
            return None

    def vault_text(self, name: str, path: str) -> str | None:
        """The entry ``name`` of the vault ``[vault]`` names (opened once per build)."""
        from secure_mw.vault import Vault, VaultError

        settings = self.vault_settings
        if settings is None or not settings.file:
            self.problem(path, "a vault: value needs [vault] file (and its passphrase)")
            return None
        if not settings.passphrase:
            self.problem(path, "the vault's passphrase is not given: set vault.passphrase_file "
                               "or SECURE_MW_VAULT__PASSPHRASE")
            return None
        try:
            if self.vault is None:
                self.vault = Vault(settings.file, settings.passphrase)
            text: str = self.vault.get(name).decode("utf-8")
            return text
        except VaultError as exc:
            self.problem(path, str(exc))
        except UnicodeDecodeError:
            self.problem(path, f"vault entry {name!r} is not UTF-8 text")
        return None

    def value(self, f: dataclasses.Field[Any], tp: Any, raw: object, path: str) -> Any:
        meta = f.metadata
        inner, optional = _unwrap_optional(tp)
        if raw is None and optional:
            return None
        try:
            if meta.get("parse"):          # durations too: _opt gives them parse_duration
                value = meta["parse"](raw)
            else:
                value = self.typed(inner, raw, path, secret=bool(meta.get("secret")))
                if value is _INVALID:
                    return _INVALID
        except ValueError as exc:
            self.problem(path, str(exc))
            return _INVALID
        choices = meta.get("choices")
        if choices and value not in choices:
            self.problem(
                path,
                f"{value!r} is not one of {', '.join(map(repr, choices))}"
                + _suggest(str(value), list(choices)),
            )
            return _INVALID
        if meta.get("path") and isinstance(value, str) and value and self.base_dir is not None:
            value = str(self.base_dir / value)  # an absolute value stays as it is
        check = meta.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                self.problem(path, problem)
                return _INVALID
        return value

    def typed(self, tp: Any, raw: object, path: str, *, secret: bool = False) -> Any:
        if dataclasses.is_dataclass(tp):
            built = self.build(typing.cast(type, tp), raw, path)
            return _INVALID if built is None else built
        origin = typing.get_origin(tp)
        if origin is list:
            (item_tp,) = typing.get_args(tp)
            if not isinstance(raw, list):
                got = type(raw).__name__ if secret else _describe(raw)  # never echo a secret
                self.problem(path, f"expected {_type_name(tp)}, got {got}")
                return _INVALID
            items = [self.typed(item_tp, item, f"{path}[{i}]", secret=secret)
                     for i, item in enumerate(raw)]
            return _INVALID if any(i is _INVALID for i in items) else items
        if origin is dict:
            if not isinstance(raw, Mapping):
                self.problem(path, f"expected a table, got {_describe(raw)}")
                return _INVALID
            return dict(raw)
        if tp is Any:
            return raw
        ok = (
            isinstance(raw, bool) if tp is bool
            else isinstance(raw, int) and not isinstance(raw, bool) if tp is int
            else isinstance(raw, int | float) and not isinstance(raw, bool) if tp is float
            else isinstance(raw, tp)
        )
        if not ok:
            got = type(raw).__name__ if secret else _describe(raw)  # never echo a secret
            self.problem(path, f"expected {_type_name(tp)}, got {got}")
            return _INVALID
        if tp is str and ("\r" in raw or "\n" in raw or "\x00" in raw):  # type: ignore[operator]
            self.problem(path, "must not contain line breaks or NUL characters")
            return _INVALID
        return float(raw) if tp is float else raw  # type: ignore[arg-type]


class _Invalid:
    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Any = _Invalid()


def _describe(raw: object) -> str:
    if isinstance(raw, str):
        return f"the string {raw!r}" if len(raw) < 40 else "a string"
    return {bool: "a boolean", int: "an integer", float: "a number", list: "a list",
            dict: "a table"}.get(type(raw), type(raw).__name__)


# ---------------------------------------------------------------------------------------------
# environment overrides


class _NotPlain(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def _plain(value: Any, path: str) -> Any:
    """A deep copy holding only what TOML, JSON or the environment can give."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _NotPlain(path, f"key {k!r} is not a string")
            out[k] = _plain(v, f"{path}.{k}" if path else k)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise _NotPlain(path, f"a {type(value).__name__} is not a setting value")


def _apply_environment(
    cls: type, data: dict[str, Any], environ: Mapping[str, str],
    problems: list[ConfigProblem],
) -> dict[str, Any]:
    merged = data
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        target, tp, problem = _resolve_env_path(cls, parts)
        if problem:
            problems.append(ConfigProblem(name, problem))
            continue
        try:
            value = _env_value(tp, environ[name])
        except ValueError as exc:
            problems.append(ConfigProblem(name, str(exc)))
            continue
        node = merged
        for part in target[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[target[-1]] = value
    return merged


def _resolve_env_path(cls: type, parts: list[str]) -> tuple[list[str], Any, str | None]:
    current: Any = cls
    for i, part in enumerate(parts):
        inner, _ = _unwrap_optional(current)
        if not dataclasses.is_dataclass(inner):
            return parts, None, "cannot set a key inside a value that is not a table"
        fields = {f.name: f for f in dataclasses.fields(inner)}
        hints = _hints(typing.cast(type, inner))
        secret_files = {f"{n}_file" for n, f in fields.items() if f.metadata.get("secret")}
        if part in secret_files:
            if i != len(parts) - 1:
                break
            return parts, str, None
        if part not in fields:
            env_names = [
                ENV_PREFIX + "__".join([*parts[:i], k]).upper()
                for k in sorted(list(fields) + list(secret_files))
            ]
            wrong = ENV_PREFIX + "__".join(parts[: i + 1]).upper()
            return parts, None, "unknown setting" + _suggest(wrong, env_names)
        current = hints[part]
        if fields[part].metadata.get("env_text"):   # a duration or a size: parsed as text
            current = str
    return parts, current, None


def _env_value(tp: Any, text: str) -> Any:
    inner, _ = _unwrap_optional(tp)
    if inner is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{text!r} is not true or false")
    if inner is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if inner is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if typing.get_origin(inner) is list or inner is Any or typing.get_origin(inner) is dict:
        stripped = text.strip()
        if stripped.startswith(("[", "{")):
            try:
                return json.loads(stripped)
            except (json.JSONDecodeError, RecursionError):
                raise ValueError("is not valid JSON") from None
        return [item.strip() for item in text.split(",") if item.strip()]
    return text
