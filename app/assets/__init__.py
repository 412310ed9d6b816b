"""The app's browser code and styles, as plain `.js` and `.css` files beside this module, so they can be
read, linted and diffed as what they are. Each `.js` file holds one function expression, as Gradio's `js=`
arguments take it."""
from __future__ import annotations

from functools import cache
from pathlib import Path

FOLDER = Path(__file__).parent


@cache
def asset(name: str) -> str:
    """The text of `app/assets/<name>` (read once per process)."""
    path = FOLDER / name
    if not path.is_file():
        raise FileNotFoundError(f"app asset {name!r} is missing from {FOLDER}")
    return path.read_text(encoding="utf-8")


def stylesheet(*names: str) -> str:
    """Several `.css` assets as one stylesheet (Gradio takes one, at launch)."""
    return "\n".join(asset(name) for name in names)


# The stylesheets of the model tabs, alone or in the whole app.
MODEL_TAB_CSS = ("page.css", "identity_panel.css")
