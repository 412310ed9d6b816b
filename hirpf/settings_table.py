"""The settings of `hirpf.environment` as a table: `python -m hirpf settings` prints each one with its value
now and where it came from; `--markdown` prints `docs/configuration.md`, which is generated, never edited
(tests/test_environment.py fails when the page is stale)."""
from __future__ import annotations

from pathlib import Path

from .environment import GROUPS, SETTINGS, Setting, SettingError, shown_default

REGENERATE = "python -m hirpf settings --markdown > docs/configuration.md"


def current(setting: Setting) -> tuple[str, str]:
    """(the value now as text, where it came from); a secret shows only that it is set, a bad value its error."""
    try:
        value = setting.value()
    except SettingError as err:
        return f"error: {err}", setting.source()
    if setting.secret and setting.lookup() is not None:
        return "(set)", setting.source()
    if value is setting.default and not isinstance(value, Path):  # a path is shown whole: where it is here
        return shown_default(setting), setting.source()
    return (",".join(value) if isinstance(value, tuple) else str(value)), setting.source()


def bad_settings() -> list[str]:
    """The settings whose variable holds a value that cannot be used."""
    return [s.name for s in SETTINGS.values() if current(s)[0].startswith("error: ")]


def text_table() -> str:
    """Every setting with its value now and its source, one line each, in the docs' order."""
    rows = [("SETTING", "VALUE", "FROM"), *((s.name, *current(s)) for s in SETTINGS.values())]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{name:<{widths[0]}}  {value:<{widths[1]}}  {source}" for name, value, source in rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/configuration.md: every setting, by group, with its flag, form, default and help."""
    lines = ["# Configuration", "",
             f"<!-- Generated from hirpf/environment.py by `{REGENERATE}`; do not edit. -->", "",
             "Every environment variable HIRPF reads is declared once, in `hirpf/environment.py`; this page is "
             f"generated from it (`{REGENERATE}`). `python -m hirpf settings` prints each setting's value now and "
             "whether it came from the default or the environment (secrets show only that they are set). A "
             "variable set to blank counts as unset; a bad value stops the command with an error naming the "
             "variable. Where a flag stands before a variable, the flag wins.", ""]
    for group, title in GROUPS.items():
        lines += [f"## {title}", "", "| Variable | Flag | Form | Default | What it does |", "|---|---|---|---|---|"]
        for s in (s for s in SETTINGS.values() if s.group == group):
            name = " or ".join(f"`{n}`" for n in (s.name, *s.aliases))
            flag = f"`{s.flag}`" if s.flag else ""
            default = "unset" if s.default is None else f"`{shown_default(s)}`"
            lines.append(f"| {name} | {flag} | {_cell(s.form.words)} | {default} | {_cell(s.help)} |")
        lines.append("")
    return "\n".join(lines)
