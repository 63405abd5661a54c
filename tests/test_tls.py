"""The TLS policy (secure_mw.tls) on real servers: uvicorn through ``ssl_context_factory``,
gunicorn through its ``ssl_context`` hook, httpx and openssl s_client as clients."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_mw.crypto import KeyRing
from secure_mw.tls import TLS12_CIPHERS, client_context, server_context, ssl_context_factory
from tests.apps import uvicorn_server
from tests.servers import ServerProcess, find_program, free_port


@dataclass
class PKI:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
           issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
           server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), \
        ec.generate_private_key(ec.SECP256R1())
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), \
        ec.generate_private_key(ec.SECP256R1())
    ca = _write(d / "ca.pem", _issue("test CA", ca_key, "test CA", ca_key, ca=True))
    other = _write(d / "other-ca.pem", _issue("other CA", other_key, "other CA", other_key,
                                              ca=True))
    cert = _write(d / "server.pem", _issue("localhost", server_key, "test CA", ca_key,
                                           server=True), server_key)
    client = _write(d / "client.pem", _issue("alice", client_key, "test CA", ca_key),
                    client_key)
    return PKI(ca, cert, cert.with_suffix(".key"), client, client.with_suffix(".key"), other)


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello over tls"})


@pytest.fixture(scope="module")
def server(pki: PKI) -> Iterator[str]:
    """uvicorn with our policy, from its own certificate options."""
    with uvicorn_server(_hello, ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key),
                        ssl_context_factory=ssl_context_factory) as url:
        yield url.replace("http://", "https://")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _handshake(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return context.wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise


def test_httpx_with_the_client_policy_reaches_the_uvicorn_server(pki: PKI, server: str) -> None:
    with httpx.Client(verify=client_context(ca_file=pki.ca)) as client:
        response = client.get(server + "/")
    assert response.status_code == 200 and response.text == "hello over tls"


def test_a_certificate_nobody_vouches_for_is_refused(pki: PKI, server: str) -> None:
    with httpx.Client(verify=client_context(ca_file=pki.other_ca)) as client, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(server + "/")
    with httpx.Client(verify=client_context()) as client, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(server + "/")                    # the system store does not know it


def test_a_certificates_directory_adds_to_the_system_store(pki: PKI, server: str,
                                                            tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    directory.mkdir()
    shutil.copy(pki.ca, directory / "Our Internal CA.crt")     # any name, no c_rehash
    (directory / "README").write_text("not a certificate, and not read")
    context = client_context(ca_directory=directory)
    assert context.cert_store_stats()["x509_ca"] >= 1
    with httpx.Client(verify=context) as client:
        assert client.get(server + "/").status_code == 200
    (directory / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    with pytest.raises(ValueError, match=r"broken\.pem"):
        client_context(ca_directory=directory)
    with pytest.raises(ValueError, match="certificate directory"):
        client_context(ca_directory=tmp_path / "missing")


def test_the_host_name_is_always_checked(pki: PKI, server: str) -> None:
    context = client_context(ca_file=pki.ca)
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=5)
    with sock, pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        context.wrap_socket(sock, server_hostname="evil.example")


def test_tls_1_2_offers_only_aead_suites_with_forward_secrecy(pki: PKI, server: str) -> None:
    allowed = set(TLS12_CIPHERS.split(":"))
    context = client_context(ca_file=pki.ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with _handshake(_port(server), context) as tls:
        name, version, _bits = tls.cipher()  # type: ignore[misc]
        assert version == "TLSv1.2" and name == "ECDHE-ECDSA-AES256-GCM-SHA384"
    # A client offering only CBC suites (which OpenSSL would negotiate) gets no handshake.
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    weak.load_verify_locations(cafile=str(pki.ca))
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")
    assert not allowed & {c["name"] for c in weak.get_ciphers()}
    with pytest.raises(ssl.SSLError):
        _handshake(_port(server), weak).close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_versions_below_1_2_are_refused_by_the_server(pki: PKI, server: str) -> None:
    """The old client below does get TLS 1.1 from a server without the policy (checked by
    hand); ours refuses it."""
    context = server_context(pki.cert, pki.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        _handshake(_port(server), old).close()
    tls13 = client_context(ca_file=pki.ca)
    with _handshake(_port(server), tls13) as tls:
        assert tls.version() == "TLSv1.3"


@pytest.mark.external("openssl")
def test_openssl_sees_x25519_first(pki: PKI, server: str) -> None:
    openssl = find_program("openssl")
    out = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{_port(server)}", "-tls1_2",
         "-CAfile", str(pki.ca), "-servername", "localhost"],
        input=b"", capture_output=True, timeout=20, check=False).stdout.decode()
    assert "Server Temp Key: X25519" in out, out[-2000:]
    assert "Verify return code: 0 (ok)" in out


def test_mutual_tls_on_uvicorn(pki: PKI) -> None:
    with uvicorn_server(_hello, ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key),
                        ssl_ca_certs=str(pki.ca), ssl_cert_reqs=ssl.CERT_REQUIRED,
                        ssl_context_factory=ssl_context_factory) as url:
        url = url.replace("http://", "https://")
        with httpx.Client(verify=client_context(ca_file=pki.ca)) as anonymous, \
                pytest.raises((httpx.ReadError, httpx.ConnectError, httpx.RemoteProtocolError)):
            anonymous.get(url + "/")
        with httpx.Client(verify=client_context(ca_file=pki.ca, client_cert=pki.client_cert,
                                                client_key=pki.client_key)) as known:
            assert known.get(url + "/").text == "hello over tls"


def test_gunicorn_takes_the_policy_from_its_configuration_file(pki: PKI,
                                                               tmp_path: Path) -> None:
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("from secure_mw.tls import ssl_context_factory as ssl_context\n")
    app = tmp_path / "tls_wsgi_app.py"
    app.write_text("def app(environ, start_response):\n"
                   "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
                   "    return [b'hello from gunicorn']\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    args = [sys.executable, "-m", "gunicorn", "-c", str(conf), "-b", f"127.0.0.1:{port}",
            "--certfile", str(pki.cert), "--keyfile", str(pki.key), "tls_wsgi_app:app"]
    with ServerProcess(args, port=port, env=env, log=tmp_path / "gunicorn.log"):
        context = client_context(ca_file=pki.ca)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with httpx.Client(verify=context) as client:
            assert client.get(f"https://127.0.0.1:{port}/").text == "hello from gunicorn"
        with _handshake(port, context) as tls:
            assert tls.cipher()[0] in TLS12_CIPHERS.split(":")  # type: ignore[index]


def test_bad_inputs_get_a_precise_error(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.pem"):
        server_context(tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="needs client_ca"):
        server_context(pki.cert, pki.key, client_certs="required")
    with pytest.raises(ValueError, match="'none', 'optional' or 'required'"):
        server_context(pki.cert, pki.key, client_certs="yes")
    with pytest.raises(ValueError, match="client_key needs client_cert"):
        client_context(client_key=pki.client_key)
    with pytest.raises(ValueError, match="CA file"):
        client_context(ca_file=tmp_path / "nope.pem")

    class Config:
        ssl_certfile = None

    with pytest.raises(ValueError, match="ssl_certfile"):
        ssl_context_factory(Config())

    class Asks:
        ssl_certfile, ssl_keyfile, ssl_cert_reqs = str(pki.cert), str(pki.key), \
            ssl.CERT_REQUIRED

    with pytest.raises(ValueError, match="no CA"):
        ssl_context_factory(Asks())


# -- outbound calls (secure_mw.outbound) and server.certificates_directory -------------------


async def _discovery(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"issuer": "https://localhost"}'})


@pytest.fixture()
def fresh_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outbound trust as at process start (it is process-wide)."""
    from secure_mw import outbound

    monkeypatch.setattr(outbound, "_trust", outbound._Trust())


@pytest.mark.usefixtures("fresh_trust")
def test_outbound_calls_trust_a_private_ca_only_once_configured(pki: PKI,
                                                                tmp_path: Path) -> None:
    from secure_mw import Settings, asgi, outbound
    from secure_mw.crypto import KeyRing
    from secure_mw.errors import ConfigError, StoreUnavailable

    with uvicorn_server(_discovery, ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key),
                        ssl_context_factory=ssl_context_factory) as url:
        url = url.replace("http://", "https://") + "/.well-known/openid-configuration"
        with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1"):
            outbound.get_json(url)                   # nobody vouches for its certificate
        certs = tmp_path / "certs"
        certs.mkdir()
        shutil.copy(pki.ca, certs / "internal-ca.pem")
        with pytest.raises(ConfigError, match=r"server\.certificates_directory"):
            Settings.from_mapping({"server": {"certificates_directory":
                                              str(tmp_path / "none")}}, environ={})
        settings = Settings.from_mapping({
            "server": {"certificates_directory": str(certs)},
            "keys": {"encryption_keys": [KeyRing.new_key_text()]}}, environ={})
        asgi.protect(_hello, settings)               # start-up makes outbound trust it
        data, _headers = outbound.get_json(url)
        assert data == {"issuer": "https://localhost"}


def test_mutual_tls_on_gunicorn_feeds_the_client_certificate_criterion(
        pki: PKI, tmp_path: Path) -> None:
    """gunicorn terminates TLS and asks for client certificates; the access rule's
    client_certificate criterion sees the one the client presented (no proxy header)."""
    import hashlib

    fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pki.client_cert.read_text())
                                 ).hexdigest()
    config = tmp_path / "secure-mw.toml"
    config.write_text(
        f'[keys]\nencryption_keys = ["{KeyRing.new_key_text()}"]\n'
        f'[local_users]\nfile = "{tmp_path / "users.toml"}"\n'
        '[access_control]\ndefault_policy = "deny"\n'
        '[[access_control.rules]]\nresources = ["^/machine"]\n'
        f'allow = {{and = [{{client_certificate = {{fingerprint = "{fingerprint}"}}}}]}}\n')
    config.chmod(0o600)
    (tmp_path / "gunicorn.conf.py").write_text(
        "from secure_mw.tls import ssl_context_factory as ssl_context\n")
    (tmp_path / "mtls_app.py").write_text(
        "from secure_mw import Settings, wsgi\n"
        "def inner(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'machine ok']\n"
        "app = wsgi.protect(inner, Settings.from_environment())\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update(SECURE_MW_CONFIG=str(config),
               PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    args = [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "gunicorn.conf.py"),
            "-b", f"127.0.0.1:{port}", "--certfile", str(pki.cert), "--keyfile", str(pki.key),
            "--ca-certs", str(pki.ca), "--cert-reqs", "1", "mtls_app:app"]
    url = f"https://127.0.0.1:{port}/machine"
    with ServerProcess(args, port=port, env=env, log=tmp_path / "gunicorn.log"):
        with httpx.Client(verify=client_context(ca_file=pki.ca, client_cert=pki.client_cert,
                                                client_key=pki.client_key)) as machine:
            known = machine.get(url, headers={"Accept": "application/json"})
            assert known.status_code == 200 and known.text == "machine ok"
        with httpx.Client(verify=client_context(ca_file=pki.ca)) as anonymous:
            refused = anonymous.get(url, headers={"Accept": "application/json"})
            assert refused.status_code in (401, 403)
