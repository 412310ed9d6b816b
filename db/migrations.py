"""Schema migrations: a plain ordered list of functions, each recorded in `schema_migrations` once applied
(after simonw/llm). `Database()` applies the missing ones on start, all in one transaction, so a database
from an older version upgrades in place or not at all.

Each migration describes its tables as they were at that version (never the current models: those move
on), with SQLAlchemy Core so the same function runs on SQLite and PostgreSQL. To change the schema, append
a function here and change `db/models.py` to match; `tests/test_db.py` checks that the two agree.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, NamedTuple

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    text,
)

Json = JSON(none_as_null=True)
Timestamp = DateTime(timezone=True)


class Migration(NamedTuple):
    version: int
    name: str
    apply: Callable[[Connection], None]


def _base_schema(connection: Connection) -> None:
    metadata = MetaData()
    Table("annotators", metadata,
          Column("id", Integer, primary_key=True),
          Column("public_id", String(32), nullable=False, unique=True),
          Column("display_name", String(200), nullable=False),
          Column("created_at", Timestamp, nullable=False))
    Table("dialogues", metadata,
          Column("id", Integer, primary_key=True),
          Column("public_id", String(32), nullable=False, unique=True),
          Column("kind", String(20), nullable=False),
          Column("source", String(20), nullable=False),
          Column("system", String(200)),
          Column("source_ref", String(500)),
          Column("target", Json, nullable=False),
          Column("statement", Text),
          Column("factor", String(100)),
          Column("target_option", Integer),
          Column("transcript", Json, nullable=False),
          Column("anonymized", Json, nullable=False),
          Column("reversed", Json, nullable=False),
          Column("content_hash", String(64), nullable=False, unique=True),
          Column("created_at", Timestamp, nullable=False),
          CheckConstraint("kind IN ('identity', 'scale_interview')", name="ck_dialogues_kind"),
          CheckConstraint("source IN ('app', 'file', 'simulator')", name="ck_dialogues_source"),
          Index("ix_dialogues_kind", "kind"))
    Table("annotation_tasks", metadata,
          Column("id", Integer, primary_key=True),
          Column("public_id", String(32), nullable=False, unique=True),
          Column("annotator_id", Integer, ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False),
          Column("dialogue_id", Integer, ForeignKey("dialogues.id", ondelete="CASCADE"), nullable=False),
          Column("position", Integer, nullable=False),
          Column("side", String(1), nullable=False),
          Column("status", String(10), nullable=False),
          Column("skip_reason", Text),
          Column("assigned_at", Timestamp, nullable=False),
          Column("updated_at", Timestamp, nullable=False),
          UniqueConstraint("annotator_id", "dialogue_id", name="uq_tasks_annotator_dialogue"),
          UniqueConstraint("annotator_id", "position", name="uq_tasks_annotator_position"),
          CheckConstraint("status IN ('pending', 'done', 'skipped')", name="ck_tasks_status"),
          CheckConstraint("side IN ('X', 'Y')", name="ck_tasks_side"),
          Index("ix_tasks_queue", "annotator_id", "status", "position"),
          Index("ix_tasks_dialogue", "dialogue_id"))
    Table("annotations", metadata,
          Column("id", Integer, primary_key=True),
          Column("task_id", Integer, ForeignKey("annotation_tasks.id", ondelete="CASCADE"), nullable=False,
                 unique=True),
          Column("slots", Json),
          Column("option", Integer),
          Column("comment", Text, nullable=False),
          Column("seconds", Float),
          Column("edits", Integer, nullable=False),
          Column("created_at", Timestamp, nullable=False),
          Column("updated_at", Timestamp, nullable=False),
          CheckConstraint("(slots IS NULL) <> (option IS NULL)", name="ck_annotations_one_answer"))
    metadata.create_all(connection)


def _judge_predictions(connection: Connection) -> None:
    metadata = MetaData()
    Table("dialogues", metadata, Column("id", Integer, primary_key=True))  # for the foreign key only
    Table("judge_predictions", metadata,
          Column("id", Integer, primary_key=True),
          Column("dialogue_id", Integer, ForeignKey("dialogues.id", ondelete="CASCADE"), nullable=False),
          Column("judge", String(200), nullable=False),
          Column("slots", Json),
          Column("option", Integer),
          Column("raw_reply", Text),
          Column("created_at", Timestamp, nullable=False),
          UniqueConstraint("dialogue_id", "judge", name="uq_judge_predictions_dialogue_judge"),
          CheckConstraint("(slots IS NULL) <> (option IS NULL)", name="ck_judge_predictions_one_answer"),
          Index("ix_judge_predictions_judge", "judge"))
    metadata.tables["judge_predictions"].create(connection)


def _annotator_external_id(connection: Connection) -> None:
    column_type = String(200).compile(dialect=connection.dialect)
    connection.execute(text(f"ALTER TABLE annotators ADD COLUMN external_id {column_type}"))
    # A unique index, not a constraint: SQLite cannot add constraints to an existing table. NULLs repeat.
    annotators = Table("annotators", MetaData(), Column("external_id", String(200)))
    Index("ix_annotators_external_id", annotators.c.external_id, unique=True).create(connection)


def _annotator_resume_code(connection: Connection) -> None:
    # Hashed (salted scrypt), never the code itself: a copy of the database must not let anyone sign in.
    column_type = String(200).compile(dialect=connection.dialect)
    connection.execute(text(f"ALTER TABLE annotators ADD COLUMN resume_code_hash {column_type}"))


def _study_settings(connection: Connection) -> None:
    metadata = MetaData()
    Table("study_settings", metadata,
          Column("key", String(100), primary_key=True),
          Column("value", Json, nullable=False),
          Column("updated_at", Timestamp, nullable=False))
    metadata.tables["study_settings"].create(connection)


def _pair_studies(connection: Connection) -> None:
    metadata = MetaData()
    Table("annotators", metadata, Column("id", Integer, primary_key=True))  # for the foreign key only
    Table("pair_studies", metadata,
          Column("id", Integer, primary_key=True),
          Column("public_id", String(32), nullable=False, unique=True),
          Column("name", String(200), nullable=False, unique=True),
          Column("design", String(20), nullable=False),
          Column("question", Text, nullable=False),
          Column("ties_allowed", Boolean, nullable=False),
          Column("created_at", Timestamp, nullable=False),
          CheckConstraint("design IN ('discrimination', 'preference')", name="ck_pair_studies_design"))
    Table("pair_conditions", metadata,
          Column("id", Integer, primary_key=True),
          Column("study_id", Integer, ForeignKey("pair_studies.id", ondelete="CASCADE"), nullable=False),
          Column("label", String(200), nullable=False),
          Column("conditioning", String(20)),
          Column("strength", Float),
          Column("base_model", String(500)),
          Column("checkpoint", String(500)),
          Column("seed", Integer),
          UniqueConstraint("study_id", "label", name="uq_pair_conditions_study_label"))
    Table("pair_replies", metadata,
          Column("id", Integer, primary_key=True),
          Column("condition_id", Integer, ForeignKey("pair_conditions.id", ondelete="CASCADE"), nullable=False),
          Column("identities", Json, nullable=False),
          Column("prompt", Text, nullable=False),
          Column("key", String(64), nullable=False),
          Column("text", Text),
          Column("source_ref", String(500)),
          Column("created_at", Timestamp, nullable=False),
          UniqueConstraint("condition_id", "key", name="uq_pair_replies_condition_key"))
    Table("study_pairs", metadata,
          Column("id", Integer, primary_key=True),
          Column("public_id", String(32), nullable=False, unique=True),
          Column("study_id", Integer, ForeignKey("pair_studies.id", ondelete="CASCADE"), nullable=False),
          Column("position", Integer, nullable=False),
          Column("reply_a_id", Integer, ForeignKey("pair_replies.id", ondelete="CASCADE"), nullable=False),
          Column("reply_b_id", Integer, ForeignKey("pair_replies.id", ondelete="CASCADE"), nullable=False),
          Column("question", Text, nullable=False),
          Column("expected", String(1)),
          UniqueConstraint("study_id", "position", name="uq_study_pairs_study_position"),
          UniqueConstraint("study_id", "reply_a_id", "reply_b_id", "question", name="uq_study_pairs_content"),
          CheckConstraint("expected IS NULL OR expected IN ('a', 'b')", name="ck_study_pairs_expected"))
    Table("pair_tasks", metadata,
          Column("id", Integer, primary_key=True),
          Column("public_id", String(32), nullable=False, unique=True),
          Column("annotator_id", Integer, ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False),
          Column("pair_id", Integer, ForeignKey("study_pairs.id", ondelete="CASCADE"), nullable=False),
          Column("position", Integer, nullable=False),
          Column("shown_first", String(1), nullable=False),
          Column("status", String(10), nullable=False),
          Column("choice", String(3)),
          Column("skip_reason", Text),
          Column("seconds", Float),
          Column("edits", Integer, nullable=False),
          Column("assigned_at", Timestamp, nullable=False),
          Column("updated_at", Timestamp, nullable=False),
          UniqueConstraint("annotator_id", "pair_id", name="uq_pair_tasks_annotator_pair"),
          CheckConstraint("status IN ('pending', 'done', 'skipped')", name="ck_pair_tasks_status"),
          CheckConstraint("shown_first IN ('a', 'b')", name="ck_pair_tasks_shown_first"),
          CheckConstraint("choice IS NULL OR choice IN ('a', 'b', 'tie')", name="ck_pair_tasks_choice"),
          CheckConstraint("(choice IS NULL) = (status <> 'done')", name="ck_pair_tasks_answered"),
          Index("ix_pair_tasks_queue", "annotator_id", "status", "position"),
          Index("ix_pair_tasks_pair", "pair_id"))
    Table("pair_judge_votes", metadata,
          Column("id", Integer, primary_key=True),
          Column("pair_id", Integer, ForeignKey("study_pairs.id", ondelete="CASCADE"), nullable=False),
          Column("judge", String(200), nullable=False),
          Column("choice", String(3), nullable=False),
          Column("choice_a_first", String(3)),
          Column("choice_b_first", String(3)),
          Column("raw_replies", Json, nullable=False),
          Column("created_at", Timestamp, nullable=False),
          UniqueConstraint("pair_id", "judge", name="uq_pair_judge_votes_pair_judge"),
          CheckConstraint("choice IN ('a', 'b', 'tie')", name="ck_pair_judge_votes_choice"))
    for name in ("pair_studies", "pair_conditions", "pair_replies", "study_pairs", "pair_tasks", "pair_judge_votes"):
        metadata.tables[name].create(connection)


def _annotator_sessions(connection: Connection) -> None:
    # Hashed (SHA-256 of a 256-bit random token: no salt or slow hash needed), never the token itself.
    metadata = MetaData()
    Table("annotators", metadata, Column("id", Integer, primary_key=True))  # for the foreign key only
    Table("annotator_sessions", metadata,
          Column("id", Integer, primary_key=True),
          Column("token_hash", String(64), nullable=False, unique=True),
          Column("annotator_id", Integer, ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False),
          Column("created_at", Timestamp, nullable=False),
          Column("expires_at", Timestamp, nullable=False),
          Index("ix_annotator_sessions_annotator", "annotator_id"))
    metadata.tables["annotator_sessions"].create(connection)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "base schema: annotators, dialogues, annotation tasks, annotations", _base_schema),
    Migration(2, "judge predictions", _judge_predictions),
    Migration(3, "annotators.external_id (e.g. a Hugging Face username), unique", _annotator_external_id),
    Migration(4, "annotators.resume_code_hash: the secret that resumes a name sign-in", _annotator_resume_code),
    Migration(5, "study settings an admin changes while the app runs (assignment policy, access code)",
              _study_settings),
    Migration(6, "blind pairwise studies: studies, conditions, replies, pairs, annotators' and judges' answers",
              _pair_studies),
    Migration(7, "annotator sessions: the expiring token a sign-in hands the browser (stored hashed)",
              _annotator_sessions),
)
LATEST = MIGRATIONS[-1].version

_schema_migrations = Table("schema_migrations", MetaData(),
                           Column("version", Integer, primary_key=True, autoincrement=False),
                           Column("name", String(200), nullable=False),
                           Column("applied_at", Timestamp, nullable=False))


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer version of this code."""


def migrate(database, target: int | None = None) -> list[int]:
    """Apply the migrations up to `target` (default: all) that the database lacks; returns the versions
    applied."""
    target = LATEST if target is None else target

    def run(session) -> list[int]:
        database.serialize(session, "schema_migrations")  # two processes starting at once
        connection = session.connection()
        _schema_migrations.create(connection, checkfirst=True)
        applied = set(connection.scalars(select(_schema_migrations.c.version)))
        unknown = sorted(v for v in applied if v > LATEST)
        if unknown:
            raise SchemaTooNew(f"{database.display_url} has schema version(s) {unknown}, newer than this code "
                               f"knows (up to {LATEST}): upgrade the code, do not write with this one")
        done = []
        for migration in MIGRATIONS:
            if migration.version <= target and migration.version not in applied:
                migration.apply(connection)
                connection.execute(insert(_schema_migrations).values(
                    version=migration.version, name=migration.name, applied_at=datetime.now(timezone.utc)))
                done.append(migration.version)
        return done

    return database.write(run)


def current_version(database) -> int:
    """The highest applied migration, 0 for an empty database."""
    with database.read() as session:
        connection = session.connection()
        if not connection.dialect.has_table(connection, "schema_migrations"):
            return 0
        return max(connection.scalars(select(_schema_migrations.c.version)), default=0)
