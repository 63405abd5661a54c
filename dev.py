#!/usr/bin/env python3
"""The two commands of the README, and a few more, with nothing installed beforehand.

    python3 dev.py demo      run the protected demo app on http://127.0.0.1:8000/
    python3 dev.py test      run the whole test suite (extra arguments go to pytest)
    python3 dev.py lint      ruff and mypy
    python3 dev.py bench     run the benchmarks (bench sessions --quick: one of them)
    python3 dev.py tox       tox over every Python 3.10-3.13 found (pyenv's included)
    python3 dev.py fuzz      atheris over every fuzz target (fuzz NAME: one, until Ctrl-C)
    python3 dev.py docs      build the documentation site strictly into ./site (docs serve: live)

Each creates ./.venv on first use (Python >= 3.10) and installs the project into it
with its test extras; later runs reinstall only when pyproject.toml changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SECURE_MW_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".secure-mw-installed"


def _ensure_venv() -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"secure_mw needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if PY.exists() and subprocess.run([str(PY), "-m", "pip", "--version"],
                                      capture_output=True).returncode != 0:
        print(f"dev.py: {VENV} has no pip (an earlier failed start?); making it again")
        shutil.rmtree(VENV)
    if not PY.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        except subprocess.CalledProcessError:
            shutil.rmtree(VENV, ignore_errors=True)
            sys.exit("dev.py: `python3 -m venv` failed; on Debian install it with "
                     "`apt-get install python3-venv`")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != want:
        print("dev.py: installing secure_mw and its test dependencies", flush=True)
        subprocess.run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([str(PY), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"], check=True)
        STAMP.write_text(want + "\n")


def _run(args: list[str]) -> int:
    return subprocess.run(args, cwd=ROOT).returncode


def _serve(args: list[str]) -> int:
    """Run a long-lived child (the demo) and stop it with us: SIGINT, SIGTERM and SIGHUP
    sent to this process are passed on once and we wait for the child, so it never keeps
    serving after we are gone. The child has its own process group, so a terminal's Ctrl-C
    reaches it once (through us), not twice."""
    posix = os.name == "posix"
    child = subprocess.Popen(args, cwd=ROOT, start_new_session=posix)
    names = ("SIGINT", "SIGTERM", "SIGHUP") if posix else ("SIGINT",)
    signals = [getattr(signal, name) for name in names]

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:   # a hang-up asks for the same clean stop as SIGTERM
            child.send_signal(signal.SIGTERM if posix and signum == signal.SIGHUP else signum)

    previous = {s: signal.signal(s, forward) for s in signals}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if child.poll() is None:      # we are leaving for another reason: take it along
            child.terminate()
            child.wait()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "lint", "bench", "tox", "fuzz", "docs"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    _ensure_venv()
    if command == "demo":
        code = _serve([str(PY), "-m", "secure_mw.demo", *rest])
        return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code
    if command == "test":
        code = _run([str(PY), "-m", "pytest", *rest])
        if code == 5:
            print("dev.py: pytest collected no tests; that is a failure here", file=sys.stderr)
            return 1
        return code
    if command == "lint":
        code = _run([str(BIN / "ruff"), "check", "secure_mw", "tests", "sample_apps", "docs",
                     "benchmarks", "fuzz", "dev.py"])
        return code or _run([str(BIN / "mypy")])
    if command == "fuzz":    # bounded over all targets by default; NAME: one, unbounded
        return _run([str(PY), "-m", "fuzz", *(rest or ["--all", "--runs", "20000"])])
    if command == "docs":
        # mkdocs' strict mode turns every warning (a broken link or anchor) into a failure.
        os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")
        if rest[:1] == ["serve"]:
            return _run([str(PY), "-m", "mkdocs", "serve", "--strict", *rest[1:]])
        return _run([str(PY), "-m", "mkdocs", "build", "--strict", *rest])
    if command == "tox":
        # pyenv's shims hide every version but the selected one from tox's discovery:
        # put each installed 3.10-3.13 first on PATH instead.
        pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
        found = sorted(str(p / "bin") for p in pyenv.glob("3.1[0-3].*") if (p / "bin").is_dir())
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])
        return _run([str(BIN / "tox"), *rest])
    # bench: every benchmark in turn, or `bench NAME [options]` for one of them
    names = ["crypto", "sessions", "stores", "ratelimit", "authz", "login_timing", "rotation",
             "metrics", "bearer", "stack", "floor", "bytecodes"]
    if rest and rest[0] in names:
        return _run([str(PY), "-m", f"benchmarks.{rest[0]}", *rest[1:]])
    code = 0
    for name in names:
        code = _run([str(PY), "-m", f"benchmarks.{name}", *rest]) or code
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
