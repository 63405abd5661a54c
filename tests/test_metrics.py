"""[metrics] on real servers, both flavours: the counters after real traffic (logins right
and wrong, a ban, a rule refusal, a rate-limited burst) scraped from the app's own /metrics;
label sets bounded whatever the users and paths; nothing registered or wrapped when
disabled; a missing extra is a ConfigError naming it; store calls timed and their errors
counted (a real Redis stopped)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.errors import ConfigError
from secure_mw.guards.regulation import MemoryRegulator
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.metrics import (
    LOGIN_FAILURE_REASONS,
    decision_of,
    login_failure_reason,
    metrics_app,
)
from secure_mw.session import MemorySessionStore
from tests.apps import FLAVOURS, asgi_inner, browser, uvicorn_server, wsgi_inner, wsgi_server
from tests.servers import RedisServer
from tests.test_local_login_e2e import sign_in

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
KEY = KeyRing.new_key_text()
RULES = [{"resources": ["^/metrics$"], "networks": ["127.0.0.1/32"], "policy": "bypass"},
         {"resources": ["^/forbidden"], "policy": "deny"},
         {"policy": "authenticated"}]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def users(tmp_path: Path) -> UsersFile:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="correct horse", groups=["admins"])
    users.add("bob", password="battery staple")
    return users


def with_metrics_at(flavour: str, registry: Any) -> Any:
    """The test app, with prometheus_client's exposition app at /metrics."""
    scrape = metrics_app(flavour, registry=registry)
    if flavour == "asgi":
        inner = asgi_inner()

        async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/metrics":
                await scrape(scope, receive, send)
            else:
                await inner(scope, receive, send)

        return asgi_app

    def wsgi_app(environ: Any, start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/metrics":
            return scrape(environ, start_response)
        return wsgi_inner(environ, start_response)

    return wsgi_app


@pytest.fixture
def served(flavour: str, users: UsersFile) -> Callable[..., Any]:
    """served(sections, **options): protect() around the app with /metrics, on a real
    server; yields (base URL, registry)."""
    @contextmanager
    def run(sections: dict[str, Any] | None = None, **options: Any
            ) -> Iterator[tuple[str, Any]]:
        mapping: dict[str, Any] = {
            "keys": {"encryption_keys": [KEY]}, "local_users": {"file": str(users.path)},
            "server": {"trusted_proxies": ["127.0.0.1/32"]}, "metrics": {"enabled": True},
            "access_control": {"rules": RULES},
            "rate_limits": {"rules": [{"key": "ip", "limit": "3/minute",
                                       "paths": ["^/burst"]}]}}
        mapping.update(sections or {})
        settings = Settings.from_mapping(mapping, environ={})
        registry = options.pop("registry", None) or prometheus_client.CollectorRegistry()
        options.setdefault("users", users)
        if settings.session.store != "redis":
            options.setdefault("store", MemorySessionStore())
        options.setdefault("delay", LoginDelay(floor=0.01, seed=0.01, jitter=0.001))
        module = asgi if flavour == "asgi" else wsgi
        server = uvicorn_server if flavour == "asgi" else wsgi_server
        app = module.protect(with_metrics_at(flavour, registry), settings,
                             registry=registry, **options)
        with server(app) as url:
            yield url, registry

    return run


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every secure_mw_ sample of the app's /metrics (over HTTP, as Prometheus reads it)."""
    response = httpx.get(base + "/metrics")
    assert response.status_code == 200, response.text
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("secure_mw_") and not sample.name.endswith("_created"):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_counters_after_real_traffic(served: Any) -> None:
    regulator = MemoryRegulator(max_retries=3, find_time=120, ban_time=300, modes=["pair"])
    with served(regulator=regulator) as (base, _registry), browser() as alice, \
            browser() as bob:
        assert sign_in(alice, base, "alice", "correct horse").status_code == 303
        assert [sign_in(bob, base, "bob", f"guess {i}").status_code
                for i in range(3)] == [401, 401, 401]
        assert sign_in(bob, base, "bob", "battery staple").status_code == 401   # banned
        assert alice.get(base + "/forbidden").status_code == 403
        with ThreadPoolExecutor(8) as pool:
            burst = sorted(r.status_code for r in pool.map(
                lambda _: alice.get(base + "/burst"), range(8)))
        assert burst == [200, 200, 200, 429, 429, 429, 429, 429]
        samples = scrape(base)
    assert value(samples, "secure_mw_logins_total", outcome="success") == 1
    assert value(samples, "secure_mw_logins_total", outcome="failure") == 4
    assert value(samples, "secure_mw_login_failures_total", reason="invalid_credentials") == 3
    assert value(samples, "secure_mw_login_failures_total", reason="banned") == 1
    assert value(samples, "secure_mw_bans_total", subject="pair") == 1
    assert value(samples, "secure_mw_rate_limited_total", rule="0") == 5
    decisions = {dict(labels)["layer"] + "/" + dict(labels)["outcome"]: v
                 for (name, labels), v in samples.items()
                 if name == "secure_mw_decisions_total"}
    # The rules let in the 3 bursts the rate limit allowed and this scrape, and sent the 5
    # anonymous first requests to the login.
    assert decisions == {"login/success": 1, "login/failure": 4, "regulation/ban": 1,
                         "authorization/deny": 1, "rate_limit/refused": 5,
                         "authorization/allow": 4, "authorization/login": 5}
    # Requests answered by the app (the 3 allowed bursts, /hello after the login: none
    # here), and by secure_mw (redirects to the login, forms, refusals); /metrics itself is
    # counted once it has answered.
    assert value(samples, "secure_mw_added_seconds_count", answered_by="app") == 3
    assert value(samples, "secure_mw_added_seconds_count", answered_by="secure_mw") == 5 * 3 + 6
    # The memory engines never wait: their calls are not timed.
    assert not any(dict(labels).get("engine") == "memory" for _name, labels in samples)
    assert not any(name == "secure_mw_store_errors_total" for name, _ in samples)


def test_label_sets_stay_the_same_whatever_the_users_and_paths(served: Any) -> None:
    def label_sets(samples: dict[Any, float]) -> set[Any]:
        return {key for key in samples if not key[0].startswith("secure_mw_added_seconds")
                and not key[0].startswith("secure_mw_store_seconds")}

    regulator = MemoryRegulator(max_retries=1000, find_time=120, ban_time=300)
    with served(regulator=regulator) as (base, _registry), browser() as client:
        assert sign_in(client, base, "alice", "correct horse").status_code == 303

        def round_of(names: range) -> None:
            for i in names:
                with browser() as other:
                    assert sign_in(other, base, f"user-{i}", "x", ip=f"198.51.100.{i}"
                                   ).status_code == 401
                assert client.get(base + f"/forbidden/{i}").status_code == 403

        round_of(range(2))
        before = label_sets(scrape(base))
        round_of(range(2, 30))
        samples = scrape(base)
    assert label_sets(samples) == before
    assert value(samples, "secure_mw_login_failures_total", reason="invalid_credentials") == 30
    text = repr(samples)
    assert "user-" not in text and "/forbidden" not in text and "198.51" not in text


def test_disabled_registers_nothing_and_wraps_nothing(flavour: str, users: UsersFile) -> None:
    def default_names() -> set[str]:
        return {m.name for m in prometheus_client.REGISTRY.collect()
                if m.name.startswith("secure_mw_")}

    registry = prometheus_client.CollectorRegistry()
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "local_users": {"file": str(users.path)}}, environ={})
    module = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    before = default_names()
    stacked = module.protect(inner, settings, users=users, registry=registry)
    module.protect(inner, settings, users=users)
    assert not isinstance(stacked, module.ObserveMiddleware)
    layer = stacked
    while hasattr(layer, "app"):
        assert not isinstance(layer, module.AppTimerMiddleware | module.ObserveMiddleware)
        layer = layer.app
    assert list(registry.collect()) == []
    assert default_names() == before


def test_two_stacks_in_one_registry_share_the_counters(flavour: str, users: UsersFile) -> None:
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "local_users": {"file": str(users.path)},
                                      "metrics": {"enabled": True}}, environ={})
    module = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    registry = prometheus_client.CollectorRegistry()
    first = module.protect(inner, settings, users=users, registry=registry)
    second = module.protect(inner, settings, users=users, registry=registry)   # no Duplicated
    assert first.observer.families is second.observer.families
    # The default registry too: protect() twice without registry= does not raise.
    module.protect(inner, settings, users=users)
    module.protect(inner, settings, users=users)


@pytest.mark.parametrize(("section", "module", "extra"), [
    ({"enabled": True}, "prometheus_client", "secure-mw[metrics]"),
    ({"tracing": True}, "opentelemetry", "secure-mw[otel]")])
def test_a_missing_extra_is_a_config_error_naming_it(
        monkeypatch: pytest.MonkeyPatch, users: UsersFile, section: dict[str, Any],
        module: str, extra: str) -> None:
    for name in [n for n in sys.modules if n.partition(".")[0] == module]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "local_users": {"file": str(users.path)},
                                      "metrics": section}, environ={})
    with pytest.raises(ConfigError) as caught:
        asgi.protect(asgi_inner(), settings, users=users)
    [problem] = caught.value.problems
    key = "metrics.enabled" if "enabled" in section else "metrics.tracing"
    assert problem.path == key and extra in problem.message


@pytest.mark.external("redis-server")
def test_store_calls_are_timed_and_their_errors_counted(served: Any) -> None:
    server = RedisServer()
    server.start()
    try:
        sections = {"session": {"store": "redis", "redis_url": server.url}}
        with served(sections) as (base, _registry), browser() as client:
            assert sign_in(client, base, "alice", "correct horse").status_code == 303
            assert client.get(base + "/hello").status_code == 200
            server.stop()
            assert client.get(base + "/hello").status_code == 503        # fails closed
            samples = scrape(base)
    finally:
        server.stop()
    errors = {dict(labels)["call"]: v for (name, labels), v in samples.items()
              if name == "secure_mw_store_errors_total"
              and dict(labels)["store"] == "session"}
    assert errors and all(dict(labels)["error"] == "unavailable"
                          for (name, labels) in samples
                          if name == "secure_mw_store_errors_total")
    assert sum(errors.values()) >= 1
    loads = value(samples, "secure_mw_store_seconds_count", store="session", engine="redis",
                  call="load")
    assert loads >= 2


def test_reason_codes_are_a_fixed_set() -> None:
    codes = {code for _lead, code in LOGIN_FAILURE_REASONS}
    assert login_failure_reason("invalid credentials") == "invalid_credentials"
    assert login_failure_reason("banned (pair)") == "banned"
    assert login_failure_reason("id_token refused: audience alice@example.com") == \
        "id_token_refused"
    assert login_failure_reason("session store unavailable: 10.0.0.1:6379") == \
        "store_unavailable"
    assert login_failure_reason("anything alice typed\n") == "other"
    assert login_failure_reason(None) == "other"
    assert codes <= {c for c in codes if c.isidentifier()}
    assert decision_of("authorization_denied", {"effect": "<script>"}) == \
        ("authorization", "deny")
    assert decision_of("rate_limit_unavailable", {"outcome": "x" * 100}) == \
        ("rate_limit", "unavailable")
    assert decision_of("made_up", {}) == ("other", "other")


PAGE = Path(__file__).resolve().parents[1] / "docs" / "observability.md"


def page_blocks(language: str) -> list[str]:
    import re

    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_the_exposure_examples_work_verbatim(framework: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (toml,) = [b for b in page_blocks("toml") if b.startswith("# secure-mw.toml")]
    (tmp_path / "secure-mw.toml").write_text(toml, encoding="utf-8")
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="correct horse", groups=["admins"])
    (code,) = [b for b in page_blocks("python") if f"secure_mw.contrib.{framework}" in b]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "app", "__file__": str(tmp_path / "app.py")}
    exec(compile(code, "app.py", "exec"), namespace)
    server = uvicorn_server if framework == "fastapi" else wsgi_server
    with server(namespace["app"]) as base:
        scraped = httpx.get(base + "/metrics", follow_redirects=True)
        anonymous = httpx.get(base + "/elsewhere", headers={"Accept": "application/json"})
    assert scraped.status_code == 200
    assert "# TYPE secure_mw_decisions_total counter" in scraped.text
    assert anonymous.status_code == 401


def test_the_django_example_compiles() -> None:
    (code,) = [b for b in page_blocks("python") if "django" in b]
    compile(code, "urls.py", "exec")
