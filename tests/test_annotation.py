"""The annotation workflow on SQLite and PostgreSQL: dialogues in (bad ones refused), assignment policies,
submit / skip / edit / resume, what an annotator sees, the report, the CLI."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, fields, replace

import pytest
from sqlalchemy import func, select

from annotation import agreement
from annotation.assignment import AssignmentPolicy
from annotation.records import JudgeLabel, UnreadableFile
from annotation.store import MAX_COMMENT_CHARS, AnswerView, NotFound, Store, StoreError, prepare_dialogue
from hirpf.labels import SLOTS, LabelError, slots_from_identities
from db import Database
from db.models import Annotation, AnnotationTask, Annotator, Dialogue, JudgePrediction
from db_fixtures import database_url, postgres_server  # noqa: F401
from hirpf.identities import ALL_IDENTITIES, IdentitySet
from hirpf.paths import PROJECT_ROOT, his_file

DOCTOR = {"AGR": "high", "CON": "none", "EXT": "low", "NEU": "none", "OPE": "none", "Profession": "Doctor"}
ARTIST = {"AGR": "low", "CON": "high", "EXT": "none", "NEU": "none", "OPE": "high", "Profession": "Artist"}


def turns(i: int, persona: str = "You are a doctor with high agreeableness.") -> list[dict]:
    return [{"role": "system", "content": persona},
            {"role": "user", "content": f"How was day {i}?"},
            {"role": "assistant", "content": f"Day {i} was fine, thank you."},
            {"role": "user", "content": "Anything else?"},
            {"role": "assistant", "content": "Not much."}]


@pytest.fixture
def database(database_url):  # noqa: F811
    opened = Database(database_url)
    yield opened
    opened.close()


def snapshot(database: Database) -> dict:
    """Row counts and every mutable column, to show that a refused call changed nothing."""
    with database.read() as session:
        return {
            "counts": [session.scalar(select(func.count()).select_from(m))
                       for m in (Annotator, Dialogue, AnnotationTask, Annotation, JudgePrediction)],
            "tasks": sorted(session.execute(select(AnnotationTask.id, AnnotationTask.status,
                                                   AnnotationTask.skip_reason)).all()),
            "answers": sorted((a.id, json.dumps(a.slots, sort_keys=True), a.option, a.comment, a.edits)
                              for a in session.scalars(select(Annotation))),
        }


def items(store: Store, n: int, target: str = "Doctor,AGR_high,EXT_low") -> list[str]:
    return [store.add_dialogue(turns(i), target, source="simulator", system="sim-7b").dialogue for i in range(n)]


def assigned(store: Store, annotator: str) -> list[str]:
    """The annotator's dialogues (public ids) in queue order."""
    with store.db.read() as session:
        return list(session.scalars(select(Dialogue.public_id).join(AnnotationTask).join(Annotator)
                                    .where(Annotator.public_id == annotator).order_by(AnnotationTask.position)))


# --- dialogues in -----------------------------------------------------------------------------------------
def test_a_dialogue_is_stored_with_its_anonymized_and_reversed_forms(database):
    store = Store(database)
    added = store.add_dialogue(turns(1), ["AGR_high", "Doctor"], source="app", system="hirpf:smollm2")
    with database.read() as session:
        d = session.scalar(select(Dialogue))
        assert (d.public_id, d.kind, d.source, d.system, d.target) == (
            added.dialogue, "identity", "app", "hirpf:smollm2", ["AGR_high", "Doctor"])
        assert d.transcript == turns(1)
        assert [t["speaker"] for t in d.anonymized] == ["X", "Y", "X", "Y"]
        assert d.anonymized[1]["text"] == "Day 1 was fine, thank you."
        assert [t["role"] for t in d.reversed] == ["assistant", "user", "assistant", "user"]
        assert d.reversed[0]["content"] == "How was day 1?"


def test_the_same_dialogue_twice_is_stored_once(database):
    store = Store(database)
    first = store.add_dialogue(turns(1), "Doctor")
    again = store.add_dialogue(turns(1), "Doctor", system="another-name")
    assert (first.created, again.created, again.dialogue) == (True, False, first.dialogue)
    assert store.add_dialogue(turns(1), "Artist").created  # another target is another dialogue
    assert snapshot(database)["counts"][1] == 2


@pytest.mark.parametrize("transcript, target, kwargs, message", [
    ([], "Doctor", {}, "no turns"),
    ([{"role": "system", "content": "You are a doctor."}], "Doctor", {}, "no turns"),
    ([{"role": "narrator", "content": "Once"}, {"role": "assistant", "content": "hi"}], "Doctor", {}, "unknown role"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "hi"}], "Doctor", {}, "content must be text"),
    ([{"role": "user", "content": "hi"}], "Doctor", {}, "no assistant turn"),
    ("user: hi", "Doctor", {}, "list of"),
    (turns(1), "AGR_high,AGR_low", {}, "target"),
    (turns(1), "Doctor,Artist", {}, "target"),
    (turns(1), "Wizard", {}, "unknown identity 'Wizard'"),
    (turns(1), "Doctor", {"kind": "poem"}, "kind"),
    (turns(1), "Doctor", {"source": "web"}, "source"),
    (turns(1), "Doctor", {"kind": "scale_interview"}, "statement: required"),
    (turns(1), "Doctor", {"kind": "scale_interview", "statement": "I help.", "target_option": 9}, "scale option"),
    (turns(1), "Doctor", {"judges": [JudgeLabel("j", slots={**DOCTOR, "AGR": "very"})]}, "unknown label"),
])
def test_a_bad_dialogue_is_refused_and_nothing_is_written(database, transcript, target, kwargs, message):
    store = Store(database)
    store.add_dialogue(turns(0), "Artist")
    before = snapshot(database)
    with pytest.raises((StoreError, LabelError), match=message):
        store.add_dialogue(transcript, target, **kwargs)
    assert snapshot(database) == before


def test_html_and_script_are_stored_as_text(database):
    store = Store(database)
    html = '<img src=x onerror="alert(1)"><script>document.cookie</script> & &amp; <b>bold</b>'
    store.add_dialogue([{"role": "user", "content": html}, {"role": "assistant", "content": html}], "Doctor")
    annotator = store.register_annotator("<i>Ada</i>")
    view = store.next_task(annotator)
    assert {t["text"] for t in view.transcript} == {html}
    store.submit(view.task, slots=DOCTOR, comment=html)
    with database.read() as session:
        assert session.scalar(select(Annotation.comment)) == html
        assert session.scalar(select(Dialogue.transcript))[0]["content"] == html
        assert session.scalar(select(Annotator.display_name)) == "<i>Ada</i>"


# --- annotators -----------------------------------------------------------------------------------------
def test_an_external_identity_is_one_annotator(database):
    store = Store(database)
    ada = store.register_annotator("Ada", external_id="hf:ada")
    assert store.register_annotator("Ada L.", external_id="hf:ada") == ada
    assert store.register_annotator("Ada") != ada  # no external id: a new annotator each time
    with pytest.raises(StoreError, match="reserved"):
        store.register_annotator("x", external_id="file:his")
    with pytest.raises(StoreError, match="display name: required"):
        store.register_annotator("  ")


# --- assignment -----------------------------------------------------------------------------------------
def test_overlap_k_gives_every_item_k_annotators_least_annotated_first(database):
    store = Store(database, AssignmentPolicy(overlap=2, batch=4, seed=1))
    all_items = set(items(store, 10))
    a, b, c, d, e, f = (store.register_annotator(n) for n in "abcdef")
    assert store.assign(a, 4) == 4 and store.assign(b, 4) == 4
    assert not set(assigned(store, a)) & set(assigned(store, b))  # b got untouched items first
    store.assign(c, 4)
    assert all_items - set(assigned(store, a)) - set(assigned(store, b)) <= set(assigned(store, c))
    for annotator in (d, e, f):
        store.assign(annotator)
    per_item = Counter(x for who in (a, b, c, d, e, f) for x in assigned(store, who))
    assert per_item == {item: 2 for item in all_items}  # then nothing more: every item has its k
    assert store.assign(store.register_annotator("late")) == 0


def test_a_cap_limits_annotators_per_item_and_a_skip_frees_a_place(database):
    store = Store(database, AssignmentPolicy(overlap=1, cap=3))
    all_items = items(store, 5)
    annotators = [store.register_annotator(n) for n in "abcd"]
    given = [store.assign(a) for a in annotators]
    assert given == [5, 5, 5, 0]
    view = store.next_task(annotators[0])
    store.skip(view.task, "unreadable")
    assert assigned(store, annotators[3]) == []
    assert store.assign(annotators[3]) == 1
    assert set(assigned(store, annotators[3])) <= set(all_items)


def test_a_shared_fraction_goes_to_every_annotator(database):
    store = Store(database, AssignmentPolicy(overlap=1, shared_fraction=0.25, seed=5))
    all_items = set(items(store, 20))
    a, b, c = (store.register_annotator(n) for n in "abc")
    assert store.assign(a) == 20
    assert store.assign(b) == 5 and store.assign(c) == 5
    assert set(assigned(store, b)) == set(assigned(store, c)) < all_items


def test_item_order_is_a_seeded_shuffle_stable_across_calls_and_databases(tmp_path):
    def order(name: str, seed: int, external: str) -> list[str]:
        database = Database(f"sqlite:///{tmp_path / name}.sqlite3")
        store = Store(database, AssignmentPolicy(overlap=3, batch=5, seed=seed))
        for i in (list(range(12)) if name != "reversed" else list(range(12))[::-1]):  # insertion order differs
            store.add_dialogue(turns(i), "Doctor")
        annotator = store.register_annotator("Ada", external_id=external)
        seen = []
        while (view := store.next_task(annotator)) is not None:
            assert store.next_task(annotator).task == view.task  # the same until answered
            seen.append(view.transcript[0]["text"])
            store.submit(view.task, slots=DOCTOR)
        database.close()
        return seen

    first = order("first", seed=1, external="hf:ada")
    assert len(first) == 12 and first != sorted(first)
    assert order("reversed", seed=1, external="hf:ada") == first
    assert order("other-seed", seed=2, external="hf:ada") != first
    assert order("other-annotator", seed=1, external="hf:bo") != first


def test_presentation_side_varies_and_the_transcript_follows_it(database):
    store = Store(database, AssignmentPolicy(overlap=1))
    items(store, 16)
    annotator = store.register_annotator("Ada")
    store.assign(annotator)
    sides = Counter()
    while (view := store.next_task(annotator)) is not None:
        sides[view.agent] += 1
        agent_lines = [t["text"] for t in view.transcript if t["speaker"] == view.agent]
        assert agent_lines[-1] == "Not much."  # the agent's (assistant's) turns carry the agent's letter
        store.submit(view.task, slots=DOCTOR)
    assert set(sides) == {"X", "Y"}


def test_bad_policies_are_refused():
    for kwargs in ({"overlap": 0}, {"overlap": 3, "cap": 2}, {"shared_fraction": 1.5}, {"batch": 0},
                   {"kinds": ("poem",)}):
        with pytest.raises(ValueError):
            AssignmentPolicy(**kwargs)


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


# --- nothing leaked ---------------------------------------------------------------------------------------
def test_the_annotator_view_reveals_no_target_system_file_or_internal_id(database):
    store = Store(database)
    secret_system, secret_file = "acme-chat-7b-v2", "run_2024_secret.jsonl"
    transcript = [
        {"role": "system", "content": "You are a doctor with high agreeableness and low extraversion. "
                                      "Identities: Doctor, AGR_high, EXT_low."},
        {"role": "user", "content": f"Which model are you? Are you {secret_system} from {secret_file}?"},
        {"role": "assistant", "content": f"I am {secret_system}, HIRPF with AGR_high and EMS_low, "
                                         "running on Llama-2 via SmolLM2, logged to run_2024_secret."},
    ]
    added = store.add_dialogue(transcript, "Doctor,AGR_high,EXT_low", source="simulator", system=secret_system,
                               source_ref=f"{secret_file}:7",
                               judges=[JudgeLabel("gpt-4o-judge", slots=DOCTOR, raw_reply="Doctor AGR_high")])
    annotator = store.register_annotator("Ada")
    view = store.next_task(annotator)
    store.submit(view.task, slots=DOCTOR, comment="seems kind")
    answered = store.task_view(view.task)
    assert answered.answer.comment == "seems kind"
    # (Their own answer may name a profession.)
    shown = json.dumps([asdict(view), asdict(replace(answered, answer=None))])
    with database.read() as session:
        d = session.scalar(select(Dialogue))
        internal = [d.public_id, d.content_hash, annotator]
    forbidden = (list(ALL_IDENTITIES) + ["EMS_low", "EMS_high", secret_system, secret_file, "run_2024_secret",
                 "HIRPF", "Llama", "SmolLM2", "gpt-4o-judge", "agreeableness", "extraversion", "simulator",
                 "You are"] + internal + [added.dialogue])
    leaks = [word for word in forbidden if re.search(re.escape(word), shown, re.IGNORECASE)]
    assert leaks == []
    assert {f.name for f in fields(view)} == {"task", "kind", "status", "position", "progress", "agent",
                                              "transcript", "statement", "answer", "editable", "skip_reason"}
    assert re.fullmatch(r"[0-9a-f]{32}", view.task)


def test_names_that_look_like_words_are_not_redacted(database):
    store = Store(database)
    store.add_dialogue([{"role": "user", "content": "Is it ours?"},
                        {"role": "assistant", "content": "It is ours."}], "Doctor", system="ours")
    view = store.next_task(store.register_annotator("Ada"))
    assert [t["text"] for t in view.transcript] == ["Is it ours?", "It is ours."]


# --- reports ----------------------------------------------------------------------------------------------
def test_the_report_compares_humans_with_targets_judges_and_each_other(database):
    from annotation.report import build_report

    store = Store(database, AssignmentPolicy(overlap=2))
    targets = ["Doctor,AGR_high,EXT_low", "Artist,AGR_low,CON_high,OPE_high", "Programmer,NEU_high", "OPE_low"]
    for i, target in enumerate(targets):
        store.add_dialogue(turns(i), target, system=f"sys-{i % 2}",
                           judges=[JudgeLabel("judge-a", slots=DOCTOR if i % 2 else ARTIST)])
    ada, bo = store.register_annotator("Ada"), store.register_annotator("Bo")
    answers = {ada: [DOCTOR, ARTIST, DOCTOR, ARTIST], bo: [DOCTOR, ARTIST, ARTIST, ARTIST]}
    given = {}
    for annotator, labels in answers.items():
        store.assign(annotator)
        for task_labels, dialogue in zip(labels, sorted(assigned(store, annotator), key=_index_of(store))):
            view = _view_of(store, annotator, dialogue)
            store.submit(view.task, slots=task_labels)
            given[annotator, dialogue] = task_labels
    report = build_report(database)
    assert set(report) >= {"human_vs_target", "human_vs_judge", "inter_annotator"}
    for section in ("human_vs_target", "human_vs_judge", "inter_annotator"):
        assert set(report[section]["per_slot"]) == set(SLOTS) and report[section]["overall"]

    # Independent count: human vs target accuracy on AGR and exact match.
    target_of = {d: slots_from_identities(IdentitySet.parse(t))
                 for d, t in zip(sorted(assigned(store, ada), key=_index_of(store)), targets)}
    pairs = [(labels, target_of[d]) for (_, d), labels in given.items()]
    assert report["human_vs_target"]["per_slot"]["AGR"]["accuracy"] == pytest.approx(
        sum(h["AGR"] == t["AGR"] for h, t in pairs) / len(pairs))
    assert report["human_vs_target"]["overall"]["exact_match"] == pytest.approx(
        sum(h == t for h, t in pairs) / len(pairs))
    assert report["human_vs_target"]["per_annotator"][bo]["overall"]["n"] == 4
    # Two annotators: Cohen's kappa per slot, on their paired labels.
    order = sorted(assigned(store, ada), key=_index_of(store))
    for slot in ("AGR", "Profession"):
        expected = agreement.cohen_kappa([given[ada, d][slot] for d in order], [given[bo, d][slot] for d in order])
        figure = report["inter_annotator"]["per_slot"][slot]["cohen_kappa"]
        assert figure == pytest.approx(expected)
    judge = report["human_vs_judge"]["per_judge"]["judge-a"]
    assert judge["overall"]["n"] == 8 and set(judge["per_system"]) == {"sys-0", "sys-1"}


def _index_of(store: Store):
    """Sort key: a dialogue's number i (from its first user turn), to line answers up with targets."""
    with store.db.read() as session:
        numbers = {d.public_id: int(re.search(r"\d+", d.transcript[1]["content"]).group())
                   for d in session.scalars(select(Dialogue))}
    return numbers.__getitem__


def _view_of(store: Store, annotator: str, dialogue: str) -> dict:
    with store.db.read() as session:
        task = session.scalar(select(AnnotationTask.public_id).join(Dialogue).join(Annotator).where(
            Annotator.public_id == annotator, Dialogue.public_id == dialogue))
    return store.task_view(task)


def test_imported_his_open_file_reproduces_the_gpt_versus_human_agreement(database):
    """The 320-dialogue HIS file through the store and the report gives the same GPT-vs-human figures as
    reading the file directly."""
    from annotation.agreement import his_open_agreement
    from annotation.his_import import read_his_csv
    from annotation.report import build_report
    from annotation.store_io import import_file

    path = his_file("human_evaluation/open_sample10_320.csv")
    if not path.exists():
        pytest.skip(f"HIS data not found at {path}")
    store = Store(database)
    result = import_file(store, path)
    assert (result.kind, result.added, result.errors) == ("his-open", 320, [])
    direct = his_open_agreement(read_his_csv(path).records)
    stored = build_report(database)["human_vs_judge"]["per_judge"]["his-gpt"]
    for slot in SLOTS:
        assert stored["per_slot"][slot] == pytest.approx(direct["overall"]["gpt_vs_human"]["per_slot"][slot])
    for system, figures in direct["per_system"].items():
        assert stored["per_system"][system]["overall"] == pytest.approx(figures["gpt_vs_human"]["overall"])
    # Imported label sets are never handed tasks and leave the overlap to our annotators.
    assert store.assign(store.register_annotator("Ada"), 5) == 5
    assert import_file(store, path).duplicates == 320


def test_imported_his_scale_and_dataset_files_reach_the_report(database):
    """The 50 scale interviews (referee vs human option) and the 50 dataset samples (human labels vs the
    target identities) through the store give the figures straight counting of the CSV columns gives."""
    from annotation.report import build_report
    from annotation.store_io import import_file

    scale_path, data_path = (his_file(f"human_evaluation/{n}") for n in ("scale_sample50.csv", "data_sample50.csv"))
    if not scale_path.exists() or not data_path.exists():
        pytest.skip("HIS human-evaluation files not found")
    store = Store(database)
    assert (import_file(store, scale_path).kind, import_file(store, data_path).kind) == ("his-scale", "his-data")
    with scale_path.open(encoding="utf-8", errors="replace", newline="") as f:
        scale_rows = list(csv.DictReader(f))
    report = build_report(database)
    scale = report["human_vs_judge"]["per_judge"]["his-judge"]["scale"]
    assert scale["n"] == len(scale_rows) == 50
    assert scale["accuracy"] == pytest.approx(sum(r["judge_ans"] == r["human_ans"] for r in scale_rows) / 50)
    assert scale["mean_abs_diff"] == pytest.approx(
        sum(abs(float(r["judge_score"]) - float(r["human_score"])) for r in scale_rows) / 50)
    target = report["human_vs_target"]
    assert target["overall"]["n"] == 50 and 0.5 < target["overall"]["accuracy"] <= 1.0
    with database.read() as session:
        kinds = Counter(session.scalars(select(Dialogue.kind)))
    assert kinds == {"scale_interview": 50, "identity": 50}


# --- files in and out ------------------------------------------------------------------------------------
def _run_cli(*args: str, database: str) -> subprocess.CompletedProcess:
    """`python -m annotation` in a real process."""
    return subprocess.run([sys.executable, "-m", "annotation", *args, "--database", database], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                          timeout=300)


def _cli(capsys, *args: str, database: str) -> subprocess.CompletedProcess:
    """The same entry point in this process (a new process costs seconds of imports)."""
    from annotation.__main__ import main

    capsys.readouterr()
    code = main([*args, "--database", database])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_cli_import_export_report_round_trip(database, tmp_path, capsys):
    url = database.url.render_as_string(hide_password=False)
    good = [{"dialog": turns(i), "active_adapters": ["Doctor", "AGR_high"], "system": "sim-3b", "source": "simulator",
             "judge": {"name": "judge-x", "slots": DOCTOR, "raw_reply": "{...}"}} for i in range(3)]
    lines = [json.dumps(good[0]), "{not json", json.dumps(good[1]),
             json.dumps({"dialog": [{"role": "bard", "content": "hi"}], "active_adapters": []}),
             "", json.dumps({**good[2], "dialog": good[2]["dialog"], "system": "sim-3b – “café”"}),
             json.dumps({"dialog": turns(9), "active_adapters": ["AGR_high", "AGR_low"]}),
             json.dumps({"dialog": turns(8), "judge": {"name": "j", "slots": {"AGR": "maybe"}}})]
    source = tmp_path / "simulated.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="cp1252")

    first = _run_cli("import", str(source), "--encoding", "cp1252", database=url)
    assert first.returncode == 1, first.stderr
    assert "3 dialogue(s) added" in first.stdout
    rejected = dict(re.findall(r"line (\d+): (.*)", first.stderr))
    assert set(rejected) == {"2", "4", "7", "8"}
    assert "not JSON" in rejected["2"] and "unknown role 'bard'" in rejected["4"]
    assert "AGR" in rejected["7"] and "unknown label" in rejected["8"]
    again = _cli(capsys, "import", str(source), "--encoding", "cp1252", database=url)
    assert "0 dialogue(s) added, 3 already stored" in again.stdout
    undecodable = tmp_path / "binary.jsonl"
    undecodable.write_bytes(b"\x00\x81\xff" * 10)
    failed = _cli(capsys, "import", str(undecodable), database=url)
    assert failed.returncode == 2 and "error:" in failed.stderr

    store = Store(database)
    annotator = store.register_annotator("Ada", external_id="hf:ada")
    while (view := store.next_task(annotator)) is not None:
        if view.position == 2:
            store.skip(view.task, "too short")
        else:
            store.submit(view.task, slots=ARTIST, comment='says "=1+1", <b>hi</b>', seconds=9)

    exported = _cli(capsys, "export", "--format", "csv", database=url)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == 3 and Counter(r["status"] for r in rows) == {"done": 2, "skipped": 1}
    done = [r for r in rows if r["status"] == "done"]
    assert {r["target"] for r in rows} == {"AGR_high,Doctor"}
    assert all(r["target:Profession"] == "Doctor" and r["human:Profession"] == "Artist" for r in done)
    assert all(r["judge:judge-x:AGR"] == "high" and r["system"].startswith("sim-3b") for r in rows)
    assert {r["comment"] for r in done} == {'says "=1+1", <b>hi</b>'}
    assert any(r["system"] == "sim-3b – “café”" for r in rows)
    out = tmp_path / "export.jsonl"
    assert _cli(capsys, "export", "--format", "jsonl", "--output", str(out), database=url).returncode == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3 and all(r["annotator"]["external_id"] == "hf:ada" for r in records)
    assert all(r["dialogue"]["transcript"][0]["role"] == "system" for r in records)  # the original

    reported = _cli(capsys, "report", "--json", database=url)
    assert reported.returncode == 0, reported.stderr
    report = json.loads(reported.stdout)
    assert report["human_vs_target"]["overall"]["n"] == 2
    assert report["human_vs_target"]["per_slot"]["Profession"]["accuracy"] == 0.0
    assert report["human_vs_judge"]["per_judge"]["judge-x"]["overall"]["n"] == 2
    assert report["counts"]["skipped"] == 1
    text_report = _cli(capsys, "report", database=url)
    assert text_report.returncode == 0 and "human vs target" in text_report.stdout

    backup = _cli(capsys, "backup", str(tmp_path / "copy.sqlite3"), database=url)
    if database.is_sqlite:
        assert backup.returncode == 0 and (tmp_path / "copy.sqlite3").exists()
    else:
        assert backup.returncode == 2 and "pg_dump" in backup.stderr



def test_report_shows_the_his_files_published_rule_beside_ours(database, capsys):
    """Issue 12 item 10: `report` gave 0.953 for GPT vs human on the 320-dialogue file, reading GPT's missing
    predictions as none; the paper's rule (the file's TRUE column) counts them as disagreements: 0.924."""
    path = his_file("human_evaluation/open_sample10_320.csv")
    if not path.exists():
        pytest.skip(f"HIS data not found at {path}")
    url = database.url.render_as_string(hide_password=False)
    assert _cli(capsys, "import", str(path), database=url).returncode == 0
    text = _cli(capsys, "report", "--his_open", str(path), database=url)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()

    def overall_accuracy(section: str) -> str:
        start = next(i for i, line in enumerate(lines) if line.startswith(section))
        assert "missing" in lines[start]  # the heading says how a missing prediction counts
        return next(line for line in lines[start:] if line.startswith("overall")).split()[-2]
    assert overall_accuracy("gpt vs human, ours") == "0.953"
    assert overall_accuracy("gpt vs human, published rule") == "0.924"
    as_json = json.loads(_cli(capsys, "report", "--json", "--his_open", str(path), database=url).stdout)
    his = as_json["his_open_file"]["overall"]
    assert his["gpt_vs_human"]["overall"]["accuracy"] == pytest.approx(0.953, abs=5e-4)
    assert his["gpt_vs_human_published_rule"]["overall"]["accuracy"] == pytest.approx(0.924, abs=5e-4)
    assert his["gpt_vs_human_published_rule"]["per_slot"]["Profession"]["accuracy"] == pytest.approx(0.8625)

def test_a_json_list_file_imports_record_by_record(database, tmp_path):
    """A `.json` file holding one list (the HIS training files' shape): bad records are reported by position,
    the rest stored; a list that is not valid JSON is refused whole and stores nothing."""
    from annotation.store_io import import_file

    store = Store(database)
    path = tmp_path / "dialogues.json"
    path.write_text(json.dumps([{"dialog": turns(1), "active_adapters": ["Doctor"]},
                                {"dialog": [], "active_adapters": ["Doctor"]},
                                {"dialog": turns(2), "active_adapters": ["EMS_high"]}]), encoding="utf-8")
    report = import_file(store, path)
    assert (report.kind, report.added, [line for line, _ in report.errors]) == ("json", 2, [2])
    assert "record 2:" in report.describe()
    before = snapshot(database)
    path.write_text('[{"dialog": []}, oops]', encoding="utf-8")
    with pytest.raises(UnreadableFile, match="not a valid JSON list"):
        import_file(store, path)
    assert snapshot(database) == before


def test_online_backup_copies_a_consistent_database(tmp_path):
    from annotation.backup import PeriodicBackup, backup_sqlite, prune

    database = Database(f"sqlite:///{tmp_path / 'live.sqlite3'}")
    store = Store(database)
    items(store, 4)
    copy = backup_sqlite(database, tmp_path / "backups" / "copy.sqlite3")
    restored = Database(f"sqlite:///{copy}")
    assert snapshot(restored) == snapshot(database)
    folder = tmp_path / "rolling"
    folder.mkdir()
    made = [backup_sqlite(database, folder) for _ in range(3)]
    assert len(set(made)) == 3 and len(prune(folder, 2, "live")) == 1
    assert sorted(folder.iterdir()) == sorted(made[1:])
    restored.close()
    periodic = PeriodicBackup(database, tmp_path / "periodic", every=0.05, keep=2).start()
    try:
        for _ in range(200):
            if periodic.last is not None:
                break
            time.sleep(0.05)
    finally:
        periodic.stop()
    assert periodic.error is None and periodic.last is not None and periodic.last.exists()
    database.close()


def test_prepare_dialogue_is_deterministic():
    a = prepare_dialogue(turns(1), "Doctor,AGR_high", system="m-1")
    b = prepare_dialogue(turns(1), "AGR_high,Doctor", system="m-1")
    assert a == b
