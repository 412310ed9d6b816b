"""What both synthesis backends share: the job a dialogue is made for, the rule that a character never names
its identities, and the output file (one fsynced JSONL record per finished dialogue, resumable)."""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hirpf.identities import IdentitySet, label

log = logging.getLogger("hirpf.synthesize")


@dataclass(frozen=True)
class Job:
    """One dialogue to synthesize; `id` is stable across reruns and keys resumption."""

    id: str
    identities: IdentitySet
    exchanges: int  # other-speaker / character pairs
    scene: str
    outside_topic: str | None  # a question outside the profession, or None


def forbidden_words(identities: IdentitySet) -> list[str]:
    """Names and labels of the identities: the character's lines must not contain them verbatim."""
    return [w for name in identities for w in (name, label(name))]


def named_identity(text: str, identities: IdentitySet) -> str | None:
    """The first name or label of `identities` that `text` says verbatim, else None."""
    return next((w for w in forbidden_words(identities) if re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE)),
                None)


def finished_jobs(output: Path) -> set[str]:
    """Job ids already in the output. A last line cut short by a crash was never a finished record: it is
    removed so that appending goes on from a clean line end."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: removing an unfinished last line (%d bytes) left by an interrupted run",
                    output, len(data) - cut)
        with open(output, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    jobs = set()
    for number, line in enumerate(data.decode("utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{output} line {number} is not JSON; is this a synthesis output file?") from None
        job = (record.get("synthesis") or {}).get("job") if isinstance(record, dict) else None
        if job:
            jobs.add(job)
    return jobs


def append_record(out, record: dict) -> None:
    """One JSONL line, flushed and fsynced: a crash loses no finished record."""
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()
    os.fsync(out.fileno())
