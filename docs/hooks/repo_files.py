"""mkdocs hook: files of the repository outside docs/ that pages link to (report figures).

Pages link them as `../reports/...`, which is right when the Markdown is read in the
repository; the site gets a copy of each under the same path and the links are rewritten to it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
DOCS = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"\]\(\.\./(reports/[^)\s]+)\)")


def on_files(files, config):
    """Add every repository file a page links to by `../reports/...`."""
    for page in sorted(DOCS.glob("*.md")):
        for rel in _LINK.findall(page.read_text(encoding="utf-8")):
            if not (ROOT / rel).is_file():
                raise FileNotFoundError(f"{page.name} links to {rel}, which does not exist")
            if files.get_file_from_path(rel) is None:
                files.append(File(rel, src_dir=str(ROOT), dest_dir=config["site_dir"],
                                  use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Point `../reports/...` links at the copies in the site."""
    return _LINK.sub(lambda m: f"]({m.group(1)})", markdown)
