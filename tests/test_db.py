"""Storage guarantees, on SQLite (a real file) and PostgreSQL (a real server): settings, migrations,
concurrent writers, a writer killed mid-transaction."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone

import pytest
from sqlalchemy import create_engine, func, inspect, select, text

from annotation.assignment import AssignmentPolicy
from annotation.records import JudgeLabel
from annotation.store import Store
from db import Database, migrations
from db import database_url as resolve_url
from db.models import Annotation, AnnotationTask, Annotator, Base, Dialogue, JudgePrediction
from hirpf.paths import PROJECT_ROOT

SLOTS = {"AGR": "high", "CON": "none", "EXT": "low", "NEU": "none", "OPE": "none", "Profession": "Doctor"}


def dialogue(i: int) -> list[dict]:
    return [{"role": "system", "content": "You are a doctor with high agreeableness."},
            {"role": "user", "content": f"Question number {i}?"},
            {"role": "assistant", "content": f"Answer number {i}."}]


def count(database: Database, model) -> int:
    with database.read() as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def database(database_url):
    opened = Database(database_url)
    yield opened
    opened.close()


# --- settings -------------------------------------------------------------------------------------------
def test_url_comes_from_option_then_environment_then_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("HIRPF_DATA_DIR", str(tmp_path / "store"))
    assert resolve_url() == f"sqlite:///{tmp_path / 'store' / 'hirpf.sqlite3'}"
    monkeypatch.delenv("HIRPF_DATA_DIR")
    assert resolve_url() == f"sqlite:///{PROJECT_ROOT / 'data' / 'hirpf.sqlite3'}"
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@host/db")
    assert resolve_url() == "postgresql+psycopg://u:p@host/db"
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"


def test_in_memory_sqlite_is_refused():
    with pytest.raises(ValueError, match="needs a database file"):
        Database("sqlite://")


def test_sqlite_connections_are_set_up_for_concurrent_use(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    with database.read() as session:
        pragma = lambda name: session.execute(text(f"PRAGMA {name}")).scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("foreign_keys") == 1
        assert pragma("synchronous") == 1  # NORMAL
        assert pragma("busy_timeout") >= 5000
    database.close()


def test_foreign_keys_are_enforced(database):
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        database.write(lambda s: s.add(AnnotationTask(annotator_id=999, dialogue_id=999, position=1, side="X")))
    assert count(database, AnnotationTask) == 0


def test_reads_cannot_write_and_writes_cannot_nest(database):
    with pytest.raises(RuntimeError, match="read-only"):
        with database.read() as session:
            session.add(Annotator(display_name="x"))
            session.flush()
    with pytest.raises(RuntimeError, match="inside another write"):
        database.write(lambda s: database.write(lambda inner: None))
    assert count(database, Annotator) == 0


# --- migrations -----------------------------------------------------------------------------------------
def _describe(connection) -> dict:
    inspector = inspect(connection)
    return {table: {"columns": {c["name"]: c["nullable"] for c in inspector.get_columns(table)},
                    "indexes": {(i["name"], tuple(i["column_names"]), bool(i["unique"]))
                                for i in inspector.get_indexes(table)},
                    "uniques": {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)},
                    "foreign_keys": {(tuple(f["constrained_columns"]), f["referred_table"])
                                     for f in inspector.get_foreign_keys(table)}}
            for table in inspector.get_table_names()}


def _schema(database: Database) -> dict:
    with database.read() as session:
        return _describe(session.connection())


def test_models_match_the_migrated_schema(database, tmp_path):
    """The ORM models and the migrations describe the same schema: build one straight from the models (a
    second SQLite file, or a second PostgreSQL schema) and compare it with the migrated one."""
    if database.is_sqlite:
        engine = create_engine(f"sqlite:///{tmp_path / 'models.sqlite3'}")
    else:
        with create_engine(database.url).begin() as connection:
            connection.execute(text("CREATE SCHEMA models"))
        engine = create_engine(database.url, connect_args={"options": "-csearch_path=models"})
    Base.metadata.create_all(engine)
    with engine.connect() as connection:
        expected = _describe(connection)
    engine.dispose()
    assert _schema(database) == expected


def _insert_v1_rows(database: Database) -> None:
    now = datetime.now(timezone.utc)

    def run(session):
        c = session.connection()
        c.execute(text("INSERT INTO annotators (public_id, display_name, created_at) "
                       "VALUES ('a1', 'Ada', :now), ('a2', 'Bo', :now)"), {"now": now})
        for i in (1, 2):
            c.execute(text(
                "INSERT INTO dialogues (public_id, kind, source, system, target, transcript, anonymized, reversed, "
                "content_hash, created_at) VALUES (:p, 'identity', 'file', 'sys-1', :target, :t, :a, :r, :h, :now)"),
                {"p": f"d{i}", "target": '["AGR_high", "Doctor"]', "t": '[{"role": "user", "content": "hi"}, '
                 '{"role": "assistant", "content": "hello"}]', "a": '[{"speaker": "X", "text": "hi"}, '
                 '{"speaker": "Y", "text": "hello"}]', "r": '[{"role": "assistant", "content": "hi"}, '
                 '{"role": "user", "content": "hello"}]', "h": f"hash{i}", "now": now})
        c.execute(text("INSERT INTO annotation_tasks (public_id, annotator_id, dialogue_id, position, side, "
                       "status, assigned_at, updated_at) VALUES ('t1', 1, 1, 1, 'Y', 'done', :now, :now), "
                       "('t2', 1, 2, 2, 'X', 'pending', :now, :now)"), {"now": now})
        c.execute(text("INSERT INTO annotations (task_id, slots, comment, seconds, edits, created_at, updated_at) "
                       "VALUES (1, :slots, 'first', 12.5, 0, :now, :now)"),
                  {"slots": '{"AGR": "high", "CON": "none", "EXT": "none", "NEU": "none", "OPE": "none", '
                            '"Profession": "Doctor"}', "now": now})

    database.write(run)


def test_a_version_1_database_upgrades_in_place_without_losing_rows(database_url):
    old = Database(database_url, migrate=False)
    assert migrations.migrate(old, target=1) == [1]
    assert migrations.current_version(old) == 1
    assert "judge_predictions" not in _schema(old)
    _insert_v1_rows(old)
    old.close()

    upgraded = Database(database_url)  # applies the later migrations on start
    assert migrations.current_version(upgraded) == migrations.LATEST
    assert [count(upgraded, m) for m in (Annotator, Dialogue, AnnotationTask, Annotation)] == [2, 2, 2, 1]
    with upgraded.read() as session:
        answer = session.scalar(select(Annotation))
        assert (answer.slots["Profession"], answer.comment, answer.seconds) == ("Doctor", "first", 12.5)
        assert session.scalar(select(Annotator).where(Annotator.public_id == "a1")).external_id is None
    # What the new versions added works on the old rows.
    store = Store(upgraded)
    store.add_judge_prediction("d1", JudgeLabel("judge-a", slots=SLOTS))
    assert store.register_annotator("Ada again", external_id="hf:ada") == store.register_annotator(
        "Ada", external_id="hf:ada")
    assert store.next_task("a1").task == "t2"  # resumes the old queue
    assert count(upgraded, JudgePrediction) == 1
    assert migrations.migrate(upgraded) == []  # nothing left to apply
    upgraded.close()


def test_a_failing_migration_changes_nothing(database_url, monkeypatch):
    Database(database_url).close()

    def broken(connection):
        connection.execute(text("CREATE TABLE half_done (id INTEGER PRIMARY KEY)"))
        raise RuntimeError("the next migration failed")

    latest = migrations.LATEST
    monkeypatch.setattr(migrations, "MIGRATIONS",
                        migrations.MIGRATIONS + (migrations.Migration(latest + 1, "x", broken),))
    monkeypatch.setattr(migrations, "LATEST", latest + 1)
    with pytest.raises(RuntimeError, match="the next migration failed"):
        Database(database_url)
    monkeypatch.undo()
    database = Database(database_url)
    assert migrations.current_version(database) == latest
    assert "half_done" not in _schema(database)
    database.close()


def test_a_database_from_newer_code_is_refused(database):
    database.write(lambda s: s.execute(text("INSERT INTO schema_migrations (version, name, applied_at) "
                                            "VALUES (99, 'future', :now)"), {"now": datetime.now(timezone.utc)}))
    with pytest.raises(migrations.SchemaTooNew, match="newer than this code"):
        Database(database.url.render_as_string(hide_password=False))


# --- nothing lost -----------------------------------------------------------------------------------------
def test_16_annotators_x_50_concurrent_submissions_store_each_once(database):
    annotators_n, items_n = 16, 50
    store = Store(database, AssignmentPolicy(overlap=annotators_n, batch=items_n, seed=3))
    for i in range(items_n):
        store.add_dialogue(dialogue(i), "Doctor,AGR_high,EXT_low", source="simulator", system="sim-1")
    annotators = [store.register_annotator(f"annotator {i}") for i in range(annotators_n)]
    errors: list[BaseException] = []
    statuses: list[str] = []
    start = threading.Barrier(annotators_n)

    def work(annotator: str):
        try:
            start.wait()
            while (view := store.next_task(annotator)) is not None:
                statuses.append(store.submit(view.task, slots=SLOTS, comment=f"{annotator}", seconds=1).status)
                if view.position % 10 == 0:  # a double click: the same answer again
                    statuses.append(store.submit(view.task, slots=SLOTS, comment=f"{annotator}").status)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(a,)) for a in annotators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert statuses.count("stored") == annotators_n * items_n
    assert statuses.count("unchanged") == annotators_n * (items_n // 10)
    assert count(database, Annotation) == annotators_n * items_n
    with database.read() as session:
        per_task = session.execute(select(Annotation.task_id, func.count()).group_by(Annotation.task_id)).all()
        assert len(per_task) == annotators_n * items_n and {n for _, n in per_task} == {1}
        assert session.scalar(select(func.count()).select_from(AnnotationTask)
                              .where(AnnotationTask.status != "done")) == 0
    assert all(store.progress(a)[:2] == (items_n, items_n) for a in annotators)


def test_parallel_next_task_calls_of_one_annotator_hand_out_one_batch(database):
    """Several open tabs of one annotator ask at once: one batch is assigned, and all get its first task."""
    tabs, batch = 8, 10
    store = Store(database, AssignmentPolicy(overlap=1, batch=batch, seed=1))
    for i in range(60):
        store.add_dialogue(dialogue(i), "Doctor", source="simulator")
    annotator = store.register_annotator("Ada")
    start = threading.Barrier(tabs)
    shown: list[str] = []
    errors: list[BaseException] = []

    def tab():
        try:
            start.wait()
            shown.append(store.next_task(annotator).task)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=tab) for _ in range(tabs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(database, AnnotationTask) == batch
    assert len(set(shown)) == 1


_KILLED_WRITER = r"""
import sys, time
from annotation.store import Store, prepare_dialogue
from db import Database
from db.models import Annotation, Dialogue
from sqlalchemy import select

store = Store(Database(sys.argv[1]))
tasks = sys.argv[2:]
slots = {"AGR": "high", "CON": "none", "EXT": "low", "NEU": "none", "OPE": "none", "Profession": "Doctor"}
for task in tasks[:3]:
    store.submit(task, slots=slots, comment="kept")
print("COMMITTED", flush=True)

def half_written(session):
    for i in range(20):
        values = prepare_dialogue([{"role": "user", "content": f"new {i}"},
                                   {"role": "assistant", "content": f"reply {i}"}], "OPE_low", source="simulator")
        session.add(Dialogue(**values))
    for answer in session.scalars(select(Annotation)):
        answer.comment = "overwritten"
    session.flush()
    print("IN-TRANSACTION", flush=True)
    time.sleep(600)

store.db.write(half_written)
"""


def test_a_writer_killed_mid_transaction_leaves_no_partial_rows_and_loses_nothing(database):
    store = Store(database, AssignmentPolicy(batch=10))
    for i in range(5):
        store.add_dialogue(dialogue(i), "Doctor", source="simulator")
    annotator = store.register_annotator("Ada")
    store.assign(annotator)
    with database.read() as session:
        tasks = list(session.scalars(select(AnnotationTask.public_id).order_by(AnnotationTask.position)))
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, database.url.render_as_string(False), *tasks],
                             cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        assert child.stdout.readline().strip() == "COMMITTED", child.stderr.read()
        assert child.stdout.readline().strip() == "IN-TRANSACTION", child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.stderr.close()

    after = Database(database.url.render_as_string(hide_password=False))
    assert count(after, Dialogue) == 5  # none of the 20 half-written ones
    with after.read() as session:
        assert sorted(session.scalars(select(Annotation.comment))) == ["kept"] * 3
        if after.is_sqlite:
            assert session.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    # The database takes writes again at once: the killed writer's lock went with it.
    assert Store(after).submit(tasks[3], slots=SLOTS).status == "stored"
    assert count(after, Annotation) == 4
    after.close()
