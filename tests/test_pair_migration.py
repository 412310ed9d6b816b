"""Migration 6 (pair studies) on SQLite and PostgreSQL: a database at the schema before it upgrades in place,
keeping every row, and the new tables work on it."""
from __future__ import annotations

from sqlalchemy import func, inspect, select

from annotation.store import Store
from db import Database, migrations
from db.models import (
    Annotation,
    AnnotationTask,
    Annotator,
    Dialogue,
    PairCondition,
    PairReply,
    PairStudy,
    PairTask,
    StudyPair,
)

from store_helpers import DOCTOR, turns

PAIR_VERSION = next(m.version for m in migrations.MIGRATIONS if m.apply is migrations._pair_studies)


def _count(database: Database, model) -> int:
    with database.read() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_a_database_before_pair_studies_upgrades_without_losing_rows(database_url):
    old = Database(database_url, migrate=False)
    migrations.migrate(old, target=PAIR_VERSION - 1)
    with old.read() as session:
        assert "pair_studies" not in inspect(session.connection()).get_table_names()
    store = Store(old)
    for i in range(3):
        store.add_dialogue(turns(i), "Doctor,AGR_high", source="simulator", system="sim-1")
    annotator = store.register_annotator("Ada")
    task = store.next_task(annotator)
    store.submit(task.task, slots=DOCTOR, comment="kept", seconds=3.5)
    old.close()

    upgraded = Database(database_url)
    assert migrations.current_version(upgraded) == migrations.LATEST
    assert [_count(upgraded, m) for m in (Annotator, Dialogue, AnnotationTask, Annotation)] == [1, 3, 3, 1]
    with upgraded.read() as session:
        assert session.scalar(select(Annotation.comment)) == "kept"
    # The new tables take rows next to the old ones, and an old annotator can hold a pair task.
    def add(session):
        study = PairStudy(name="s", design="preference", question="Which?", ties_allowed=True)
        session.add(study)
        session.flush()
        condition = PairCondition(study_id=study.id, label="prompt", conditioning="prompt")
        session.add(condition)
        session.flush()
        replies = [PairReply(condition_id=condition.id, identities=["AGR_high"], prompt="hi", key=k, text=k)
                   for k in ("1", "2")]
        session.add_all(replies)
        session.flush()
        pair = StudyPair(study_id=study.id, position=1, reply_a_id=replies[0].id, reply_b_id=replies[1].id,
                         question="Which?")
        session.add(pair)
        session.flush()
        who = session.scalar(select(Annotator.id))
        session.add(PairTask(annotator_id=who, pair_id=pair.id, position=1, shown_first="b"))

    upgraded.write(add)
    assert _count(upgraded, PairTask) == 1
    assert migrations.migrate(upgraded) == []
    upgraded.close()
