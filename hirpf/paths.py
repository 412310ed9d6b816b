"""Where the project finds things outside its own tree.

The public HIS release (third-party data: identity dialogues, scales, scenarios, human-evaluation CSVs)
lives beside the checkout in `../shared/his/` and is read from there, never copied into the project.
`HIRPF_HIS_DIR` points elsewhere.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def his_dir() -> Path:
    return Path(os.environ.get("HIRPF_HIS_DIR") or PROJECT_ROOT.parent / "shared" / "his")


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
