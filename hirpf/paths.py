"""Where the project finds things outside its own tree.

The public HIS release (third-party data: identity dialogues, scales, scenarios, human-evaluation CSVs)
lives beside the checkout in `../shared/his/` and is read from there, never copied into the project.
`HIRPF_HIS_DIR` points elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def his_dir() -> Path:
    return Path(os.environ.get("HIRPF_HIS_DIR") or PROJECT_ROOT.parent / "shared" / "his")


def his_file(name: str) -> Path:
    """A file of the HIS release, e.g. `his_file("profession_scale.json")`."""
    return his_dir() / name
