"""mkdocs hook: a guide's relative link must name a file of the repository.

The guides link to the code they describe (``../examples/fedavg_by_hand/fedavg_main.py``,
``../README.md``). mkdocs only checks links between documentation pages, so without
this hook a renamed example would leave a dead link that ``mkdocs build --strict``
never reports (mkdocs.yml sets its ``not_found`` check to info so that these links
are allowed at all; this hook makes every relative link, inside docs/ or not, an
error when its file is missing). Anchors stay mkdocs' own check.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

#: a Markdown inline link or image: [text](target) — the target up to a space or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)")
#: fenced code blocks are left alone: their brackets are code, not links
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(os.path.abspath(config["docs_dir"]))
    repo = docs_dir.parent
    source = docs_dir / page.file.src_path
    for target in LINK.findall(FENCE.sub("", markdown)):
        path = target.split("#", 1)[0]
        if not path or "://" in path or path.startswith(("mailto:", "/")):
            continue
        # normalised, not resolved: a symlinked folder of the tree still counts as inside it
        resolved = Path(os.path.normpath(source.parent / path))
        if not resolved.is_relative_to(repo):
            raise PluginError(f"{page.file.src_path}: link {target!r} leaves the repository")
        if not resolved.exists():
            where = page.file.src_path
            raise PluginError(f"{where}: link {target!r} names no file of the repository")
    return markdown
