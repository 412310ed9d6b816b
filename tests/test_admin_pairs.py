"""The admin's pair-study builds (`app.admin_pairs`): a build a restart cut short is continued by the next
app on the same model, a study built on another model is left alone, no model means no build, and what an
admin types is refused with the field named. Tiny random engine, real SQLite store."""
from __future__ import annotations

import json

import gradio as gr
import pytest

from annotation.pair_generation import missing_replies, reply_counts, store_reply
from annotation.pair_studies import PairStudyError, activate_study, parse_condition, plan_pairs, poles, save_study
from app.admin_pairs import PairBuilds, identity_sets, prompts_of
from app.evaluation_store import open_store
from app.model_slot import ModelSlot

MODEL = "tiny test model"


def planned(db, name: str, base_model: str) -> None:
    conditions = [parse_condition(text, base_model=base_model) for text in ("experts+prompt@1.0", "prompt")]
    save_study(db, name, plan_pairs("discrimination", poles()[:1], conditions, ["Hi?"]))


def test_a_restarted_app_continues_the_builds_on_its_model_only(tiny_engine, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    db = open_store(tmp_path).db
    planned(db, "mine", MODEL)
    planned(db, "elsewhere", "another model")
    first = missing_replies(db, "mine")[0]
    store_reply(db, first.reply_id, "made before the restart")  # the earlier process got this far
    builds = PairBuilds(tmp_path, ModelSlot.ready(tiny_engine, MODEL), max_new_tokens=4)
    builds.resume_unfinished().join(60)
    builds.jobs["mine"].wait(60)
    done, total = reply_counts(db, "mine")
    assert done == total == 4
    assert builds.progress("mine")[2] == "done"
    assert "elsewhere" not in builds.jobs and reply_counts(db, "elsewhere") == (0, 4)


def test_without_a_model_a_build_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    planned(open_store(tmp_path).db, "study", MODEL)
    builds = PairBuilds(tmp_path)
    assert builds.resume_unfinished() is None
    with pytest.raises(PairStudyError, match="model"):
        builds.start("study")


def test_typed_identities_and_prompts():
    assert identity_sets("typed", "discrimination", "AGR_high, AGR_low\n\n") == [("AGR_high", "AGR_low")]
    assert identity_sets("typed", "preference", "AGR_high, Doctor") == [["AGR_high", "Doctor"]]
    assert len(identity_sets("poles", "discrimination", None)) == 5
    with pytest.raises(ValueError, match="identity sets"):
        identity_sets("typed", "discrimination", "AGR_high")
    with pytest.raises(ValueError, match="identity sets"):
        identity_sets("typed", "preference", " \n")
    with pytest.raises(ValueError, match="prompts"):
        prompts_of("  \n", None)


def build_control(demo) -> dict:
    return next(c["props"] for c in demo.blocks.get_config_file()["components"]
                if c.get("props", {}).get("elem_id") == "admin-pair-build")


def test_the_build_control_needs_the_model_app(tiny_engine, tmp_path, monkeypatch):
    from app.build import build_annotation_app, build_app

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("HIRPF_ADMIN_PASSWORD", "pw")
    annotation_only = build_annotation_app(data_dir=tmp_path)
    assert build_control(annotation_only)["interactive"] is False
    assert any(c.get("props", {}).get("elem_id") == "admin-pair-no-model"
               for c in annotation_only.blocks.get_config_file()["components"])
    assert build_control(build_app(tiny_engine, data_dir=tmp_path))["interactive"] is not False


def test_a_condition_the_model_cannot_serve_is_refused_by_name(tiny_base_dir, tmp_path):
    from hirpf.engine import Engine

    no_experts = Engine.load(str(tiny_base_dir), lora_weights=None, load_in_8bit=False, dtype="float32")
    builds = PairBuilds(tmp_path, ModelSlot.ready(no_experts, MODEL))
    with pytest.raises(PairStudyError, match="experts"):
        builds.check([parse_condition("experts+prompt@1.0", base_model=MODEL)])
    builds.check([parse_condition("prompt", base_model=MODEL)])


def test_the_study_list_comes_with_the_unlock(tmp_path, monkeypatch):
    """Opening the admin view fills the study list (and says which study annotators see) at once: before, it
    stayed empty until "Refresh list" was clicked."""
    from app.build import build_annotation_app

    for name in ("DATABASE_URL", "HIRPF_ADMIN_USERS", "OAUTH_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HIRPF_ADMIN_PASSWORD", "pw")
    db = open_store(tmp_path).db
    planned(db, "first", MODEL)
    planned(db, "second", MODEL)
    activate_study(db, "second")
    demo = build_annotation_app(data_dir=tmp_path)
    open_admin = next(f.fn for f in demo.blocks.fns.values() if f.api_name == "admin_open")
    opened = open_admin("pw")
    [listed] = [v for v in opened.values() if isinstance(v, gr.Dropdown)]
    assert [choice[1] for choice in listed.choices] == ["first", "second"] and listed.value == "second"


def test_no_stored_study_reaches_a_visitors_config(tiny_engine, tmp_path, monkeypatch):
    """What `/config` gives any visitor, before any unlock, in the full app and with `--annotation_only`:
    nothing of a stored (and shown) study: not its name, conditions, identities or prompts. The build form's
    starting value (`experts+prompt@1.0, prompt`) is the app's own vocabulary, shown on the Chat tab too."""
    from app.build import build_annotation_app, build_app

    for name in ("DATABASE_URL", "HIRPF_ADMIN_USERS", "OAUTH_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HIRPF_ADMIN_PASSWORD", "pw")
    db = open_store(tmp_path).db
    conditions = [parse_condition("experts@1.7", base_model="secret-base-model")]
    save_study(db, "secret-study-name", plan_pairs("discrimination", [("NEU_high", "NEU_low")], conditions,
                                                   ["An unguessable prompt 4711?"]))
    activate_study(db, "secret-study-name")
    study = ["secret-study-name", "experts@1.7", "secret-base-model", "4711"]
    # The full app's Chat tab names every identity; the annotation-only app names none.
    for demo, secrets in ((build_app(tiny_engine, data_dir=tmp_path), study),
                          (build_annotation_app(data_dir=tmp_path), study + ["NEU_high", "neuroticism"])):
        config = json.dumps(demo.blocks.get_config_file(), default=repr)  # a State's delete_callback is a function
        for secret in secrets:
            assert secret not in config, secret
