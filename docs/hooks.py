"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml): the build fails when
the generated configuration reference is out of date, and ``<!-- include: FILE -->`` lines
are replaced by a file of the repository (the changelog), so nothing is kept twice."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

from secure_mw import settings_doc

ROOT = Path(__file__).resolve().parent.parent
_INCLUDE = re.compile(r"^<!-- include: ([\w./-]+) -->$", re.M)


def on_pre_build(config: Any) -> None:
    reference = Path(config["docs_dir"]) / "configuration.md"
    text = reference.read_text(encoding="utf-8")
    rendered, problems = settings_doc.render(text)
    if problems or rendered != text:
        raise PluginError("docs/configuration.md: " + ("; ".join(problems) or
                          "the generated tables are out of date: run "
                          "`python -m secure_mw.settings_doc docs/configuration.md`"))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def include(match: re.Match[str]) -> str:
        path = (ROOT / match.group(1)).resolve()
        if ROOT not in path.parents or not path.is_file():
            raise PluginError(f"{page.file.src_uri}: cannot include {match.group(1)!r}")
        return path.read_text(encoding="utf-8")

    return _INCLUDE.sub(include, markdown)
