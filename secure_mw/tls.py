"""The TLS policy: :class:`ssl.SSLContext` objects for the server in front of a protected app
(uvicorn, gunicorn) and for outbound calls (httpx), with Pomerium's policy.

* TLS 1.2 or 1.3 only; compression and renegotiation off.
* TLS 1.2 cipher suites, in this order: ECDHE with ECDSA, then with RSA keys; AES-256-GCM,
  AES-128-GCM, ChaCha20-Poly1305 (:data:`TLS12_CIPHERS`). TLS 1.3's suites are OpenSSL's
  (AES-256-GCM, ChaCha20-Poly1305, AES-128-GCM: Python offers no way to choose them); key
  exchange groups are OpenSSL's default order (X25519, P-256, X448, P-521, P-384).
* Outbound: certificates and host names always verified, against the system's store plus,
  optionally, every certificate of a directory (``ca_directory``, like Authelia's
  ``certificates_directory``) or a CA file; an optional client certificate (mTLS).
* Server: an optional CA for client certificates, ``"optional"`` or ``"required"``.

``ssl_context_factory`` plugs the server policy into uvicorn (``ssl_context_factory=``) and
gunicorn (``ssl_context`` in its configuration file); see docs/tls.md.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

__all__ = ["TLS12_CIPHERS", "client_context", "server_context", "ssl_context_factory",
           "trust_directory"]

#: OpenSSL names of the TLS 1.2 cipher suites offered, in order of preference.
TLS12_CIPHERS: Final = ":".join((
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
))
_CERT_SUFFIXES: Final = (".pem", ".crt", ".cer")


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return context


def trust_directory(context: ssl.SSLContext, directory: str | Path) -> int:
    """Trust every certificate file (``.pem``, ``.crt``, ``.cer``) of ``directory``; how
    many files were loaded. A directory that cannot be read, or a file that is not a
    certificate, raises ``ValueError`` naming it."""
    path = Path(directory)
    try:
        entries = sorted(p for p in path.iterdir()
                         if p.is_file() and p.suffix.lower() in _CERT_SUFFIXES)
    except OSError as exc:
        raise ValueError(f"certificate directory {str(path)!r}: {exc.strerror}") from None
    for entry in entries:
        try:
            context.load_verify_locations(cafile=str(entry))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"{str(entry)!r} is not a PEM certificate: {exc}") from None
    return len(entries)


def client_context(*, ca_file: str | Path | None = None,
                   ca_directory: str | Path | None = None,
                   client_cert: str | Path | None = None, client_key: str | Path | None = None,
                   system_store: bool = True) -> ssl.SSLContext:
    """A context for outbound connections (``httpx.Client(verify=client_context())``):
    the policy above, host names and certificates verified against the system's store and
    certifi's, as httpx trusts by default (unless ``system_store`` is False), plus
    ``ca_file`` and the certificates of ``ca_directory``; ``client_cert`` (and
    ``client_key``, if not in the same file) for mutual TLS. ``ValueError`` names a file
    or directory that cannot be used."""
    if system_store:
        context = ssl.create_default_context()
        try:                       # httpx's own default trust: certifi's bundle
            import certifi
        except ImportError:        # pragma: no cover - httpx depends on certifi
            pass
        else:
            context.load_verify_locations(cafile=certifi.where())
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    _harden(context)
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"CA file {str(ca_file)!r} cannot be used: {exc}") from None
    if ca_directory is not None:
        trust_directory(context, ca_directory)
    if client_cert is not None:
        _load_chain(context, client_cert, client_key)
    elif client_key is not None:
        raise ValueError("client_key needs client_cert")
    return context


def server_context(certfile: str | Path, keyfile: str | Path | None = None, *,
                   client_ca: str | Path | None = None,
                   client_certs: str = "none") -> ssl.SSLContext:
    """A context for a TLS server: the policy above, the certificate chain ``certfile``
    (and its key ``keyfile``, if not in the same file); with ``client_ca``, client
    certificates signed by it are asked for (``client_certs``: ``"optional"`` or
    ``"required"``). ``ValueError`` names what cannot be used."""
    if client_certs not in ("none", "optional", "required"):
        raise ValueError(f"client_certs is 'none', 'optional' or 'required', not "
                         f"{client_certs!r}")
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.options |= ssl.OP_SINGLE_ECDH_USE
    _load_chain(context, certfile, keyfile)
    if client_certs != "none":
        if client_ca is None:
            raise ValueError(f"client_certs = {client_certs!r} needs client_ca")
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"client CA file {str(client_ca)!r} cannot be used: {exc}") \
                from None
        context.verify_mode = ssl.CERT_REQUIRED if client_certs == "required" \
            else ssl.CERT_OPTIONAL
    return context


def _load_chain(context: ssl.SSLContext, certfile: str | Path,
                keyfile: str | Path | None) -> None:
    try:
        context.load_cert_chain(str(certfile), None if keyfile is None else str(keyfile))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"certificate {str(certfile)!r} (key "
                         f"{str(keyfile or certfile)!r}) cannot be used: {exc}") from None


def ssl_context_factory(config: Any, default: Callable[[], ssl.SSLContext] | None = None
                        ) -> ssl.SSLContext:
    """:func:`server_context` from a server's own TLS options — uvicorn's ``Config``
    (``ssl_certfile``, ``ssl_keyfile``, ``ssl_ca_certs``, ``ssl_cert_reqs``) or gunicorn's
    (``certfile``, ``keyfile``, ``ca_certs``, ``cert_reqs``) — so the server's certificate
    options keep working and the policy is ours. ``default`` (the server's own factory) is
    not used."""
    cert = _first(config, ("ssl_certfile", "certfile"))
    if not cert:
        raise ValueError("a TLS certificate is needed: uvicorn's ssl_certfile "
                         "(--ssl-certfile) or gunicorn's certfile (--certfile)")
    key = _first(config, ("ssl_keyfile", "keyfile"))
    ca = _first(config, ("ssl_ca_certs", "ca_certs"))
    reqs = _first(config, ("ssl_cert_reqs", "cert_reqs")) or ssl.CERT_NONE
    wanted = {int(ssl.CERT_NONE): "none", int(ssl.CERT_OPTIONAL): "optional"}.get(
        int(reqs), "required")
    if wanted != "none" and not ca:
        raise ValueError("client certificates are asked for (ssl_cert_reqs / cert_reqs) "
                         "but no CA is given to check them (ssl_ca_certs / ca_certs)")
    return server_context(cert, key or None, client_ca=ca or None, client_certs=wanted)


def _first(config: Any, names: Iterable[str]) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return value
    return None
