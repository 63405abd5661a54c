"""The configuration reference, generated from the Settings tree: one Markdown table per
section (key, type, default, meaning) built from the dataclasses of secure_mw.settings and
the ``doc=`` of each field, written between ``<!-- settings_doc: SECTION -->`` and
``<!-- /settings_doc -->`` markers so the prose around them stays hand-written.
``python -m secure_mw.settings_doc [--check] [FILE]`` rewrites FILE (docs/configuration.md)
or, with ``--check``, exits 1 when it is out of date.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from secure_mw.settings import Settings, parse_size

BEGIN = "<!-- settings_doc: {} -->"
END = "<!-- /settings_doc -->"
_BLOCK = re.compile(r"<!-- settings_doc: ([a-z_]+) -->\n.*?<!-- /settings_doc -->", re.S)
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def _plain_type(hint: Any) -> tuple[Any, bool]:
    """``X | None`` as (X, True); anything else as (hint, False)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def _dataclass_of(hint: Any) -> type[Any] | None:
    hint, _ = _plain_type(hint)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (None,)
        return item if isinstance(item, type) and dataclasses.is_dataclass(item) else None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for unit, size in _UNITS:
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _size(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if f.metadata.get("duration"):
        return f'`"{_duration(value)}"`'
    if f.metadata.get("parse") is parse_size:
        return f'`"{_size(value)}"`'
    if isinstance(value, str):
        return f"`{json.dumps(str(value))}`"
    if isinstance(value, (list, dict)) or dataclasses.is_dataclass(value):
        return "`[]`" if value == [] else "`{}`" if value == {} else \
            f"`{json.dumps(value, separators=(', ', ' = ') if isinstance(value, dict) else None)}`"
    return f"`{value}`"


def _type(f: dataclasses.Field[Any], hint: Any) -> str:
    meta = f.metadata
    hint, _ = _plain_type(hint)
    choices = meta.get("choices")
    if choices:
        kind = ", ".join(f"`{c}`" for c in choices[:-1]) + f" or `{choices[-1]}`"
    elif meta.get("duration"):
        kind = "duration"
    elif meta.get("parse") is parse_size:
        kind = "size"
    elif meta.get("path"):
        kind = "path"
    elif typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        kind = ("array of tables" if dataclasses.is_dataclass(item) else
                "list of integers" if item is int else
                "list of strings" if item is str else "list")
    elif typing.get_origin(hint) is dict or (isinstance(hint, type)
                                             and dataclasses.is_dataclass(hint)):
        kind = "table"
    else:
        kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
            hint, "value")
    if meta.get("secret"):
        kind += ", *secret*"
    return kind


def _cell(text: str) -> str:
    """Plain text (a ``doc=``) as a table cell: Markdown's and HTML's signs escaped."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text).replace("\n", " ")


def rows(cls: type[Any], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every field of ``cls``, nested tables flattened
    as ``verify.header`` and arrays of tables as ``rules[].key``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        key = prefix + f.name
        yield key, _type(f, hint), _default(f), str(f.metadata.get("doc", ""))
        nested = _dataclass_of(hint)
        if nested is not None:
            inner, _ = _plain_type(hint)
            sep = "[]." if typing.get_origin(inner) is list else "."
            yield from rows(nested, key + sep)


def sections() -> dict[str, type[Any]]:
    """The top-level sections of Settings, by name, in their order."""
    hints = typing.get_type_hints(Settings)
    out: dict[str, type[Any]] = {}
    for f in dataclasses.fields(Settings):
        cls = _dataclass_of(hints[f.name])
        if cls is not None:
            out[f.name] = cls
    return out


def table(section: str) -> str:
    """The Markdown table of one section."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, doc in rows(sections()[section]):
        lines.append(f"| `{key}` | {kind} | {default} | {_cell(doc)} |")
    return "\n".join(lines)


def render(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated block rewritten, and the problems found: a section
    with no block, or a block naming no section."""
    known = sections()
    problems: list[str] = []
    seen: list[str] = []

    def block(match: re.Match[str]) -> str:
        name = match.group(1)
        seen.append(name)
        if name not in known:
            problems.append(f"a settings_doc block names {name!r}, which is no section")
            return match.group(0)
        return f"{BEGIN.format(name)}\n{table(name)}\n{END}"

    out = _BLOCK.sub(block, text)
    problems += [f"section {name!r} has no {BEGIN.format(name)} block"
                 for name in known if name not in seen]
    return out, problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m secure_mw.settings_doc",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("file", nargs="?", default="docs/configuration.md")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when FILE's generated tables are out of date")
    args = parser.parse_args(argv)
    path = Path(args.file)
    text = path.read_text(encoding="utf-8")
    new, problems = render(text)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if problems:
        return 1
    if new == text:
        return 0
    if args.check:
        print(f"{path}: the configuration reference is out of date; run "
              f"`python -m secure_mw.settings_doc {path}`", file=sys.stderr)
        return 1
    path.write_text(new, encoding="utf-8")
    print(f"{path}: configuration reference rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
