"""A pair study from start to end in a real browser (Playwright driving Debian's Chromium), on the whole app
with the tiny model (replies are noise, the plumbing is real): the admin builds a small discrimination study
in the Evaluation admin tab and follows its progress bar, shows it to annotators; two annotators label every
pair by keyboard in the Human evaluation tab; the admin's report shows accuracy per condition with its
interval, position bias and agreement, and its chart. The test saves the two screenshots that
`docs/human-evaluation.md` shows (`docs/images/pair-annotation.png`, `docs/images/pair-report.png`).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from app.evaluation_store import open_store
from db.models import PairTask, TaskStatus

from app_serving import browser_page, needs_chromium, open_tab, served

pytestmark = needs_chromium
PASSWORD = "pair-study-password"
DOC_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
PAIRS = 4  # two identity pairs under two conditions, one prompt


@pytest.fixture(scope="module")
def page(tiny_engine, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("pair-study-data")
    with pytest.MonkeyPatch.context() as env:
        for name in ("DATABASE_URL", "HIRPF_ADMIN_USERS", "OAUTH_CLIENT_ID"):
            env.delenv(name, raising=False)
        env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
        env.setenv("HIRPF_ASSIGNMENT", "overlap=2")  # both annotators get every pair: agreement is measured
        with served(tiny_engine, data_dir) as url, browser_page(url) as page:
            yield page, data_dir


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def annotate(page, name: str, keys: str, screenshot: bool = False) -> None:
    """Sign in as a new annotator and answer every pair with `keys`, then sign out."""
    open_tab(page, "Human evaluation")
    field(page, "annotate-name").fill(name)
    field(page, "annotate-name").press("Enter")
    page.locator("#annotate-code-ack").click()
    header = page.locator("#pair-header")
    expect(header).to_contain_text(f"0 of {PAIRS}")
    for secret in ("tiny flow", "experts+prompt", "AGR_", "EXT_"):  # blind: nothing says what is compared
        assert secret not in page.locator("#tab-annotate").inner_html(), secret
    if screenshot:
        page.locator("#pair-work").screenshot(path=str(DOC_IMAGES / "pair-annotation.png"))
    for done, key in enumerate(keys, start=1):
        page.locator("#pair-prompt").click()  # the keys go to the page, not to a text box
        page.keyboard.press(key)
        if done < PAIRS:
            expect(header).to_contain_text(f"{done} of {PAIRS}")
    expect(page.locator("#pair-task-box")).to_be_hidden()
    page.locator("#annotate-sign-out").click()
    expect(field(page, "annotate-name")).to_be_visible()


def test_an_admin_builds_a_study_two_annotators_label_it_and_the_report_shows_it(page):
    page, data_dir = page
    open_tab(page, "Evaluation admin")
    field(page, "admin-password").fill(PASSWORD)
    page.locator("#admin-unlock").click()
    page.locator("#admin-pairs").get_by_text("Pair studies").first.click()
    field(page, "admin-pair-name").fill("tiny flow")
    page.locator("#admin-pair-identities").get_by_text("Identity sets typed below").click()
    field(page, "admin-pair-sets").fill("AGR_high, AGR_low\nEXT_high, EXT_low")
    field(page, "admin-pair-prompts").fill("How was your day?")
    page.locator("#admin-pair-build").click()
    progress = page.locator("#admin-pair-progress")
    expect(progress.locator("progress")).to_be_visible()
    expect(progress).to_contain_text(f"Replies {2 * PAIRS} of {2 * PAIRS}", timeout=120_000)
    expect(progress).to_contain_text("done")
    page.locator("#admin-pair-activate").click()
    expect(page.locator("#admin-pair-active")).to_contain_text("tiny flow")

    annotate(page, "Ada", "abab", screenshot=True)
    annotate(page, "Bob", "abba")
    with open_store(data_dir).db.read() as session:
        assert session.scalar(select(func.count()).select_from(PairTask)
                              .where(PairTask.status == TaskStatus.DONE)) == 2 * PAIRS

    open_tab(page, "Evaluation admin")
    page.locator("#admin-pair-report-button").click()
    report = page.locator("#admin-pair-report")
    expect(report).to_contain_text("position bias")
    text = report.inner_text()
    for condition in ("experts+prompt@1.0", "prompt"):  # accuracy with its 95% interval, per condition
        assert re.search(rf"{re.escape(condition)}\s+accuracy \d\.\d+ \[\d\.\d+, \d\.\d+\] n=4", text), text
    assert re.search(r"agreement on 4 shared pairs", text), text
    expect(page.locator("#admin-pair-chart img")).to_be_visible()
    expect(page.locator("#admin-pair-export-link a")).to_be_visible()
    page.locator("#admin-pairs").screenshot(path=str(DOC_IMAGES / "pair-report.png"))
