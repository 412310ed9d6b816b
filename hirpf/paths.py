"""Where the project finds things outside its own tree.

The public HIS release (third-party data: identity dialogues, scales, scenarios, human-evaluation CSVs)
lives beside the checkout in `../shared/his/` and is read from there, never copied into the project.
`HIRPF_HIS_DIR` (`hirpf.environment`) points elsewhere.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import environment
from .environment import PROJECT_ROOT

__all__ = ["PROJECT_ROOT", "his_dir", "his_file", "read_json_file"]


def his_dir() -> Path:
    return environment.HIRPF_HIS_DIR


def his_file(name: str) -> Path:
    """A file of the HIS release, e.g. `his_file("profession_scale.json")`."""
    return his_dir() / name


def read_json_file(path: str | Path, what: str, error: type[Exception]):
    """The JSON document in `path` (a data file we were given: scale, survey, scenarios). Failures raise
    `error` naming the file: it cannot be read, or is not valid JSON (with the parser's message and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
