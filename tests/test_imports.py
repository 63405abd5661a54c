"""The import structure of the package: no module imports another that (directly or not)
imports it back at module level, every module imports first in a fresh interpreter, and the
settings package loads no guard, token or login code when imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "secure_mw"
SETTINGS_FORBIDDEN = ("secure_mw.guards", "secure_mw.tokens", "secure_mw.login")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The secure_mw modules ``name`` imports when it is imported (not in functions, not
    under ``if TYPE_CHECKING``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return {m for m in found if m in known and m != name}


def test_no_module_level_import_circle() -> None:
    known = _modules()
    graph = {name: _module_level_imports(name, path, known) for name, path in known.items()}
    circles = []
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)


def test_settings_modules_do_not_import_guards_or_tokens_at_module_level() -> None:
    known = _modules()
    for name, path in known.items():
        if name != "secure_mw.settings" and not name.startswith("secure_mw.settings."):
            continue
        bad = sorted(m for m in _module_level_imports(name, path, known)
                     if m.startswith(SETTINGS_FORBIDDEN))
        assert bad == [], f"{name} imports {bad} at module level"


def _fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_settings_loads_no_guard_token_or_login_code() -> None:
    loaded = _fresh("import sys, secure_mw.settings\n"
                    "print('\\n'.join(m for m in sys.modules if m.startswith('secure_mw')))")
    assert [m for m in loaded.split() if m.startswith(SETTINGS_FORBIDDEN)] == []


def test_each_module_imports_first() -> None:
    """Every module of the package imports as the first one (a circle shows as a partially
    initialized module); optional dependencies may be absent. Django's glue needs a
    configured project and __main__ modules run: those are left out."""
    names = sorted(n for n in _modules() if not n.endswith("__main__")
                   and not n.startswith("secure_mw.contrib.django"))
    script = f"""
import importlib, sys
failed = []
for name in {names!r}:
    for loaded in [m for m in sys.modules if m == "secure_mw" or m.startswith("secure_mw.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as exc:
        if (exc.name or "").startswith("secure_mw") or "partially initialized" in str(exc):
            failed.append(f"{{name}}: {{exc}}")
print("\\n".join(failed))
"""
    assert _fresh(script).strip() == ""
