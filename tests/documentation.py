"""The project's documentation pages, for the tests that check what they name (links, settings, commands)."""
from __future__ import annotations

from pathlib import Path

from hirpf.paths import PROJECT_ROOT

PAGES: list[Path] = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def documentation_text() -> str:
    """The README and every page under docs/, as one text: a setting is documented if it is named anywhere."""
    return "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
