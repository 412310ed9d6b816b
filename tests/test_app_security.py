"""Attacks on the human evaluation that worked before, driven as an attacker would: `gradio_client` and raw
HTTP against the app on loopback (tiny random engine; these tabs never run it). Clients are told apart by
the address the app sees (`X-Forwarded-For` from loopback, which uvicorn trusts).

- a name alone took over an annotator (sign-in, last answer, overwrite);
- admin password guesses were one per second, without lockout, and delayed the real admin;
- an export link served unblinded rows to anybody;
- the admin's assignment policy held in one process only.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client.exceptions import AppError
from test_app_annotation import ANSWER, SYSTEM, Screen, app_env, seed_dialogues, stored_answers  # noqa: F401

from hirpf.paths import PROJECT_ROOT

from app_serving import client, served

PASSWORD = "correct horse battery staple"


def resume_code_in(screen: Screen) -> str:
    found = re.search(r"resume code: `([A-Z0-9-]+)`", screen.message or "")
    assert found, f"no resume code shown in {screen.message!r}"
    return found.group(1)


def test_a_name_alone_does_not_take_over_an_annotator(tiny_engine, tmp_path, app_env):
    seed_dialogues(tmp_path, 3)
    with served(tiny_engine, tmp_path) as url:
        ada = Screen.of(client(url, "10.0.0.1").predict(name="Ada", api_name="/annotation_sign_in"))
        answered = Screen.of(client(url, "10.0.0.1").predict(annotator=ada.who, task_id=ada.task, **ANSWER,
                                                             comment_text="mine", api_name="/annotation_submit"),
                             ada.who)
        # The takeover: her name, spaced and cased otherwise, with no code or a made-up one.
        with pytest.raises(AppError, match="This name is taken"):
            client(url, "10.6.6.6").predict(name="  ADA ", api_name="/annotation_sign_in")
        with pytest.raises(AppError, match="Wrong resume code"):
            client(url, "10.6.6.7").predict(name="ADA", code="AAAA-BBBB-CCCC", api_name="/annotation_sign_in")
        assert [(r[0], r[3], r[4]) for r in stored_answers(tmp_path)] == [("Ada", "mine", 0)]

        # Ada herself, with the code shown once at her first sign-in (typed loosely), is back where she was.
        code = resume_code_in(ada)
        back = Screen.of(client(url, "10.0.0.2").predict(name=" ada ", code=code.lower().replace("-", " "),
                                                         api_name="/annotation_sign_in"))
        assert back.who["annotator"] == ada.who["annotator"] and back.task == answered.task
        assert "resume code" not in (back.message or "")  # shown once only


def test_a_study_access_code_guards_joining_and_the_admin_says_which_sign_in_is_on(tiny_engine, tmp_path,
                                                                                   app_env):
    app_env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
    seed_dialogues(tmp_path, 1)
    with served(tiny_engine, tmp_path) as url:
        admin = client(url, "10.0.0.1")
        opened = admin.predict(password_attempt=PASSWORD, api_name="/admin_open")
        assert any("resume code" in str(o) and "Study access code: none" in str(o) for o in opened)
        with pytest.raises(AppError, match="at least 6"):
            admin.predict(new_code="abc", api_name="/admin_access_code")
        note, _ = admin.predict(new_code="tulip-42x", api_name="/admin_access_code")
        assert "**required**" in note
        with pytest.raises(AppError, match="needs its access code"):
            client(url, "10.0.0.3").predict(name="Eve", api_name="/annotation_sign_in")
        with pytest.raises(AppError, match="not this study's access code"):
            client(url, "10.0.0.4").predict(name="Eve", code="tulip-43x", api_name="/annotation_sign_in")
        eve = Screen.of(client(url, "10.0.0.5").predict(name="Eve", code="TULIP42X", api_name="/annotation_sign_in"))
        assert eve.task and resume_code_in(eve)
        with pytest.raises(AppError, match="Open the admin view first"):
            client(url, "10.0.0.9").predict(new_code="", api_name="/admin_access_code")


def test_a_password_guesser_is_refused_at_once_and_never_delays_the_admin(tiny_engine, tmp_path, app_env):
    app_env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
    with served(tiny_engine, tmp_path) as url:
        guesser, admin = client(url, "10.6.6.6"), client(url, "10.0.0.1")
        with pytest.raises(AppError, match="Wrong admin password"):
            guesser.predict(password_attempt="guess", api_name="/admin_open")
        # Straight away again: refused before the password is looked at, the right one included.
        with pytest.raises(AppError, match="Too many failed attempts"):
            guesser.predict(password_attempt=PASSWORD, api_name="/admin_open")

        def guess(i: int) -> float:
            began = time.monotonic()
            with pytest.raises(AppError):
                guesser.predict(password_attempt=f"guess-{i}", api_name="/admin_open")
            return time.monotonic() - began

        with ThreadPoolExecutor(6) as pool:
            guesses = [pool.submit(guess, i) for i in range(6)]
            began = time.monotonic()
            opened = admin.predict(password_attempt=PASSWORD, api_name="/admin_open")
            admin_s = time.monotonic() - began
            guess_s = [g.result() for g in guesses]
        assert any("identity dialogues" in str(o) for o in opened)
        assert admin_s < 1.5, f"the admin waited {admin_s:.1f} s behind a guesser"
        assert max(guess_s) < 1.5, "a refusal should be answered at once, not slept on"


def test_backoff_doubles_then_locks_out_and_a_success_clears_it():
    from app.throttle import Throttle, Throttled

    now = [0.0]
    throttle = Throttle(base_delay_s=1, max_delay_s=4, lockout_after=5, lockout_s=600, clock=lambda: now[0])
    waits = []
    for _ in range(4):
        throttle.check("guesser")
        throttle.failed("guesser")
        waits.append(throttle.wait_s("guesser"))
        with pytest.raises(Throttled, match="wait"):
            throttle.check("guesser")
        now[0] += waits[-1]
    assert waits == [1, 2, 4, 4]  # doubling, capped at max_delay_s
    assert throttle.failed("guesser") == 0  # the fifth: locked out
    with pytest.raises(Throttled, match="locked out; try again in 10 minutes") as locked:
        throttle.check("guesser")
    assert locked.value.locked_out
    throttle.check("admin")  # another client is not affected
    now[0] += 599
    with pytest.raises(Throttled):
        throttle.check("guesser")
    now[0] += 1
    throttle.check("guesser")  # the lockout served
    throttle.failed("guesser")
    assert throttle.wait_s("guesser") == 1  # and the count starts over
    throttle.succeeded("guesser")
    assert throttle.wait_s("guesser") == 0


def test_an_export_link_answers_only_the_admin_session_that_asked(tiny_engine, tmp_path, app_env):
    import gradio as gr

    app_env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
    seed_dialogues(tmp_path, 2)
    began = time.time()
    with served(tiny_engine, tmp_path) as url:
        ada = Screen.of(client(url).predict(name="Ada", api_name="/annotation_sign_in"))
        client(url).predict(annotator=ada.who, task_id=ada.task, **ANSWER, api_name="/annotation_submit")
        admin = client(url, "10.0.0.1")
        cookie = admin.predict(password_attempt=PASSWORD, api_name="/admin_open")[-1]
        name, token = cookie.split(";")[0].split("=", 1)
        links = {"annotations.csv": admin.predict(fmt="csv", api_name="/admin_export"),
                 "agreement.json": admin.predict(api_name="/admin_agreement")[1]}
        for filename, markdown in links.items():
            link = re.search(r"\]\((hirpf/download/[^)]+)\)", markdown).group(1)
            for cookies in (None, {name: "not-the-token"}, {"other": token}):
                refused = httpx.get(url + link, cookies=cookies)
                assert refused.status_code == 404 and SYSTEM not in refused.text and "Ada" not in refused.text
            mine = httpx.get(url + link, cookies={name: token})
            assert mine.status_code == 200 and mine.headers["cache-control"] == "no-store"
            assert filename in mine.headers["content-disposition"]
            assert (SYSTEM in mine.text) if filename.endswith(".csv") else json.loads(mine.text)["counts"]
        # The exported rows were never written to disk: nothing Gradio cached meanwhile holds them.
        cache = Path(gr.utils.get_upload_folder())
        cached = [p for p in cache.rglob("*") if p.is_file() and p.stat().st_mtime >= began]
        assert not [p for p in cached if SYSTEM.encode() in p.read_bytes()]


def test_export_sessions_end_and_old_export_folders_are_removed(tmp_path):
    from app.admin_downloads import AdminDownloads, Download, remove_leftover_export_folders

    now = [0.0]
    downloads = AdminDownloads(ticket_ttl_s=60, session_ttl_s=3600, clock=lambda: now[0])
    token = downloads.open_session()
    ticket = downloads.offer(token, Download("a.csv", "text/csv", b"rows")).rsplit("/", 1)[1]
    assert downloads.fetch(ticket, token).content == b"rows" and downloads.fetch(ticket, None) is None
    now[0] += 61
    assert downloads.fetch(ticket, token) is None  # the ticket expired
    ticket = downloads.offer(token, Download("a.csv", "text/csv", b"rows")).rsplit("/", 1)[1]
    downloads.close_session(token)  # the admin's page closed
    assert downloads.fetch(ticket, token) is None and not downloads.is_open(token)
    with pytest.raises(PermissionError, match="admin session has ended"):
        downloads.offer(token, Download("a.csv", "text/csv", b"rows"))

    old = tmp_path / "hirpf-admin-abc123"
    old.mkdir()
    (old / "annotations.csv").write_text("unblinded")
    (tmp_path / "unrelated").mkdir()
    assert remove_leftover_export_folders(tmp_path) == 1
    assert not old.exists() and (tmp_path / "unrelated").exists()


SECOND_PROCESS = """
import json, sys
from app.services import open_store
store = open_store(sys.argv[1])
annotator = store.register_annotator("Grace", external_id="name:grace")
store.next_task(annotator)
print(json.dumps({"batch": store.policy.batch, "overlap": store.policy.overlap,
                  "assigned": store.progress(annotator).assigned}))
"""


def test_the_admin_policy_reaches_a_second_app_process_on_the_database(tiny_engine, tmp_path, app_env):
    app_env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
    seed_dialogues(tmp_path, 5)
    with served(tiny_engine, tmp_path) as url:
        admin = client(url)
        admin.predict(password_attempt=PASSWORD, api_name="/admin_open")
        note = admin.predict(new_overlap=2, new_cap=0, new_shared=0.0, new_batch=2, new_seed=3,
                             api_name="/admin_policy")[0]
        assert "overlap=2,shared=0,batch=2,seed=3" in note
        # Another process on the same SQLite file (started with no HIRPF_ASSIGNMENT) hands out batches of 2.
        other = subprocess.run([sys.executable, "-c", SECOND_PROCESS, str(tmp_path)], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=120)
        assert other.returncode == 0, other.stderr
        assert json.loads(other.stdout.strip().splitlines()[-1]) == {"batch": 2, "overlap": 2, "assigned": 2}
        # And the setting outlives this app: a new page's admin view shows it.
        opened = client(url).predict(password_attempt=PASSWORD, api_name="/admin_open")
        assert 2 in opened  # the batch field


def test_an_annotator_from_before_resume_codes_gets_one_only_in_their_own_browser(tiny_engine, tmp_path, app_env):
    from app.services import open_store

    seed_dialogues(tmp_path, 1)
    old = open_store(tmp_path).register_annotator("Old Timer", external_id="name:old timer")  # no code yet
    with served(tiny_engine, tmp_path) as url:
        with pytest.raises(AppError, match="registered before resume codes"):
            client(url, "10.6.6.6").predict(name="old timer", api_name="/annotation_sign_in")
        # The browser holding the sign-in (the unguessable annotator id) is shown a code, once.
        who = {"annotator": old, "name": "Old Timer"}
        resumed = Screen.of(client(url).predict(annotator=who, api_name="/annotation_resume"), who)
        code = resume_code_in(resumed)
        again = Screen.of(client(url).predict(annotator=who, api_name="/annotation_resume"), who)
        assert "resume code" not in (again.message or "")
        by_name = Screen.of(client(url, "10.0.0.2").predict(name="Old Timer", code=code,
                                                            api_name="/annotation_sign_in"))
        assert by_name.who["annotator"] == old
