"""Read an import file into dialogue records; nothing here touches the store (`annotation.store_io` stores
them). HIS human-evaluation CSVs come through `annotation.his_import`; simulator JSONL is read here.

Simulator JSONL, one record a line (the HIS training format plus what the store needs)::

    {"dialog": [{"role", "content"}, ...], "active_adapters": ["Doctor", "AGR_high"],
     "system": "hirpf:smollm2-135m-experts", "source": "simulator" | "app" | "file",
     "kind": "identity" | "scale_interview", "statement": ..., "factor": ..., "target_option": 1-5,
     "judge": {"name": ..., "slots": {...} | "option": ..., "raw_reply": ...}  (or a list of them)}

Only `dialog` is required (`active_adapters` defaults to none, `source` to simulator, `kind` to identity).
Lines end at "\\n" (or "\\r\\n") only: U+2028, U+2029 and U+0085, which `json.dumps(ensure_ascii=False)`
writes unescaped, stay inside their record. A file not named `.jsonl` whose text starts with `[` is one JSON
list of such records (the HIS training files' shape); its rows are numbered by position ("record N").

A row that cannot be read becomes a `RowError` (its line and why); the others are still read. A file that
cannot be read at all raises `UnreadableFile` naming it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from annotation import his_import
from annotation.records import DialogueRecord, ImportedAnswer, JudgeLabel, RowError, UnreadableFile
from hirpf.identities import IdentitySet
from hirpf.labels import identities_from_slots

KINDS = {"his-open": his_import.OPEN, "his-scale": his_import.SCALE, "his-data": his_import.DATASET,
         "jsonl": None}
HIS_KIND_NAMES = {parsed: name for name, parsed in KINDS.items() if parsed}
HIS_JUDGE = {his_import.OPEN: "his-gpt", his_import.SCALE: "his-judge"}


@dataclass
class ImportFile:
    """An import file, read: its records with the line each starts on, and the rows that could not be read."""

    path: Path
    kind: str                     # "his-open", "his-scale", "his-data", "jsonl" or "json" (one JSON list)
    encoding: str
    records: list[tuple[int, DialogueRecord]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. damaged characters replaced while decoding


def read_import_file(path: str | Path, kind: str | None = None, encoding: str | None = None) -> ImportFile:
    """A HIS CSV (`his-open`, `his-scale`, `his-data`; found from the header when `kind` is None) or a JSONL
    file (`jsonl`; the default for a `.jsonl` or `.json` name, which may also hold one JSON list)."""
    path = Path(path)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown import kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "jsonl" or (kind is None and path.suffix.lower() in (".jsonl", ".json")):
        return _read_jsonl(path, encoding)
    parsed = his_import.read_his_csv(path, KINDS[kind] if kind else None, encoding)
    return ImportFile(path, HIS_KIND_NAMES[parsed.kind], parsed.encoding,
                      [(r.line, _his_record(path, r)) for r in parsed.records], list(parsed.errors),
                      list(parsed.notes))


def _his_record(path: Path, record: his_import.HisRecord) -> DialogueRecord:
    target = identities_from_slots(record.target_slots) if record.target_slots else IdentitySet()
    name = _file_name(path)
    label_set = ImportedAnswer(annotator=f"his:{name}", display_name=f"HIS human evaluation ({name})",
                               slots=record.human_slots, option=record.human_option)
    judge = HIS_JUDGE.get(record.kind)
    common = dict(source="file", system=record.system, source_ref=f"{name}:{record.line}")
    if record.kind == his_import.SCALE:
        return DialogueRecord(
            record.turns, target, kind="scale_interview", statement=record.statement,
            factor=f"{record.item_slot}_{record.item_pole}",
            judges=[JudgeLabel(judge, option=record.judge_option)] if record.judge_option is not None else [],
            answers=[label_set] if record.human_option is not None else [], **common)
    return DialogueRecord(
        record.turns, target, judges=[JudgeLabel(judge, slots=record.judge_slots)] if record.judge_slots else [],
        answers=[label_set] if record.human_slots else [], **common)


def _read_jsonl(path: Path, encoding: str | None) -> ImportFile:
    decoded = his_import.read_text(path, encoding)
    if path.suffix.lower() != ".jsonl" and decoded.text.lstrip().startswith("["):
        return _read_json_list(path, decoded)
    read = ImportFile(path, "jsonl", decoded.encoding)
    # Not str.splitlines(): it also ends lines at U+2028, U+2029, U+0085 and other characters JSON text
    # may hold unescaped.
    for number, line in enumerate(decoded.text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            _read_row(read, number, lambda line=line: _json_value(line))
    return read


def _read_json_list(path: Path, decoded: his_import.DecodedText) -> ImportFile:
    try:
        records = json.loads(decoded.text)
    except json.JSONDecodeError as error:  # one list: nothing in it can be trusted
        raise UnreadableFile(f"{path}: not a valid JSON list ({error.msg}, line {error.lineno} "
                             f"column {error.colno})") from None
    except (RecursionError, ValueError) as error:
        raise UnreadableFile(f"{path}: not a valid JSON list ({_json_problem(error)})") from None
    if not isinstance(records, list):
        raise UnreadableFile(f"{path}: expected a JSON list of records")
    read = ImportFile(path, "json", decoded.encoding)
    for number, record in enumerate(records, start=1):
        _read_row(read, number, lambda record=record: record)
    return read


def _read_row(read: ImportFile, number: int, value) -> None:
    try:
        read.records.append((number, _record(read.path, number, value())))
    except ValueError as error:
        read.errors.append(RowError(number, str(error)))


def _json_value(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg} at column {error.colno})") from None
    except (RecursionError, ValueError) as error:
        raise ValueError(f"not JSON ({_json_problem(error)})") from None


def _json_problem(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error)  # e.g. an integer of more than 4300 digits, which Python refuses to convert


def _record(path: Path, number: int, record: object) -> DialogueRecord:
    """The store's record for one JSON object; the store checks the values, this only their shape."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(record)}")
    if "dialog" not in record:
        raise ValueError("no 'dialog'")
    adapters = record.get("active_adapters") or []
    if isinstance(adapters, list):
        odd = [a for a in adapters if not isinstance(a, str)]
        if odd:
            raise ValueError(f"active_adapters: identity names must be text, found {_json_type(odd[0])} in the list")
    elif not isinstance(adapters, str):
        raise ValueError(f"active_adapters: expected a list of identity names, got {_json_type(adapters)}")
    judges = record.get("judge") or []
    judges = [judges] if isinstance(judges, Mapping) else judges
    if not isinstance(judges, list) or not all(isinstance(j, Mapping) for j in judges):
        raise ValueError("'judge' must be an object or a list of objects")
    return DialogueRecord(
        record["dialog"], adapters, kind=record.get("kind", "identity"), source=record.get("source", "simulator"),
        system=record.get("system"), source_ref=f"{_file_name(path)}:{number}", statement=record.get("statement"),
        factor=record.get("factor"), target_option=record.get("target_option"),
        judges=[JudgeLabel(judge=j.get("name"), slots=j.get("slots"), option=j.get("option"),
                           raw_reply=j.get("raw_reply")) for j in judges])


def _file_name(path: Path) -> str:
    """The file's name as storable text: a name that is not UTF-8 on disk comes back from the file system
    with lone surrogates, which no database stores."""
    return os.fsencode(path.name).decode("utf-8", errors="replace")


def _json_type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "text", int: "a number", float: "a number",
            bool: "true/false", type(None): "null"}.get(type(value), type(value).__name__)
