"""Files in and out of the store: import files (read by `annotation.import_files`) in, unblinded
annotations out (CSV or JSONL).

Import never stops at a bad row: it stores the file's records one transaction each, and every row that
could not be read or stored (bad values, text no database keeps, a database or disk that refused the write)
goes into the `ImportReport` with its line number and reason, while the rows before and after it are stored.
So a bad row changes nothing and a stopped import keeps what it had done. Re-importing a file adds nothing:
dialogues are deduplicated by content hash, judge predictions by (dialogue, judge), imported human answers
by (label set, dialogue). Only a file that cannot be read at all raises (`annotation.records.UnreadableFile`).
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import selectinload

from annotation.import_files import read_import_file
from annotation.pseudonyms import Pseudonyms
from annotation.records import DialogueRecord
from annotation.store import Store, StoreError
from db.models import AnnotationTask, Dialogue, TaskStatus
from hirpf.identities import IdentitySet
from hirpf.labels import SLOTS, LabelError, slots_from_identities

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """What an import did: the CLI prints `describe()`, the admin tab shows the same text."""

    path: str
    kind: str
    encoding: str
    added: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), in file order
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = (f"{self.path} ({self.kind}, {self.encoding}): {self.added} dialogue(s) added, "
                f"{self.duplicates} already stored, {len(self.errors)} row(s) rejected")
        where = "record" if self.kind == "json" else "line"
        return "\n".join([text] + [f"  note: {n}" for n in self.notes]
                         + [f"  {where} {line}: {reason}" for line, reason in self.errors])


def import_file(store: Store, path: str | Path, kind: str | None = None, encoding: str | None = None) -> ImportReport:
    """Read the file (see `annotation.import_files.read_import_file`) and store its records, reporting every
    row that was not stored. Raises `UnreadableFile` when the file cannot be read at all, `ValueError` for
    an unknown `kind`, `OSError` when it cannot be opened."""
    read = read_import_file(path, kind, encoding)
    report = ImportReport(str(read.path), read.kind, read.encoding, notes=list(read.notes),
                          errors=[(e.line, e.reason) for e in read.errors])
    for line, record in read.records:
        reason = _store(store, record, report)
        if reason is not None:
            report.errors.append((line, _printable(reason)))
    report.errors.sort()
    return report


def _store(store: Store, record: DialogueRecord, report: ImportReport) -> str | None:
    """Store one record and count it; the reason it was not stored, if it was not."""
    try:
        added = store.add_dialogue(**{f.name: getattr(record, f.name) for f in fields(record)})
    except (StoreError, LabelError) as error:
        return str(error)
    except DBAPIError as error:  # the database refused the write: a full disk, a lost connection, ...
        return f"not stored, the database refused it: {str(error.orig).strip() or type(error.orig).__name__}"
    except OSError as error:
        return f"not stored: {error}"
    except Exception as error:  # noqa: BLE001 - one row must never stop the import; the log keeps the trace
        log.exception("importing a row failed unexpectedly")
        return f"not stored, unexpected {type(error).__name__}: {error}"
    if added.created:
        report.added += 1
    else:
        report.duplicates += 1
    return None


def _printable(reason: str) -> str:
    """A reason fit to print and to send to a browser: errors may quote a row's NUL or lone surrogate."""
    return reason.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


# --- export ---------------------------------------------------------------------------------------------
def export_rows(store: Store) -> Iterator[dict]:
    """One nested record per answered or skipped task, unblinded: annotator (by a pseudonym of this export,
    never their id), dialogue (target, system, source, original transcript), the answer, and every judge's
    prediction for the dialogue."""
    with store.db.read() as session:
        tasks = session.scalars(
            select(AnnotationTask).where(AnnotationTask.status != TaskStatus.PENDING)
            .options(selectinload(AnnotationTask.annotator), selectinload(AnnotationTask.annotation),
                     selectinload(AnnotationTask.dialogue).selectinload(Dialogue.judge_predictions))
            .order_by(AnnotationTask.dialogue_id, AnnotationTask.annotator_id))
        pseudonyms = Pseudonyms()  # one export, one set of annotator pseudonyms
        for task in tasks:
            yield _export_record(task, pseudonyms)


def _export_record(task: AnnotationTask, pseudonyms: Pseudonyms) -> dict:
    d, a, answer = task.dialogue, task.annotator, task.annotation
    target = IdentitySet.parse(d.target)
    return {
        "annotator": {"id": pseudonyms(a.public_id), "display_name": a.display_name, "external_id": a.external_id},
        "task": {"id": task.public_id, "position": task.position, "side": task.side, "status": task.status,
                 "skip_reason": task.skip_reason},
        "dialogue": {"id": d.public_id, "kind": d.kind, "source": d.source, "system": d.system,
                     "source_ref": d.source_ref, "target": list(target.names),
                     "target_slots": slots_from_identities(target) if d.kind == "identity" else None,
                     "statement": d.statement, "factor": d.factor, "target_option": d.target_option,
                     "transcript": d.transcript},
        "answer": None if answer is None else {
            "slots": answer.slots, "option": answer.option, "comment": answer.comment,
            "seconds": answer.seconds, "edits": answer.edits, "created_at": answer.created_at.isoformat(),
            "updated_at": answer.updated_at.isoformat()},
        "judges": {p.judge: {"slots": p.slots, "option": p.option, "raw_reply": p.raw_reply}
                   for p in sorted(d.judge_predictions, key=lambda p: p.judge)},
    }


def write_jsonl(store: Store, out: io.TextIOBase) -> int:
    n = 0
    for record in export_rows(store):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        n += 1
    return n


def write_csv(store: Store, out: io.TextIOBase) -> int:
    """Flat columns: one per slot for target, human and each judge (`judge:<name>:<slot>`); the
    transcript as JSON text."""
    records = list(export_rows(store))
    judges = sorted({name for r in records for name in r["judges"]})
    columns = (["annotator_id", "annotator", "annotator_external_id", "task_id", "position", "side", "status",
                "skip_reason", "dialogue_id", "kind", "source", "system", "source_ref", "target"]
               + [f"target:{s}" for s in SLOTS] + ["statement", "factor", "target_option"]
               + [f"human:{s}" for s in SLOTS] + ["human:option", "comment", "seconds", "edits", "created_at",
                                                   "updated_at"]
               + [f"judge:{j}:{s}" for j in judges for s in SLOTS + ("option",)] + ["transcript"])
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    for r in records:
        a, t, d, answer = r["annotator"], r["task"], r["dialogue"], r["answer"] or {}
        row = {"annotator_id": a["id"], "annotator": a["display_name"], "annotator_external_id": a["external_id"],
               "task_id": t["id"], "position": t["position"], "side": t["side"], "status": t["status"],
               "skip_reason": t["skip_reason"], "dialogue_id": d["id"], "kind": d["kind"], "source": d["source"],
               "system": d["system"], "source_ref": d["source_ref"], "target": ",".join(d["target"]),
               "statement": d["statement"], "factor": d["factor"], "target_option": d["target_option"],
               "human:option": answer.get("option"), "comment": answer.get("comment"),
               "seconds": answer.get("seconds"), "edits": answer.get("edits"),
               "created_at": answer.get("created_at"), "updated_at": answer.get("updated_at"),
               "transcript": json.dumps(d["transcript"], ensure_ascii=False)}
        for s in SLOTS:
            row[f"target:{s}"] = (d["target_slots"] or {}).get(s)
            row[f"human:{s}"] = (answer.get("slots") or {}).get(s)
        for j, p in r["judges"].items():
            for s in SLOTS:
                row[f"judge:{j}:{s}"] = (p["slots"] or {}).get(s)
            row[f"judge:{j}:option"] = p["option"]
        writer.writerow(row)
    return len(records)
