"""The Human evaluation tab in a real browser: Playwright driving Debian's Chromium (`apt-get install chromium`;
`.ci/run` installs it), never a browser that Playwright downloads. The app runs on loopback with a tiny random
engine (these tabs never run the model) and a temporary SQLite data directory.

The tests share one page and run in file order, like an annotator: sign in, label one dialogue with the
keyboard and one with the mouse, reload the page, carry on; then the admin, and what the browser kept.
Screenshots go to `artifacts/screenshots/` (git-ignored; CI keeps it).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urljoin

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from app.evaluation_store import open_store
from db.models import Annotation, AnnotationTask, Annotator, Dialogue
from hirpf.identities import ALIASES, ALL_IDENTITIES, TRAIT_POLES, IdentitySet, label
from hirpf.labels import SLOTS

from app_serving import browser_page, needs_chromium, open_tab, screenshot, served

SYSTEM = "secret-system-x"
PASSWORD = "browser-test-password"
TARGETS = [["AGR_high", "EXT_low", "Doctor"], ["CON_low", "OPE_high", "Artist"], ["NEU_high", "Programmer"]]
BY_KEYBOARD = {"AGR": "high", "CON": "low", "EXT": "none", "NEU": "none", "OPE": "high", "Profession": "none"}
BY_MOUSE = {"AGR": "low", "CON": "none", "EXT": "high", "NEU": "low", "OPE": "none", "Profession": "Artist"}

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("annotation-data")
    store = open_store(path)
    for i, target in enumerate(TARGETS):
        turns = [{"role": "system", "content": f"You are {', '.join(target)}."},
                 {"role": "user", "content": f"What did you do on day {i}?"},
                 {"role": "assistant", "content": f"Mostly read in the garden (day {i}).\nThen <i>slept</i>."},
                 {"role": "user", "content": "And tomorrow?"},
                 {"role": "assistant", "content": "The same again, I hope."}]
        store.add_dialogue(turns, target, source="simulator", system=SYSTEM, source_ref=f"secret-run.jsonl:{i}")
    return path


@pytest.fixture(scope="module")
def page(tiny_engine, data_dir):
    with pytest.MonkeyPatch.context() as env:  # the settings the tabs read when the app is built
        for name in ("DATABASE_URL", "HIRPF_ADMIN_USERS", "HIRPF_ASSIGNMENT", "OAUTH_CLIENT_ID"):
            env.delenv(name, raising=False)
        env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
        with served(tiny_engine, data_dir) as url, browser_page(url) as page:
            yield page


def header(page):
    return page.locator("#annotate-header")


def transcript(page):
    return page.locator("#annotate-transcript")


def checked(page) -> dict[str, str | None]:
    """The label checked in each slot on the page."""
    out = {}
    for i, slot in enumerate(SLOTS, start=1):
        box = page.locator(f"#slot-{i} input[type=radio]:checked")
        out[slot] = box.get_attribute("value") if box.count() else None
    return out


def answers(data_dir: Path) -> list[tuple[str, dict]]:
    with open_store(data_dir).db.read() as session:
        return [tuple(row) for row in session.execute(
            select(Annotator.display_name, Annotation.slots).select_from(Annotation).join(AnnotationTask)
            .join(Annotator).order_by(Annotation.id))]


def test_an_annotator_signs_in_and_labels_with_the_keyboard(page, data_dir):
    expect(page.locator("#model-status")).to_be_visible()  # on the Chat tab
    open_tab(page, "Human evaluation")
    expect(page.locator("#annotate-name textarea")).to_be_visible()
    expect(page.locator("#model-status")).to_be_hidden()  # which model runs here is not the annotator's business
    screenshot(page, "annotate-sign-in")
    page.locator("#annotate-name textarea").fill("Ada")
    page.locator("#annotate-name textarea").press("Enter")
    expect(header(page)).to_contain_text("Signed in as Ada · Progress: 0 of 3 done")
    # The one-time resume code: at the top of the tab, with a copy button, and confirmed before the task.
    banner = page.locator("#annotate-code-banner")
    expect(banner).to_be_visible()
    expect(page.locator("#annotate-resume-code textarea")).to_have_value(re.compile(r"^\w{4}-\w{4}-\w{4}$"))
    expect(banner.get_by_role("button", name=re.compile("copy", re.I))).to_be_visible()
    assert banner.bounding_box()["y"] < header(page).bounding_box()["y"] < 1000 - banner.bounding_box()["height"]
    expect(page.locator("#annotate-task-box")).to_be_hidden()
    expect(page.locator("#annotate-back")).to_be_hidden()  # no answer to go back to yet
    screenshot(page, "annotate-resume-code")
    page.locator("#annotate-code-ack").click()
    expect(banner).to_be_hidden()
    expect(page.locator("#annotate-resume-code textarea")).to_have_count(0)
    expect(transcript(page).locator(".turn")).to_have_count(4)
    transcript(page).click()  # the keys go to the page, not to a text box
    for key in "hlnnhn":
        page.keyboard.press(key)
    expect(page.locator("#slot-6 input[value=none]")).to_be_checked()
    assert checked(page) == BY_KEYBOARD
    screenshot(page, "annotate-task")
    page.keyboard.press("Enter")
    expect(header(page)).to_contain_text("Progress: 1 of 3 done")
    expect(page.locator("#annotate-message")).to_contain_text("Saved.")
    expect(page.locator("#annotate-back")).to_be_visible()
    assert checked(page) == dict.fromkeys(SLOTS)  # a fresh form for the next dialogue


def test_markup_in_a_dialogue_shows_as_text(page):
    expect(transcript(page)).to_contain_text("Then <i>slept</i>.")
    assert transcript(page).locator("i").count() == 0


def test_labels_with_the_mouse_then_resumes_after_a_reload(page, data_dir):
    shown = transcript(page).inner_text()
    for i, slot in enumerate(SLOTS, start=1):
        page.locator(f"#slot-{i} input[value={BY_MOUSE[slot]}]").check()
    page.locator("#annotate-submit").click()
    expect(header(page)).to_contain_text("Progress: 2 of 3 done")
    third = re.search(r"on day \d", transcript(page).inner_text()).group()
    assert third not in shown  # a new dialogue

    page.reload()
    open_tab(page, "Human evaluation")
    expect(header(page)).to_contain_text("Signed in as Ada · Progress: 2 of 3 done")
    expect(transcript(page)).to_contain_text(f"What did you do {third}?")
    assert answers(data_dir) == [("Ada", BY_KEYBOARD), ("Ada", BY_MOUSE)]


def test_the_annotator_page_reveals_no_target_or_system(page, data_dir):
    with open_store(data_dir).db.read() as session:
        dialogue_ids = list(session.scalars(select(Dialogue.public_id)))
    whole = page.content().lower()
    for secret in [SYSTEM, "secret-run", *dialogue_ids, *(IdentitySet.parse(t).describe() for t in TARGETS)]:
        assert secret.lower() not in whole
    assert "model ready" not in page.locator("body").inner_text().lower()  # the model line is off this tab
    # The tab's markup, text and attributes alike; the profession slot lists the professions as its choices.
    tab = page.locator("#tab-annotate").inner_html()
    choices = page.locator("#slot-6").inner_html()
    assert "Doctor" in choices and choices in tab
    rest = tab.replace(choices, "").lower()
    for name in list(ALL_IDENTITIES) + list(ALIASES) + [label(p) for p in TRAIT_POLES]:
        assert name.lower() not in rest, f"{name!r} in the annotator's tab"


def test_the_admin_sees_progress_after_the_password(page):
    open_tab(page, "Evaluation admin")
    expect(page.locator("#admin-panel")).to_be_hidden()
    page.locator("#admin-password input").fill(PASSWORD)
    page.locator("#admin-unlock").click()
    expect(page.locator("#admin-progress")).to_contain_text("Ada")
    expect(page.locator("#admin-counts")).to_contain_text("3 identity dialogues")
    screenshot(page, "admin-panel")


# --- issue 27: what the browser keeps, hostile names, the admin cookie ------------------------------------
HOSTILE_NAMES = ["[Download](http://x.invalid/f)", "![i](http://x.invalid/a.png)", "<img src=x>", "a | b | c"]


def browser_storage(page) -> str:
    """Everything the page's origin keeps in localStorage and sessionStorage, and its script-visible
    cookies, as one text."""
    return page.evaluate("""() => JSON.stringify({
        local: Object.entries(localStorage), session: Object.entries(sessionStorage), cookie: document.cookie})""")


def annotator_ids(data_dir: Path) -> list[str]:
    with open_store(data_dir).db.read() as session:
        return list(session.scalars(select(Annotator.public_id)))


def test_the_browser_keeps_no_code_password_id_or_admin_cookie(page, data_dir):
    open_tab(page, "Human evaluation")
    stored = json.loads(page.evaluate("() => localStorage.getItem('hirpf-annotator')"))
    page.locator("#annotate-sign-out").click()
    expect(page.locator("#annotate-name textarea")).to_be_visible()
    page.locator("#annotate-name textarea").fill("Grace")
    page.locator("#annotate-name textarea").press("Enter")
    expect(header(page)).to_contain_text("Signed in as Grace")
    code = page.locator("#annotate-resume-code textarea").input_value()
    page.locator("#annotate-code-ack").click()
    # Nothing assigned to her (Ada has every dialogue): an empty state that says what to do, not "all done".
    expect(page.locator("#annotate-prompt")).to_contain_text("come back later")
    expect(page.locator("#annotate-prompt")).not_to_contain_text("All done")
    expect(page.locator("#annotate-back")).to_be_hidden()
    page.locator("#annotate-sign-out").click()
    expect(page.locator("#annotate-name textarea")).to_be_visible()
    page.wait_for_function("() => localStorage.getItem('hirpf-annotator') === null")
    open_tab(page, "Evaluation admin")
    page.locator("#admin-refresh").click()  # unlocked by the test before
    expect(page.locator("#admin-progress")).to_contain_text("Grace")

    admin_cookie = next(c for c in page.context.cookies() if c["name"].startswith("hirpf_admin_"))
    kept = browser_storage(page)
    for secret in [code, code.replace("-", ""), PASSWORD, admin_cookie["value"], *annotator_ids(data_dir)]:
        assert secret not in kept
    assert "hirpf-annotator" not in kept  # signed out: no token either
    assert page.request.get(page.url.split("?")[0] + "gradio_api/runs").status == 404  # no run history page
    assert admin_cookie["httpOnly"] and admin_cookie["sameSite"] == "Strict"  # set by the server
    assert set(stored) == {"token", "name"} and stored["name"] == "Ada"  # signed in, it was a token, not her id


def test_hostile_names_show_as_text_on_the_admin_page(page, data_dir):
    from annotation.assignment import AssignmentPolicy
    from app.evaluation_store import apply_policy

    from app_serving import client

    store = open_store(data_dir)  # one more dialogue, for every one of them
    store.add_dialogue([{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}],
                       ["AGR_high"], source="simulator", system=SYSTEM)
    apply_policy(store, AssignmentPolicy(overlap=len(HOSTILE_NAMES)))
    fetched = []
    page.on("request", lambda request: fetched.append(request.url))
    for i, name in enumerate(HOSTILE_NAMES):  # each signs in as an annotator would, and answers
        annotator = client(page.url.split("?")[0], f"10.0.2.{i}")
        screen = annotator.predict(name=name, code=None, api_name="/annotation_sign_in")
        who, task = screen[0], screen[14]
        annotator.predict(annotator=who, task_id=task, agreeableness="high", conscientiousness="none",
                          extraversion="none", neuroticism="none", openness="none", profession="none",
                          api_name="/annotation_submit")
    open_tab(page, "Evaluation admin")
    page.locator("#admin-refresh").click()
    for name in HOSTILE_NAMES:
        expect(page.locator("#admin-progress")).to_contain_text(name)
    page.locator("#admin-agreement").get_by_text("Agreement").first.click()
    page.locator("#admin-compute").click()
    report = page.locator("#admin-report")
    expect(report).to_contain_text(HOSTILE_NAMES[0])
    screenshot(page, "admin-hostile-names")
    for area in ("#admin-report", "#admin-progress table"):
        assert page.locator(f"{area} img").count() == 0
        assert page.locator(f"{area} a").count() == 0
    annotator_table = report.locator("table").nth(1)
    for name in HOSTILE_NAMES:
        row = annotator_table.locator("tr", has_text=name)
        expect(row.locator("td")).to_have_count(4)  # the name kept to its own column
        expect(row.locator("td").first).to_have_text(name)
    assert not [url for url in fetched if "x.invalid" in url or url.rstrip("/").endswith("/x")]


def test_leaving_the_admin_page_ends_its_links(page):
    page.locator("#admin-export").get_by_text("Export").first.click()
    page.locator("#admin-export-button").click()
    link = page.locator("#admin-export-file a").first
    expect(link).to_have_attribute("href", re.compile("hirpf/download/"))
    href = urljoin(page.url.split("?")[0], link.get_attribute("href"))
    assert page.request.get(href).status == 200  # the page's own (HttpOnly) cookie opens it
    page.goto("about:blank")  # the admin's page goes away: its beacon ends the session
    for _ in range(50):
        if page.request.get(href).status == 404:
            break
        page.wait_for_timeout(100)
    assert page.request.get(href).status == 404
