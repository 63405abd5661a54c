"""The framework-free view of one request, and the replies the cores hand back.

Each flavour builds one :class:`RequestView` per request (:meth:`RequestView.from_scope` for
ASGI, :meth:`RequestView.from_environ` for WSGI) and writes a :class:`Reply` back; the cores
in between never see a framework object.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["Reply", "RequestView", "html_reply", "json_reply", "parse_cookies", "redirect_reply",
           "too_large_reply"]

# Bounds on what a client may send us before we parse it (the server has its own limits).
MAX_COOKIE_HEADER = 40 * 1024   # room for MAX_CHUNKS session cookies and more
MAX_QUERY = 8 * 1024
MAX_FORM_BODY = 16 * 1024


CLIENT_CERT_KEY = "secure_mw.client_cert"


def _socket_peer_cert(sock: object) -> bytes | None:
    """The client certificate (DER) of a TLS socket the server terminated (mutual TLS), or
    None (no socket, not TLS, no certificate)."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        der = getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    return der if isinstance(der, bytes) and der else None


def pem_to_der(pem: str) -> bytes | None:
    """The DER bytes of a PEM certificate, or ``None`` if it is not one."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii")).public_bytes(Encoding.DER)
    except (ValueError, UnicodeEncodeError, TypeError):
        return None


def proxy_client_cert(value: str | None) -> bytes | None:
    """A certificate a trusted proxy passed in a header: URL-escaped PEM (nginx's
    ``$ssl_client_escaped_cert``) or plain PEM; ``None`` when absent or not a certificate."""
    if not value or len(value) > 16 * 1024:
        return None
    from urllib.parse import unquote

    return pem_to_der(unquote(value) if "%" in value else value)


def parse_cookies(header: str) -> dict[str, str]:
    """Cookies of a ``Cookie`` header; the first of several same-named cookies wins.

    Browsers send the most specific cookie first; taking the first keeps a cookie planted for
    a parent domain from shadowing the host's own. Malformed pairs are skipped, never raised.
    """
    cookies: dict[str, str] = {}
    if not header or len(header) > MAX_COOKIE_HEADER:
        return cookies
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        if not sep:
            continue
        name = name.strip()
        if name and name not in cookies:
            value = value.strip()
            if value[:1] == '"' and len(value) >= 2 and value[-1] == '"':
                value = value[1:-1]
            cookies[name] = value
    return cookies


_ROUTE_PATH: list[Callable[[str], str]] = []
# environ key -> header name ("" for a key that is not a header): the same few dozen keys
# come with every request, so each is spelled out once.
_ENVIRON_NAMES: dict[str, str] = {}
# The keys of _ENVIRON_NAMES that are headers (a name, not ""): a request whose keys are all
# known finds its headers among these, in the environ's order, with no per-key Python loop.
_ENVIRON_HEADERS: set[str] = set()
_MAX_ENVIRON_NAMES = 1024
_MAX_CACHED_NAME = 64      # longer names are decoded each time, never kept
# The same for ASGI's raw header names (bytes, lower-cased by most servers, not all).
_SCOPE_NAMES: dict[bytes, str] = {}


def _scope_name(raw: bytes) -> str:
    name = raw.decode("latin-1").lower()
    if len(raw) <= _MAX_CACHED_NAME and len(_SCOPE_NAMES) < _MAX_ENVIRON_NAMES:
        _SCOPE_NAMES[bytes(raw)] = name
    return name


def _routed(path: str) -> str:
    """:func:`secure_mw.authz.paths.route_path`, imported on first use (not per request)."""
    if not _ROUTE_PATH:
        from secure_mw.authz.paths import route_path

        _ROUTE_PATH.append(route_path)
    return _ROUTE_PATH[0](path)


#: Request headers no core reads on the way to an allowed request (they matter only to
#: refusals, to our own endpoints or to the app): a request with these, ``Host`` and
#: ``Cookie`` alone may take the lane (:mod:`secure_mw.asgi._lane`).
INERT_HEADERS = frozenset({
    b"accept", b"accept-encoding", b"accept-language", b"cache-control", b"connection",
    b"content-length", b"content-type", b"dnt", b"if-modified-since", b"if-none-match",
    b"origin", b"pragma", b"priority", b"referer", b"sec-ch-ua", b"sec-ch-ua-mobile",
    b"sec-ch-ua-platform", b"sec-fetch-dest", b"sec-fetch-mode", b"sec-fetch-site",
    b"sec-fetch-user", b"te", b"upgrade-insecure-requests", b"user-agent",
    b"x-requested-with",
})
#: Forwarding headers: admitted when no trusted proxy's are used (an untrusted peer's are
#: ignored by the chain too); a request they change goes to the chain.
FORWARDING_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-host",
                                b"x-forwarded-proto"})


def environ_path(raw_path: str) -> str:
    """The path of a WSGI request (``SCRIPT_NAME + PATH_INFO``), decoded: PEP 3333 passes
    its bytes decoded as latin-1; a path that is not UTF-8 (or was decoded already) stays
    as it is."""
    try:
        return raw_path.encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return raw_path


def server_of(listening: Any) -> str:
    """:attr:`RequestView.server` from an ASGI scope's ``server``: the port of (host, port),
    or the path of a Unix socket's (path, None)."""
    if not listening:
        return ""
    return str(listening[1]) if listening[1] is not None else str(listening[0])


@dataclass(slots=True, eq=False)
class RequestView:
    """What the cores need to know about a request."""

    method: str
    scheme: str
    host: str
    path: str
    query_string: str
    headers: dict[str, str] = field(repr=False)     # Cookie and Authorization are in here
    client: str
    websocket: bool = False
    body: bytes = b""   # read by the flavour only for POSTs to our own endpoints
    client_cert: bytes | None = None   # the client certificate (DER): TLS or a trusted proxy
    server: str = ""    # the listening port (or socket path) that took the request: listening()
    _cookies: dict[str, str] | None = field(default=None, repr=False)
    _route: str | None = field(default=None, repr=False)
    # The connection's socket, when the server hands it over (gunicorn): listening() reads
    # its port once, if anything asks.
    _socket: Any = field(default=None, repr=False)

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any]) -> RequestView:
        raw_headers = scope.get("headers") or ()
        if raw_headers.__class__ is not list and not isinstance(raw_headers, list | tuple):
            raw_headers = list(raw_headers)     # ASGI allows any iterable
        known = _SCOPE_NAMES.get
        headers = {known(name) or _scope_name(name): value.decode("latin-1")
                   for name, value in raw_headers}
        if len(headers) != len(raw_headers):   # a repeated header: fold the values
            headers = {}
            for raw_name, raw_value in raw_headers:
                name = raw_name.decode("latin-1").lower()
                value = raw_value.decode("latin-1")
                if name in headers:
                    headers[name] += ("; " if name == "cookie" else ", ") + value
                else:
                    headers[name] = value
        get = scope.get
        websocket = get("type") == "websocket"
        scheme = get("scheme") or ("ws" if websocket else "http")
        if scheme in ("ws", "wss"):
            scheme = "https" if scheme == "wss" else "http"
        host = headers.get("host", "")
        listening = get("server")
        if not host and listening:
            host = f"{listening[0]}:{listening[1]}" if listening[1] is not None \
                else str(listening[0])
        client = get("client")
        cert = get(CLIENT_CERT_KEY)
        if cert is None:
            extensions = get("extensions")
            chain = extensions and (extensions.get("tls") or {}).get("client_cert_chain")
            if chain:
                cert = pem_to_der(chain[0])
        return cls(
            "GET" if websocket else str(get("method", "GET")).upper(),
            scheme,
            host.lower(),
            get("path") or "/",
            (get("query_string") or b"").decode("latin-1"),
            headers,
            str(client[0]) if client else "",
            websocket,
            b"",
            cert if isinstance(cert, bytes) else None,
            server_of(listening),
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any]) -> RequestView:
        headers: dict[str, str] = {}
        names = _ENVIRON_NAMES
        if environ.keys() <= names.keys():     # every key seen before: the usual request
            for key in filter(_ENVIRON_HEADERS.__contains__, environ):
                headers[names[key]] = environ[key]
        else:
            for key, value in environ.items():
                name = names.get(key)
                if name is None:
                    name = key[5:].replace("_", "-").lower() if key.startswith("HTTP_") else ""
                    if len(key) <= _MAX_CACHED_NAME and len(names) < _MAX_ENVIRON_NAMES:
                        # A client invents names: few, and short, kept. The header set first:
                        # another thread that finds the key in names finds it there too.
                        if name:
                            _ENVIRON_HEADERS.add(key)
                        names[key] = name
                if name:
                    headers[name] = value
        if "CONTENT_TYPE" in environ:
            headers["content-type"] = environ["CONTENT_TYPE"]
        if "CONTENT_LENGTH" in environ:
            headers["content-length"] = environ["CONTENT_LENGTH"]
        host = headers.get("host") or (
            f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}")
        path = environ_path(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
        cert = environ.get(CLIENT_CERT_KEY)
        if cert is None and environ.get("SSL_CLIENT_CERT"):   # mod_wsgi and the like
            cert = pem_to_der(str(environ["SSL_CLIENT_CERT"]))
        if cert is None and environ.get("wsgi.url_scheme") == "https":
            cert = _socket_peer_cert(environ.get("gunicorn.socket"))     # gunicorn's TLS
        return cls(
            server=str(environ.get("SERVER_PORT", "")),
            _socket=environ.get("gunicorn.socket"),
            method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
            scheme=str(environ.get("wsgi.url_scheme", "http")),
            host=host.lower(),
            path=path or "/",
            query_string=str(environ.get("QUERY_STRING", "")),
            headers=headers,
            client=str(environ.get("REMOTE_ADDR", "")),
            client_cert=cert if isinstance(cert, bytes) else None,
        )

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get("cookie", ""))
        return self._cookies

    def listener(self) -> str | Callable[[], str]:
        """The listening address (:attr:`server`), or where the server handed over the
        connection's socket, :meth:`listening`, to read it only if needed."""
        return self.server if self._socket is None else self.listening

    def listening(self) -> str:
        """The port (or socket path) that took the request: read from the connection where
        the server hands it over (gunicorn derives ``SERVER_PORT`` from the ``Host`` header),
        on first use only — a system call, which under a threaded server also lets the
        other threads run — else :attr:`server`."""
        sock = self._socket
        if sock is not None:
            self._socket = None
            self.server = _socket_port(sock) or self.server
        return self.server

    @property
    def route_path(self) -> str:
        """The normalized path guards match on (:func:`secure_mw.authz.paths.route_path`):
        ``//login`` and ``/x/../login`` are ``/login`` to every guard, as to the app."""
        if self._route is None:
            self._route = _routed(self.path)
        return self._route

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}"

    def query(self) -> dict[str, list[str]]:
        """The query parameters (values in order); an overlong query gives none."""
        params: dict[str, list[str]] = {}
        if len(self.query_string) > MAX_QUERY:
            return params
        for name, value in parse_qsl(self.query_string, keep_blank_values=True,
                                     max_num_fields=64, errors="replace") \
                if _few_fields(self.query_string) else ():
            params.setdefault(name, []).append(value)
        return params

    def form(self, *, max_fields: int = 32) -> dict[str, str]:
        """The fields of an ``application/x-www-form-urlencoded`` body (read by the flavour
        for secure_mw's own endpoints). A field given twice reads as ``""``; anything else
        amiss (another type, not UTF-8, too many fields) gives no fields."""
        content_type = self.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return {}
        try:
            pairs = parse_qsl(self.body[:MAX_FORM_BODY].decode("utf-8"),
                              max_num_fields=max_fields)
        except (UnicodeDecodeError, ValueError):
            return {}
        fields: dict[str, str] = {}
        for key, value in pairs:
            fields[key] = "" if key in fields else value
        return fields

    @property
    def wants_html(self) -> bool:
        """A browser navigation (not an API call, XHR or fetch)."""
        if self.method not in ("GET", "HEAD") or self.websocket:
            return False
        if self.headers.get("x-requested-with", "").lower() == "xmlhttprequest":
            return False
        mode = self.headers.get("sec-fetch-mode")
        if mode is not None and mode != "navigate":
            return False
        return "text/html" in self.headers.get("accept", "")


def _socket_port(sock: Any) -> str:
    """The local port (or socket path) of a connection's socket; "" when it has none."""
    try:
        local = sock.getsockname()
    except (OSError, AttributeError):
        return ""
    if isinstance(local, tuple) and len(local) >= 2:
        return str(local[1])
    return local if isinstance(local, str) else ""


def _few_fields(query: str) -> bool:
    return query.count("&") + query.count(";") < 64


@dataclass(slots=True)
class Reply:
    """A complete response produced by a core (a page, a redirect, a refusal)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def with_headers(self, extra: Iterable[tuple[str, str]]) -> Reply:
        return Reply(self.status, [*self.headers, *extra], self.body)


_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}"
    "main{max-width:32rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:8px;"
    "box-shadow:0 1px 4px rgba(0,0,0,.12)}h1{font-size:1.4rem;margin-top:0}"
    "button,a.button{font:inherit;padding:.5rem 1.2rem;border:0;border-radius:4px;"
    "background:#2556c4;color:#fff;cursor:pointer;text-decoration:none}"
    "button:focus,a:focus{outline:3px solid #f5a623;outline-offset:2px}"
    "code{background:#eef0f4;padding:0 .25rem;border-radius:3px}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
PAGE_CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'")
_NO_STORE = [("cache-control", "no-store"), ("pragma", "no-cache")]


def html_reply(status: int, title: str, message: str, *, body_html: str = "",
               headers: Iterable[tuple[str, str]] = ()) -> Reply:
    """A small self-contained page; ``title`` and ``message`` are escaped, ``body_html`` not."""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
        f"{body_html}</main></body></html>"
    ).encode()
    return Reply(status, [
        ("content-type", "text/html; charset=utf-8"),
        ("content-security-policy", PAGE_CSP),
        ("x-content-type-options", "nosniff"),
        *_NO_STORE,
        *headers,
    ], page)


def too_large_reply(view: RequestView) -> Reply:
    """413 for a body over the limit: a page for a browser's form (its ``Accept`` names
    HTML), JSON for a JSON body, an API client or a provider's server-to-server call."""
    kind = view.headers.get("content-type", "").partition(";")[0].strip().lower()
    sent_json = kind == "application/json" or kind.endswith("+json")
    if not sent_json and "text/html" in view.headers.get("accept", ""):
        return html_reply(413, "Too large", "The form is too large.")
    return json_reply(413, {"error": "too_large",
                            "error_description": "the request body is too large"})


def json_reply(status: int, data: Any, *, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=True).encode()
    return Reply(status, [("content-type", "application/json"),
                          ("x-content-type-options", "nosniff"), *_NO_STORE, *headers], body)


def redirect_reply(location: str, *, status: int = 302,
                   headers: Iterable[tuple[str, str]] = ()) -> Reply:
    return Reply(status, [("location", location), *_NO_STORE, *headers])
