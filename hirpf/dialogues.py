"""Identity dialogues: read, validate against the identity rules, tokenize with assistant-only labels.

Shared by the trainer (`training/` imports it from here) and the evaluations that score dialogues
(`hirpf.eval.recognize`); `hirpf` never imports `training`, so the pieces live here.

Record format (the HIS format):

    {"dialog": [{"role": "user" | "assistant" | "system", "content": "..."}, ...],
     "active_adapters": ["Artist", "AGR_high", "OPE_low"]}

Sources: a JSON list file, a JSONL file, or a tree `<root>/<name>/{train,test}.json`.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .identities import IdentityError, IdentitySet
from .prompts import Conditioning, system_message

ROLES = ("system", "user", "assistant")
IGNORE = -100  # label of tokens that carry no loss


class InvalidRecord(ValueError):
    """A record that breaks the format or the identity rules; names the file, the index and the reason."""

    def __init__(self, source: str, index: int, reason: str, kind: str | None = None):
        super().__init__(f"{source} record {index}: {reason}")
        self.source, self.index, self.reason = source, index, reason
        self.kind = kind or reason  # what the skip report counts by


@dataclass(frozen=True)
class Dialogue:
    """A valid record: user/assistant turns (any system turn removed) and its identity set."""

    turns: tuple[dict, ...]
    identities: IdentitySet
    source: str = ""
    index: int = 0


@dataclass
class LoadReport:
    """What a load kept and skipped, with a count per reason."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def describe(self) -> str:
        if not self.skipped:
            return f"{self.kept} records kept, none skipped"
        reasons = "; ".join(f"{n} × {reason}" for reason, n in self.skipped.most_common())
        return f"{self.kept} records kept, {sum(self.skipped.values())} skipped: {reasons}"


def raw_records(path: str | Path, split: str | None = None) -> Iterator[tuple[str, int, object]]:
    """(source file, index in it, raw record) for a JSON list, a JSONL file, or a folder tree of
    `<name>/{train,test}.json` files (`split` picks train or test; None takes both)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*/train.json")) + sorted(path.glob("*/test.json"))
        if split is not None:
            files = [f for f in files if f.stem == split]
        if not files:
            raise FileNotFoundError(f"{path} holds no <name>/train.json or <name>/test.json files")
        for f in files:
            yield from raw_records(f)
        return
    if not path.is_file():
        raise FileNotFoundError(f"no data file or folder at {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    yield str(path), i, json.loads(line)
                except json.JSONDecodeError as err:
                    yield str(path), i, InvalidRecord(str(path), i, f"not valid JSON: {err.msg}", "not valid JSON")
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}): {err.msg}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of records")
    for i, record in enumerate(data):
        yield str(path), i, record


def validate(record, source: str = "", index: int = 0) -> Dialogue:
    """The record as a `Dialogue`, or `InvalidRecord` with the reason."""
    if isinstance(record, InvalidRecord):
        raise record

    def bad(reason, kind=None):
        return InvalidRecord(source, index, reason, kind)

    if not isinstance(record, dict) or "dialog" not in record:
        raise bad("not a record with a 'dialog' list")
    try:
        identities = IdentitySet.parse(record.get("active_adapters") or [])
    except IdentityError as err:
        raise bad(f"identity rules: {err}", f"identity rules: {_identity_rule(str(err))}") from None
    dialog = record["dialog"]
    if not isinstance(dialog, list) or not dialog:
        raise bad("empty dialog")
    turns = []
    for k, turn in enumerate(dialog):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise bad(f"turn {k} is not a {{role, content}} object", "malformed turn")
        if turn.get("role") not in ROLES:
            raise bad(f"unknown role {turn.get('role')!r} in turn {k}", "unknown role")
        if turn["role"] == "system":
            if k != 0:
                raise bad(f"a system turn may only lead the dialog (turn {k})", "system turn inside the dialog")
            continue  # replaced by our identity system message when tokenizing
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not turns:
        raise bad("empty dialog")
    if not any(t["role"] == "assistant" for t in turns):
        raise bad("no assistant turn")
    return Dialogue(tuple(turns), identities, source, index)


def load_dialogues(path: str | Path, on_invalid: str = "error",
                   split: str | None = None) -> tuple[list[Dialogue], LoadReport]:
    """All valid dialogues of a source. `on_invalid="error"` stops at the first bad record (file, index,
    reason); `"skip"` drops bad records and counts them per reason in the report."""
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    dialogues, report = [], LoadReport()
    for source, index, record in raw_records(path, split):
        try:
            dialogues.append(validate(record, source, index))
        except InvalidRecord as err:
            if on_invalid == "error":
                raise
            report.skipped[err.kind] += 1
            continue
        report.kept += 1
    return dialogues, report


def holdout_split(dialogues: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a fixed shuffle for a given seed, so training and evaluation agree on the split."""
    order = list(range(len(dialogues)))
    random.Random(seed).shuffle(order)
    held_out = max(1, round(len(order) * fraction))
    return [dialogues[i] for i in order[held_out:]], [dialogues[i] for i in order[:held_out]]


def _identity_rule(message: str) -> str:
    for key, rule in (("both poles", "both poles of one trait"), ("more than one profession", "two professions"),
                      ("unknown identity", "unknown identity"), ("at most", "more than six identities")):
        if key in message:
            return rule
    return message


def tokenize(dialogue: Dialogue, tokenizer, conditioning: Conditioning = Conditioning.EXPERTS_AND_PROMPT,
             max_length: int | None = None) -> dict | None:
    """input_ids, labels (assistant tokens only; everything else -100) and the `[6, 2]` identity pairs.
    Past `max_length`, whole turns are dropped from the end (never half a label); None when not even the
    first assistant turn fits."""
    messages = [{"role": "system", "content": system_message(dialogue.identities, conditioning)}]
    messages += list(dialogue.turns)

    def render(msgs, gen=False):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    spans, text = [], render(messages)
    for k, turn in enumerate(messages):
        if turn["role"] == "assistant":
            start = len(render(messages[:k], gen=True))
            end = len(render(messages[:k + 1]).rstrip())  # the content and the end-of-turn token
            spans.append((start, end, k))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [IGNORE] * len(ids)
    turn_end_token = {}  # message index -> index after its last token
    for i, (a, b) in enumerate(offsets):
        for start, end, _k in spans:
            if a >= start and b <= end and b > a:
                labels[i] = ids[i]
        for _start, end, k in spans:
            if b <= end:
                turn_end_token[k] = i + 1
    if max_length is not None and len(ids) > max_length:
        fitting = [turn_end_token[k] for _, _, k in spans if turn_end_token.get(k, 10**9) <= max_length]
        if not fitting:
            return None
        cut = max(fitting)
        ids, labels = ids[:cut], labels[:cut]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "identity_pairs": dialogue.identities.index_pairs()}


class Collator:
    """Pads a list of tokenized dialogues into a batch (right padding; labels -100 on padding) and stacks
    their identity pairs into `[batch, 6, 2]`."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = f["input_ids"], f["labels"], 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
                "identity_pairs": torch.stack([f["identity_pairs"] for f in features])}
