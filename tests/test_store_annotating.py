"""Annotating on SQLite and PostgreSQL: submit, resume, skip, edit the last answer, bad answers refused."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from annotation.assignment import AssignmentPolicy
from annotation.store import MAX_COMMENT_CHARS, AnswerView, NotFound, Store, StoreError
from db import Database
from db.models import Annotation, AnnotationTask
from hirpf.labels import LabelError

from store_helpers import (
    ARTIST,
    DOCTOR,
    items,
    snapshot,
    turns,
)


# --- annotating -----------------------------------------------------------------------------------------
def test_submit_is_idempotent_and_progress_counts(database):
    store = Store(database, AssignmentPolicy(batch=3))
    items(store, 5)
    annotator = store.register_annotator("Ada")
    view = store.next_task(annotator)
    assert store.progress(annotator) == (0, 3, 0)
    assert store.submit(view.task, slots=DOCTOR, comment="sure", seconds=20).status == "stored"
    assert store.submit(view.task, slots=DOCTOR, comment="sure", seconds=21).status == "unchanged"
    assert snapshot(database)["counts"][3] == 1
    assert store.progress(annotator) == (1, 3, 0)
    assert store.task_view(view.task).answer == AnswerView(slots=DOCTOR, option=None, comment="sure")


def test_resume_where_the_annotator_left_off(database):
    store = Store(database, AssignmentPolicy(batch=4))
    items(store, 6)
    annotator = store.register_annotator("Ada")
    first = store.next_task(annotator)
    store.submit(first.task, slots=DOCTOR)
    second = store.next_task(annotator)
    restarted = Store(Database(database.url.render_as_string(hide_password=False)), AssignmentPolicy(batch=4))
    assert restarted.next_task(annotator).task == second.task
    assert second.position == first.position + 1
    for _ in range(3):
        view = restarted.next_task(annotator)
        restarted.submit(view.task, slots=DOCTOR)
    assert restarted.next_task(annotator).position == 5  # a new batch after the first four
    restarted.db.close()


def test_skip_with_a_reason(database):
    store = Store(database)
    items(store, 3)
    annotator = store.register_annotator("Ada")
    view = store.next_task(annotator)
    with pytest.raises(StoreError, match="skip reason: required"):
        store.skip(view.task, " ")
    with pytest.raises(StoreError, match="limit is"):
        store.skip(view.task, "x" * 501)
    store.skip(view.task, "not in English")
    assert store.task_view(view.task).status == "skipped"
    assert store.next_task(annotator).task != view.task
    assert store.progress(annotator) == (1, 3, 1)
    before = snapshot(database)
    with pytest.raises(StoreError, match="already skipped"):  # a second skip: the first reason stands
        store.skip(view.task, "changed my reason")
    assert snapshot(database) == before and store.task_view(view.task).skip_reason == "not in English"
    with pytest.raises(StoreError, match="skipped"):
        store.submit(view.task, slots=DOCTOR)
    assert snapshot(database) == before
    answered = store.next_task(annotator)
    store.submit(answered.task, slots=DOCTOR)
    before = snapshot(database)
    with pytest.raises(StoreError, match="answered"):
        store.skip(answered.task, "changed my mind")
    assert snapshot(database) == before


def test_only_the_last_answer_can_be_edited(database):
    store = Store(database)
    items(store, 3)
    annotator = store.register_annotator("Ada")
    first = store.next_task(annotator)
    store.submit(first.task, slots=DOCTOR, seconds=10)
    second = store.next_task(annotator)
    store.submit(second.task, slots=DOCTOR, seconds=10)
    assert store.task_view(second.task).editable and not store.task_view(first.task).editable
    assert store.submit(second.task, slots=ARTIST, comment="on reflection", seconds=5).status == "edited"
    with database.read() as session:
        edited = session.scalar(select(Annotation).join(AnnotationTask)
                                .where(AnnotationTask.public_id == second.task))
        assert (edited.slots, edited.comment, edited.edits, edited.seconds) == (ARTIST, "on reflection", 1, 15)
    before = snapshot(database)
    with pytest.raises(StoreError, match="only your last answer"):
        store.submit(first.task, slots=ARTIST)
    assert snapshot(database) == before


@pytest.mark.parametrize("answer, message", [
    ({"slots": {**DOCTOR, "AGR": "very high"}}, "AGR: unknown label"),
    ({"slots": {**DOCTOR, "Profession": "Wizard"}}, "Profession: unknown label"),
    ({"slots": {k: v for k, v in DOCTOR.items() if k != "OPE"}}, "missing slot"),
    ({"slots": {**DOCTOR, "Mood": "high"}}, "unknown slot"),
    ({"option": 3}, "six slots"),
    ({}, "six slots"),
    ({"slots": DOCTOR, "comment": "x" * (MAX_COMMENT_CHARS + 1)}, f"limit is {MAX_COMMENT_CHARS}"),
    ({"slots": DOCTOR, "comment": 12}, "comment: expected text"),
    ({"slots": DOCTOR, "seconds": -1}, "seconds"),
    ({"slots": DOCTOR, "seconds": float("nan")}, "seconds"),
])
def test_a_bad_answer_is_refused_and_nothing_changes(database, answer, message):
    store = Store(database)
    items(store, 2)
    annotator = store.register_annotator("Ada")
    answered = store.next_task(annotator)
    store.submit(answered.task, slots=DOCTOR, comment="kept")
    pending = store.next_task(annotator)
    before = snapshot(database)
    for task in (answered.task, pending.task):  # neither a new answer nor an edit
        with pytest.raises((StoreError, LabelError), match=message):
            store.submit(task, **answer)
    assert snapshot(database) == before


def test_scale_interviews_take_one_option(database):
    store = Store(database)
    store.add_dialogue(turns(1, "You are a human with low agreeableness."), "AGR_low", kind="scale_interview",
                       statement="I sympathize with others.", factor="AGR_high", target_option=2)
    annotator = store.register_annotator("Ada")
    view = store.next_task(annotator)
    assert (view.kind, view.statement) == ("scale_interview", "I sympathize with others.")
    with pytest.raises(StoreError, match="one option"):
        store.submit(view.task, slots=DOCTOR)
    with pytest.raises(LabelError, match="scale option"):
        store.submit(view.task, option="somewhat")
    assert store.submit(view.task, option="moderately inaccurate").status == "stored"
    assert store.task_view(view.task).answer.option == 2


def test_unknown_ids_are_not_found(database):
    store = Store(database)
    with pytest.raises(NotFound):
        store.next_task("nobody")
    with pytest.raises(NotFound):
        store.submit("no-such-task", slots=DOCTOR)


def test_a_task_answers_only_to_its_own_annotator(database):
    store = Store(database)
    items(store, 1)
    ada, bob = store.register_annotator("Ada"), store.register_annotator("Bob")
    task = store.next_task(ada).task
    before = snapshot(database)
    for call in (lambda: store.submit(task, slots=DOCTOR, annotator=bob), lambda: store.task_view(task, annotator=bob),
                 lambda: store.skip(task, "not mine", annotator=bob)):
        with pytest.raises(NotFound, match="no task"):
            call()
    assert snapshot(database) == before
    assert store.submit(task, slots=DOCTOR, annotator=ada).status == "stored"
