"""[metrics] tracing on real servers, both flavours: one OpenTelemetry span per request,
an event per decision with attributes from the bounded sets, read back from
opentelemetry-sdk's in-memory exporter."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from tests.apps import FLAVOURS, asgi_inner, uvicorn_server, wsgi_inner, wsgi_server


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_one_span_per_request_with_an_event_per_decision(flavour: str, tmp_path: Path
                                                         ) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "local_users": {"file": str(tmp_path / "users.toml")},
        "metrics": {"tracing": True},
        "access_control": {"rules": [{"policy": "bypass"}]},
        "rate_limits": {"rules": [{"key": "ip", "limit": "1/minute", "paths": ["^/once"]}]},
    }, environ={})
    module = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(module.protect(inner, settings, tracer_provider=provider)) as base:
        assert httpx.get(base + "/once").status_code == 200
        assert httpx.get(base + "/once").status_code == 429
        assert httpx.get(base + "/x", headers={"Host": "evil.example"}).status_code == 400
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["secure_mw.request"] * 3
    assert [s.attributes["secure_mw.answered_by"] for s in spans] == \
        ["app", "secure_mw", "secure_mw"]
    assert [[(e.name, dict(e.attributes or {})) for e in s.events] for s in spans] == [
        [("authorization", {"secure_mw.layer": "authorization", "secure_mw.outcome": "allow"})],
        [("rate_limited", {"secure_mw.layer": "rate_limit", "secure_mw.outcome": "refused"})],
        [("host_refused", {"secure_mw.layer": "host", "secure_mw.outcome": "refused"})],
    ]


def test_an_exception_of_the_app_marks_the_span_without_its_message(tmp_path: Path) -> None:
    from opentelemetry.trace import StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "local_users": {"file": str(tmp_path / "users.toml")},
        "metrics": {"tracing": True}, "access_control": {"rules": [{"policy": "bypass"}]},
    }, environ={})

    def failing(environ: object, start_response: object) -> list[bytes]:
        raise RuntimeError("password=hunter2")

    app = wsgi.protect(failing, settings, tracer_provider=provider)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1", "wsgi.url_scheme": "http",
               "REMOTE_ADDR": "127.0.0.1", "QUERY_STRING": ""}
    with pytest.raises(RuntimeError):
        app(environ, lambda *args: None)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "RuntimeError"
    assert "hunter2" not in repr(span.to_json())
