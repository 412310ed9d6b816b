"""Annotating a pair study: each annotator's queue of pairs, blind and in an order of their own.

    view = next_pair_task(db, study, annotator, policy)  # a PairTaskView: question, prompt, reply A, reply B
    answer_pair(db, view.task, "A", annotator=annotator, seconds=12.0)     # "A", "B" or "tie"
    skip_pair(db, view.task, "both replies are empty", annotator=annotator)

`study` is a study's name or, in what a browser holds, its public id (a name may say what is compared).
Assignment follows the slot tasks' policy (`annotation.assignment`: overlap, cap, shared fraction, batch,
a seeded per-annotator order); only pairs whose two replies exist are handed out. Which stored reply is
shown first ("A") is drawn per annotator and pair from the same seeded hash and stored with the task, and
the answer is stored in stored terms ("a", "b", "tie"), so position bias and the right answer are both
known. A view carries no condition, identity, model or stored side: only opaque ids and the texts.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from annotation.assignment import AssignmentPolicy, order_key, plan_assignment
from annotation.pair_studies import PairStudyError, study_row
from annotation.store import (
    IMPORTED_PREFIX,
    MAX_REASON_CHARS,
    NotFound,
    Progress,
    StoreError,
    SubmitOutcome,
    _annotator,
    _can_be_id,
    _seconds,
    checked_text,
)
from db import Database
from db.models import PairReply, PairStudy, PairTask, StudyPair, TaskStatus, utcnow

SHOWN_CHOICES = ("A", "B", "tie")


@dataclass(frozen=True)
class PairTaskView:
    task: str                 # the task's public id
    question: str
    prompt: str               # the user's message both replies answer
    reply_a: str              # shown first, as "A"
    reply_b: str              # shown second, as "B"
    ties_allowed: bool
    position: int             # its place in the annotator's queue of this study, from 1
    progress: Progress
    answer: str | None        # "A", "B" or "tie", as shown
    editable: bool            # the annotator's last answer, the only one they may change
    skip_reason: str | None


def shown_first_for(seed: int, annotator: str, pair: str) -> str:
    return "ab"[order_key(seed, "shown first", f"{annotator}\x1f{pair}") % 2]


def next_pair_task(db: Database, study: str, annotator: str,
                   policy: AssignmentPolicy | None = None) -> PairTaskView | None:
    """The annotator's first pending pair of the study, assigning a batch when none is pending; None when
    nothing is left for them."""
    policy = policy or AssignmentPolicy()
    view = _first_pending_view(db, study, annotator)
    if view is None:
        db.write(lambda session: _assign(db, session, study, annotator, policy))
        view = _first_pending_view(db, study, annotator)
    return view


def _assign(db: Database, session: Session, study: str, annotator: str, policy: AssignmentPolicy) -> int:
    session_study = study_row(session, study)
    db.serialize(session, f"pair assignment {session_study.id}")  # per-pair counts must not change under us
    who = _annotator(session, annotator)
    if (who.external_id or "").startswith(IMPORTED_PREFIX):
        raise StoreError("imported label sets are not given tasks")
    if _first_pending(session, session_study.id, who.id) is not None:
        return 0  # another tab assigned a batch meanwhile
    reply_a, reply_b = aliased(PairReply), aliased(PairReply)
    ready = session.execute(
        select(StudyPair.id, StudyPair.public_id).join(reply_a, reply_a.id == StudyPair.reply_a_id)
        .join(reply_b, reply_b.id == StudyPair.reply_b_id)
        .where(StudyPair.study_id == session_study.id, reply_a.text.is_not(None), reply_b.text.is_not(None))).all()
    counts = dict(session.execute(select(PairTask.pair_id, func.count()).join(StudyPair)
                                  .where(StudyPair.study_id == session_study.id,
                                         PairTask.status != TaskStatus.SKIPPED)
                                  .group_by(PairTask.pair_id)).all())
    held = set(session.scalars(select(PairTask.pair_id).where(PairTask.annotator_id == who.id)))
    ids = {public: key for key, public in ready}
    key = who.external_id or who.public_id
    plan = plan_assignment(policy, key, {public: counts.get(k, 0) for k, public in ready},
                           {public for k, public in ready if k in held}, policy.batch)
    last = session.scalar(select(func.max(PairTask.position)).join(StudyPair).where(
        PairTask.annotator_id == who.id, StudyPair.study_id == session_study.id)) or 0
    for offset, (pair, _side) in enumerate(plan, start=1):
        session.add(PairTask(annotator_id=who.id, pair_id=ids[pair], position=last + offset,
                             shown_first=shown_first_for(policy.seed, key, pair)))
    return len(plan)


def answer_pair(db: Database, task: str, choice: str, annotator: str | None = None,
                seconds: float | None = None) -> SubmitOutcome:
    """Answer with the reply as shown ("A", "B") or "tie" where the study allows ties. The same answer twice
    is stored once; a different one is an edit, allowed only for the annotator's last answer."""
    if choice not in SHOWN_CHOICES:
        raise StoreError(f"choice: expected one of {', '.join(SHOWN_CHOICES)}, got {choice!r:.20}")
    seconds = _seconds(seconds)

    def run(session: Session) -> SubmitOutcome:
        found = _task(session, task, annotator)
        study = session.get(PairStudy, found.pair.study_id)
        if choice == "tie" and not study.ties_allowed:
            raise StoreError("this study allows no ties: choose A or B")
        if found.status == TaskStatus.SKIPPED:
            raise StoreError("this pair was skipped; it cannot be answered")
        stored = choice if choice == "tie" else _stored_side(found.shown_first, choice)
        now = utcnow()
        if found.status == TaskStatus.PENDING:
            found.status, found.choice, found.seconds, found.updated_at = TaskStatus.DONE, stored, seconds, now
            return SubmitOutcome.STORED
        if found.choice == stored:
            return SubmitOutcome.UNCHANGED
        if found.id != _last_answered(session, found).id:
            raise StoreError("only your last answer can be edited; this pair was answered before it")
        found.choice, found.edits, found.updated_at = stored, found.edits + 1, now
        if seconds is not None:
            found.seconds = (found.seconds or 0) + seconds
        return SubmitOutcome.EDITED

    return db.write(run)


def skip_pair(db: Database, task: str, reason: str, annotator: str | None = None) -> None:
    """Set a pending pair aside with a reason (required); it no longer counts towards the pair's cap."""
    reason = checked_text(reason, "skip reason", MAX_REASON_CHARS, required=True)

    def run(session: Session) -> None:
        found = _task(session, task, annotator)
        if found.status == TaskStatus.DONE:
            raise StoreError("this pair is answered; edit the answer instead of skipping it")
        found.status, found.skip_reason, found.updated_at = TaskStatus.SKIPPED, reason, utcnow()

    db.write(run)


def pair_task_view(db: Database, task: str, annotator: str | None = None) -> PairTaskView:
    with db.read() as session:
        return _view(session, _task(session, task, annotator))


def last_answered_pair(db: Database, study: str, annotator: str) -> PairTaskView | None:
    """Where "go back" leads: the annotator's last answer in the study (the only one they may edit)."""
    with db.read() as session:
        found = session.scalar(_tasks_of(session, study, annotator).where(PairTask.status == TaskStatus.DONE)
                               .order_by(PairTask.position.desc()).limit(1))
        return None if found is None else _view(session, found)


def pair_progress(db: Database, study: str, annotator: str) -> Progress:
    with db.read() as session:
        return _progress(session, study_row(session, study).id, _annotator(session, annotator).id)


# --- helpers ----------------------------------------------------------------------------------------------
def _stored_side(shown_first: str, shown: str) -> str:
    other = {"a": "b", "b": "a"}
    return shown_first if shown == "A" else other[shown_first]


def _shown(shown_first: str, stored: str | None) -> str | None:
    if stored in (None, "tie"):
        return stored
    return "A" if stored == shown_first else "B"


def _task(session: Session, public_id: str, annotator: str | None) -> PairTask:
    if not _can_be_id(public_id) or not (annotator is None or _can_be_id(annotator)):
        raise NotFound(f"no pair task {public_id!r:.50}")
    query = select(PairTask).where(PairTask.public_id == public_id)
    if annotator is not None:
        query = query.where(PairTask.annotator_id == _annotator(session, annotator).id)
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"no pair task {public_id!r:.50}")
    return found


def _tasks_of(session: Session, study: str, annotator: str):
    return (select(PairTask).join(StudyPair).where(StudyPair.study_id == study_row(session, study).id,
                                                   PairTask.annotator_id == _annotator(session, annotator).id))


def _first_pending(session: Session, study_id: int, annotator_id: int) -> PairTask | None:
    return session.scalar(select(PairTask).join(StudyPair).where(
        StudyPair.study_id == study_id, PairTask.annotator_id == annotator_id,
        PairTask.status == TaskStatus.PENDING).order_by(PairTask.position).limit(1))


def _first_pending_view(db: Database, study: str, annotator: str) -> PairTaskView | None:
    with db.read() as session:
        found = _first_pending(session, study_row(session, study).id, _annotator(session, annotator).id)
        return None if found is None else _view(session, found)


def _last_answered(session: Session, task: PairTask) -> PairTask:
    # Pairs are answered in queue order, so the last answer is the answered task furthest along the queue.
    return session.scalar(select(PairTask).join(StudyPair).where(
        PairTask.annotator_id == task.annotator_id, StudyPair.study_id == task.pair.study_id,
        PairTask.status == TaskStatus.DONE).order_by(PairTask.position.desc()).limit(1))


def _progress(session: Session, study_id: int, annotator_id: int) -> Progress:
    counts = dict(session.execute(select(PairTask.status, func.count()).join(StudyPair).where(
        StudyPair.study_id == study_id, PairTask.annotator_id == annotator_id).group_by(PairTask.status)).all())
    done, skipped = counts.get(TaskStatus.DONE, 0), counts.get(TaskStatus.SKIPPED, 0)
    return Progress(done + skipped, sum(counts.values()), skipped)


def _view(session: Session, task: PairTask) -> PairTaskView:
    pair = task.pair
    study = session.get(PairStudy, pair.study_id)
    if pair.reply_a.text is None or pair.reply_b.text is None:
        raise PairStudyError("this pair's replies are not generated yet")
    first, second = (pair.reply_a, pair.reply_b) if task.shown_first == "a" else (pair.reply_b, pair.reply_a)
    return PairTaskView(task=task.public_id, question=pair.question, prompt=pair.reply_a.prompt,
                        reply_a=first.text, reply_b=second.text, ties_allowed=study.ties_allowed,
                        position=task.position, progress=_progress(session, study.id, task.annotator_id),
                        answer=_shown(task.shown_first, task.choice),
                        editable=task.status == TaskStatus.DONE and _last_answered(session, task).id == task.id,
                        skip_reason=task.skip_reason)
