"""The human-evaluation schema (the latest version; `db/migrations.py` builds it step by step).

    annotators ─< annotation_tasks >─ dialogues ─< judge_predictions
         │              │
         │         annotations (one per task)
         │
         └─< pair_tasks >─ study_pairs >─ pair_replies >─ pair_conditions >─ pair_studies
                           study_pairs ─< pair_judge_votes

Pair studies (migration 6): a study's pairs each show one prompt answered twice (two `pair_replies`, each
made by one of the study's `pair_conditions` under one identity set); annotators answer them in
`pair_tasks`, LLM judges in `pair_judge_votes`.

Every row people may see through the annotation UI is referenced by `public_id`, a random token that
says nothing about the dialogue's target, system or source; the integer keys stay inside the database.
"""
from __future__ import annotations

import enum
import secrets
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

KINDS = ("identity", "scale_interview")
SOURCES = ("app", "file", "simulator")
SIDES = ("X", "Y")
PAIR_DESIGNS = ("discrimination", "preference")
# A pair's two replies in stored order; what the annotator picked is stored in these terms, whichever reply
# their screen showed first.
PAIR_SIDES = ("a", "b")
PAIR_CHOICES = ("a", "b", "tie")


class TaskStatus(str, enum.Enum):
    """Where a task stands in its annotator's queue (a `str`, so it compares equal to its stored value)."""

    PENDING = "pending"
    DONE = "done"      # answered
    SKIPPED = "skipped"  # set aside with a reason; no longer counts towards the item's cap

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(status.value for status in TaskStatus)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_public_id() -> str:
    """An opaque id for anything an annotator's browser may hold (128 random bits)."""
    return secrets.token_hex(16)


# `none_as_null`: a missing value is SQL NULL, so CHECK constraints and IS NULL queries see it.
Json = JSON(none_as_null=True)
Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    pass


class Annotator(Base):
    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    display_name: Mapped[str] = mapped_column(String(200))
    # e.g. "hf:<username>" for a Hugging Face login; one annotator per external identity (migration 3).
    external_id: Mapped[Optional[str]] = mapped_column(String(200))
    # Name sign-ins: a salted hash of the resume code shown once at the first sign-in (migration 4); knowing
    # the name alone resumes nobody.
    resume_code_hash: Mapped[Optional[str]] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    tasks: Mapped[list["AnnotationTask"]] = relationship(back_populates="annotator")

    __table_args__ = (Index("ix_annotators_external_id", "external_id", unique=True),)


class Dialogue(Base):
    __tablename__ = "dialogues"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    kind: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(20))
    # The model or system that produced the dialogue, and where it came from (file name and line): both
    # stay out of everything an annotator sees.
    system: Mapped[Optional[str]] = mapped_column(String(200))
    source_ref: Mapped[Optional[str]] = mapped_column(String(500))
    # Canonical identity names (`IdentitySet` order), [] for the plain base model.
    target: Mapped[list] = mapped_column(Json)
    # Scale interviews: the questionnaire item, its factor/polarity, and the expected option (1-5) if known.
    statement: Mapped[Optional[str]] = mapped_column(Text)
    factor: Mapped[Optional[str]] = mapped_column(String(100))
    target_option: Mapped[Optional[int]] = mapped_column(Integer)
    transcript: Mapped[list] = mapped_column(Json)
    anonymized: Mapped[list] = mapped_column(Json)
    reversed: Mapped[list] = mapped_column(Json)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    tasks: Mapped[list["AnnotationTask"]] = relationship(back_populates="dialogue")
    judge_predictions: Mapped[list["JudgePrediction"]] = relationship(back_populates="dialogue")

    __table_args__ = (
        CheckConstraint(f"kind IN {KINDS}", name="ck_dialogues_kind"),
        CheckConstraint(f"source IN {SOURCES}", name="ck_dialogues_source"),
        Index("ix_dialogues_kind", "kind"),
    )


def task_status_column():
    """A task's status, stored as the value ("pending", ...) in a VARCHAR(10) and read back as the enum; each
    table's CHECK (from its migration) is the constraint, so the type adds none of its own."""
    return mapped_column(Enum(TaskStatus, native_enum=False, create_constraint=False, length=10,
                              values_callable=lambda statuses: [s.value for s in statuses]),
                         default=TaskStatus.PENDING)


class AnnotationTask(Base):
    """One dialogue in one annotator's queue: its place in their order, and which anonymous speaker
    (X or Y) the role-playing agent is shown as."""

    __tablename__ = "annotation_tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"))
    dialogue_id: Mapped[int] = mapped_column(ForeignKey("dialogues.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    side: Mapped[str] = mapped_column(String(1))
    status: Mapped[TaskStatus] = task_status_column()
    skip_reason: Mapped[Optional[str]] = mapped_column(Text)
    assigned_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    annotator: Mapped[Annotator] = relationship(back_populates="tasks")
    dialogue: Mapped[Dialogue] = relationship(back_populates="tasks")
    annotation: Mapped[Optional["Annotation"]] = relationship(back_populates="task")

    __table_args__ = (
        UniqueConstraint("annotator_id", "dialogue_id", name="uq_tasks_annotator_dialogue"),
        UniqueConstraint("annotator_id", "position", name="uq_tasks_annotator_position"),
        CheckConstraint(f"status IN {STATUSES}", name="ck_tasks_status"),
        CheckConstraint(f"side IN {SIDES}", name="ck_tasks_side"),
        Index("ix_tasks_queue", "annotator_id", "status", "position"),  # next_task, progress
        Index("ix_tasks_dialogue", "dialogue_id"),  # annotators per item (assignment, agreement)
    )


class Annotation(Base):
    """An answer: six slots (identity dialogues) or one option 1-5 (scale interviews)."""

    __tablename__ = "annotations"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("annotation_tasks.id", ondelete="CASCADE"), unique=True)
    slots: Mapped[Optional[dict[str, Any]]] = mapped_column(Json)
    option: Mapped[Optional[int]] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[Optional[float]] = mapped_column(Float)
    edits: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    task: Mapped[AnnotationTask] = relationship(back_populates="annotation")

    __table_args__ = (
        CheckConstraint("(slots IS NULL) <> (option IS NULL)", name="ck_annotations_one_answer"),
    )


class JudgePrediction(Base):
    """An LLM referee's labelling of a dialogue (migration 2), compared with the humans'."""

    __tablename__ = "judge_predictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    dialogue_id: Mapped[int] = mapped_column(ForeignKey("dialogues.id", ondelete="CASCADE"))
    judge: Mapped[str] = mapped_column(String(200))
    slots: Mapped[Optional[dict[str, Any]]] = mapped_column(Json)
    option: Mapped[Optional[int]] = mapped_column(Integer)
    raw_reply: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    dialogue: Mapped[Dialogue] = relationship(back_populates="judge_predictions")

    __table_args__ = (
        UniqueConstraint("dialogue_id", "judge", name="uq_judge_predictions_dialogue_judge"),
        CheckConstraint("(slots IS NULL) <> (option IS NULL)", name="ck_judge_predictions_one_answer"),
        Index("ix_judge_predictions_judge", "judge"),
    )


class AnnotatorSession(Base):
    """One sign-in of an annotator (migration 6): the browser holds a random token, the database its SHA-256
    hash. The token, never the annotator's id, is what the annotation API accepts; it ends at `expires_at`,
    at sign-out, or at the annotator's next sign-in."""

    __tablename__ = "annotator_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)

    __table_args__ = (Index("ix_annotator_sessions_annotator", "annotator_id"),)


class StudySetting(Base):
    """A setting the admin changes while the app runs, shared by every app process on the database
    (migration 5): the assignment policy, the hashed study access code."""

    __tablename__ = "study_settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(Json)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class PairStudy(Base):
    """A blind pairwise study (migration 6). `discrimination`: the same condition, two opposite identities,
    "which reply is <target>?" with a right answer; `preference`: one identity set under two conditions,
    "which reply shows <identity> more?"."""

    __tablename__ = "pair_studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    design: Mapped[str] = mapped_column(String(20))
    # The wording with `{target}` where the pair's target goes (a pair stores its own filled-in question).
    question: Mapped[str] = mapped_column(Text)
    ties_allowed: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    __table_args__ = (CheckConstraint(f"design IN {PAIR_DESIGNS}", name="ck_pair_studies_design"),)


class PairCondition(Base):
    """How a study's replies were made: conditioning, one strength for every identity (None: the
    default), the model (a base model and its expert checkpoint, or where imported pairs came from), the
    seed. `label` is how reports name it (`experts+prompt@1.5`); it never reaches an annotator."""

    __tablename__ = "pair_conditions"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("pair_studies.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(200))
    conditioning: Mapped[Optional[str]] = mapped_column(String(20))
    strength: Mapped[Optional[float]] = mapped_column(Float)
    base_model: Mapped[Optional[str]] = mapped_column(String(500))
    checkpoint: Mapped[Optional[str]] = mapped_column(String(500))
    seed: Mapped[Optional[int]] = mapped_column(Integer)

    __table_args__ = (UniqueConstraint("study_id", "label", name="uq_pair_conditions_study_label"),)


class PairReply(Base):
    """One reply of a condition to a prompt under an identity set; `text` is NULL until generated, so a build
    stopped half-way resumes from the rows still NULL. Shared by every pair that shows it."""

    __tablename__ = "pair_replies"

    id: Mapped[int] = mapped_column(primary_key=True)
    condition_id: Mapped[int] = mapped_column(ForeignKey("pair_conditions.id", ondelete="CASCADE"))
    identities: Mapped[list] = mapped_column(Json)  # canonical names, strengths apart (the condition's)
    prompt: Mapped[str] = mapped_column(Text)
    # sha256 of (identities, prompt): one reply per condition, identity set and prompt.
    key: Mapped[str] = mapped_column(String(64))
    text: Mapped[Optional[str]] = mapped_column(Text)
    source_ref: Mapped[Optional[str]] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    __table_args__ = (UniqueConstraint("condition_id", "key", name="uq_pair_replies_condition_key"),)


class StudyPair(Base):
    """Two replies to one prompt and the question asked about them; `expected` is the right answer of a
    discrimination pair ("a" or "b"), NULL for preference."""

    __tablename__ = "study_pairs"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    study_id: Mapped[int] = mapped_column(ForeignKey("pair_studies.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    reply_a_id: Mapped[int] = mapped_column(ForeignKey("pair_replies.id", ondelete="CASCADE"))
    reply_b_id: Mapped[int] = mapped_column(ForeignKey("pair_replies.id", ondelete="CASCADE"))
    question: Mapped[str] = mapped_column(Text)
    expected: Mapped[Optional[str]] = mapped_column(String(1))

    reply_a: Mapped[PairReply] = relationship(foreign_keys=[reply_a_id])
    reply_b: Mapped[PairReply] = relationship(foreign_keys=[reply_b_id])

    __table_args__ = (
        UniqueConstraint("study_id", "position", name="uq_study_pairs_study_position"),
        UniqueConstraint("study_id", "reply_a_id", "reply_b_id", "question", name="uq_study_pairs_content"),
        CheckConstraint("expected IS NULL OR expected IN ('a', 'b')", name="ck_study_pairs_expected"),
    )


class PairTask(Base):
    """One pair in one annotator's queue, with the order their screen shows the replies in (`shown_first`:
    the stored side shown first, as "A") and, once answered, their choice in stored terms."""

    __tablename__ = "pair_tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"))
    pair_id: Mapped[int] = mapped_column(ForeignKey("study_pairs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    shown_first: Mapped[str] = mapped_column(String(1))
    status: Mapped[TaskStatus] = task_status_column()
    choice: Mapped[Optional[str]] = mapped_column(String(3))
    skip_reason: Mapped[Optional[str]] = mapped_column(Text)
    seconds: Mapped[Optional[float]] = mapped_column(Float)
    edits: Mapped[int] = mapped_column(Integer, default=0)
    assigned_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    pair: Mapped[StudyPair] = relationship()

    __table_args__ = (
        UniqueConstraint("annotator_id", "pair_id", name="uq_pair_tasks_annotator_pair"),
        CheckConstraint(f"status IN {STATUSES}", name="ck_pair_tasks_status"),
        CheckConstraint(f"shown_first IN {PAIR_SIDES}", name="ck_pair_tasks_shown_first"),
        CheckConstraint(f"choice IS NULL OR choice IN {PAIR_CHOICES}", name="ck_pair_tasks_choice"),
        CheckConstraint("(choice IS NULL) = (status <> 'done')", name="ck_pair_tasks_answered"),
        Index("ix_pair_tasks_queue", "annotator_id", "status", "position"),
        Index("ix_pair_tasks_pair", "pair_id"),
    )


class PairJudgeVote(Base):
    """An LLM judge's answer to a pair, asked in both orders: `choice` is "tie" when the two disagree."""

    __tablename__ = "pair_judge_votes"

    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("study_pairs.id", ondelete="CASCADE"))
    judge: Mapped[str] = mapped_column(String(200))
    choice: Mapped[str] = mapped_column(String(3))
    choice_a_first: Mapped[Optional[str]] = mapped_column(String(3))  # what it said with a shown first
    choice_b_first: Mapped[Optional[str]] = mapped_column(String(3))
    raw_replies: Mapped[list] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    __table_args__ = (
        UniqueConstraint("pair_id", "judge", name="uq_pair_judge_votes_pair_judge"),
        CheckConstraint(f"choice IN {PAIR_CHOICES}", name="ck_pair_judge_votes_choice"),
    )


class SchemaMigration(Base):
    """One row per applied migration (see `db/migrations.py`)."""

    __tablename__ = "schema_migrations"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    applied_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
