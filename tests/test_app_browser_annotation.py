"""The Human evaluation tab in a real browser: Playwright driving Debian's Chromium (`apt-get install chromium`;
`.ci/run` installs it), never a browser that Playwright downloads. The app runs on loopback with a tiny random
engine (these tabs never run the model) and a temporary SQLite data directory.

The tests share one page and run in file order, like an annotator: sign in, label one dialogue with the
keyboard and one with the mouse, reload the page, carry on. Screenshots go to `artifacts/screenshots/`
(git-ignored; CI keeps it).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from app.services import open_store
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
