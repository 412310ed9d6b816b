"""Pairs made elsewhere, from JSONL: one pair a line.

    {"prompt": "How do you spend a Sunday?", "question": "Which reply shows more extraversion?",
     "expected": "a",                                   # discrimination: "a" or "b"; preference: absent/null
     "a": {"reply": "...", "identities": "EXT_high", "condition": "experts+prompt@1.0",
           "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "checkpoint": "models/x", "seed": 0},
     "b": {"reply": "...", "identities": "EXT_low", "condition": "experts+prompt@1.0", ...}}

`identities` is identity names (text separated by commas, or a list; "" for none); `condition` a label
like `experts+prompt@1.0` or any name of up to 200 characters for replies not made here (then its
conditioning and strength are unknown); `base_model`, `checkpoint`, `seed` are optional provenance, the
same on every line that names the condition. A discrimination pair shows one condition with two identity
sets; a preference pair one identity set under two conditions.

All or nothing: the first bad line refuses the file with its line number and the field (`line 3: a.reply:
required`), and nothing is stored. Lines end at `\\n` (or `\\r\\n`); blank lines are skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from annotation.his_import import HisImportError, read_text
from annotation.import_files import _json_value
from annotation.pair_studies import (
    DEFAULT_QUESTIONS,
    MAX_LABEL_CHARS,
    MAX_MODEL_CHARS,
    MAX_QUESTION_CHARS,
    Condition,
    PairStudyError,
    PlannedPair,
    PlannedReply,
    StudyPlan,
    parse_condition,
)
from annotation.store import StoreError, checked_text
from db.models import PAIR_DESIGNS
from hirpf.identities import IdentityError, IdentitySet

FIELDS = {"prompt", "question", "expected", "a", "b"}
SIDE_FIELDS = {"reply", "identities", "condition", "base_model", "checkpoint", "seed"}


class PairFileError(PairStudyError):
    """The file cannot be imported; the message names the line and the field."""


def read_pair_file(path: str | Path, design: str, question: str | None = None,
                   ties_allowed: bool | None = None) -> StudyPlan:
    """The study plan a JSONL file of pairs describes, or `PairFileError` at the first bad line."""
    if design not in PAIR_DESIGNS:
        raise PairFileError(f"design: unknown {design!r}; expected one of {', '.join(PAIR_DESIGNS)}")
    try:
        decoded = read_text(path)
    except OSError as error:
        raise PairFileError(f"{path}: {error.strerror or error}") from None
    except HisImportError as error:
        raise PairFileError(str(error)) from None
    if decoded.damaged:
        raise PairFileError(f"{path}: broken UTF-8 at byte offset {decoded.damaged[0]}")
    conditions: dict[str, Condition] = {}
    pairs = []
    # Not str.splitlines(): JSON text may hold U+2028 and the like unescaped (as annotation.import_files).
    for number, line in enumerate(decoded.text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            pairs.append(_pair(_record(line), design, conditions))
        except (ValueError, StoreError, IdentityError, RecursionError) as error:
            raise PairFileError(f"line {number}: {error}") from None
    if not pairs:
        raise PairFileError(f"{path}: no pairs")
    template = question or DEFAULT_QUESTIONS["preference" if design == "preference" else "poles"]
    return StudyPlan(design, template, design == "preference" if ties_allowed is None else ties_allowed,
                     tuple(conditions.values()), tuple(pairs))


def _record(line: str) -> Mapping[str, Any]:
    record = _json_value(line.removesuffix("\r"))
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - FIELDS)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field; expected {', '.join(sorted(FIELDS))}")
    return record


def _pair(record: Mapping[str, Any], design: str, conditions: dict[str, Condition]) -> PlannedPair:
    prompt = _text(record.get("prompt"), "prompt")
    question = _text(record.get("question"), "question", limit=MAX_QUESTION_CHARS)
    a, b = (_side(record.get(side), side, prompt, conditions) for side in ("a", "b"))
    expected = record.get("expected")
    if design == "discrimination":
        if expected not in ("a", "b"):
            raise ValueError(f"expected: a discrimination pair needs \"a\" or \"b\", got {expected!r}")
        if a.condition.label != b.condition.label:
            raise ValueError("b.condition: a discrimination pair shows one condition on both sides")
        if a.identities == b.identities:
            raise ValueError("b.identities: a discrimination pair needs two different identity sets")
    else:
        if expected is not None:
            raise ValueError("expected: a preference pair has no right answer; leave it out")
        if a.identities != b.identities:
            raise ValueError("b.identities: a preference pair shows one identity set on both sides")
        if a.condition.label == b.condition.label:
            raise ValueError("b.condition: a preference pair compares two different conditions")
    return PlannedPair(a, b, question, expected)


def _side(value: object, side: str, prompt: str, conditions: dict[str, Condition]) -> PlannedReply:
    if not isinstance(value, dict):
        raise ValueError(f"{side}: expected an object with reply, identities and condition")
    unknown = sorted(set(value) - SIDE_FIELDS)
    if unknown:
        raise ValueError(f"{side}.{unknown[0]}: unknown field; expected {', '.join(sorted(SIDE_FIELDS))}")
    reply = _text(value.get("reply"), f"{side}.reply", strip=False)
    try:
        identities = IdentitySet.parse(_identity_names(value.get("identities"), side))
    except IdentityError as error:
        raise ValueError(f"{side}.identities: {error}") from None
    if identities.strengths:
        raise ValueError(f"{side}.identities: give strengths in the condition (experts+prompt@1.5), not here")
    label = checked_text(value.get("condition"), f"{side}.condition", MAX_LABEL_CHARS, required=True)
    provenance = {what: checked_text(value[what], f"{side}.{what}", MAX_MODEL_CHARS)
                  for what in ("base_model", "checkpoint") if value.get(what) is not None}
    seed = value.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or abs(seed) >= 2**31):
        raise ValueError(f"{side}.seed: expected a whole number, got {seed!r}")
    condition = _condition(label, side, seed=seed, **provenance)
    known = conditions.setdefault(label, condition)
    if known != condition:
        raise ValueError(f"{side}: condition {label!r} with {condition.provenance()}, but an earlier line "
                         f"gave it {known.provenance()}")
    return PlannedReply(condition, identities.names, prompt, reply)


def _condition(label: str, side: str, **provenance) -> Condition:
    """A label this code knows (`experts+prompt@1.0`) is parsed into conditioning and strength; any other
    name is kept as it is (replies not made here)."""
    head = label.partition("@")[0]
    if head in ("experts+prompt", "experts", "prompt"):
        try:
            return parse_condition(label, **provenance)
        except ValueError as error:
            raise ValueError(f"{side}.condition: {error}") from None
    return Condition(label, **provenance)


def _identity_names(value: object, side: str) -> object:
    if value is None:
        raise ValueError(f"{side}.identities: required (\"\" for none)")
    if not isinstance(value, (str, list)) or (isinstance(value, list) and not all(isinstance(n, str) for n in value)):
        raise ValueError(f"{side}.identities: expected identity names, as text or a list of text")
    return value


def _text(value: object, what: str, strip: bool = True, limit: int | None = None) -> str:
    try:
        return checked_text(value, what, limit, required=True, strip=strip)
    except StoreError as error:
        raise ValueError(str(error)) from None
