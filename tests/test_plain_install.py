"""A plain ``pip install secure-mw`` (no extras) imports and runs: every module that needs no
extra imports without redis, fastapi, flask or django, and a Redis engine named without the
redis extra says which extra to install. (.ci/run also installs into a fresh venv.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

# Run in a fresh interpreter where the optional packages cannot be imported.
_BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"redis", "fastapi", "flask", "django", "uvicorn", "prometheus_client",
               "opentelemetry"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Block())
    for name in list(sys.modules):
        if name.partition(".")[0] in BLOCKED:
            del sys.modules[name]
""")

# Modules that exist to talk to an optional dependency.
NEEDS_REDIS = {"secure_mw._redis", "secure_mw.session.redis_store",
               "secure_mw.guards.ratelimit_redis", "secure_mw.guards.regulation_redis",
               "secure_mw.login.totp_redis", "secure_mw.session.cache_redis"}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BLOCKER + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_every_module_without_an_extra_imports_without_optional_packages() -> None:
    result = _run(f"""
        import importlib, json, pkgutil
        import secure_mw
        failed = {{}}
        for info in pkgutil.walk_packages(secure_mw.__path__, "secure_mw."):
            if info.name in {sorted(NEEDS_REDIS)!r} or info.name.startswith("secure_mw.contrib"):
                continue
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                failed[info.name] = repr(exc)
        loaded = sorted(n for n in sys.modules if n.partition(".")[0] in BLOCKED)
        print(json.dumps({{"failed": failed, "loaded": loaded}}))
    """)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"failed": {}, "loaded": []}


def test_the_command_runs_without_optional_packages() -> None:
    result = _run("""
        import sys
        from secure_mw.cli import main
        sys.argv = ["secure-mw", "--help"]
        try:
            main()
        except SystemExit as exit:
            sys.exit(exit.code)
    """)
    assert result.returncode == 0, result.stderr
    assert "check-config" in result.stdout


def test_a_redis_engine_without_the_extra_names_the_extra() -> None:
    for name in ("secure_mw.guards.ratelimit import RedisRateLimiter",
                 "secure_mw.guards.regulation import RedisRegulator",
                 "secure_mw.login.totp import RedisUsedCodes",
                 "secure_mw.session.redis_store import RedisSessionStore"):
        result = _run(f"from {name}")
        assert result.returncode == 1, name
        assert "pip install 'secure-mw[redis]'" in result.stderr, (name, result.stderr)


def test_a_redis_store_in_the_settings_without_the_extra_names_the_extra() -> None:
    result = _run("""
        from secure_mw import Settings
        from secure_mw.asgi import protect
        settings = Settings.from_mapping({
            "session": {"store": "redis", "redis_url": "redis://127.0.0.1:1/0"},
            "keys": {"encryption_keys": ["ZGV2LWtleS1kZXYta2V5LWRldi1rZXktZGV2LWtleSE"]}})
        async def app(scope, receive, send): ...
        protect(app, settings)
    """)
    assert result.returncode == 1
    assert "pip install 'secure-mw[redis]'" in result.stderr


def test_metrics_or_tracing_in_the_settings_without_the_extra_names_the_extra() -> None:
    result = _run("""
        from secure_mw import Settings
        from secure_mw.errors import ConfigError
        from secure_mw.wsgi import protect
        settings = Settings.from_mapping({"metrics": {"enabled": True, "tracing": True}})
        try:
            protect(lambda environ, start_response: [], settings)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem.path, problem.message)
    """)
    assert result.returncode == 0, result.stderr
    assert "metrics.enabled" in result.stdout and "pip install 'secure-mw[metrics]'" in \
        result.stdout
    assert "metrics.tracing" in result.stdout and "pip install 'secure-mw[otel]'" in \
        result.stdout


def test_serve_without_uvicorn_names_the_extra(tmp_path: Path) -> None:
    config = tmp_path / "portal.toml"
    config.write_text(textwrap.dedent(f"""
        [keys]
        encryption_keys = ["ZGV2LWtleS1kZXYta2V5LWRldi1rZXktZGV2LWtleSE"]
        [local_users]
        file = "{tmp_path}/users.toml"
        [server]
        external_url = "https://auth.example.com"
        trusted_proxies = ["127.0.0.1/32"]
    """), encoding="utf-8")
    shown = _run("""
        import sys
        from secure_mw.cli import main
        sys.argv = ["secure-mw", "serve", "--help"]
        main()
    """)
    assert shown.returncode == 0 and "forward-auth" in shown.stdout, shown.stderr
    result = _run(f"""
        import sys
        from secure_mw.cli import main
        sys.exit(main(["serve", "--config", {str(config)!r}]))
    """)
    assert result.returncode == 1, result.stderr
    assert "pip install 'secure-mw[serve]'" in result.stderr
