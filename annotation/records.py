"""What an import file holds, as plain data: dialogues with their judges' predictions and imported human
answers. The file readers (`annotation.import_files`) produce these; `annotation.store` validates and
stores them; neither needs the other to describe them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence


class UnreadableFile(ValueError):
    """A whole import file cannot be read (undecodable, a header that fits no kind, a broken JSON list);
    nothing in it was stored."""


@dataclass(frozen=True)
class RowError:
    """A row of an import file that was not stored, and why. `line` is where the row starts in the file
    (the header of a CSV being line 1), or the record's position in a JSON list."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class JudgeLabel:
    """An LLM referee's answer for one dialogue: six slots or one scale option."""

    judge: str
    slots: Mapping[str, object] | None = None
    option: object = None
    raw_reply: str | None = None


@dataclass(frozen=True)
class ImportedAnswer:
    """A human answer that arrives with an imported dialogue (e.g. the HIS human predictions)."""

    annotator: str  # external id, stored under `annotation.store.IMPORTED_PREFIX`
    display_name: str
    slots: Mapping[str, object] | None = None
    option: object = None
    comment: str = ""


@dataclass(frozen=True)
class DialogueRecord:
    """One dialogue read from a file, unchecked: the arguments of `Store.add_dialogue`, which checks them."""

    transcript: Sequence[Mapping]
    target: object = None
    kind: str = "identity"
    source: str = "file"
    system: str | None = None
    source_ref: str | None = None
    statement: str | None = None
    factor: str | None = None
    target_option: object = None
    judges: Sequence[JudgeLabel] = field(default_factory=tuple)
    answers: Sequence[ImportedAnswer] = field(default_factory=tuple)
