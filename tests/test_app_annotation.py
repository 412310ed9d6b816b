"""The Human evaluation and Evaluation admin tabs driven as a client would: `gradio_client` against the app on
loopback (tiny random engine; these tabs never run it), each test with its own SQLite data directory.

Annotator calls pass the browser-stored sign-in (its session token and name) explicitly as `annotator`, as the
page does; admin calls rely on the session's server-side unlock, as the page does.
"""
from __future__ import annotations

import json
import re

import gradio as gr
import httpx
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from sqlalchemy import func, select

from annotation import sessions
from app.build import build_app
from app.built_app import BuiltApp
from app.evaluation_store import open_store, policy_from_text
from app.send_to_evaluation import send_to_evaluation
from db.models import AnnotationTask, Annotator, Dialogue
from hirpf.identities import ALIASES, ALL_IDENTITIES, TRAIT_POLES, IdentitySet, label
from hirpf.labels import SLOTS

from annotation_client import (
    ANSWER,
    PASSWORD,
    SYSTEM,
    TARGETS,
    Screen,
    admin_cookies,
    admin_download,
    count_dialogues,
    resume_code,
    seed_dialogues,
    sign_in,
    stored_answers,
    submit,
)
from app_serving import client, served


def test_an_annotator_labels_skips_edits_and_resumes(tiny_engine, tmp_path, app_env):
    seed_dialogues(tmp_path, 4)
    with served(tiny_engine, tmp_path) as url:
        c = client(url)
        first = sign_in(c, "Ada")
        assert first.who["name"] == "Ada" and first.task
        assert "0 of 4" in first.header and "speaker" in first.prompt
        assert first.transcript.count('class="who"') == 4 and "[redacted]" in first.transcript
        assert first.slots == [None] * 6 and first.comment == ""

        second = submit(c, first, comment="clear case")
        assert second.message == "Saved." and "1 of 4" in second.header and second.task != first.task
        rows = stored_answers(tmp_path)
        assert [(r[0], r[1], r[3], r[5]) for r in rows] == [
            ("Ada", dict(zip(SLOTS, ANSWER.values())), "clear case", first.task)]

        # The same submission again (a double click) stores nothing new and moves on to the same next task.
        again = submit(c, first, comment="clear case")
        assert again.message == "Already saved." and again.task == second.task
        assert len(stored_answers(tmp_path)) == 1

        # Skipping needs a reason; then it counts as done.
        with pytest.raises(AppError, match="Say why you skip"):
            c.predict(annotator=second.who, task_id=second.task, reason="  ", api_name="/annotation_skip")
        third = Screen.of(c.predict(annotator=second.who, task_id=second.task, reason="cut off",
                                    api_name="/annotation_skip"), second.who)
        assert third.message == "Skipped." and "2 of 4" in third.header
        with open_store(tmp_path).db.read() as session:
            assert session.scalar(select(AnnotationTask.skip_reason).where(
                AnnotationTask.public_id == second.task)) == "cut off"

        # Back to the last answer (the first one: the skip was no answer), shown with its labels; change it.
        editing = Screen.of(c.predict(annotator=third.who, api_name="/annotation_edit_last"), third.who)
        assert editing.task == first.task and "Editing your last answer" in editing.prompt
        assert editing.slots == list(ANSWER.values()) and editing.comment == "clear case"
        after_edit = submit(c, editing, comment="on second thought", profession="Doctor")
        assert after_edit.message == "Your change was saved." and after_edit.task == third.task
        rows = stored_answers(tmp_path)
        assert len(rows) == 1 and rows[0][1]["Profession"] == "Doctor" and rows[0][4] == 1

        # A new browser session with the stored sign-in resumes at the pending task; so does signing in
        # again by name, however it is spaced or cased, with the resume code.
        resumed = Screen.of(client(url).predict(annotator=first.who, api_name="/annotation_resume"), first.who)
        assert resumed.task == third.task and "2 of 4" in resumed.header
        assert sign_in(client(url), "  ada ", resume_code(first)).task == third.task
        with open_store(tmp_path).db.read() as session:
            assert session.scalar(select(func.count()).select_from(Annotator)) == 1

        # Signed out: the sign-in form again, nothing stored in the browser.
        out = Screen.of(c.predict(api_name="/annotation_sign_out"))
        assert out.who is None and out.task == "" and "Signed out" in out.message
        # Opening the page signed out changes nothing: the sign-in form is what the page starts with.
        assert Screen.of(client(url).predict(annotator=None, api_name="/annotation_resume")) == Screen(
            None, None, None, None, [None] * 6, None, None, None, None, None, None)


def test_labels_are_checked_before_anything_is_stored(tiny_engine, tmp_path, app_env):
    seed_dialogues(tmp_path, 2)
    with served(tiny_engine, tmp_path) as url:
        c = client(url)
        screen = sign_in(c)
        with pytest.raises(AppError, match="'maybe'.* not in the list of choices"):
            submit(c, screen, agreeableness="maybe")
        with pytest.raises(AppError, match="missing: Extraversion, Profession"):
            submit(c, screen, extraversion=None, profession=None)
        with pytest.raises(AppError, match="comment: 4001 characters, the limit is 4000"):
            submit(c, screen, comment="x" * 4001)
        with pytest.raises(AppError, match="Type your name"):
            c.predict(name="   ", api_name="/annotation_sign_in")
        with pytest.raises(AppError, match="Sign in first"):
            c.predict(annotator=None, task_id=screen.task, **ANSWER, api_name="/annotation_submit")
        with pytest.raises(AppError, match="no task 'not-a-task'"):
            c.predict(annotator=screen.who, task_id="not-a-task", **ANSWER, api_name="/annotation_submit")
        with pytest.raises(AppError, match="not answered anything yet"):
            c.predict(annotator=screen.who, api_name="/annotation_edit_last")
        # Another annotator holding (or replaying) Ada's task id can neither answer nor skip it.
        bob = sign_in(client(url), "Bob")
        with pytest.raises(AppError, match=f"no task '{screen.task}'"):
            c.predict(annotator=bob.who, task_id=screen.task, **ANSWER, api_name="/annotation_submit")
        with pytest.raises(AppError, match=f"no task '{screen.task}'"):
            c.predict(annotator=bob.who, task_id=screen.task, reason="not mine", api_name="/annotation_skip")
        assert stored_answers(tmp_path) == []
        assert submit(c, screen).message == "Saved."  # the same form, now complete


def test_scale_interviews_take_one_of_five_options(tiny_engine, tmp_path, app_env):
    open_store(tmp_path).add_dialogue(
        [{"role": "user", "content": "Do you keep your desk tidy?"}, {"role": "assistant", "content": "Always."}],
        ["CON_high"], kind="scale_interview", statement="Keeps things in order.", system=SYSTEM, target_option=5)
    with served(tiny_engine, tmp_path) as url:
        c = client(url)
        screen = sign_in(c)
        assert "Keeps things in order" in screen.prompt and screen.slots == [None] * 6
        with pytest.raises(AppError, match="Pick one of the five options"):
            c.predict(annotator=screen.who, task_id=screen.task, api_name="/annotation_submit")
        with pytest.raises(AppError, match="not in the list of choices"):
            c.predict(annotator=screen.who, task_id=screen.task, option=6, api_name="/annotation_submit")
        with pytest.raises(AppError, match="^agreeableness, profession: this statement task"):
            c.predict(annotator=screen.who, task_id=screen.task, option=4, agreeableness="high", profession="none",
                      api_name="/annotation_submit")
        done = Screen.of(c.predict(annotator=screen.who, task_id=screen.task, option=4,
                                   api_name="/annotation_submit"), screen.who)
        assert "nothing left" in done.prompt and "1 of 1" in done.header
    assert [(r[1], r[2]) for r in stored_answers(tmp_path)] == [(None, 4)]


def test_nothing_the_annotator_receives_reveals_targets_or_system(tiny_engine, tmp_path, app_env):
    dialogue_ids = seed_dialogues(tmp_path, 3)
    targets = [IdentitySet.parse(t) for t in TARGETS]
    with served(tiny_engine, tmp_path) as url:
        page = {"config": httpx.get(url + "config").text, "index": httpx.get(url).text,
                "api": json.dumps(client(url).view_api(return_format="dict", print_info=False))}
        c = client(url)
        screens = [sign_in(c, "Blind Annotator")]
        responses = [screens[0]]
        while screens[-1].task:
            screens.append(submit(c, screens[-1]))
            responses.append(screens[-1])
        who = screens[0].who
        responses.append(Screen.of(c.predict(annotator=who, api_name="/annotation_edit_last"), who))
        responses.append(Screen.of(client(url).predict(annotator=who, api_name="/annotation_resume"), who))
    assert len(screens) == 4 and "nothing left" in screens[-1].prompt
    # Nowhere: the system, the source file, the dialogues' ids, any target in words.
    everywhere = [SYSTEM, "secret-run", *dialogue_ids, *(t.describe() for t in targets)]
    for name, text in page.items():
        for secret in everywhere:
            assert secret.lower() not in text.lower(), f"{secret!r} in the {name}"
    # The annotator's responses carry no identity name at all: only X/Y, our text and their own "none"s.
    # (The resume code is random letters: it is left out, or it might spell an identity's code by chance.)
    received = json.dumps([r._replace(resume_code=None)._asdict() for r in responses])
    forbidden = everywhere + list(ALL_IDENTITIES) + list(ALIASES) + [label(p) for p in TRAIT_POLES] + ["target"]
    for secret in forbidden:
        assert secret.lower() not in received.lower(), f"{secret!r} reached the annotator"
    assert "X" in received and "Y" in received and "How was the weekend?" in received
    # Markup in a dialogue arrives as text.
    assert "&lt;b&gt;really&lt;/b&gt;" in screens[0].transcript and "<b>" not in screens[0].transcript


def test_the_admin_view_is_off_without_configuration(tiny_engine, tmp_path, app_env):
    with served(tiny_engine, tmp_path) as url:
        endpoints = client(url).view_api(return_format="dict", print_info=False)["named_endpoints"]
        config = httpx.get(url + "config").text
    assert not [name for name in endpoints if name.startswith("/admin")]
    assert "HIRPF_ADMIN_PASSWORD" in config and "admin-password" not in config


def test_the_admin_loads_a_file_and_watches_progress(tiny_engine, tmp_path, app_env):
    app_env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
    records = [{"dialog": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Answer."}],
                "active_adapters": TARGETS[i % 3], "system": SYSTEM} for i in range(5)]
    lines = [json.dumps(r) for r in records] + ["{not json", json.dumps({"dialog": []})]
    upload = tmp_path / "simulated.jsonl"
    upload.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with served(tiny_engine, tmp_path) as url:
        admin = client(url)
        for name in ("/admin_progress", "/admin_agreement", "/admin_export"):
            with pytest.raises(AppError, match="Open the admin view first"):
                admin.predict(api_name=name)
        with pytest.raises(AppError, match="Open the admin view first"):
            admin.predict(path=handle_file(str(upload)), api_name="/admin_import")
        with pytest.raises(AppError, match="Wrong admin password"):
            client(url, "10.0.0.9").predict(password_attempt="guess", api_name="/admin_open")
        assert count_dialogues(tmp_path) == 0

        opened = admin.predict(password_attempt=PASSWORD, api_name="/admin_open")
        cookie = admin_cookies(url, opened[-1])
        assert "**0** identity dialogues" in opened[1]
        report, _, summary, _ = admin.predict(path=handle_file(str(upload)), file_kind="jsonl",
                                           api_name="/admin_import")
        assert "5 dialogue(s) added" in report and "line 6: not JSON" in report and "line 7:" in report
        assert "**5** identity dialogues" in summary

        policy = admin.predict(new_overlap=2, new_cap=0, new_shared=0.0, new_batch=2, new_seed=3,
                               api_name="/admin_policy")
        assert "`overlap=2,shared=0,batch=2,seed=3`" in policy[0]
        assert open_store(tmp_path).policy.batch == 2

        for name in ("Ada", "Grace"):
            c = client(url)
            submit(c, sign_in(c, name))
        _, table = admin.predict(api_name="/admin_progress")
        rows = sorted((r[0], r[1], r[2], r[3]) for r in table["data"])
        assert rows == [("Ada", "name:ada", 1, 2), ("Grace", "name:grace", 1, 2)]

        agreement, report_link = admin.predict(api_name="/admin_agreement")
        assert "Human vs target identity" in agreement and "Between annotators" in agreement
        figures = json.loads(admin_download(url, report_link, cookie))
        assert figures["human_vs_target"]["overall"]["n"] == 2
        exported = admin_download(url, admin.predict(fmt="csv", api_name="/admin_export"), cookie)
        assert exported.count(SYSTEM) == 2 and "human:AGR" in exported  # the admin's export is unblinded

        # Another session (an annotator's browser) has not unlocked anything.
        with pytest.raises(AppError, match="Open the admin view first"):
            client(url).predict(api_name="/admin_export")


def event_function(built: BuiltApp, api_name: str):
    return next(f.fn for f in built.blocks.fns.values() if f.api_name == api_name)


def test_hugging_face_sign_in_on_a_space(tiny_engine, tmp_path, app_env):
    """With OAuth on a Space the login buttons are there, a logged-in visitor is signed in on page load as
    their account, and listed users open the admin view. (Not served: outside a Space Gradio would mock the
    login with this machine's own token; the event functions get the profile Gradio would inject.)"""
    app_env.setenv("SYSTEM", "spaces")  # what a Space sets; gradio reads it through gradio.utils.get_space
    app_env.setenv("SPACE_ID", "someone/hirpf")
    app_env.setenv("OAUTH_CLIENT_ID", "client-id")
    # gradio.oauth read the Space's OAuth settings when it was imported.
    for name, value in (("OAUTH_CLIENT_ID", "client-id"), ("OAUTH_CLIENT_SECRET", "secret"),
                        ("OAUTH_SCOPES", "openid profile"), ("OPENID_PROVIDER_URL", "https://huggingface.co")):
        app_env.setattr(gr.oauth, name, value)
    app_env.setenv("HIRPF_ADMIN_USERS", "Alice, bob")
    seed_dialogues(tmp_path, 1)
    demo = build_app(tiny_engine, data_dir=tmp_path)
    ids = {block.elem_id for block in demo.blocks.blocks.values()}
    assert {"annotate-hf-login", "admin-hf-login"} <= ids and "admin-password" in ids
    profile = gr.OAuthProfile({"name": "Ada Lovelace", "preferred_username": "ada", "profile": "", "picture": ""})
    screen = event_function(demo, "annotation_resume")(None, profile=profile)
    who = next(v for v in screen.values() if isinstance(v, dict) and "token" in v)
    assert who["name"] == "Ada Lovelace"
    store = open_store(tmp_path)
    with store.db.read() as session:
        assert session.scalar(select(Annotator.external_id).where(
            Annotator.public_id == sessions.annotator_of(store.db, who["token"]))) == "hf:ada"
    open_admin = event_function(demo, "admin_open")
    opened = open_admin(None, profile=gr.OAuthProfile({**profile, "preferred_username": "alice"}))
    assert any(isinstance(v, str) and demo.downloads.redeem(v) for v in opened.values())  # a cookie claim
    with pytest.raises(gr.Error, match="may not open the admin view"):
        open_admin("", profile=profile)


def test_debates_arrive_as_one_dialogue_per_agent(tiny_engine, tmp_path, app_env):
    turns = [{"speaker": "A", "stage": "opening", "content": "Cars out."}, {"speaker": "B", "content": "Cars in."},
             {"speaker": "A", "content": "Walk more."}, {"speaker": "B", "content": "Roads are fine."}]
    with pytest.raises(gr.Error, match="turn 1 needs speaker A or B"):
        send_to_evaluation([turns[0], {"speaker": "C", "content": "?"}], ["AGR_high"], ["AGR_low"], SYSTEM,
                           data_dir=tmp_path)
    with pytest.raises(gr.Error, match="both poles of AGR"):
        send_to_evaluation(turns, ["AGR_high", "AGR_low"], [], SYSTEM, data_dir=tmp_path)
    with pytest.raises(gr.Error, match="agent B's side.*no assistant turn"):
        send_to_evaluation(turns[:1], ["AGR_high"], ["AGR_low"], SYSTEM, data_dir=tmp_path)
    assert count_dialogues(tmp_path) == 0

    message = send_to_evaluation(turns, ["AGR_high", "Doctor"], ["AGR_low"], SYSTEM, data_dir=tmp_path)
    assert message.startswith("Sent to human evaluation: 2 dialogues added")
    assert "already stored" in send_to_evaluation(turns, ["AGR_high", "Doctor"], ["AGR_low"], SYSTEM,
                                                  data_dir=tmp_path)
    with open_store(tmp_path).db.read() as session:
        stored = {tuple(d.target): [t["role"] for t in d.transcript] for d in session.scalars(select(Dialogue))}
        anonymized = [d.anonymized for d in session.scalars(select(Dialogue))]
    assert stored == {("AGR_high", "Doctor"): ["assistant", "user", "assistant", "user"],
                      ("AGR_low",): ["user", "assistant", "user", "assistant"]}
    assert all([t["speaker"] for t in a] == ["X", "Y", "X", "Y"] for a in anonymized)


def test_the_assignment_policy_setting_is_parsed_strictly():
    assert policy_from_text("") == policy_from_text(" ")
    policy = policy_from_text("overlap=2, cap=3, shared=0.25, batch=5, seed=7")
    assert (policy.overlap, policy.cap, policy.shared_fraction, policy.batch, policy.seed) == (2, 3, 0.25, 5, 7)
    with pytest.raises(ValueError, match="'overlap: 2' is not one of"):
        policy_from_text("overlap: 2")
    with pytest.raises(ValueError, match="'two' is not a number"):
        policy_from_text("overlap=two")
    with pytest.raises(ValueError, match="cap \\(1\\) must be >= overlap \\(2\\)"):
        policy_from_text("overlap=2,cap=1")


def raw_call(url: str, api_name: str, data: list) -> dict:
    """A plain HTTP call of an endpoint, the JSON written with `ensure_ascii` so that it may carry a lone
    surrogate (which `gradio_client`'s httpx cannot encode); the decoded answer."""
    response = httpx.post(f"{url}gradio_api/run/{api_name}", content=json.dumps({"data": data}),
                          headers={"content-type": "application/json"}, timeout=60)
    return response.json()


def test_text_no_database_stores_gets_a_clear_error_and_an_import_shows_its_report(tiny_engine, tmp_path, app_env):
    """NUL and lone surrogates (through the API) are refused with a message naming the field, not an HTTP 500;
    an upload with rows that used to stop the import shows the report with every rejected line."""
    app_env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
    seed_dialogues(tmp_path, 1)
    good = {"dialog": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}],
            "active_adapters": ["Doctor"]}
    upload = tmp_path / "rows.jsonl"
    upload.write_text("\n".join([json.dumps({**good, "active_adapters": 5}), "[" * 100_000,
                                 json.dumps({**good, "system": "sim\ud800"}), json.dumps(good)]) + "\n")
    with served(tiny_engine, tmp_path) as url:
        c = client(url)
        screen = sign_in(c)
        calls = {"comment": ("annotation_submit", [screen.who, screen.task, *ANSWER.values(), None, "ok {}", {}]),
                 "skip reason": ("annotation_skip", [screen.who, screen.task, "why {}"]),
                 "display name": ("annotation_sign_in", ["Ada {}", ""])}
        for bad, word in (("\x00", "NUL"), ("\ud800", "lone surrogate")):
            for field, (api_name, data) in calls.items():
                answer = raw_call(url, api_name, [d.format(bad) if isinstance(d, str) else d for d in data])
                assert re.match(f"{field}: contains .*{word}", answer.get("error") or ""), (field, word, answer)
            answer = raw_call(url, "annotation_submit", [screen.who, f"t{bad}", *ANSWER.values(), None, "", {}])
            assert "no task" in (answer.get("error") or ""), answer
        assert stored_answers(tmp_path) == []

        admin = client(url)
        admin.predict(password_attempt=PASSWORD, api_name="/admin_open")
        report, _, summary, _ = admin.predict(path=handle_file(str(upload)), file_kind="jsonl",
                                              api_name="/admin_import")
    assert "1 dialogue(s) added" in report and "3 row(s) rejected" in report
    assert "line 1: active_adapters: expected a list of identity names" in report
    assert "line 2: not JSON (nested too deeply)" in report
    assert "line 3: system: contains a lone surrogate (U+D800)" in report
    assert "**2** identity dialogues" in summary
