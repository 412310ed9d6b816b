"""The store takes dialogues in (bad ones refused, duplicates once), knows annotators by their external
identity, and shows an annotator nothing that names a target, system, file or internal id; on SQLite and
PostgreSQL."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, fields, replace

import pytest
from sqlalchemy import select

from annotation.records import JudgeLabel
from annotation.store import Store, StoreError, prepare_dialogue
from db.models import Annotation, Annotator, Dialogue
from hirpf.identities import ALL_IDENTITIES
from hirpf.labels import LabelError

from store_helpers import (
    DOCTOR,
    snapshot,
    turns,
)


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


def test_prepare_dialogue_is_deterministic():
    a = prepare_dialogue(turns(1), "Doctor,AGR_high", system="m-1")
    b = prepare_dialogue(turns(1), "AGR_high,Doctor", system="m-1")
    assert a == b
