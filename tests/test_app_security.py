"""Attacks on the human evaluation that worked before, driven as an attacker would: `gradio_client` and raw
HTTP against the app on loopback (tiny random engine; these tabs never run it). Clients are told apart by
the address the app sees (`X-Forwarded-For` from loopback, which uvicorn trusts).

- a name alone took over an annotator (sign-in, last answer, overwrite);
- admin password guesses were one per second, without lockout, and delayed the real admin;
- an export link served unblinded rows to anybody;
- the admin's assignment policy held in one process only;
- an annotator id from an export resumed and overwrote that annotator's answers (issue 27);
- a correct sign-in as oneself reset the lockout of wrong codes tried for another name (issue 27);
- hostile annotator names became live links and images in the admin's report (issue 27);
- the admin cookie was set by JavaScript, and outlived the admin's page (issue 27).
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

from hirpf.paths import PROJECT_ROOT

from annotation_client import (
    ANSWER,
    PASSWORD,
    SYSTEM,
    Screen,
    admin_cookies,
    resume_code,
    seed_dialogues,
    sign_in,
    stored_answers,
    submit,
)
from app_serving import client, served


def resume_code_in(screen: Screen) -> str:
    return resume_code(screen)


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
        assert back.who["token"] != ada.who["token"] and back.task == answered.task  # a new session, her queue
        assert not back.resume_code  # shown once only


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


def test_failures_count_within_the_lockout_window_only():
    """The documented limit is 5 failures per 15 minutes: a failure older than the window is forgotten, and
    a lockout names what is locked (an address, or the name tried)."""
    from app.throttle import Throttle, Throttled

    now = [0.0]
    throttle = Throttle(base_delay_s=0, lockout_after=5, lockout_s=900, clock=lambda: now[0])
    for _ in range(4):
        throttle.failed("name:ada")
    now[0] += 901
    assert throttle.failed("name:ada") == 4  # the four old ones are forgotten
    for _ in range(4):
        throttle.failed("name:ada")
    with pytest.raises(Throttled, match="for this name: locked out"):
        throttle.check("name:ada", subject="for this name")


def test_an_export_link_answers_only_the_admin_session_that_asked(tiny_engine, tmp_path, app_env):
    import gradio as gr

    app_env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
    seed_dialogues(tmp_path, 2)
    began = time.time()
    with served(tiny_engine, tmp_path) as url:
        ada = Screen.of(client(url).predict(name="Ada", api_name="/annotation_sign_in"))
        client(url).predict(annotator=ada.who, task_id=ada.task, **ANSWER, api_name="/annotation_submit")
        admin = client(url, "10.0.0.1")
        cookies = admin_cookies(url, admin.predict(password_attempt=PASSWORD, api_name="/admin_open")[-1])
        (name, token), = cookies.items()
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
from app.evaluation_store import open_store
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


def test_an_annotator_id_from_an_export_signs_nobody_in(tiny_engine, tmp_path, app_env):
    """The attack of issue 27: an id from `annotations.csv`, then resume, edit-last and submit with it from
    another address. Neither the exported id nor the real one (from a copy of the database) is a
    credential; only the token of a live session is, and sign-out or a newer sign-in ends it."""
    import csv
    import io

    from app.evaluation_store import open_store

    app_env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
    seed_dialogues(tmp_path, 3)
    with served(tiny_engine, tmp_path) as url:
        ada = sign_in(client(url, "10.0.0.1"), "Ada")
        submit(client(url, "10.0.0.1"), ada, comment="mine")
        attacker = client(url, "10.6.6.6")

        def attack(stolen: str) -> None:
            for who in ({"annotator": stolen, "name": "Ada"}, {"token": stolen, "name": "Ada"}):
                resumed = Screen.of(attacker.predict(annotator=who, api_name="/annotation_resume"))
                assert resumed.who is None and not resumed.task  # signed out, nothing shown
                with pytest.raises(AppError, match="Sign in"):
                    attacker.predict(annotator=who, api_name="/annotation_edit_last")
                with pytest.raises(AppError, match="Sign in"):
                    attacker.predict(annotator=who, task_id=ada.task, **{**ANSWER, "agreeableness": "low"},
                                     comment_text="overwritten", api_name="/annotation_submit")
            assert [(r[0], r[3], r[4]) for r in stored_answers(tmp_path)] == [("Ada", "mine", 0)]

        attack(open_store(tmp_path).register_annotator("Ada", external_id="name:ada"))  # her id, as stored
        admin = client(url, "10.0.0.2")
        cookies = admin_cookies(url, admin.predict(password_attempt=PASSWORD, api_name="/admin_open")[-1])
        link = re.search(r"\]\((hirpf/download/[^)]+)\)", admin.predict(fmt="csv", api_name="/admin_export"))
        attack(next(csv.DictReader(io.StringIO(httpx.get(url + link.group(1), cookies=cookies).text)))["annotator_id"])

        # Her own token works until she signs in again elsewhere, and the new one until she signs out.
        assert Screen.of(client(url).predict(annotator=ada.who, api_name="/annotation_edit_last")).task == ada.task
        again = sign_in(client(url, "10.0.0.3"), "Ada", resume_code_in(ada))
        with pytest.raises(AppError, match="Sign in again"):
            client(url).predict(annotator=ada.who, api_name="/annotation_edit_last")
        client(url).predict(annotator=again.who, api_name="/annotation_sign_out")
        with pytest.raises(AppError, match="Sign in again"):
            client(url).predict(annotator=again.who, api_name="/annotation_edit_last")
        assert [(r[0], r[3], r[4]) for r in stored_answers(tmp_path)] == [("Ada", "mine", 0)]


def test_a_sign_in_as_oneself_does_not_reset_the_lockout_for_another_name(tiny_engine, tmp_path, app_env):
    """The attack of issue 27: a wrong code for Ada, the backoff waited out, a correct sign-in as oneself,
    repeated. Failures count per address and per name, and no other name's success clears them: the fifth
    wrong code locks both out (the documented 5 per 15 minutes). Rotating addresses does not help either."""
    seed_dialogues(tmp_path, 1)
    with served(tiny_engine, tmp_path) as url:
        sign_in(client(url, "10.0.0.1"), "Ada")
        attacker = client(url, "10.6.6.6")
        mallory = resume_code_in(sign_in(attacker, "Mallory"))
        for attempt in range(4):
            with pytest.raises(AppError, match="Wrong resume code"):
                attacker.predict(name="Ada", code=f"AAAA-BBBB-CCC{attempt}", api_name="/annotation_sign_in")
            time.sleep(2 ** attempt + 0.2)  # the backoff after the k-th failure: 1, 2, 4, 8 s
            assert sign_in(attacker, "Mallory", mallory).who["name"] == "Mallory"  # a correct sign-in as oneself
        with pytest.raises(AppError, match="Wrong resume code"):
            attacker.predict(name="Ada", code="AAAA-BBBB-CCC4", api_name="/annotation_sign_in")
        with pytest.raises(AppError, match="locked out"):
            attacker.predict(name="Ada", code="AAAA-BBBB-CCC5", api_name="/annotation_sign_in")
        with pytest.raises(AppError, match="locked out"):  # the address is, whatever name it tries
            sign_in(attacker, "Mallory", mallory)
        # From a fresh address, Ada's name is locked out all the same.
        with pytest.raises(AppError, match="Too many failed attempts for this name: locked out"):
            client(url, "10.6.6.7").predict(name="Ada", code="AAAA-BBBB-CCC6", api_name="/annotation_sign_in")


def test_hostile_names_reach_the_admin_report_as_plain_text(tiny_engine, tmp_path, app_env):
    app_env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
    app_env.setenv("HIRPF_ASSIGNMENT", f"overlap={len(HOSTILE_NAMES)}")  # every name answers the one dialogue
    seed_dialogues(tmp_path, 1)
    with served(tiny_engine, tmp_path) as url:
        for i, name in enumerate(HOSTILE_NAMES):
            c = client(url, f"10.0.1.{i}")
            submit(c, sign_in(c, name))
        admin = client(url, "10.0.0.1")
        admin.predict(password_attempt=PASSWORD, api_name="/admin_open")
        report, _ = admin.predict(api_name="/admin_agreement")
    lines = report.splitlines()
    table = lines.index(next(line for line in lines if line.startswith("| Annotator |"))) + 2
    rows = lines[table:lines.index("", table)]
    assert len(rows) == len(HOSTILE_NAMES)
    for row in rows:
        # Four columns: every pipe inside a name is escaped, and nothing in it is a link or an image.
        assert len(re.findall(r"(?<!\\)\|", row)) == 5
        assert not re.search(r"(?<!\\)\]\(|(?<!\\)<|(?<!\\)!\[|(?<![\\])http:", row)


HOSTILE_NAMES = ["[Download](http://x.invalid/f)", "![i](http://x.invalid/a.png)", "<img src=x>", "a | b | c"]


def test_the_admin_cookie_is_set_by_the_server_and_ends_with_the_page(tiny_engine, tmp_path, app_env):
    """Unlocking hands the page a one-time claim; the server answers it with the session's cookie, HttpOnly
    and SameSite=Strict (and Secure behind HTTPS). The page's unload beacon ends the session and its links."""
    app_env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
    seed_dialogues(tmp_path, 1)
    with served(tiny_engine, tmp_path) as url:
        admin = client(url)
        claim = admin.predict(password_attempt=PASSWORD, api_name="/admin_open")[-1]
        answer = httpx.post(url + "hirpf/admin/cookie", content=claim)
        assert answer.status_code == 204
        flags = [f.strip().lower() for f in answer.headers["set-cookie"].split(";")]
        assert {"httponly", "samesite=strict", "path=/"} <= set(flags) and "secure" not in flags
        assert httpx.post(url + "hirpf/admin/cookie", content=claim).status_code == 404  # spent
        behind_https = httpx.post(url + "hirpf/admin/cookie", headers={"X-Forwarded-Proto": "https"},
                                  content=client(url).predict(password_attempt=PASSWORD,
                                                              api_name="/admin_open")[-1])
        assert "secure" in [f.strip().lower() for f in behind_https.headers["set-cookie"].split(";")]

        link = re.search(r"\]\((hirpf/download/[^)]+)\)", admin.predict(fmt="csv", api_name="/admin_export"))
        assert httpx.get(url + link.group(1), cookies=answer.cookies).status_code == 200
        assert httpx.post(url + "hirpf/admin/close", cookies=answer.cookies).status_code == 204  # the beacon
        assert httpx.get(url + link.group(1), cookies=answer.cookies).status_code == 404
        with pytest.raises(AppError, match="Open the admin view first"):
            admin.predict(fmt="csv", api_name="/admin_export")


def test_a_field_the_task_does_not_have_is_refused_by_name(tiny_engine, tmp_path, app_env):
    seed_dialogues(tmp_path, 1)
    with served(tiny_engine, tmp_path) as url:
        c = client(url)
        screen = sign_in(c)
        with pytest.raises(AppError, match="option: this task is answered with the six slots"):
            c.predict(annotator=screen.who, task_id=screen.task, **ANSWER, option=3, api_name="/annotation_submit")
        assert stored_answers(tmp_path) == []
