"""A Chat Compare result sent to a preference study, in a real browser (Playwright driving Debian's Chromium), on
the whole app with the tiny model (replies are noise, the plumbing is real), with an admin password set: a
session that has not unlocked the admin view is not offered the send; after the unlock it sends the result
under a new study's name, the admin shows that study, and an annotator gets the pair (issue 25 item 6)."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from app.evaluation_store import open_store
from db.models import PairCondition, PairStudy, StudyPair

from app_serving import browser_page, needs_chromium, open_tab, served

pytestmark = needs_chromium
PASSWORD = "compare-study-password"
MESSAGE = "What did you do yesterday?"


@pytest.fixture(scope="module")
def page(tiny_engine, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("compare-study-data")
    with pytest.MonkeyPatch.context() as env:
        for name in ("DATABASE_URL", "HIRPF_ADMIN_USERS", "OAUTH_CLIENT_ID", "HIRPF_ASSIGNMENT"):
            env.delenv(name, raising=False)
        env.setenv("HIRPF_ADMIN_PASSWORD", PASSWORD)
        with served(tiny_engine, data_dir) as url, browser_page(url, "#chat-traits input") as page:
            yield page, data_dir


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def compare(page) -> None:
    page.locator("#chat-compare").click()
    expect(page.locator("#chat-compare-identity")).to_contain_text("a person with high extraversion",
                                                                    timeout=60_000)


def test_an_unlocked_admin_sends_a_comparison_and_an_annotator_gets_it(page):
    page, data_dir = page
    page.locator('#chat-traits input[name="EXT_high"]').check()
    field(page, "chat-message").fill(MESSAGE)
    compare(page)
    expect(page.locator("#chat-compare-send")).to_be_hidden()  # writing to the store is the admin's

    open_tab(page, "Evaluation admin")
    field(page, "admin-password").fill(PASSWORD)
    page.locator("#admin-unlock").click()
    expect(page.locator("#admin-panel")).to_be_visible()
    open_tab(page, "Chat")
    compare(page)
    expect(page.locator("#chat-compare-send")).to_be_visible()
    field(page, "chat-compare-study").fill("chat prefs")
    field(page, "chat-compare-study").press("Enter")
    page.locator("#chat-compare-send-button").click()
    expect(page.locator("#chat-compare-sent")).to_contain_text("chat prefs")
    expect(page.locator(".toast-body")).to_have_count(0)

    with open_store(data_dir).db.read() as session:
        study = session.scalar(select(PairStudy).where(PairStudy.name == "chat prefs"))
        assert study.design == "preference"
        assert sorted(session.scalars(select(PairCondition.label))) == ["experts+prompt@1.0", "prompt"]
        [pair] = session.scalars(select(StudyPair).where(StudyPair.study_id == study.id))
        assert pair.reply_a.prompt == MESSAGE and pair.reply_a.identities == ["EXT_high"]

    open_tab(page, "Evaluation admin")
    page.locator("#admin-pairs").get_by_text("Pair studies").first.click()
    page.locator("#admin-pair-list").click()
    page.locator("#admin-pair-study input").click()
    page.get_by_role("option", name="chat prefs").click()
    page.locator("#admin-pair-activate").click()
    expect(page.locator("#admin-pair-active")).to_contain_text("chat prefs")

    open_tab(page, "Human evaluation")
    field(page, "annotate-name").fill("Ada")
    field(page, "annotate-name").press("Enter")
    page.locator("#annotate-code-ack").click()
    expect(page.locator("#pair-header")).to_contain_text("0 of 1")
    expect(page.locator("#pair-prompt")).to_contain_text(MESSAGE)
