"""The human-evaluation workflow on top of `db/`: dialogues in, annotators' tasks out, answers stored once.

    store = Store(Database(url), AssignmentPolicy(overlap=2, shared_fraction=0.2, seed=7))
    annotator = store.register_annotator("Ada", external_id="hf:ada")
    store.add_dialogue(turns, "Doctor,AGR_high", source="app", system="hirpf:smollm2-135m")
    view = store.next_task(annotator)             # what the annotator sees: anonymized, opaque ids only
    store.submit(view["task"], slots={...}, comment="", seconds=41.5)

Everything addressed from outside is addressed by its `public_id` (annotators, tasks, dialogues). Bad
input raises `StoreError` (or `annotation.labels.LabelError`) naming what is wrong, before anything is
written: each call is one transaction.

Limits: comments up to `MAX_COMMENT_CHARS` characters, skip reasons up to `MAX_REASON_CHARS`, names up to
`MAX_NAME_CHARS`. Text is stored verbatim (HTML and scripts included): escaping is the viewer's job.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hirpf import transcripts
from annotation.assignment import AssignmentPolicy, plan_assignment
from hirpf.labels import LabelError, normalize_slots, scale_option
from db import Database
from db.models import (KINDS, SOURCES, Annotation, AnnotationTask, Annotator, Dialogue, JudgePrediction,
                       utcnow)
from hirpf.identities import IdentityError, IdentitySet

MAX_COMMENT_CHARS = 4000
MAX_REASON_CHARS = 500
MAX_NAME_CHARS = 200
# Annotators whose external id starts with this are label sets imported from files (e.g. the HIS human
# evaluation): they are never given tasks and do not count towards an item's overlap or cap.
IMPORTED_PREFIX = "file:"


class StoreError(ValueError):
    """Bad input, or a request the current state does not allow; nothing was changed."""


class NotFound(StoreError):
    """No annotator, task or dialogue with that id."""


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

    annotator: str  # external id, stored under IMPORTED_PREFIX
    display_name: str
    slots: Mapping[str, object] | None = None
    option: object = None
    comment: str = ""


class Added(NamedTuple):
    dialogue: str  # public id
    created: bool  # False: the same content was already stored (dedup by content hash)


class Progress(NamedTuple):
    done: int  # answered or skipped
    assigned: int
    skipped: int


class Submitted(NamedTuple):
    task: str
    status: str  # "stored" | "unchanged" (same answer again) | "edited"


class Store:
    def __init__(self, database: Database, policy: AssignmentPolicy | None = None):
        self.db = database
        self.policy = policy or AssignmentPolicy()

    # --- annotators -------------------------------------------------------------------------------
    def register_annotator(self, display_name: str, external_id: str | None = None) -> str:
        """A new annotator's public id; with an `external_id` (e.g. "hf:<username>") the same person gets
        the same annotator every time."""
        name = _short_text(display_name, "display name", MAX_NAME_CHARS, required=True)
        external = _short_text(external_id, "external id", MAX_NAME_CHARS) if external_id is not None else None
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
        human answers, in the same transaction). The same content twice is stored once."""
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
        def run(session: Session) -> int:
            self.db.serialize(session, "assignment")  # per-item counts must not change under us
            who = _annotator(session, annotator)
            if (who.external_id or "").startswith(IMPORTED_PREFIX):
                raise StoreError("imported label sets are not given tasks")
            mine = set(session.scalars(select(AnnotationTask.dialogue_id).where(
                AnnotationTask.annotator_id == who.id)))
            counted = (select(AnnotationTask.dialogue_id, func.count().label("n"))
                       .join(Annotator, Annotator.id == AnnotationTask.annotator_id)
                       .where(AnnotationTask.status != "skipped",
                              func.coalesce(Annotator.external_id, "").not_like(IMPORTED_PREFIX + "%"))
                       .group_by(AnnotationTask.dialogue_id).subquery())
            # Items are keyed by content and annotators by their external identity where they have one, so
            # a study rerun on a fresh database hands out the same orders.
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
                session.add(AnnotationTask(annotator_id=who.id, dialogue_id=ids[item], position=last + offset,
                                           side=side))
            return len(plan)

        return self.db.write(run)

    # --- annotating -------------------------------------------------------------------------------
    def next_task(self, annotator: str) -> dict | None:
        """The annotator's first pending task (where they left off), assigning a new batch when their queue
        is empty; None when there is nothing left for them."""
        for attempt in range(2):
            with self.db.read() as session:
                who = _annotator(session, annotator)
                task = session.scalar(select(AnnotationTask).where(
                    AnnotationTask.annotator_id == who.id, AnnotationTask.status == "pending")
                    .order_by(AnnotationTask.position).limit(1))
                if task is not None:
                    return _view(session, task)
            if attempt == 0 and not self.assign(annotator, self.policy.batch):
                return None
        return None

    # `annotator`, where a method takes it: the task must be that annotator's (else NotFound), so a task id
    # seen elsewhere or replayed cannot answer or skip somebody else's task.
    def task_view(self, task: str, annotator: str | None = None) -> dict:
        """What the annotator's screen shows for a task: the anonymized transcript with the agent as the
        task's speaker, the scale item if any, their answer if any. No target, system, source or internal
        id: every id in it is opaque."""
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
            if found.status == "skipped":
                raise StoreError("this task was skipped; it cannot be answered")
            now = utcnow()
            existing = found.annotation
            if existing is None:
                session.add(Annotation(task_id=found.id, comment=comment, seconds=seconds, created_at=now,
                                       updated_at=now, **answer))
                found.status, found.updated_at = "done", now
                return Submitted(found.public_id, "stored")
            if (existing.slots, existing.option, existing.comment) == (answer["slots"], answer["option"], comment):
                return Submitted(found.public_id, "unchanged")
            last = session.scalar(select(func.max(Annotation.id)).join(AnnotationTask)
                                  .where(AnnotationTask.annotator_id == found.annotator_id))
            if existing.id != last:
                raise StoreError("only your last answer can be edited; this task was answered before it")
            existing.slots, existing.option, existing.comment = answer["slots"], answer["option"], comment
            if seconds is not None:  # time spent is the total over the answer and its edits
                existing.seconds = (existing.seconds or 0) + seconds
            existing.edits += 1
            existing.updated_at = found.updated_at = now
            return Submitted(found.public_id, "edited")

        return self.db.write(run)

    def skip(self, task: str, reason: str, annotator: str | None = None) -> None:
        """Set a pending task aside with a reason (required); it no longer counts towards the item's cap."""
        reason = _short_text(reason, "skip reason", MAX_REASON_CHARS, required=True)

        def run(session: Session) -> None:
            found = _task(session, task, annotator)
            if found.status == "done":
                raise StoreError("this task is answered; edit the answer instead of skipping it")
            found.status, found.skip_reason, found.updated_at = "skipped", reason, utcnow()

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
            raise StoreError(f"dialogue turn {i}: expected an object with role and content, got {turn!r:.80}")
        turns.append({"role": turn.get("role"), "content": turn.get("content")})
    system = _short_text(system, "system", MAX_NAME_CHARS) if system is not None else None
    source_ref = _short_text(source_ref, "source_ref", 500) if source_ref is not None else None
    try:
        anonymized = transcripts.anonymize(turns, redact=_names_to_hide(system, source_ref))
        reversed_turns = transcripts.reverse(turns)
    except ValueError as error:
        raise StoreError(f"dialogue: {error}") from None
    if not any(t["role"] == "assistant" for t in turns):
        raise StoreError("dialogue: no assistant turn, nothing to judge")
    try:
        identities = IdentitySet.parse(target)
    except IdentityError as error:
        raise StoreError(f"target: {error}") from None
    if kind == "scale_interview":
        statement = _short_text(statement, "statement", MAX_COMMENT_CHARS, required=True)
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


def _names_to_hide(*names: str | None) -> list[str]:
    """System names and file names to redact from what annotators see: each name, its `:`/`/`-separated
    parts (a hub id's organisation and model) and a file's stem. Only names that look like identifiers (a
    digit, `-`, `_`, `.`, `/` or `:` in them) - a system called "ours" must not blank the word out of every
    dialogue; the well-known model names are redacted by `annotation.transcripts` anyway."""
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
    judge = _short_text(label.judge, "judge name", MAX_NAME_CHARS, required=True)
    answer = _answer_values(kind, label.slots, label.option)
    raw = label.raw_reply if label.raw_reply is None else str(label.raw_reply)
    return dict(judge=judge, raw_reply=raw, **answer)


def _imported_answer_values(answer: ImportedAnswer, kind: str) -> dict:
    external = IMPORTED_PREFIX + _short_text(answer.annotator, "imported annotator", MAX_NAME_CHARS, required=True)
    name = _short_text(answer.display_name, "imported annotator name", MAX_NAME_CHARS, required=True)
    return dict(external_id=external, display_name=name, comment=_comment(answer.comment),
                **_answer_values(kind, answer.slots, answer.option))


def _comment(comment: object) -> str:
    if comment is None:
        return ""
    if not isinstance(comment, str):
        raise StoreError(f"comment: expected text, got {type(comment).__name__}")
    if len(comment) > MAX_COMMENT_CHARS:
        raise StoreError(f"comment: {len(comment)} characters, the limit is {MAX_COMMENT_CHARS}")
    return comment


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


def _short_text(value: object, what: str, limit: int, required: bool = False) -> str:
    if value is None and required:
        raise StoreError(f"{what}: required")
    if not isinstance(value, str):
        raise StoreError(f"{what}: expected text, got {type(value).__name__}")
    text = value.strip()
    if required and not text:
        raise StoreError(f"{what}: required")
    if len(text) > limit:
        raise StoreError(f"{what}: {len(text)} characters, the limit is {limit}")
    return text


# --- session helpers -----------------------------------------------------------------------------------
def _annotator(session: Session, public_id: str) -> Annotator:
    found = session.scalar(select(Annotator).where(Annotator.public_id == public_id))
    if found is None:
        raise NotFound(f"no annotator {public_id!r}")
    return found


def _task(session: Session, public_id: str, annotator: str | None = None) -> AnnotationTask:
    query = select(AnnotationTask).where(AnnotationTask.public_id == public_id)
    if annotator is not None:
        query = query.join(Annotator).where(Annotator.public_id == annotator)
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"no task {public_id!r}")
    return found


def _dialogue(session: Session, public_id: str) -> Dialogue:
    found = session.scalar(select(Dialogue).where(Dialogue.public_id == public_id))
    if found is None:
        raise NotFound(f"no dialogue {public_id!r}")
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
                          side=transcripts.speaker_of(dialogue.transcript, "assistant"), status="done")
    session.add(task)
    session.flush()
    session.add(Annotation(task_id=task.id, slots=values["slots"], option=values["option"],
                           comment=values["comment"]))


def _progress(session: Session, annotator_id: int) -> Progress:
    counts = dict(session.execute(select(AnnotationTask.status, func.count()).where(
        AnnotationTask.annotator_id == annotator_id).group_by(AnnotationTask.status)).all())
    done, skipped = counts.get("done", 0), counts.get("skipped", 0)
    return Progress(done + skipped, sum(counts.values()), skipped)


def _view(session: Session, task: AnnotationTask) -> dict:
    dialogue = task.dialogue
    agent = transcripts.speaker_of(dialogue.transcript, "assistant")
    swap = {"X": "Y", "Y": "X"} if agent != task.side else {"X": "X", "Y": "Y"}
    answer = None
    if task.annotation is not None:
        a = task.annotation
        answer = {"slots": a.slots, "option": a.option, "comment": a.comment}
    last = session.scalar(select(func.max(Annotation.id)).join(AnnotationTask)
                          .where(AnnotationTask.annotator_id == task.annotator_id))
    progress = _progress(session, task.annotator_id)
    return {
        "task": task.public_id,
        "kind": dialogue.kind,
        "status": task.status,
        "position": task.position,
        "progress": {"done": progress.done, "assigned": progress.assigned},
        "agent": task.side,  # the speaker to judge
        "transcript": [{"speaker": swap[t["speaker"]], "text": t["text"]} for t in dialogue.anonymized],
        "statement": dialogue.statement,
        "answer": answer,
        "editable": task.annotation is not None and task.annotation.id == last,
        "skip_reason": task.skip_reason,
    }


# --- for the app's human-evaluation tab ----------------------------------------------------------------
def last_answered(store: Store, annotator: str) -> dict | None:
    """The task view of the annotator's last answer (the only one they may edit), None before any answer;
    this is where "go back" leads, also after the browser was closed."""
    with store.db.read() as session:
        who = _annotator(session, annotator)
        task = session.scalar(select(AnnotationTask).join(Annotation).where(AnnotationTask.annotator_id == who.id)
                              .order_by(Annotation.id.desc()).limit(1))
        return None if task is None else _view(session, task)


def overview(store: Store) -> dict:
    """What an admin watches: dialogues per kind, and every annotator's progress (imported label sets
    flagged `imported`), most recent first."""
    with store.db.read() as session:
        kinds = dict(session.execute(select(Dialogue.kind, func.count()).group_by(Dialogue.kind)).all())
        counts: dict[int, dict[str, int]] = {}
        for annotator_id, status, n in session.execute(select(
                AnnotationTask.annotator_id, AnnotationTask.status, func.count())
                .group_by(AnnotationTask.annotator_id, AnnotationTask.status)):
            counts.setdefault(annotator_id, {})[status] = n
        annotators = []
        for a in session.scalars(select(Annotator).order_by(Annotator.id.desc())):
            mine = counts.get(a.id, {})
            done, skipped = mine.get("done", 0), mine.get("skipped", 0)
            annotators.append({"id": a.public_id, "display_name": a.display_name, "external_id": a.external_id,
                               "imported": (a.external_id or "").startswith(IMPORTED_PREFIX),
                               "done": done + skipped, "assigned": sum(mine.values()), "skipped": skipped})
    return {"dialogues": {kind: kinds.get(kind, 0) for kind in KINDS}, "annotators": annotators}
