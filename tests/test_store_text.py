"""Text the store keeps is checked before anything is written, the same way on SQLite and PostgreSQL: no NUL
(PostgreSQL cannot store it), no lone surrogates (not encodable as UTF-8), and no more characters than the
column holds. Each error names the field."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from annotation import store as store_module
from annotation.records import JudgeLabel
from annotation.store import Store, StoreError
from db import Database
from db.models import Annotation, AnnotationTask, Annotator, Dialogue, JudgePrediction

SLOTS = {"AGR": "high", "CON": "none", "EXT": "low", "NEU": "none", "OPE": "none", "Profession": "Doctor"}
TURNS = [{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine."}]
BAD = [("\u0000", "NUL"), ("\ud800", "surrogate")]


@pytest.fixture
def store(database_url):
    database = Database(database_url)
    yield Store(database)
    database.close()


def rows(store: Store) -> list[int]:
    with store.db.read() as session:
        return [session.scalar(select(func.count()).select_from(m))
                for m in (Annotator, Dialogue, AnnotationTask, Annotation, JudgePrediction)]


@pytest.mark.parametrize("bad, word", BAD)
def test_bad_characters_in_any_text_field_are_refused_naming_the_field(store, bad, word):
    annotator = store.register_annotator("Ada")
    store.add_dialogue(TURNS, "Doctor")
    view = store.next_task(annotator)
    before = rows(store)
    scale = dict(kind="scale_interview", statement="I keep things tidy.")
    calls = {
        "display name": lambda: store.register_annotator(f"Ada {bad}"),
        "external id": lambda: store.register_annotator("Ada", external_id=f"name:{bad}"),
        "comment": lambda: store.submit(view.task, slots=SLOTS, comment=f"ok {bad}"),
        "skip reason": lambda: store.skip(view.task, f"why {bad}"),
        "system": lambda: store.add_dialogue(TURNS, "Doctor", system=f"sim {bad}"),
        "dialogue turn 1 content": lambda: store.add_dialogue(
            [TURNS[0], {"role": "assistant", "content": f"x {bad}"}], "Doctor"),
        "factor": lambda: store.add_dialogue(TURNS, "Doctor", factor=f"AGR{bad}", **scale),
        "statement": lambda: store.add_dialogue(TURNS, "Doctor", kind="scale_interview", statement=f"I {bad}"),
        "judge name": lambda: store.add_dialogue(TURNS, "Artist", judges=[JudgeLabel(f"j{bad}", slots=SLOTS)]),
        "raw reply": lambda: store.add_dialogue(TURNS, "Artist", judges=[JudgeLabel("j", SLOTS, raw_reply=bad)]),
    }
    for field, call in calls.items():
        with pytest.raises(StoreError, match=f"^{field}: .*{word}"):
            call()
    assert rows(store) == before


def test_factor_is_limited_to_what_its_column_holds(store):
    limit = Dialogue.__table__.c.factor.type.length
    scale = dict(kind="scale_interview", statement="I keep things tidy.")
    with pytest.raises(StoreError, match=f"factor: {limit + 1} characters, the limit is {limit}"):
        store.add_dialogue(TURNS, "Doctor", factor="F" * (limit + 1), **scale)
    assert store.add_dialogue(TURNS, "Doctor", factor="F" * limit, **scale).created


def test_text_limits_match_the_columns():
    columns = Dialogue.__table__.c
    assert store_module.MAX_NAME_CHARS == Annotator.__table__.c.display_name.type.length
    assert store_module.MAX_NAME_CHARS == columns.system.type.length == JudgePrediction.__table__.c.judge.type.length
    assert store_module.MAX_FACTOR_CHARS == columns.factor.type.length
    assert store_module.MAX_SOURCE_REF_CHARS == columns.source_ref.type.length
