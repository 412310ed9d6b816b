"""Read the public HIS human-evaluation CSVs, unchanged, into plain records.

Three files, told apart by their header (or by `kind=`):

- `open`: `open_sample10_320.csv`, 320 open-situation dialogues, 80 per system (`model`), with the target
  identity, GPT's slot predictions (the HIS judge) and a human's. Cells are Python literals (`None`, single
  quotes): read with `ast.literal_eval`, never `eval`. GPT's prediction leaves some slots empty (`None`, no
  prediction, unlike the label `'None'`): they read as none, and `judge_missing` lists them. Its `TRUE`
  column is derived (GPT == human per slot, comparing raw values, so GPT's `None` and the human's `'None'`
  count as a disagreement: the published rule, see `annotation.agreement.his_open_agreement`); not read.
- `scale`: `scale_sample50.csv`, 50 scale interviews: the item (`factor_polarity`, `statement`), the
  transcript, and the judge's and the human's answers as letters A-E (= options 1-5, very inaccurate ...
  very accurate; the `*_score` columns, when present, must agree). The interviewed persona is read from its
  role prompt ("You are a human with low agreeableness", "You are a/an doctor") as the target.
- `dataset`: `data_sample50.csv`, 50 training-set dialogues as `<<system>>/<<user>>/<<assistant>>` text,
  the adapters that produced them (target) and a human's labels in per-slot columns (empty = none), which
  must agree with its `annotate_results` set.

Slots come out in our vocabulary (`hirpf.labels`): HIS's `EMS` (emotional stability) is `NEU` with the
poles flipped, and so is the scale file's "Neuroticism" factor, whose items are keyed toward emotional
stability (its `_pos` items describe calm, even-tempered behaviour).

A header that names a column twice is refused (which cell would count is a guess). Malformed rows become
`RowError(line, reason)` (line = where the row starts in the file, the header being
line 1) and the other rows are still read. A file whose header fits no kind, or that cannot be decoded,
raises `HisImportError` naming the file.

Encoding (`read_text`): with `encoding=` the bytes are decoded strictly with it. Otherwise: a UTF-8 or
UTF-16 byte-order mark decides; else strict UTF-8; else, if the bytes look like UTF-8 more often than not
(valid multi-byte sequences and sequences cut short, such as an em dash that lost its last byte, as two of
the HIS files have, outnumber stray high bytes), the file is UTF-8 with damaged characters: each broken
sequence becomes U+FFFD and is reported with its byte offset; else cp1252 (what spreadsheets on Windows
export), only if every byte decodes. Detected text with control characters (NUL, ...: binary data, or
UTF-16 without a mark) is refused. Anything else raises `HisImportError` with the first offending byte
offset.
"""
from __future__ import annotations

import ast
import codecs
import csv
import io
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from annotation.records import RowError, UnreadableFile
from hirpf.identities import PROFESSIONS, IdentityError, IdentitySet
from hirpf.labels import (
    PROFESSION_SLOT,
    SLOTS,
    LabelError,
    normalize_slots,
    scale_option,
    slot_name,
    slots_from_identities,
)

OPEN, SCALE, DATASET = "open", "scale", "dataset"
KINDS = (OPEN, SCALE, DATASET)
# The columns each kind needs; extra columns are ignored.
COLUMNS = {
    OPEN: ("model", "identity", "dialog", "gpt_pred", "human_pred"),
    SCALE: ("factor_polarity", "statement", "dialog", "judge_ans", "human_ans"),
    DATASET: ("dialog", "active_adapters", "AGR", "CON", "EXT", "EMS", "OPE", "Profession", "annotate_results"),
}
FILES = {OPEN: "human_evaluation/open_sample10_320.csv", SCALE: "human_evaluation/scale_sample50.csv",
         DATASET: "human_evaluation/data_sample50.csv"}  # names for hirpf.paths.his_file
ROLES = ("system", "user", "assistant")
ANSWER_LETTERS = "ABCDE"
# Scale-file factor names -> (slot, flip poles?). Its "Neuroticism" items are keyed toward stability.
_FACTORS = {"agreeableness": ("AGR", False), "conscientiousness": ("CON", False),
            "extraversion": ("EXT", False), "openness": ("OPE", False), "neuroticism": ("NEU", True),
            "emotional stability": ("NEU", True), "ems": ("NEU", True)}
# Persona words in role prompts -> (slot, flip poles?). "emotional stability" is NEU upside down.
_PERSONA_TRAITS = {"agreeableness": ("AGR", False), "conscientiousness": ("CON", False),
                   "extraversion": ("EXT", False), "openness": ("OPE", False),
                   "neuroticism": ("NEU", False), "emotional stability": ("NEU", True)}
_FLIP = {"high": "low", "low": "high"}
_PERSONA_TRAIT = re.compile(r"You are a human with (high|low) ([a-z ]+?)\.", re.IGNORECASE)
_PERSONA_PROFESSION = re.compile(r"You are (?:a/an|an|a) (\w+)\.", re.IGNORECASE)
_TRANSCRIPT_MARKER = re.compile(r"^<<(system|user|assistant)>>", re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_ESCAPED_RUN = re.compile(r"[\udc80-\udcff]+")  # bytes that were not UTF-8, from errors="surrogateescape"
_NON_ASCII = re.compile(r"[^\x00-\x7f\udc80-\udcff]")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
FALLBACK_ENCODING = "cp1252"


class HisImportError(UnreadableFile):
    """A whole file cannot be read: undecodable, or a header that fits no kind."""


@dataclass
class HisRecord:
    """One row of a HIS human-evaluation file. Slot dicts are in `SLOTS` order and our vocabulary."""

    line: int                            # where the row starts in the file (header = line 1)
    kind: str                            # OPEN, SCALE or DATASET
    system: str | None                   # the system that produced the dialogue (OPEN's `model`), else None
    turns: list[dict]                    # the original transcript, system turns included
    target_slots: dict[str, str] | None  # the identities the agent was given
    judge_slots: dict[str, str] | None   # OPEN: GPT's prediction
    human_slots: dict[str, str] | None   # OPEN, DATASET: the human annotation
    statement: str | None = None         # SCALE: the questionnaire item
    item_slot: str | None = None         # SCALE: the slot the item measures (AGR ... NEU, OPE, Profession)
    item_pole: str | None = None         # SCALE: the pole the item is keyed toward ("high"/"low", a profession)
    judge_option: int | None = None      # SCALE: 1..5
    human_option: int | None = None      # SCALE: 1..5
    judge_missing: tuple[str, ...] = ()  # OPEN: slots GPT gave no prediction for (read as none in judge_slots)


@dataclass(frozen=True)
class DecodedText:
    text: str
    encoding: str                 # the codec used
    damaged: tuple[int, ...] = ()  # byte offsets of broken UTF-8 sequences replaced by U+FFFD


@dataclass
class HisFile:
    path: Path
    kind: str
    encoding: str
    records: list[HisRecord]
    errors: list[RowError]
    notes: list[str] = field(default_factory=list)  # e.g. damaged characters replaced while decoding


# --- decoding ---------------------------------------------------------------------------------------
def read_text(path: str | Path, encoding: str | None = None) -> DecodedText:
    """The file's text; see the module docstring for how the encoding is chosen."""
    path = Path(path)
    data = path.read_bytes()
    if encoding:
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            raise HisImportError(f"{path}: unknown encoding {encoding!r}") from None
        if name == "utf-8" and data.startswith(codecs.BOM_UTF8):
            name = "utf-8-sig"
        return DecodedText(_strict(path, data, name, encoding), encoding)
    for bom, name in _BOMS:
        if data.startswith(bom):
            return _checked(path, DecodedText(_strict(path, data, name, name), name))
    try:
        return _checked(path, DecodedText(data.decode("utf-8"), "utf-8"))
    except UnicodeDecodeError as not_utf8:
        utf8_error = not_utf8
    escaped = data.decode("utf-8", errors="surrogateescape")
    runs = list(_ESCAPED_RUN.finditer(escaped))
    truncated = sum(_truncated_utf8(run.group().encode("utf-8", errors="surrogateescape")) for run in runs)
    utf8_evidence = len(_NON_ASCII.findall(escaped)) + truncated
    if utf8_evidence > len(runs) - truncated:
        damaged, offset, last = [], 0, 0
        for run in runs:  # byte offset = UTF-8 length of the text before it (escapes are one byte each)
            offset += len(escaped[last:run.start()].encode("utf-8", errors="surrogateescape"))
            damaged.append(offset)
            offset += run.end() - run.start()
            last = run.end()
        return _checked(path, DecodedText(_ESCAPED_RUN.sub("\ufffd", escaped), "utf-8", tuple(damaged)))
    try:
        text = data.decode(FALLBACK_ENCODING)
    except UnicodeDecodeError as e:
        raise HisImportError(
            f"{path}: cannot decode: not UTF-8 (byte {data[utf8_error.start]:#04x} at byte offset "
            f"{utf8_error.start}) and not {FALLBACK_ENCODING} (byte {data[e.start]:#04x} at byte offset "
            f"{e.start}); pass its encoding explicitly") from None
    return _checked(path, DecodedText(text, FALLBACK_ENCODING))


def _truncated_utf8(run: bytes) -> bool:
    """A lead byte followed by continuation bytes, cut short: UTF-8 that lost its end (`\\xe2\\x80`
    for an em dash), which legacy text almost never contains (it would read "â€" in cp1252)."""
    need = 2 if 0xC2 <= run[0] <= 0xDF else 3 if 0xE0 <= run[0] <= 0xEF else 4 if 0xF0 <= run[0] <= 0xF4 else 0
    return 2 <= len(run) < need and all(0x80 <= b <= 0xBF for b in run[1:])


def _strict(path: Path, data: bytes, codec: str, shown: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        raise HisImportError(f"{path}: not valid {shown}: byte {data[e.start]:#04x} at byte offset {e.start} "
                             f"({e.reason})") from None


def _checked(path: Path, decoded: DecodedText) -> DecodedText:
    """Refuse a guess that produced control characters: binary data, or UTF-16 without a mark."""
    bad = _CONTROL.search(decoded.text)
    if bad:
        at = len(decoded.text[:bad.start()].encode(decoded.encoding.replace("-sig", ""), errors="replace"))
        raise HisImportError(f"{path}: does not look like text in {decoded.encoding}: control character "
                             f"U+{ord(bad.group()):04X} near byte offset {at}; pass its encoding explicitly")
    return decoded


# --- parsing ----------------------------------------------------------------------------------------
def read_his_csv(path: str | Path, kind: str | None = None, encoding: str | None = None) -> HisFile:
    """Parse one HIS human-evaluation CSV: the good rows as records, the bad ones as `RowError`s."""
    path = Path(path)
    decoded = read_text(path, encoding)
    reader = csv.reader(io.StringIO(decoded.text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise HisImportError(f"{path}: empty file") from None
    except csv.Error as e:
        raise HisImportError(f"{path}: line 1: unreadable header ({e})") from None
    header = [h.strip() for h in header]
    _refuse_duplicates(path, header)
    kind = _kind(path, header, kind)
    parse_row = _PARSERS[kind]
    records, errors = [], []
    line = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            errors.append(RowError(line, f"CSV syntax: {e}"))
            line = reader.line_num + 1
            continue
        start, line = line, reader.line_num + 1
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            errors.append(RowError(start, f"expected {len(header)} fields, found {len(row)}"))
            continue
        try:
            records.append(parse_row(start, dict(zip(header, row))))
        except (ValueError, TypeError, RecursionError, LabelError, IdentityError) as e:  # a cell of the wrong shape
            errors.append(RowError(start, str(e) if not isinstance(e, RecursionError) else "nested too deeply"))
    notes = []
    if decoded.damaged:
        data, newline = path.read_bytes(), b"\n"
        where = ", ".join(f"{off} (line {data.count(newline, 0, off) + 1})" for off in decoded.damaged[:20])
        notes.append(f"{len(decoded.damaged)} damaged UTF-8 sequence(s) replaced by U+FFFD at byte offset(s) "
                     f"{where}{' ...' if len(decoded.damaged) > 20 else ''}")
    return HisFile(path, kind, decoded.encoding, records, errors, notes)


def _refuse_duplicates(path: Path, header: Sequence[str]) -> None:
    twice = [name for name, n in Counter(header).items() if n > 1]
    if twice:
        where = [i + 1 for i, name in enumerate(header) if name == twice[0]]
        raise HisImportError(f"{path}: column {twice[0]!r} appears twice (columns {' and '.join(map(str, where))}); "
                             "remove one, so that no cell is silently ignored")


def _kind(path: Path, header: Sequence[str], kind: str | None) -> str:
    if kind is not None:
        if kind not in KINDS:
            raise HisImportError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        missing = [c for c in COLUMNS[kind] if c not in header]
        if missing:
            raise HisImportError(f"{path}: not a HIS {kind} file: missing column(s) {', '.join(missing)}")
        return kind
    for candidate in KINDS:
        if all(c in header for c in COLUMNS[candidate]):
            return candidate
    raise HisImportError(f"{path}: the header ({', '.join(header)}) fits no HIS human-evaluation file; "
                         f"expected the columns of one of: "
                         + "; ".join(f"{k}: {', '.join(c)}" for k, c in COLUMNS.items()))


def _literal(row: Mapping[str, str], column: str):
    try:
        return ast.literal_eval(row[column].strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise ValueError(f"{column}: not a Python literal ({type(e).__name__}: {e})") from None


def _slots(value: object, column: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"{column}: expected a dict of slots, found {type(value).__name__}")
    try:
        return normalize_slots(value)
    except LabelError as e:
        raise ValueError(f"{column}: {e}") from None


def _turns(value: object, column: str) -> list[dict]:
    if not isinstance(value, list):
        raise ValueError(f"{column}: expected a list of turns, found {type(value).__name__}")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise ValueError(f"{column}: turn {i} is not a {{'role': system|user|assistant, 'content': text}}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["role"] != "system" for t in turns):
        raise ValueError(f"{column}: the dialogue has no turns")
    return turns


def _parse_open(line: int, row: Mapping[str, str]) -> HisRecord:
    system = row["model"].strip()
    if not system:
        raise ValueError("model: empty")
    target = _slots(_literal(row, "identity"), "identity")
    dialog = _literal(row, "dialog")
    if isinstance(dialog, dict):
        if "identity" in dialog and _slots(dialog["identity"], "dialog identity") != target:
            raise ValueError("dialog: its identity disagrees with the identity column")
        dialog = dialog.get("dialog")
    prediction = _literal(row, "gpt_pred")
    judge_slots = _slots(prediction, "gpt_pred")
    missing = {slot_name(key) for key, value in prediction.items() if value is None}
    return HisRecord(line, OPEN, system, _turns(dialog, "dialog"), target, judge_slots=judge_slots,
                     human_slots=_slots(_literal(row, "human_pred"), "human_pred"),
                     judge_missing=tuple(s for s in SLOTS if s in missing))


def _parse_scale(line: int, row: Mapping[str, str]) -> HisRecord:
    item_slot, item_pole = _scale_item(row["factor_polarity"])
    statement = row["statement"].strip()
    if not statement:
        raise ValueError("statement: empty")
    turns = _turns(_literal(row, "dialog"), "dialog")
    return HisRecord(line, SCALE, None, turns, _persona(turns), None, None, statement=statement,
                     item_slot=item_slot, item_pole=item_pole,
                     judge_option=_answer(row, "judge_ans", "judge_score"),
                     human_option=_answer(row, "human_ans", "human_score"))


def _scale_item(text: str) -> tuple[str, str]:
    """`Agreeableness_neg` -> ("AGR", "low"); `Neuroticism_pos` -> ("NEU", "low"); `Doctor_pos` ->
    ("Profession", "Doctor")."""
    name, _, polarity = text.strip().rpartition("_")
    if polarity not in ("pos", "neg"):
        raise ValueError(f"factor_polarity: {text!r} does not end in _pos or _neg")
    profession = next((p for p in PROFESSIONS if p.lower() == name.lower()), None)
    if profession:
        if polarity != "pos":
            raise ValueError(f"factor_polarity: {text!r}: profession items are keyed positively only")
        return PROFESSION_SLOT, profession
    if name.lower() not in _FACTORS:
        raise ValueError(f"factor_polarity: unknown factor {name!r}")
    slot, flip = _FACTORS[name.lower()]
    pole = "high" if polarity == "pos" else "low"
    return slot, _FLIP[pole] if flip else pole


def _persona(turns: Sequence[dict]) -> dict[str, str] | None:
    """The target identity named by the role prompt (system turn, or the first user turn), if any."""
    head = " ".join(t["content"] for t in turns[:2])
    trait = _PERSONA_TRAIT.search(head)
    if trait and trait.group(2).lower() in _PERSONA_TRAITS:
        slot, flip = _PERSONA_TRAITS[trait.group(2).lower()]
        pole = trait.group(1).lower()
        return slots_from_identities(IdentitySet.parse([f"{slot}_{_FLIP[pole] if flip else pole}"]))
    profession = _PERSONA_PROFESSION.search(head)
    if profession:
        name = next((p for p in PROFESSIONS if p.lower() == profession.group(1).lower()), None)
        if name:
            return slots_from_identities(IdentitySet.parse([name]))
    return None


def _answer(row: Mapping[str, str], column: str, score_column: str) -> int:
    text = row[column].strip()
    if len(text) == 1 and text.upper() in ANSWER_LETTERS:
        option = ANSWER_LETTERS.index(text.upper()) + 1
    else:
        try:
            option = scale_option(text)
        except LabelError as e:
            raise ValueError(f"{column}: {e} (or a letter A-E)") from None
    score = (row.get(score_column) or "").strip()
    if score and score != str(option):
        raise ValueError(f"{column}: answer {text!r} (option {option}) disagrees with {score_column} {score!r}")
    return option


def _parse_dataset(line: int, row: Mapping[str, str]) -> HisRecord:
    turns = _transcript(row["dialog"])
    adapters = _literal(row, "active_adapters")
    if not isinstance(adapters, (set, list, tuple)):
        raise ValueError(f"active_adapters: expected a set of identity names, found {type(adapters).__name__}")
    try:
        target = slots_from_identities(IdentitySet.parse(sorted(adapters)))
    except IdentityError as e:
        raise ValueError(f"active_adapters: {e}") from None
    human = _slots({slot: row[slot] for slot in ("AGR", "CON", "EXT", "EMS", "OPE", "Profession")},
                   "per-slot columns")
    annotated = _literal(row, "annotate_results")
    try:
        matches = slots_from_identities(IdentitySet.parse(sorted(annotated))) == human
    except (IdentityError, TypeError) as e:
        raise ValueError(f"annotate_results: {e}") from None
    if not matches:
        raise ValueError("annotate_results disagrees with the per-slot columns")
    return HisRecord(line, DATASET, None, turns, target, None, human)


def _transcript(text: str) -> list[dict]:
    """`<<system>>...\\n<<user>>...\\n<<assistant>>...` -> turns; a marker counts only at a line start."""
    parts = _TRANSCRIPT_MARKER.split(text)
    if parts[0].strip():
        raise ValueError("dialog: text before the first <<system>>/<<user>>/<<assistant>> marker")
    turns = [{"role": role, "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]
    return _turns(turns, "dialog")


_PARSERS = {OPEN: _parse_open, SCALE: _parse_scale, DATASET: _parse_dataset}
