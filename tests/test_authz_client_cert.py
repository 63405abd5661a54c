"""The client_certificate criterion: the certificate a trusted proxy passed (URL-escaped PEM
in server.client_cert_header) or TLS presented, matched by fingerprint or SPKI hash — on real
servers in both flavours, and never from an untrusted peer's header."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secure_mw import ConfigError, Settings, asgi, wsgi
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.login import UsersFile
from tests.apps import FLAVOURS, asgi_inner, uvicorn_server, wsgi_inner, wsgi_server
from tests.pki import make_pki


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str, str]:
    """Two client certificates: (PEM a, fingerprint a, SPKI hash a, PEM b)."""
    a = make_pki(tmp_path_factory.mktemp("cert-a")).cert.read_text()
    b = make_pki(tmp_path_factory.mktemp("cert-b")).cert.read_text()
    cert = x509.load_pem_x509_certificate(a.encode())
    fingerprint = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    spki = base64.b64encode(hashlib.sha256(cert.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()).decode()
    return a, fingerprint, spki, b


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def serve(flavour: str, tmp_path: Path, trusted: list[str], rule: dict[str, Any]
          ) -> Any:
    users = UsersFile(tmp_path / "users.toml",
                      hasher=PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "local_users": {"file": str(users.path)},
        "server": {"trusted_proxies": trusted, "client_cert_header": "X-SSL-Client-Cert"},
        "access_control": {"default_policy": "deny", "rules": [
            {"resources": ["^/machine$"], "policy": "bypass"},
            {"resources": ["^/machine"], "allow": {"and": [{"client_certificate": rule}]}},
        ]},
    }, environ={})
    module = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    return server(module.protect(inner, settings, users=users))


@pytest.mark.parametrize("kind", ["fingerprint", "spki_hash"])
def test_certificate_from_a_trusted_proxy(flavour: str, tmp_path: Path, kind: str,
                                          certs: tuple[str, str, str, str]) -> None:
    pem_a, fingerprint, spki, pem_b = certs
    value = fingerprint if kind == "fingerprint" else spki
    headers = {"Accept": "application/json"}
    with serve(flavour, tmp_path, ["127.0.0.1/32"], {kind: value}) as base:
        good = httpx.get(base + "/machine/x",
                         headers={**headers, "X-SSL-Client-Cert": quote(pem_a, safe="")})
        assert good.status_code == 200
        other = httpx.get(base + "/machine/x",
                          headers={**headers, "X-SSL-Client-Cert": quote(pem_b, safe="")})
        assert other.status_code == 403
        assert httpx.get(base + "/machine/x", headers=headers).status_code == 403
        garbage = httpx.get(base + "/machine/x",
                            headers={**headers, "X-SSL-Client-Cert": "not a cert"})
        assert garbage.status_code == 403


def test_certificate_header_from_an_untrusted_peer_is_ignored(
        flavour: str, tmp_path: Path, certs: tuple[str, str, str, str]) -> None:
    pem_a, fingerprint, _, _ = certs
    with serve(flavour, tmp_path, [], {"fingerprint": fingerprint}) as base:
        forged = httpx.get(base + "/machine/x", headers={
            "Accept": "application/json", "X-SSL-Client-Cert": quote(pem_a, safe="")})
        assert forged.status_code == 403


def test_bad_client_certificate_criteria_are_config_errors() -> None:
    for bad in ({"fingerprint": "xyz"}, {"serial": "1"}, {}, "abc"):
        with pytest.raises(ConfigError, match="client_certificate"):
            from secure_mw.authz import AccessPolicy

            AccessPolicy.from_settings(Settings.from_mapping({"access_control": {"rules": [
                {"allow": {"and": [{"client_certificate": bad}]}}]}}, environ={})
                .access_control)
