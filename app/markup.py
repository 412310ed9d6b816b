"""User-supplied text (names, comments, statements, file names) placed inside Markdown or HTML, read as plain
text.

Gradio's Markdown is GitHub-flavoured: besides links, images and HTML it turns a bare `http://…` or
`www.…` into a live link, `$$…$$` into maths, and a `|` into a table column. CommonMark lets every ASCII
punctuation character be escaped with a backslash, and an escaped character is never markup, so escaping
all of them (rather than a list of the ones known to matter today) leaves nothing to interpret.
"""
from __future__ import annotations

import html
import re
import string
from typing import Mapping, Sequence

_ESCAPED = {ord(c): "\\" + c for c in string.punctuation}


def markdown_text(value: object) -> str:
    """`value` as Markdown that shows exactly its characters: every ASCII punctuation mark escaped."""
    return str(value).translate(_ESCAPED)


def table_cell(value: object) -> str:
    """`value` as one Markdown table cell: plain text on one line (a line break would end the row)."""
    return markdown_text(" ".join(str(value).split()))


def code_block(text: str) -> str:
    """`text` in a fenced code block whose fence is longer than any run of backticks inside it, so that no
    line of the text (a file name, a quoted row) can close the block early."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def transcript_html(turns: Sequence[Mapping], agent: str) -> str:
    """The anonymized turns as escaped HTML (dialogue text is stored verbatim, HTML and all); the speaker
    to judge is marked. Braces are escaped too: the HTML component treats its value as a template."""
    def text(value: str) -> str:
        return html.escape(value).replace("{", "&#123;").replace("}", "&#125;").replace("$", "&#36;")

    return "".join(f'<div class="turn {"judged" if t["speaker"] == agent else "other"}">'
                   f'<span class="who">{text(t["speaker"])}</span><div class="text">{text(t["text"])}</div></div>'
                   for t in turns)
