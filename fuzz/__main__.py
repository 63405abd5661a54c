"""Run a fuzz target under atheris (coverage-guided).

    python -m fuzz NAME [libFuzzer options]     one target, as long as you like (Ctrl-C)
    python -m fuzz --all --runs 20000           every target for a bounded number of runs
    python -m fuzz --list

Needs the ``fuzz`` extra (``pip install 'secure-mw[fuzz]'``: atheris, Linux, CPython up to
3.12). A finding stops the run with the input written to ``crash-<hash>`` in the current
directory; replay it with ``python -m fuzz NAME crash-<hash>``.
"""

from __future__ import annotations

import subprocess
import sys


def _run_one(name: str, argv: list[str]) -> None:
    try:
        import atheris
    except ImportError:
        sys.exit("python -m fuzz needs atheris: pip install 'secure-mw[fuzz]' (Linux, "
                 "CPython <= 3.12)")
    with atheris.instrument_imports(include=["secure_mw"]):
        from fuzz.targets import TARGETS
    target = TARGETS[name]
    atheris.Setup([sys.argv[0], *argv], target)
    atheris.Fuzz()


def main(argv: list[str]) -> int:
    from fuzz.targets import TARGETS

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--list":
        print("\n".join(TARGETS))
        return 0
    if argv[0] == "--all":
        runs = "20000"
        if len(argv) == 3 and argv[1] == "--runs":
            runs = argv[2]
        failed = []
        for name in TARGETS:
            print(f"fuzz: {name} for {runs} runs", flush=True)
            code = subprocess.run([sys.executable, "-m", "fuzz", name,  # noqa: S603 - ours
                                   f"-runs={runs}", "-print_final_stats=1"],
                                  check=False).returncode
            if code:
                failed.append(name)
        if failed:
            print(f"fuzz: findings in {', '.join(failed)}", file=sys.stderr)
            return 1
        print(f"fuzz: {len(TARGETS)} targets, {runs} runs each, no finding")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in TARGETS:
        print(f"unknown target {name!r}; one of: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    _run_one(name, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
