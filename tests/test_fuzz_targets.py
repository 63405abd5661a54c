"""The fuzz targets of fuzz/targets.py under hypothesis: a bounded number of examples at
every run (atheris runs them for as long as you like: `python -m fuzz NAME`)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS

# Bytes, and text built from the characters the parsers care about, so examples reach past
# the first check.
SPECIAL = "/\\:@.%?#;=,\"' \t\r\n\x00[]<>{}*+-_~!$&()|^`ABCabc019éİ\u202e\ufeff"
INPUTS = st.one_of(
    st.binary(max_size=512),
    st.text(alphabet=st.sampled_from(SPECIAL), max_size=120).map(lambda t: t.encode()),
    st.text(max_size=120).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
SEEDS = [
    b"/\\evil.example", b"//evil.example/%2e%2e", b"https://app.example.com@evil.example/",
    b"/%c0%ae%c0%ae/admin", b"/admin/..;/x", b"for=\"[2001:db8::1]:80\";proto=https",
    b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", b'{"exp": 1e400, "iss": "https://iss.example"}',
    b'[access_control]\nrules = [{resources = ["^/a"], policy = "bypass"}]',
    b"session=abc; session=def; __Host-x=\"q\"",
]


def _each(name: str) -> None:
    target = TARGETS[name]

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(data=INPUTS)
    def run(data: bytes) -> None:
        target(data)

    for seed in SEEDS:
        run = example(data=seed)(run)
    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_keeps_its_contract(name: str) -> None:
    _each(name)
