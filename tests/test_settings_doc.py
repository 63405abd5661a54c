"""The configuration reference is generated from the Settings tree, never kept by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from secure_mw import settings_doc
from secure_mw.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"


def test_docs_configuration_tables_are_the_generated_ones() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    rendered, problems = settings_doc.render(text)
    assert problems == []
    assert rendered == text, ("docs/configuration.md is out of date: run "
                              "`python -m secure_mw.settings_doc docs/configuration.md`")


def test_every_setting_has_a_meaning() -> None:
    undocumented = [f"{section}.{key}" for section, cls in settings_doc.sections().items()
                    for key, _kind, _default, doc in settings_doc.rows(cls) if not doc]
    assert undocumented == []


def test_every_section_and_nested_key_is_listed() -> None:
    names = {f.name for f in dataclasses.fields(Settings)}
    assert set(settings_doc.sections()) == names
    keys = {key for key, *_ in settings_doc.rows(settings_doc.sections()["access_control"])}
    assert {"rules[].resources", "rules[].subject_mismatch", "networks[].name"} <= keys
    keys = {key for key, *_ in settings_doc.rows(settings_doc.sections()["signed_headers"])}
    assert {"verify.issuer", "verify.leeway"} <= keys


@pytest.mark.parametrize(("section", "key", "kind", "default"), [
    ("session", "expiration", "duration", '`"1h"`'),
    ("session", "store", "`memory`, `cookie`, `redis` or `sqlite`", '`"memory"`'),
    ("session", "redis_url", "string, *secret*", "unset"),
    ("oidc", "max_token_size", "size", '`"64KiB"`'),
    ("oidc", "issuer", "string", "required"),
    ("headers", "hsts_max_age", "duration", '`"365d"`'),
    ("regulation", "success_statuses", "list of integers", "`[200, 201, 204, 302, 303]`"),
    ("rate_limits", "rules[].fail_open", "boolean", "unset"),
])
def test_rows_show_type_and_default_from_the_code(section: str, key: str, kind: str,
                                                  default: str) -> None:
    rows = {k: (t, d) for k, t, d, _doc in settings_doc.rows(settings_doc.sections()[section])}
    assert rows[key] == (kind, default)


def test_meanings_are_escaped_for_markdown() -> None:
    cell = settings_doc._cell("a | b <origin> __Host- *.example.com")
    assert cell == r"a \| b &lt;origin&gt; \_\_Host- \*.example.com"


def test_check_fails_on_a_stale_or_missing_table(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "configuration.md"
    text = REFERENCE.read_text(encoding="utf-8")
    stale.write_text(text.replace("absolute lifetime of a session", "outdated"),
                     encoding="utf-8")
    assert settings_doc.main(["--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert settings_doc.main([str(stale)]) == 0          # rewritten ...
    assert stale.read_text(encoding="utf-8") == text     # ... to the generated text
    start = text.index("<!-- settings_doc: audit -->")
    end = text.index("<!-- /settings_doc -->", start) + len("<!-- /settings_doc -->")
    stale.write_text(text[:start] + text[end:] + "\n<!-- settings_doc: nope -->\n"
                     "<!-- /settings_doc -->\n", encoding="utf-8")
    assert settings_doc.main(["--check", str(stale)]) == 1
    err = capsys.readouterr().err
    assert "section 'audit' has no" in err and "'nope', which is no section" in err
