"""The documentation site: ``mkdocs build --strict`` passes, a broken link or a stale
configuration reference fails it, and the recipes' configurations and examples work as
written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from secure_mw import cli
from secure_mw.crypto import KeyRing

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "docs" / "recipes"

pytest.importorskip("mkdocs", reason="the docs extra (mkdocs, mkdocs-material) is missing")
pytest.importorskip("material", reason="the docs extra (mkdocs, mkdocs-material) is missing")


def _build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "-f", str(root / "mkdocs.yml"), "-d", str(site)],
                          capture_output=True, text=True, env=env, timeout=300)


def _copy_site(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", root / "docs")
    for name in ("mkdocs.yml", "CHANGELOG.md", "SECURITY.md"):
        shutil.copy(ROOT / name, root / name)
    return root


@pytest.mark.slow
def test_the_site_builds_strictly_with_the_changelog(tmp_path: Path) -> None:
    built = _build(ROOT, tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    changelog = (tmp_path / "site" / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Unreleased" in changelog          # CHANGELOG.md itself, included by the hook
    reference = (tmp_path / "site" / "configuration" / "index.html").read_text(
        encoding="utf-8")
    assert "redis_key_prefix" in reference and "rules[].subject_mismatch" in reference


@pytest.mark.slow
@pytest.mark.parametrize(("link", "complaint"), [
    ("[x](missing.md)", "'recipes/missing.md' is not found"),
    ("[x](../guards.md#no-such-heading)", "does not contain an anchor '#no-such-heading'"),
])
def test_a_broken_link_fails_the_build(tmp_path: Path, link: str, complaint: str) -> None:
    root = _copy_site(tmp_path)
    page = root / "docs" / "recipes" / "nginx.md"
    page.write_text(page.read_text(encoding="utf-8") + f"\n{link}\n", encoding="utf-8")
    built = _build(root, tmp_path / "site")
    assert built.returncode != 0
    assert complaint in built.stdout + built.stderr


@pytest.mark.slow
def test_a_stale_configuration_reference_fails_the_build(tmp_path: Path) -> None:
    root = _copy_site(tmp_path)
    page = root / "docs" / "configuration.md"
    page.write_text(page.read_text(encoding="utf-8").replace(
        "absolute lifetime of a session", "outdated"), encoding="utf-8")
    built = _build(root, tmp_path / "site")
    assert built.returncode != 0
    assert "out of date" in built.stdout + built.stderr


def _blocks(page: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (RECIPES / page).read_text(), re.S)


@pytest.mark.parametrize("page", ["workers.md", "redis.md", "nginx.md", "pomerium.md"])
def test_recipe_configurations_pass_check_config(tmp_path: Path, page: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SECURE_MW_")]:
        monkeypatch.delenv(name)
    blocks = [b for b in _blocks(page, "toml") if b.startswith("# secure-mw.toml")]
    assert blocks
    for name, content in [("secure-mw.keys", KeyRing.new_key_text() + "\n"),
                          ("redis-url", "redis://127.0.0.1:6379/0\n")]:
        (tmp_path / name).write_text(content)
        (tmp_path / name).chmod(0o600)
    for block in blocks:
        (tmp_path / "secure-mw.toml").write_text(block)
        assert cli.main(["check-config", str(tmp_path / "secure-mw.toml")]) == 0


def test_the_logout_page_configuration_passes_check_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SECURE_MW_")]:
        monkeypatch.delenv(name)
    text = (ROOT / "docs" / "logout.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S)
              if b.startswith("# secure-mw.toml")]
    assert len(blocks) == 1
    for name, content in [("secure-mw.keys", KeyRing.new_key_text() + "\n"),
                          ("oidc-client-secret", "a-client-secret-for-the-docs-test\n")]:
        (tmp_path / name).write_text(content)
        (tmp_path / name).chmod(0o600)
    (tmp_path / "secure-mw.toml").write_text(blocks[0])
    assert cli.main(["check-config", str(tmp_path / "secure-mw.toml")]) == 0


def test_the_testing_recipe_runs_as_written(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("testing.md", "python")
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/recipes/testing.md block {i}", "exec"), {})
