"""The client address behind trusted proxies: a table of chains, the parser's corners, and
properties (never raises; an untrusted peer is always the client; nothing a client writes
left of its own address changes the answer)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_mw.guards.clientaddr import MAX_FORWARDING_HEADER, ClientInfo, TrustedProxies

TRUSTED = ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8", "203.0.113.7"]
PROXIES = TrustedProxies(TRUSTED, header="auto")    # reads both syntaxes
SCHEME, HOST = "http", "app.internal:8000"

EDGE = "10.0.0.5"           # a trusted proxy
CDN = "203.0.113.7"         # a trusted single address
CLIENT = "198.51.100.9"     # an untrusted client
FORGED = "6.6.6.6"          # what a client would like us to believe

XFF, XFP, XFH, FWD = "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"

# (id, peer, headers, ip, scheme, host, via_proxy); scheme/host None = the request's own.
CASES: list[tuple[str, str, dict[str, str], str, str | None, str | None, bool]] = [
    # --- an untrusted peer: headers ignored entirely ----------------------------------------
    ("untrusted-no-headers", CLIENT, {}, CLIENT, None, None, False),
    ("untrusted-forged-xff", CLIENT, {XFF: FORGED}, CLIENT, None, None, False),
    ("untrusted-forged-forwarded", CLIENT, {FWD: f"for={FORGED};proto=https;host=evil.example"},
     CLIENT, None, None, False),
    ("untrusted-forged-proto", CLIENT, {XFF: FORGED, XFP: "https"}, CLIENT, None, None, False),
    ("untrusted-forged-host", CLIENT, {XFF: FORGED, XFH: "evil.example"}, CLIENT, None, None,
     False),
    ("untrusted-forged-trusted-chain", CLIENT, {XFF: f"{EDGE}, {CDN}"}, CLIENT, None, None,
     False),
    ("untrusted-ipv6", "2001:db8::77", {XFF: FORGED}, "2001:db8::77", None, None, False),
    ("untrusted-mapped", "::ffff:198.51.100.9", {XFF: FORGED}, CLIENT, None, None, False),
    ("untrusted-empty-peer", "", {XFF: FORGED}, "", None, None, False),
    ("untrusted-unix-peer", "unix:/run/app.sock", {XFF: FORGED}, "unix:/run/app.sock", None,
     None, False),
    ("untrusted-garbage-peer", "not an ip", {FWD: f"for={FORGED}"}, "not an ip", None, None,
     False),
    # --- a trusted peer without forwarding headers ------------------------------------------
    ("trusted-no-headers", EDGE, {}, EDGE, None, None, False),
    ("trusted-empty-xff", EDGE, {XFF: "  "}, EDGE, None, None, False),
    ("trusted-only-proto", EDGE, {XFP: "https"}, EDGE, None, None, False),
    ("trusted-mapped-peer", "::ffff:10.0.0.5", {XFF: CLIENT}, CLIENT, None, None, True),
    ("trusted-ipv6-peer", "fd00::1", {XFF: CLIENT}, CLIENT, None, None, True),
    ("trusted-single-address-peer", CDN, {XFF: CLIENT}, CLIENT, None, None, True),
    ("not-quite-the-single-address", "203.0.113.8", {XFF: FORGED}, "203.0.113.8", None, None,
     False),
    # --- X-Forwarded-For chains ------------------------------------------------------------
    ("xff-one", EDGE, {XFF: CLIENT}, CLIENT, None, None, True),
    ("xff-client-then-proxy", EDGE, {XFF: f"{CLIENT}, {CDN}"}, CLIENT, None, None, True),
    ("xff-forged-left-ignored", EDGE, {XFF: f"{FORGED}, {CLIENT}, {EDGE}"}, CLIENT, None, None,
     True),
    ("xff-forged-private-left", EDGE, {XFF: f"10.9.9.9, {CLIENT}"}, CLIENT, None, None, True),
    ("xff-all-trusted-leftmost", EDGE, {XFF: f"192.168.1.20, {CDN}, 10.0.0.6"},
     "192.168.1.20", None, None, True),
    ("xff-no-spaces", EDGE, {XFF: f"{FORGED},{CLIENT},{EDGE}"}, CLIENT, None, None, True),
    ("xff-garbage-rightmost", EDGE, {XFF: f"{CLIENT}, garbage"}, "", None, None, True),
    ("xff-garbage-after-trusted", EDGE, {XFF: f"{FORGED}, garbage, {CDN}"}, "", None, None,
     True),
    ("xff-garbage-left-of-client", EDGE, {XFF: f"garbage, {CLIENT}, {EDGE}"}, CLIENT, None,
     None, True),
    ("xff-unknown", EDGE, {XFF: f"{FORGED}, unknown"}, "", None, None, True),
    ("xff-empty-item", EDGE, {XFF: f"{FORGED},,{EDGE}"}, "", None, None, True),
    ("xff-trailing-comma", EDGE, {XFF: f"{CLIENT},"}, "", None, None, True),
    ("xff-ipv4-port", EDGE, {XFF: f"{CLIENT}:51234"}, CLIENT, None, None, True),
    ("xff-ipv4-bad-port", EDGE, {XFF: f"{CLIENT}:99999"}, "", None, None, True),
    ("xff-ipv6-bracket-port", EDGE, {XFF: "[2001:db8::9]:443"}, "2001:db8::9", None, None,
     True),
    ("xff-ipv6-bracket", EDGE, {XFF: "[2001:db8::9]"}, "2001:db8::9", None, None, True),
    ("xff-ipv6-bare", EDGE, {XFF: "2001:DB8:0::9"}, "2001:db8::9", None, None, True),
    ("xff-ipv4-in-brackets", EDGE, {XFF: f"[{CLIENT}]"}, "", None, None, True),
    ("xff-mapped-client", EDGE, {XFF: "::ffff:198.51.100.9"}, CLIENT, None, None, True),
    ("xff-mapped-trusted-hop", EDGE, {XFF: f"{CLIENT}, ::ffff:10.0.0.3"}, CLIENT, None, None,
     True),
    ("xff-leading-zeros", EDGE, {XFF: "010.0.0.1"}, "", None, None, True),
    ("xff-space-separated", EDGE, {XFF: f"{FORGED} {CLIENT}"}, "", None, None, True),
    ("xff-joined-lines", EDGE, {XFF: f"{FORGED}, {CLIENT}, {CDN}, 10.0.0.6"}, CLIENT, None,
     None, True),
    # --- X-Forwarded-Proto / -Host ---------------------------------------------------------
    ("xfp-https", EDGE, {XFF: CLIENT, XFP: "https"}, CLIENT, "https", None, True),
    ("xfp-case-and-space", EDGE, {XFF: CLIENT, XFP: " HTTPS "}, CLIENT, "https", None, True),
    ("xfp-not-a-web-scheme", EDGE, {XFF: CLIENT, XFP: "javascript"}, CLIENT, None, None, True),
    ("xfp-wss-refused", EDGE, {XFF: CLIENT, XFP: "wss"}, CLIENT, None, None, True),
    ("xfp-aligned-client-item", EDGE, {XFF: f"{CLIENT}, {CDN}", XFP: "https, http"}, CLIENT,
     "https", None, True),
    ("xfp-aligned-forged-ignored", EDGE, {XFF: f"{FORGED}, {CLIENT}", XFP: "https, http"},
     CLIENT, "http", None, True),
    ("xfp-aligned-falls-right", EDGE, {XFF: f"{CLIENT}, {CDN}", XFP: "bogus, https"}, CLIENT,
     "https", None, True),
    ("xfp-misaligned-rightmost", EDGE, {XFF: CLIENT, XFP: "https, http"}, CLIENT, "http",
     None, True),
    ("xfp-misaligned-rightmost-2", EDGE, {XFF: f"{CLIENT}, {CDN}", XFP: "https"}, CLIENT,
     "https", None, True),
    ("xfh-host", EDGE, {XFF: CLIENT, XFH: "www.example.com"}, CLIENT, None, "www.example.com",
     True),
    ("xfh-host-port", EDGE, {XFF: CLIENT, XFH: "www.example.com:8443"}, CLIENT, None,
     "www.example.com:8443", True),
    ("xfh-lowercased", EDGE, {XFF: CLIENT, XFH: "WWW.Example.COM"}, CLIENT, None,
     "www.example.com", True),
    ("xfh-ipv6", EDGE, {XFF: CLIENT, XFH: "[2001:db8::1]:8443"}, CLIENT, None,
     "[2001:db8::1]:8443", True),
    ("xfh-slash-ignored", EDGE, {XFF: CLIENT, XFH: "evil.example/path"}, CLIENT, None, None,
     True),
    ("xfh-at-ignored", EDGE, {XFF: CLIENT, XFH: "user@evil.example"}, CLIENT, None, None,
     True),
    ("xfh-space-ignored", EDGE, {XFF: CLIENT, XFH: "evil example"}, CLIENT, None, None, True),
    ("xfh-empty-ignored", EDGE, {XFF: CLIENT, XFH: ""}, CLIENT, None, None, True),
    ("xfh-bad-port-ignored", EDGE, {XFF: CLIENT, XFH: "a.example:http"}, CLIENT, None, None,
     True),
    ("xfh-port-out-of-range", EDGE, {XFF: CLIENT, XFH: "a.example:65536"}, CLIENT, None, None,
     True),
    ("xff-overlong-hop", EDGE, {XFF: "1" * 200 + f", {CDN}"}, "", None, None, True),
    # --- Forwarded (RFC 7239) ---------------------------------------------------------------
    ("fwd-one", EDGE, {FWD: f"for={CLIENT}"}, CLIENT, None, None, True),
    ("fwd-quoted-v4", EDGE, {FWD: f'for="{CLIENT}"'}, CLIENT, None, None, True),
    ("fwd-quoted-v4-port", EDGE, {FWD: f'for="{CLIENT}:4711"'}, CLIENT, None, None, True),
    ("fwd-quoted-v6-port", EDGE, {FWD: 'for="[2001:db8:cafe::17]:4711"'}, "2001:db8:cafe::17",
     None, None, True),
    ("fwd-quoted-v6", EDGE, {FWD: 'for="[2001:db8:cafe::17]"'}, "2001:db8:cafe::17", None,
     None, True),
    ("fwd-unquoted-v6-lenient", EDGE, {FWD: "for=[2001:db8::1]"}, "2001:db8::1", None, None,
     True),
    ("fwd-v4-in-brackets", EDGE, {FWD: f'for="[{CLIENT}]"'}, "", None, None, True),
    ("fwd-obfuscated-port", EDGE, {FWD: f'for="{CLIENT}:_p1"'}, CLIENT, None, None, True),
    ("fwd-mixed-case-params", EDGE, {FWD: f"For={CLIENT};PROTO=HTTPS;Host=WWW.Example.com"},
     CLIENT, "https", "www.example.com", True),
    ("fwd-chain", EDGE, {FWD: f"for={FORGED}, for={CLIENT};proto=https, for={CDN}"}, CLIENT,
     "https", None, True),
    ("fwd-all-trusted-leftmost", EDGE, {FWD: "for=10.1.2.3, for=192.168.0.1"}, "10.1.2.3",
     None, None, True),
    ("fwd-obfuscated-stops", EDGE, {FWD: f"for={FORGED}, for=_hidden, for={CDN}"}, "", None,
     None, True),
    ("fwd-unknown-stops-keeps-proto", EDGE,
     {FWD: f"for={FORGED}, for=unknown;proto=https;host=shop.example, for={CDN}"}, "", "https",
     "shop.example", True),
    ("fwd-UNKNOWN-case", EDGE, {FWD: "for=UNKNOWN"}, "", None, None, True),
    ("fwd-no-for", EDGE, {FWD: "proto=https;host=shop.example"}, "", "https", "shop.example",
     True),
    ("fwd-duplicate-param", EDGE, {FWD: f"for={CLIENT};for={FORGED}"}, "", None, None, True),
    ("fwd-bad-pair", EDGE, {FWD: f"for {CLIENT}"}, "", None, None, True),
    ("fwd-empty-element", EDGE, {FWD: f"for={CLIENT},, for={CDN}"}, "", None, None, True),
    ("fwd-empty-pairs-ok", EDGE, {FWD: f";for={CLIENT};;proto=https;"}, CLIENT, "https", None,
     True),
    ("fwd-spaces", EDGE, {FWD: f"  for={FORGED}  ,  for = {CLIENT} ; proto = https , for={CDN} "},
     CLIENT, "https", None, True),
    ("fwd-unterminated-quote-left", EDGE, {FWD: f'for="{FORGED}, for={CLIENT}'}, CLIENT, None,
     None, True),
    ("fwd-unterminated-quote-right", EDGE, {FWD: f'for={CLIENT}, for="{CDN}'}, "", None, None,
     True),
    ("fwd-comma-in-quotes-left", EDGE, {FWD: f'for={FORGED};x="a, for=1.1.1.1", for={CLIENT}'},
     CLIENT, None, None, True),
    ("fwd-escaped-quote", EDGE, {FWD: f'for={CLIENT};ext="a\\"b, c"'}, CLIENT, None, None,
     True),
    ("fwd-escaped-backslash", EDGE, {FWD: f'ext="a\\\\";for={CLIENT}'}, CLIENT, None, None,
     True),
    ("fwd-extension-and-by", EDGE, {FWD: f"for={CLIENT};by=_edge;secret=x"}, CLIENT, None,
     None, True),
    ("fwd-mapped-client", EDGE, {FWD: 'for="[::ffff:198.51.100.9]"'}, CLIENT, None, None, True),
    ("fwd-mapped-trusted-hop", EDGE, {FWD: f'for={CLIENT}, for="[::ffff:10.0.0.3]"'}, CLIENT,
     None, None, True),
    ("fwd-proto-from-client-element", EDGE,
     {FWD: f"for={CLIENT};proto=https;host=shop.example, for={CDN};proto=http;host=cdn.int"},
     CLIENT, "https", "shop.example", True),
    ("fwd-proto-falls-right", EDGE,
     {FWD: f"for={CLIENT}, for={CDN};proto=https;host=shop.example"}, CLIENT, "https",
     "shop.example", True),
    ("fwd-proto-left-of-client-ignored", EDGE,
     {FWD: f"for={FORGED};proto=https;host=evil.example, for={CLIENT}"}, CLIENT, None, None,
     True),
    ("fwd-bad-proto-ignored", EDGE, {FWD: f"for={CLIENT};proto=javascript"}, CLIENT, None,
     None, True),
    ("fwd-bad-host-ignored", EDGE, {FWD: f'for={CLIENT};host="evil.example/x"'}, CLIENT, None,
     None, True),
    ("fwd-quoted-host", EDGE, {FWD: f'for={CLIENT};host="shop.example:8443"'}, CLIENT, None,
     "shop.example:8443", True),
    ("fwd-wins-over-xff", EDGE, {FWD: f"for={CLIENT}", XFF: FORGED, XFP: "https"}, CLIENT,
     None, None, True),
    ("fwd-blank-falls-to-xff", EDGE, {FWD: "  ", XFF: CLIENT}, CLIENT, None, None, True),
    # --- overlong headers: only the rightmost 8 KiB is read ----------------------------------
    ("long-xff-padding", EDGE, {XFF: f"{FORGED}, " * 2000 + CLIENT}, CLIENT, None, None, True),
    ("long-xff-all-trusted", EDGE, {XFF: "10.0.0.1, " * 2000 + EDGE}, "", None, None, True),
    ("long-fwd-padding", EDGE, {FWD: f"for={FORGED}, " * 800 + f"for={CLIENT};proto=https"},
     CLIENT, "https", None, True),
    ("long-fwd-quote-padding", EDGE, {FWD: '"' * 9000 + f", for={CLIENT}"}, CLIENT, None, None,
     True),
    ("long-xfp-rightmost", EDGE, {XFF: CLIENT, XFP: "https, " * 2000 + "http"}, CLIENT, "http",
     None, True),
    ("long-element", EDGE, {FWD: "for=" + ";" * 9000}, "", None, None, True),
    ("fwd-too-many-pairs", EDGE, {FWD: f"for={CLIENT}" + ";" * 100}, "", None, None, True),
]


@pytest.mark.parametrize(("peer", "headers", "ip", "scheme", "host", "via"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_table(peer: str, headers: dict[str, str], ip: str, scheme: str | None,
               host: str | None, via: bool) -> None:
    assert PROXIES.resolve(peer, headers, scheme=SCHEME, host=HOST) == \
        ClientInfo(ip, scheme or SCHEME, host or HOST, via)
    # The answer is the same when it comes from the result cache.
    assert PROXIES.resolve(peer, headers, scheme=SCHEME, host=HOST) == \
        ClientInfo(ip, scheme or SCHEME, host or HOST, via)


def test_table_size() -> None:
    assert len(CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)
    for case in CASES:
        if case[0].startswith("long-"):
            assert max(map(len, case[2].values())) > MAX_FORWARDING_HEADER


# --- choosing the header ---------------------------------------------------------------------

def test_header_pinned_to_x_forwarded_for() -> None:
    proxies = TrustedProxies(TRUSTED, header="x-forwarded-for")
    headers = {FWD: f"for={FORGED};proto=https", XFF: CLIENT}
    assert proxies.resolve(EDGE, headers, scheme="http", host="a") == \
        ClientInfo(CLIENT, "http", "a", True)


def test_the_default_header_is_the_settings_default() -> None:
    """As ``server.forwarded_header``: a client's own ``Forwarded``, which nginx passes
    through, is not read unless asked for."""
    headers = {FWD: f"for={FORGED};host=evil.example", XFF: CLIENT}
    assert TrustedProxies(TRUSTED).resolve(EDGE, headers, scheme="http", host="a") == \
        ClientInfo(CLIENT, "http", "a", True)


def test_header_pinned_to_forwarded() -> None:
    proxies = TrustedProxies(TRUSTED, header="forwarded")
    assert proxies.resolve(EDGE, {XFF: FORGED, XFP: "https"}, scheme="http", host="a") == \
        ClientInfo(EDGE, "http", "a", False)
    assert proxies.resolve(EDGE, {FWD: f"for={CLIENT}", XFF: FORGED}, scheme="http",
                           host="a") == ClientInfo(CLIENT, "http", "a", True)


def test_bad_header_choice() -> None:
    with pytest.raises(ValueError, match="header must be"):
        TrustedProxies(TRUSTED, header="x-real-ip")


# --- construction ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-a-network", "10.0.0.0/8/1", "", "fd00::/129"])
def test_bad_cidr_named(bad: str) -> None:
    with pytest.raises(ValueError, match=f"{bad!r} is not an IP network"):
        TrustedProxies(["10.0.0.0/8", bad])


def test_a_unix_socket_peer_is_trusted_only_when_listed() -> None:
    """A proxy on our Unix socket has no address (``""``): ``"unix"`` trusts it, so its
    forwarding headers give the client, as a TCP proxy's do; nothing else changes."""
    unix = TrustedProxies(["unix", "10.0.0.0/8"], header="auto")
    assert unix.trusts_unix_socket and unix.is_trusted("") and unix.is_trusted(EDGE)
    assert unix.resolve("", {XFF: f"{FORGED}, {CLIENT}", XFP: "https"}, scheme="http",
                        host="a") == ClientInfo(CLIENT, "https", "a", True)
    assert unix.resolve("", {FWD: f"for={CLIENT}"}, scheme="http", host="a") == \
        ClientInfo(CLIENT, "http", "a", True)
    assert unix.resolve("", {}, scheme="http", host="a") == ClientInfo("", "http", "a", False)
    assert unix.resolve(CLIENT, {XFF: FORGED}, scheme="http", host="a") == \
        ClientInfo(CLIENT, "http", "a", False)                 # a TCP client: as before
    assert PROXIES.is_trusted("") is False and TrustedProxies([" UNIX "]).is_trusted("")
    assert TrustedProxies(TRUSTED).resolve("", {XFF: FORGED}, scheme="http", host="a") == \
        ClientInfo("", "http", "a", False)
    assert TrustedProxies(["unix"]).is_trusted(EDGE) is False


def test_empty_list_trusts_nobody() -> None:
    proxies = TrustedProxies([])
    assert proxies.resolve(EDGE, {XFF: FORGED}, scheme="http", host="a") == \
        ClientInfo(EDGE, "http", "a", False)
    assert proxies.resolve("::ffff:10.0.0.5", {}, scheme="https", host="b") == \
        ClientInfo(EDGE, "https", "b", False)
    assert proxies.is_trusted(EDGE) is False


def test_membership() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "192.0.2.7", "2001:db8:1::/48", "::ffff:172.16.0.0/108",
                              "0.0.0.0/32"])
    assert proxies.is_trusted("10.255.255.255")
    assert not proxies.is_trusted("11.0.0.0")
    assert proxies.is_trusted("192.0.2.7") and not proxies.is_trusted("192.0.2.8")
    assert proxies.is_trusted("2001:db8:1:ffff::1") and not proxies.is_trusted("2001:db8:2::1")
    assert proxies.is_trusted("172.16.9.9")              # the mapped CIDR became IPv4
    assert proxies.is_trusted("::ffff:172.16.9.9")
    assert not proxies.is_trusted("172.32.0.1")
    assert proxies.is_trusted("::ffff:10.1.1.1")
    assert not proxies.is_trusted("garbage") and not proxies.is_trusted("")


def test_single_string_and_host_bits() -> None:
    proxies = TrustedProxies("10.1.2.3/8")             # one string, host bits set
    assert proxies.is_trusted("10.200.0.1")


def test_trust_everything() -> None:
    proxies = TrustedProxies(["0.0.0.0/0", "::/0"])
    assert proxies.resolve(CLIENT, {XFF: f"{FORGED}, {CLIENT}"}, scheme="http",
                           host="a").ip == FORGED


def test_result_cache_is_bounded() -> None:
    proxies = TrustedProxies(TRUSTED)
    for index in range(10_000):
        address = str(ipaddress.IPv4Address(0xC6336400 + index))
        assert proxies.resolve(EDGE, {XFF: address}, scheme="http", host="a").ip == address
    assert len(proxies._results) <= 4096
    assert len(proxies._cache[False]) <= 4096


# --- properties ------------------------------------------------------------------------------

header_text = st.text(
    alphabet=st.sampled_from([*'abcf0123456789.:[]_",; =\\/@-orunkwnFOR', "\u00e9"]),
    max_size=80)
any_headers = st.dictionaries(st.sampled_from([FWD, XFF, XFP, XFH, "host"]), header_text,
                              max_size=4)
addresses = st.one_of(st.ip_addresses().map(str), header_text,
                      st.sampled_from([EDGE, CDN, "fd00::1", "::ffff:10.0.0.5", CLIENT, ""]))


@settings(max_examples=400, deadline=None)
@given(peer=addresses, headers=any_headers)
def test_never_raises(peer: str, headers: dict[str, str]) -> None:
    info = PROXIES.resolve(peer, headers, scheme=SCHEME, host=HOST)
    assert isinstance(info, ClientInfo)
    assert info.scheme in ("http", "https")
    if info.via_proxy:
        assert info.ip == "" or ipaddress.ip_address(info.ip)


def expected_peer(peer: str) -> str:
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    mapped = getattr(addr, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else peer


@settings(max_examples=300, deadline=None)
@given(peer=st.one_of(st.ip_addresses().map(str), header_text), headers=any_headers)
def test_untrusted_peer_is_the_client(peer: str, headers: dict[str, str]) -> None:
    if PROXIES.is_trusted(peer):
        return
    assert PROXIES.resolve(peer, headers, scheme=SCHEME, host=HOST) == \
        ClientInfo(expected_peer(peer), SCHEME, HOST, False)


untrusted_v4 = st.ip_addresses(v=4).filter(lambda a: not PROXIES.is_trusted(str(a))).map(str)
junk = st.text(st.characters(blacklist_categories=["Cs"], max_codepoint=0xFF), max_size=200)


@settings(max_examples=300, deadline=None)
@given(prefix=junk, client=untrusted_v4)
def test_nothing_left_of_the_client_matters_xff(prefix: str, client: str) -> None:
    headers = {XFF: f"{prefix}, {client}, {CDN}"}
    assert PROXIES.resolve(EDGE, headers, scheme="http", host="a").ip == client


@settings(max_examples=300, deadline=None)
@given(prefix=junk, client=untrusted_v4, proto=st.sampled_from(["http", "https"]))
def test_nothing_left_of_the_client_matters_forwarded(prefix: str, client: str,
                                                      proto: str) -> None:
    headers = {FWD: f'{prefix}, for="{client}:443";proto={proto}, for={CDN}'}
    info = PROXIES.resolve(EDGE, headers, scheme="http", host="a")
    assert (info.ip, info.scheme, info.host) == (client, proto, "a")


@settings(max_examples=50, deadline=None)
@given(padding=st.integers(min_value=MAX_FORWARDING_HEADER - 200,
                           max_value=MAX_FORWARDING_HEADER + 200),
       client=untrusted_v4)
def test_padding_never_hides_the_client(padding: int, client: str) -> None:
    for header, value in ((XFF, f"{'1' * padding}, {client}"),
                          (FWD, f"{'x' * padding}, for={client}")):
        assert PROXIES.resolve(EDGE, {header: value}, scheme="http", host="a").ip == client
