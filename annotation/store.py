"""The human-evaluation workflow on top of `db/`: dialogues in, annotators' tasks out, answers stored once.

    store = Store(Database(url), AssignmentPolicy(overlap=2, shared_fraction=0.2, seed=7))
    annotator = store.register_annotator("Ada", external_id="hf:ada")
    store.add_dialogue(turns, "Doctor,AGR_high", source="app", system="hirpf:smollm2-135m")
    view = store.next_task(annotator)             # a TaskView: anonymized, opaque ids only
    store.submit(view.task, slots={...}, comment="", seconds=41.5)

Everything addressed from outside is addressed by its `public_id` (annotators, tasks, dialogues). Bad
input raises `StoreError` (or `hirpf.labels.LabelError`) naming what is wrong, before anything is
written: each call is one transaction.

Text is checked the same way on every database: no NUL (PostgreSQL cannot store it), no lone surrogates
(not encodable as UTF-8), and at most what its column holds (`MAX_*_CHARS`). Comments go up to
`MAX_COMMENT_CHARS` characters, skip reasons up to `MAX_REASON_CHARS`. Text is stored verbatim (HTML and
scripts included): escaping is the viewer's job. Files are read by `annotation.import_files` and imported by
`annotation.store_io`; overviews for the admin are in `annotation.report`.
"""
from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from annotation.assignment import AssignmentPolicy, plan_assignment
from annotation.records import ImportedAnswer, JudgeLabel
from db import Database
from db.models import (
    KINDS,
    SOURCES,
    Annotation,
    AnnotationTask,
    Annotator,
    Dialogue,
    JudgePrediction,
    TaskStatus,
    utcnow,
)
from hirpf import transcripts
from hirpf.identities import IdentityError, IdentitySet
from hirpf.labels import LabelError, normalize_slots, scale_option

MAX_COMMENT_CHARS = 4000
MAX_REASON_CHARS = 500
# Limits of text kept in VARCHAR columns come from the columns, so that a value SQLite would keep is not
# refused by PostgreSQL (which enforces the length).
MAX_NAME_CHARS = Annotator.__table__.c.display_name.type.length
MAX_FACTOR_CHARS = Dialogue.__table__.c.factor.type.length
MAX_SOURCE_REF_CHARS = Dialogue.__table__.c.source_ref.type.length
# Annotators whose external id starts with this are label sets imported from files (e.g. the HIS human
# evaluation): they are never given tasks and do not count towards an item's overlap or cap.
IMPORTED_PREFIX = "file:"
# NUL and lone surrogates: no database here stores them (PostgreSQL refuses NUL, UTF-8 has no surrogates).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class StoreError(ValueError):
    """Bad input, or a request the current state does not allow; nothing was changed."""


class NotFound(StoreError):
    """No annotator, task or dialogue with that id."""


class Added(NamedTuple):
    dialogue: str  # public id
    created: bool  # False: the same content was already stored (dedup by content hash)


class Progress(NamedTuple):
    done: int  # answered or skipped
    assigned: int
    skipped: int


class SubmitOutcome(str, enum.Enum):
    STORED = "stored"
    UNCHANGED = "unchanged"  # the same answer again (a double click)
    EDITED = "edited"        # a changed answer to the annotator's last task

    def __str__(self) -> str:
        return self.value


class Submitted(NamedTuple):
    task: str
    status: SubmitOutcome


@dataclass(frozen=True)
class AnswerView:
    """The annotator's own answer to a task, as their screen shows it."""

    slots: Mapping[str, str] | None
    option: int | None
    comment: str


@dataclass(frozen=True)
class TaskView:
    """What an annotator's screen shows for one task. No target, system, source or internal id: every id in
    it is opaque, and the transcript is the anonymized one with the agent as the task's speaker."""

    task: str                        # the task's public id
    kind: str                        # "identity" (six slots) or "scale_interview" (one option)
    status: TaskStatus
    position: int                    # its place in the annotator's queue, from 1
    progress: Progress               # the annotator's, when the view was made
    agent: str                       # "X" or "Y": the speaker to judge
    transcript: list[dict]           # [{"speaker": "X"|"Y", "text": ...}]
    statement: str | None            # scale interviews: the questionnaire item
    answer: AnswerView | None
    editable: bool                   # the annotator's last answer, the only one they may change
    skip_reason: str | None


class Store:
    def __init__(self, database: Database, policy: AssignmentPolicy | None = None):
        self.db = database
        self.policy = policy or AssignmentPolicy()

    # --- annotators -------------------------------------------------------------------------------
    def register_annotator(self, display_name: str, external_id: str | None = None) -> str:
        """A new annotator's public id; with an `external_id` (e.g. "hf:<username>") the same person gets
        the same annotator every time."""
        name = checked_text(display_name, "display name", MAX_NAME_CHARS, required=True)
        external = checked_text(external_id, "external id", MAX_NAME_CHARS) if external_id is not None else None
        if external and external.startswith(IMPORTED_PREFIX):
            raise StoreError(f"external id {external!r}: the prefix {IMPORTED_PREFIX!r} is reserved for imports")

        def run(session: Session) -> str:
            if external:
                found = session.scalar(select(Annotator).where(Annotator.external_id == external))
                if found:
                    return found.public_id
            annotator = Annotator(display_name=name, external_id=external)
            session.add(annotator)
            session.flush()
            return annotator.public_id

        return self.db.write(run)

    # --- dialogues --------------------------------------------------------------------------------
    def add_dialogue(self, transcript: Sequence[Mapping], target: object = None, *, kind: str = "identity",
                     source: str = "app", system: str | None = None, source_ref: str | None = None,
                     statement: str | None = None, factor: str | None = None, target_option: object = None,
                     judges: Sequence[JudgeLabel] = (), answers: Sequence[ImportedAnswer] = ()) -> Added:
        """Store a dialogue with its anonymized and reversed forms (plus any judge predictions and imported
        human answers, in the same transaction). The same content twice is stored once. Takes the fields
        of an `annotation.records.DialogueRecord` by name."""
        values = prepare_dialogue(transcript, target, kind=kind, source=source, system=system,
                                  source_ref=source_ref, statement=statement, factor=factor,
                                  target_option=target_option)
        judge_rows = [_judge_values(label, kind) for label in judges]
        answer_rows = [_imported_answer_values(answer, kind) for answer in answers]

        def run(session: Session) -> Added:
            dialogue = session.scalar(select(Dialogue).where(Dialogue.content_hash == values["content_hash"]))
            created = dialogue is None
            if created:
                dialogue = Dialogue(**values)
                session.add(dialogue)
                session.flush()
            for row in judge_rows:
                _upsert_judge(session, dialogue, row)
            for row in answer_rows:
                _record_imported_answer(session, dialogue, row)
            return Added(dialogue.public_id, created)

        return self.db.write(run)

    def add_judge_prediction(self, dialogue: str, label: JudgeLabel) -> None:
        """Store (or replace) one judge's prediction for a dialogue."""
        def run(session: Session) -> None:
            found = _dialogue(session, dialogue)
            _upsert_judge(session, found, _judge_values(label, found.kind))

        self.db.write(run)

    # --- assignment -------------------------------------------------------------------------------
    def assign(self, annotator: str, count: int | None = None) -> int:
        """Give the annotator up to `count` new tasks (all eligible ones if None) under the store's policy;
        returns how many were given."""
        return self.db.write(lambda session: self._assign(session, annotator, count))

    def _assign(self, session: Session, annotator: str, count: int | None, only_when_idle: bool = False) -> int:
        self.db.serialize(session, "assignment")  # per-item counts must not change under us
        who = _annotator(session, annotator)
        if (who.external_id or "").startswith(IMPORTED_PREFIX):
            raise StoreError("imported label sets are not given tasks")
        # Past the lock, so a batch another call just handed out (another open tab) is seen here.
        if only_when_idle and _first_pending(session, who.id) is not None:
            return 0
        mine = set(session.scalars(select(AnnotationTask.dialogue_id).where(AnnotationTask.annotator_id == who.id)))
        counted = (select(AnnotationTask.dialogue_id, func.count().label("n"))
                   .join(Annotator, Annotator.id == AnnotationTask.annotator_id)
                   .where(AnnotationTask.status != TaskStatus.SKIPPED,
                          func.coalesce(Annotator.external_id, "").not_like(IMPORTED_PREFIX + "%"))
                   .group_by(AnnotationTask.dialogue_id).subquery())
        # Items are keyed by content and annotators by their external identity where they have one, so a
        # study rerun on a fresh database hands out the same orders.
        rows = session.execute(
            select(Dialogue.id, Dialogue.content_hash, func.coalesce(counted.c.n, 0))
            .outerjoin(counted, counted.c.dialogue_id == Dialogue.id)
            .where(Dialogue.kind.in_(self.policy.kinds))).all()
        items = {item: n for _, item, n in rows}
        ids = {item: key for key, item, _ in rows}
        held = {item for key, item, _ in rows if key in mine}
        plan = plan_assignment(self.policy, who.external_id or who.public_id, items, held, count)
        last = session.scalar(select(func.max(AnnotationTask.position)).where(
            AnnotationTask.annotator_id == who.id)) or 0
        for offset, (item, side) in enumerate(plan, start=1):
            session.add(AnnotationTask(annotator_id=who.id, dialogue_id=ids[item], position=last + offset, side=side))
        return len(plan)

    # --- annotating -------------------------------------------------------------------------------
    def next_task(self, annotator: str) -> TaskView | None:
        """The annotator's first pending task (where they left off), assigning a new batch when their queue
        is empty; None when there is nothing left for them. Calls at once for one annotator (several open
        tabs) hand out one batch between them."""
        view = self._first_pending_view(annotator)
        if view is None:
            self.db.write(lambda session: self._assign(session, annotator, self.policy.batch, only_when_idle=True))
            view = self._first_pending_view(annotator)
        return view

    def _first_pending_view(self, annotator: str) -> TaskView | None:
        with self.db.read() as session:
            task = _first_pending(session, _annotator(session, annotator).id)
            return None if task is None else _view(session, task)

    # `annotator`, where a method takes it: the task must be that annotator's (else NotFound), so a task id
    # seen elsewhere or replayed cannot answer or skip somebody else's task.
    def task_view(self, task: str, annotator: str | None = None) -> TaskView:
        """What the annotator's screen shows for a task (see `TaskView`)."""
        with self.db.read() as session:
            return _view(session, _task(session, task, annotator))

    def submit(self, task: str, slots: Mapping[str, object] | None = None, option: object = None,
               comment: str = "", seconds: float | None = None, annotator: str | None = None) -> Submitted:
        """Answer a task. The same answer twice is stored once; a different answer to an answered task is an
        edit, allowed only for the annotator's last answer."""
        comment = _comment(comment)
        seconds = _seconds(seconds)

        def run(session: Session) -> Submitted:
            found = _task(session, task, annotator)
            answer = _answer_values(found.dialogue.kind, slots, option)
            if found.status == TaskStatus.SKIPPED:
                raise StoreError("this task was skipped; it cannot be answered")
            now = utcnow()
            existing = found.annotation
            if existing is None:
                session.add(Annotation(task_id=found.id, comment=comment, seconds=seconds, created_at=now,
                                       updated_at=now, **answer))
                found.status, found.updated_at = TaskStatus.DONE, now
                return Submitted(found.public_id, SubmitOutcome.STORED)
            if (existing.slots, existing.option, existing.comment) == (answer["slots"], answer["option"], comment):
                return Submitted(found.public_id, SubmitOutcome.UNCHANGED)
            last = session.scalar(select(func.max(Annotation.id)).join(AnnotationTask)
                                  .where(AnnotationTask.annotator_id == found.annotator_id))
            if existing.id != last:
                raise StoreError("only your last answer can be edited; this task was answered before it")
            existing.slots, existing.option, existing.comment = answer["slots"], answer["option"], comment
            if seconds is not None:  # time spent is the total over the answer and its edits
                existing.seconds = (existing.seconds or 0) + seconds
            existing.edits += 1
            existing.updated_at = found.updated_at = now
            return Submitted(found.public_id, SubmitOutcome.EDITED)

        return self.db.write(run)

    def skip(self, task: str, reason: str, annotator: str | None = None) -> None:
        """Set a pending task aside with a reason (required); it no longer counts towards the item's cap. A
        task is skipped once: a second skip is refused."""
        reason = checked_text(reason, "skip reason", MAX_REASON_CHARS, required=True)

        def run(session: Session) -> None:
            found = _task(session, task, annotator)
            if found.status == TaskStatus.DONE:
                raise StoreError("this task is answered; edit the answer instead of skipping it")
            if found.status == TaskStatus.SKIPPED:  # the first reason stands: it is what the admin reads
                raise StoreError("this task is already skipped (its first reason is kept)")
            found.status, found.skip_reason, found.updated_at = TaskStatus.SKIPPED, reason, utcnow()

        self.db.write(run)

    def progress(self, annotator: str) -> Progress:
        with self.db.read() as session:
            return _progress(session, _annotator(session, annotator).id)


# --- validation (pure) ---------------------------------------------------------------------------------
def prepare_dialogue(transcript: Sequence[Mapping], target: object = None, *, kind: str = "identity",
                     source: str = "app", system: str | None = None, source_ref: str | None = None,
                     statement: str | None = None, factor: str | None = None,
                     target_option: object = None) -> dict[str, Any]:
    """The column values of a dialogue, or `StoreError` naming what is wrong."""
    if kind not in KINDS:
        raise StoreError(f"kind: unknown {kind!r}; expected one of {', '.join(KINDS)}")
    if source not in SOURCES:
        raise StoreError(f"source: unknown {source!r}; expected one of {', '.join(SOURCES)}")
    if not isinstance(transcript, Sequence) or isinstance(transcript, (str, bytes)):
        raise StoreError("dialogue: expected a list of {role, content} turns")
    turns = []
    for i, turn in enumerate(transcript):
        if not isinstance(turn, Mapping):
            raise StoreError(f"dialogue turn {i}: expected an object with role and content, got "
                             f"{type(turn).__name__}")
        content = turn.get("content")
        if isinstance(content, str):  # anything else is refused, by role, in `transcripts`
            checked_text(content, f"dialogue turn {i} content", strip=False)
        turns.append({"role": turn.get("role"), "content": content})
    system = checked_text(system, "system", MAX_NAME_CHARS) if system is not None else None
    source_ref = checked_text(source_ref, "source_ref", MAX_SOURCE_REF_CHARS) if source_ref is not None else None
    factor = checked_text(factor, "factor", MAX_FACTOR_CHARS) if factor is not None else None
    try:
        anonymized = transcripts.anonymize(turns, redact=_names_to_hide(system, source_ref))
        reversed_turns = transcripts.reverse(turns)
    except ValueError as error:
        raise StoreError(f"dialogue: {error}") from None
    if not any(t["role"] == "assistant" for t in turns):
        raise StoreError("dialogue: no assistant turn, nothing to judge")
    identities = _identities(target)
    if kind == "scale_interview":
        statement = checked_text(statement, "statement", MAX_COMMENT_CHARS, required=True)
        option = None if target_option is None else _option(target_option, "target option")
    elif statement is not None or target_option is not None:
        raise StoreError("statement and target option belong to scale interviews only")
    else:
        option = None
    target_names = list(identities.names)
    digest = hashlib.sha256(json.dumps({"kind": kind, "transcript": turns, "target": target_names,
                                        "statement": statement}, sort_keys=True, ensure_ascii=False,
                                       separators=(",", ":")).encode()).hexdigest()
    return dict(kind=kind, source=source, system=system, source_ref=source_ref, target=target_names,
                statement=statement, factor=factor, target_option=option, transcript=turns,
                anonymized=anonymized, reversed=reversed_turns, content_hash=digest)


def _identities(target: object) -> IdentitySet:
    if isinstance(target, (list, tuple, set, frozenset)):
        odd = [type(n).__name__ for n in target if not isinstance(n, str)]
        if odd:
            raise StoreError(f"target: identity names must be text, found {odd[0]} in the list")
    elif not (target is None or isinstance(target, (str, IdentitySet))):
        raise StoreError(f"target: expected identity names (a list of text, or text separated by commas), "
                         f"got {type(target).__name__}")
    try:
        return IdentitySet.parse(target)
    except IdentityError as error:
        raise StoreError(f"target: {error}") from None
    except RecursionError:  # a JSON list text nested thousands deep
        raise StoreError("target: nested too deeply") from None


def _names_to_hide(*names: str | None) -> list[str]:
    """System names and file names to redact from what annotators see: each name, its `:`/`/`-separated
    parts (a hub id's organisation and model) and a file's stem. Only names that look like identifiers (a
    digit, `-`, `_`, `.`, `/` or `:` in them) - a system called "ours" must not blank the word out of every
    dialogue; the well-known model names are redacted by `hirpf.transcripts` anyway."""
    out = set()
    for name in filter(None, names):
        for part in {name, *re.split(r"[:/\\]", name)}:
            for candidate in (part, os.path.splitext(part)[0]):
                if len(candidate) >= 3 and re.search(r"[\d\-_./:]", candidate):
                    out.add(candidate)
    return sorted(out)


def _answer_values(kind: str, slots: Mapping[str, object] | None, option: object) -> dict:
    if kind == "identity":
        if option is not None or slots is None:
            raise StoreError("an identity dialogue is answered with six slots, not an option")
        if not isinstance(slots, Mapping):
            raise LabelError(f"slots: expected a mapping of slot to label, got {type(slots).__name__}")
        return {"slots": normalize_slots(slots), "option": None}
    if slots is not None or option is None:
        raise StoreError("a scale interview is answered with one option (1-5), not slots")
    return {"slots": None, "option": _option(option, "option")}


def _option(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise LabelError(f"{what}: {value!r} is not a scale option")
    return scale_option(value)


def _judge_values(label: JudgeLabel, kind: str) -> dict:
    judge = checked_text(label.judge, "judge name", MAX_NAME_CHARS, required=True)
    answer = _answer_values(kind, label.slots, label.option)
    raw = label.raw_reply if label.raw_reply is None else checked_text(str(label.raw_reply), "raw reply", strip=False)
    return dict(judge=judge, raw_reply=raw, **answer)


def _imported_answer_values(answer: ImportedAnswer, kind: str) -> dict:
    external = IMPORTED_PREFIX + checked_text(answer.annotator, "imported annotator",
                                              MAX_NAME_CHARS - len(IMPORTED_PREFIX), required=True)
    name = checked_text(answer.display_name, "imported annotator name", MAX_NAME_CHARS, required=True)
    return dict(external_id=external, display_name=name, comment=_comment(answer.comment),
                **_answer_values(kind, answer.slots, answer.option))


def _comment(comment: object) -> str:
    return "" if comment is None else checked_text(comment, "comment", MAX_COMMENT_CHARS, strip=False)


def _seconds(seconds: object) -> float | None:
    if seconds is None:
        return None
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise StoreError(f"seconds: expected a number, got {seconds!r}") from None
    if not math.isfinite(value) or value < 0:
        raise StoreError(f"seconds: expected a finite number >= 0, got {seconds!r}")
    return value


def checked_text(value: object, what: str, limit: int | None = None, required: bool = False,
                 strip: bool = True) -> str:
    """Text fit to store, or `StoreError` naming `what`: stripped (unless `strip` is False), no NUL or lone
    surrogate, at most `limit` characters. The message never repeats the text itself."""
    if value is None and required:
        raise StoreError(f"{what}: required")
    if not isinstance(value, str):
        raise StoreError(f"{what}: expected text, got {type(value).__name__}")
    text = value.strip() if strip else value
    if required and not text:
        raise StoreError(f"{what}: required")
    bad = _UNSTORABLE.search(text)
    if bad:
        char = "a NUL character (U+0000)" if bad.group() == "\x00" else f"a lone surrogate (U+{ord(bad.group()):04X})"
        raise StoreError(f"{what}: contains {char} at character {bad.start() + 1}, which cannot be stored as text")
    if limit is not None and len(text) > limit:
        raise StoreError(f"{what}: {len(text)} characters, the limit is {limit}")
    return text


# --- session helpers -----------------------------------------------------------------------------------
def _can_be_id(public_id: object) -> bool:
    """Whether an id from outside (a browser, an API call) may name a row at all. Looking up one with a NUL
    or a lone surrogate would make the database driver fail instead of finding nothing."""
    return isinstance(public_id, str) and len(public_id) <= 32 and not _UNSTORABLE.search(public_id)


def _annotator(session: Session, public_id: str) -> Annotator:
    found = _can_be_id(public_id) and session.scalar(select(Annotator).where(Annotator.public_id == public_id))
    if not found:
        raise NotFound(f"no annotator {public_id!r:.50}")
    return found


def _task(session: Session, public_id: str, annotator: str | None = None) -> AnnotationTask:
    if not _can_be_id(public_id) or not (annotator is None or _can_be_id(annotator)):
        raise NotFound(f"no task {public_id!r:.50}")
    query = select(AnnotationTask).where(AnnotationTask.public_id == public_id)
    if annotator is not None:
        query = query.join(Annotator).where(Annotator.public_id == annotator)
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"no task {public_id!r:.50}")
    return found


def _dialogue(session: Session, public_id: str) -> Dialogue:
    found = _can_be_id(public_id) and session.scalar(select(Dialogue).where(Dialogue.public_id == public_id))
    if not found:
        raise NotFound(f"no dialogue {public_id!r:.50}")
    return found


def _upsert_judge(session: Session, dialogue: Dialogue, values: dict) -> None:
    found = session.scalar(select(JudgePrediction).where(JudgePrediction.dialogue_id == dialogue.id,
                                                         JudgePrediction.judge == values["judge"]))
    if found is None:
        session.add(JudgePrediction(dialogue_id=dialogue.id, **values))
    elif (found.slots, found.option, found.raw_reply) != (values["slots"], values["option"], values["raw_reply"]):
        found.slots, found.option, found.raw_reply, found.created_at = (
            values["slots"], values["option"], values["raw_reply"], utcnow())


def _record_imported_answer(session: Session, dialogue: Dialogue, values: dict) -> None:
    annotator = session.scalar(select(Annotator).where(Annotator.external_id == values["external_id"]))
    if annotator is None:
        annotator = Annotator(display_name=values["display_name"], external_id=values["external_id"])
        session.add(annotator)
        session.flush()
    elif session.scalar(select(AnnotationTask.id).where(AnnotationTask.annotator_id == annotator.id,
                                                        AnnotationTask.dialogue_id == dialogue.id)):
        return  # imported before
    last = session.scalar(select(func.max(AnnotationTask.position)).where(
        AnnotationTask.annotator_id == annotator.id)) or 0
    task = AnnotationTask(annotator_id=annotator.id, dialogue_id=dialogue.id, position=last + 1,
                          side=transcripts.speaker_of(dialogue.transcript, "assistant"), status=TaskStatus.DONE)
    session.add(task)
    session.flush()
    session.add(Annotation(task_id=task.id, slots=values["slots"], option=values["option"],
                           comment=values["comment"]))


def _progress(session: Session, annotator_id: int) -> Progress:
    counts = dict(session.execute(select(AnnotationTask.status, func.count()).where(
        AnnotationTask.annotator_id == annotator_id).group_by(AnnotationTask.status)).all())
    done, skipped = counts.get(TaskStatus.DONE, 0), counts.get(TaskStatus.SKIPPED, 0)
    return Progress(done + skipped, sum(counts.values()), skipped)


def _first_pending(session: Session, annotator_id: int) -> AnnotationTask | None:
    return session.scalar(select(AnnotationTask).where(
        AnnotationTask.annotator_id == annotator_id, AnnotationTask.status == TaskStatus.PENDING)
        .order_by(AnnotationTask.position).limit(1))


def _view(session: Session, task: AnnotationTask) -> TaskView:
    dialogue = task.dialogue
    agent = transcripts.speaker_of(dialogue.transcript, "assistant")
    swap = {"X": "Y", "Y": "X"} if agent != task.side else {"X": "X", "Y": "Y"}
    answer = None
    if task.annotation is not None:
        a = task.annotation
        answer = AnswerView(slots=a.slots, option=a.option, comment=a.comment)
    last = session.scalar(select(func.max(Annotation.id)).join(AnnotationTask)
                          .where(AnnotationTask.annotator_id == task.annotator_id))
    return TaskView(
        task=task.public_id,
        kind=dialogue.kind,
        status=TaskStatus(task.status),
        position=task.position,
        progress=_progress(session, task.annotator_id),
        agent=task.side,
        transcript=[{"speaker": swap[t["speaker"]], "text": t["text"]} for t in dialogue.anonymized],
        statement=dialogue.statement,
        answer=answer,
        editable=task.annotation is not None and task.annotation.id == last,
        skip_reason=task.skip_reason,
    )


# --- for the app's human-evaluation tab ----------------------------------------------------------------
def last_answered(store: Store, annotator: str) -> TaskView | None:
    """The task view of the annotator's last answer (the only one they may edit), None before any answer;
    this is where "go back" leads, also after the browser was closed."""
    with store.db.read() as session:
        who = _annotator(session, annotator)
        task = session.scalar(select(AnnotationTask).join(Annotation).where(AnnotationTask.annotator_id == who.id)
                              .order_by(Annotation.id.desc()).limit(1))
        return None if task is None else _view(session, task)
