"""The MDN HTTP Observatory (``integrations/observatory``) grading a server of the tests.

::

    result = observatory_scan(f"127.0.0.1:{port}", ca_file=ca_pem)
    assert result["scan"]["grade"] == "A+", describe(result)

The scanner is the npm package ``@mdn/mdn-http-observatory``, installed here with
``npm ci --ignore-scripts`` when it is missing (the package's postinstall would download the
HSTS preload list and the IANA TLD list; we create an empty preload list instead, and the CLI
never reads the TLD list). A missing ``node`` or ``npm`` skips the test, or fails it under
``SECURE_MW_REQUIRE_EXTERNAL=1`` (see tests/servers.py).

How the scanner sees a ``host:port`` target: it requests ``https://host:port/`` and
``http://host:port/`` (the same port for both; the CLI has no option for another), follows
redirects, then fetches ``/robots.txt`` and sends a CORS preflight (``OPTIONS``). A TLS-only
port refuses the plain-http request, which the redirection test grades
``redirection-not-needed-no-http`` (a pass, score modifier 0, the same as
``redirection-to-https``).

We run ``src/scan.js`` with our own ``node`` rather than the package's
``mdn-http-observatory-scan`` wrapper: the wrapper overwrites ``NODE_EXTRA_CA_CERTS`` with
the Mozilla bundle of a dependency (which ``--ignore-scripts`` does not even build), so it
would not trust our test CA, and the scanner then silently retries without verification and
marks HSTS and redirection ``*-invalid-cert``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.servers import ensure_npm_packages, find_program, install_lock

__all__ = ["OBSERVATORY_DIR", "describe", "ensure_observatory_packages", "observatory_scan"]

OBSERVATORY_DIR = Path(__file__).resolve().parent.parent / "integrations" / "observatory"
PACKAGE = "@mdn/mdn-http-observatory"
PACKAGE_DIR = OBSERVATORY_DIR / "node_modules" / "@mdn" / "mdn-http-observatory"
SCAN_SCRIPT = PACKAGE_DIR / "src" / "scan.js"
HSTS_PRELOAD = PACKAGE_DIR / "conf" / "hsts-preload.json"
_SCAN_TIMEOUT = 60.0
# Environment variables the scanner reads (convict config, proxies) that must not change
# what a test scans; the proxy lists get loopback added instead.
_DROPPED_ENV = ("CONFIG_FILE", "RETRIEVER_USER_AGENT", "CORS_ORIGIN", "ABORT_TIMEOUT",
                "CLIENT_TIMEOUT", "NODE_OPTIONS")


def _preload_list_ready() -> bool:
    try:
        return isinstance(json.loads(HSTS_PRELOAD.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def _write_empty_preload_list() -> None:
    """``conf/hsts-preload.json`` as ``{}``: no host is preloaded. The scanner parses it with
    JSON.parse, so a zero-byte file would not do. Written atomically: another process may be
    scanning."""
    fd, tmp = tempfile.mkstemp(dir=HSTS_PRELOAD.parent, prefix=".hsts-preload-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("{}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, HSTS_PRELOAD)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ensure_observatory_packages() -> None:
    """Install integrations/observatory's node packages with ``npm ci`` unless they are there,
    and give the scanner its (empty) HSTS preload list."""
    ensure_npm_packages(OBSERVATORY_DIR)
    with install_lock(OBSERVATORY_DIR):
        if not _preload_list_ready():
            _write_empty_preload_list()


def _scan_environment(ca_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env["NODE_EXTRA_CA_CERTS"] = str(ca_file)
    for name in ("NO_PROXY", "no_proxy"):  # axios honours *_PROXY; never proxy loopback
        current = [part for part in env.get(name, "").split(",") if part.strip()]
        env[name] = ",".join([*current, "127.0.0.1", "localhost"])
    return env


def observatory_scan(target: str, *, ca_file: Path, timeout: float = _SCAN_TIMEOUT
                     ) -> dict[str, Any]:
    """Scan ``target`` (``host`` or ``host:port``) and return the scanner's JSON:
    ``{"scan": {"grade", "score", "testsPassed", "testsQuantity", "responseHeaders", ...},
    "tests": {name: {"pass", "result", "expectation", "scoreModifier", ...}}}``.

    ``ca_file`` is the PEM of the CA that issued the server's certificate (given to node as
    ``NODE_EXTRA_CA_CERTS``). Raises :class:`AssertionError` when the scan itself fails (the
    site is down, answers an unexpected status, or the scanner crashes).
    """
    node = find_program("node")
    ensure_observatory_packages()
    try:
        result = subprocess.run(
            [node, str(SCAN_SCRIPT), target], cwd=OBSERVATORY_DIR,
            env=_scan_environment(ca_file), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the Observatory scan of {target} took over {timeout} s") from exc
    try:
        data = json.loads(result.stdout)
    except ValueError:
        data = None
    if result.returncode != 0 or not isinstance(data, dict) or "scan" not in data:
        raise AssertionError(
            f"the Observatory scan of {target} failed (status {result.returncode}):\n"
            f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}")
    return data


def describe(result: Mapping[str, Any]) -> str:
    """The grade, the score and every sub-test of a scan, one line each, for messages."""
    scan = result["scan"]
    lines = [f"Observatory grade {scan.get('grade')}, score {scan.get('score')}, "
             f"{scan.get('testsPassed')}/{scan.get('testsQuantity')} tests passed, "
             f"status {scan.get('statusCode')}"]
    for name, test in result.get("tests", {}).items():
        verdict = "pass" if test.get("pass") else "FAIL"
        modifier = test.get("scoreModifier") or 0
        line = f"  {verdict} {name}: {test.get('result')} ({modifier:+})"
        if not test.get("pass"):
            line += f"; expected {test.get('expectation')}"
        lines.append(line)
    return "\n".join(lines)
