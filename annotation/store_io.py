"""Files in and out of the store: HIS human-evaluation CSVs and our simulators' JSONL in, unblinded
annotations out (CSV or JSONL).

Import reports every rejected row with its line number and imports the rest, one transaction per row, so
a bad row changes nothing and a stopped import keeps what it had done. Re-importing a file adds nothing:
dialogues are deduplicated by content hash, judge predictions by (dialogue, judge), imported human
answers by (label set, dialogue).

Simulator JSONL, one record a line (the HIS training format plus what the store needs)::

    {"dialog": [{"role", "content"}, ...], "active_adapters": ["Doctor", "AGR_high"],
     "system": "hirpf:smollm2-135m-experts", "source": "simulator" | "app" | "file",
     "kind": "identity" | "scale_interview", "statement": ..., "factor": ..., "target_option": 1-5,
     "judge": {"name": ..., "slots": {...} | "option": ..., "raw_reply": ...}  (or a list of them)}

Only `dialog` is required (`active_adapters` defaults to none, `source` to simulator, `kind` to identity).
A file whose text starts with `[` is read as one JSON list of such records (the HIS training files' shape);
its rejected records are reported by position ("record N").
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from annotation import his_import
from hirpf.labels import SLOTS, LabelError, identities_from_slots, slots_from_identities
from annotation.store import ImportedAnswer, JudgeLabel, Store, StoreError
from db.models import AnnotationTask, Dialogue
from hirpf.identities import IdentityError, IdentitySet

IMPORT_KINDS = {"his-open": his_import.OPEN, "his-scale": his_import.SCALE, "his-data": his_import.DATASET,
                "jsonl": None}
HIS_KIND_NAMES = {parsed: name for name, parsed in IMPORT_KINDS.items() if parsed}
HIS_JUDGE = {his_import.OPEN: "his-gpt", his_import.SCALE: "his-judge"}


@dataclass
class ImportReport:
    path: str
    kind: str
    encoding: str
    added: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = (f"{self.path} ({self.kind}, {self.encoding}): {self.added} dialogue(s) added, "
                f"{self.duplicates} already stored, {len(self.errors)} row(s) rejected")
        where = "record" if self.kind == "json" else "line"
        return "\n".join([text] + [f"  note: {n}" for n in self.notes]
                         + [f"  {where} {line}: {reason}" for line, reason in self.errors])


def import_file(store: Store, path: str | Path, kind: str | None = None, encoding: str | None = None) -> ImportReport:
    """Import a HIS CSV (`his-open`, `his-scale`, `his-data`; found from the header when `kind` is None) or
    a JSONL file (`jsonl`; the default for a `.jsonl` or `.json` name, which may also hold one JSON list).
    An undecodable file or an unknown header raises `his_import.HisImportError`, a broken JSON list
    `StoreError`; bad rows end up in the report."""
    path = Path(path)
    if kind is not None and kind not in IMPORT_KINDS:
        raise StoreError(f"unknown import kind {kind!r}; expected one of {', '.join(IMPORT_KINDS)}")
    if kind == "jsonl" or (kind is None and path.suffix.lower() in (".jsonl", ".json")):
        return _import_jsonl(store, path, encoding)
    parsed = his_import.read_his_csv(path, IMPORT_KINDS[kind] if kind else None, encoding)
    report = ImportReport(str(path), HIS_KIND_NAMES[parsed.kind], parsed.encoding,
                          errors=[(e.line, e.reason) for e in parsed.errors], notes=list(parsed.notes))
    for record in parsed.records:
        _count(report, record.line, lambda record=record: _add_his_record(store, path, record))
    report.errors.sort()
    return report


def _add_his_record(store: Store, path: Path, record: his_import.HisRecord):
    target = identities_from_slots(record.target_slots) if record.target_slots else IdentitySet()
    label_set = ImportedAnswer(annotator=f"his:{path.name}", display_name=f"HIS human evaluation ({path.name})",
                               slots=record.human_slots, option=record.human_option)
    judge = HIS_JUDGE.get(record.kind)
    common = dict(source="file", system=record.system, source_ref=f"{path.name}:{record.line}")
    if record.kind == his_import.SCALE:
        return store.add_dialogue(
            record.turns, target, kind="scale_interview", statement=record.statement,
            factor=f"{record.item_slot}_{record.item_pole}",
            judges=[JudgeLabel(judge, option=record.judge_option)] if record.judge_option is not None else [],
            answers=[label_set] if record.human_option is not None else [], **common)
    return store.add_dialogue(
        record.turns, target, judges=[JudgeLabel(judge, slots=record.judge_slots)] if record.judge_slots else [],
        answers=[label_set] if record.human_slots else [], **common)


def _import_jsonl(store: Store, path: Path, encoding: str | None) -> ImportReport:
    decoded = his_import.read_text(path, encoding)
    if decoded.text.lstrip().startswith("["):
        return _import_json_list(store, path, decoded)
    report = ImportReport(str(path), "jsonl", decoded.encoding)
    for number, line in enumerate(decoded.text.splitlines(), start=1):
        if line.strip():
            _count(report, number, lambda line=line: _add_record(store, path, number, _json_line(line)))
    return report


def _import_json_list(store: Store, path: Path, decoded) -> ImportReport:
    try:
        records = json.loads(decoded.text)
    except json.JSONDecodeError as error:  # one list: nothing in it can be trusted
        raise StoreError(f"{path}: not a valid JSON list ({error.msg}, line {error.lineno} "
                         f"column {error.colno})") from None
    if not isinstance(records, list):
        raise StoreError(f"{path}: expected a JSON list of records")
    report = ImportReport(str(path), "json", decoded.encoding)
    for number, record in enumerate(records, start=1):
        _count(report, number, lambda record=record: _add_record(store, path, number, record))
    return report


def _json_line(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise StoreError(f"not JSON ({error.msg} at column {error.colno})") from None


def _add_record(store: Store, path: Path, number: int, record):
    if not isinstance(record, dict):
        raise StoreError(f"expected a JSON object, got {type(record).__name__}")
    if "dialog" not in record:
        raise StoreError("no 'dialog'")
    judges = record.get("judge") or []
    judges = [judges] if isinstance(judges, Mapping) else judges
    if not isinstance(judges, list) or not all(isinstance(j, Mapping) for j in judges):
        raise StoreError("'judge' must be an object or a list of objects")
    labels = [JudgeLabel(judge=j.get("name"), slots=j.get("slots"), option=j.get("option"),
                         raw_reply=j.get("raw_reply")) for j in judges]
    return store.add_dialogue(
        record["dialog"], record.get("active_adapters") or [], kind=record.get("kind", "identity"),
        source=record.get("source", "simulator"), system=record.get("system"),
        source_ref=f"{path.name}:{number}", statement=record.get("statement"), factor=record.get("factor"),
        target_option=record.get("target_option"), judges=labels)


def _count(report: ImportReport, line: int, add) -> None:
    try:
        added = add()
    except (StoreError, LabelError, IdentityError) as error:
        report.errors.append((line, str(error)))
        return
    if added.created:
        report.added += 1
    else:
        report.duplicates += 1


# --- export ---------------------------------------------------------------------------------------------
def export_rows(store: Store) -> Iterator[dict]:
    """One nested record per answered or skipped task, unblinded: annotator, dialogue (target, system,
    source, original transcript), the answer, and every judge's prediction for the dialogue."""
    with store.db.read() as session:
        tasks = session.scalars(
            select(AnnotationTask).where(AnnotationTask.status != "pending")
            .options(selectinload(AnnotationTask.annotator), selectinload(AnnotationTask.annotation),
                     selectinload(AnnotationTask.dialogue).selectinload(Dialogue.judge_predictions))
            .order_by(AnnotationTask.dialogue_id, AnnotationTask.annotator_id))
        for task in tasks:
            yield _export_record(task)


def _export_record(task: AnnotationTask) -> dict:
    d, a, answer = task.dialogue, task.annotator, task.annotation
    target = IdentitySet.parse(d.target)
    return {
        "annotator": {"id": a.public_id, "display_name": a.display_name, "external_id": a.external_id},
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
    for n, record in enumerate(export_rows(store), start=1):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
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
