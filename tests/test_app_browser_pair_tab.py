"""The pair panel inside the Human evaluation tab, in a real browser (Playwright driving Debian's Chromium):
an annotator with pairs of the active study gets them first, then the slot tasks, one panel at a time (the
keys of one never act in the other), and only after confirming the resume code. The tab runs as
`--annotation_only` serves it. (A file of its own: one Playwright per module.)
"""
from __future__ import annotations

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from annotation.pair_generation import missing_replies, store_reply
from annotation.pair_studies import activate_study, parse_condition, plan_pairs, poles, save_study
from app.annotation_tab import standalone_app as annotation_tab_app
from app.evaluation_store import open_store
from app.launching import launch
from db.models import PairTask

from app_serving import browser_page, needs_chromium

pytestmark = needs_chromium
STUDY = "secret-study-name"
SECRETS = ["experts+prompt", "prompt@", "AGR_", "CON_", "EXT_", "NEU_", "OPE_", STUDY, "agreeableness-high"]



@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    """The Human evaluation tab itself (as `--annotation_only` serves it), with one slot task and a pair study."""
    data_dir = tmp_path_factory.mktemp("pairs-tab-data")
    with pytest.MonkeyPatch.context() as env:
        for name in ("DATABASE_URL", "HIRPF_ASSIGNMENT", "OAUTH_CLIENT_ID"):
            env.delenv(name, raising=False)
        store = open_store(data_dir)
        store.add_dialogue([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}],
                           ["AGR_high", "Artist"], source="simulator", system="secret-system")
        condition = parse_condition("prompt")
        save_study(store.db, STUDY, plan_pairs("discrimination", poles()[:2], [condition], ["How was your day?"]))
        for item in missing_replies(store.db, STUDY):
            store_reply(store.db, item.reply_id, f"Reply number {item.reply_id}.")
        activate_study(store.db, STUDY)
        built = annotation_tab_app(data_dir=data_dir)
        _, url, _ = launch(built, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
        try:
            with browser_page(url) as page:
                yield page, url, store
        finally:
            built.blocks.close()


def test_the_tab_shows_pairs_first_then_the_slot_tasks_one_panel_at_a_time(tab):
    page, url, store = tab
    page.locator("#annotate-name textarea").fill("Grace")
    page.locator("#annotate-name textarea").press("Enter")
    expect(page.locator("#annotate-code-banner")).to_be_visible()
    expect(page.locator("#pair-task-box")).to_be_hidden()  # not before the resume code is confirmed
    page.locator("#annotate-code-ack").click()
    expect(page.locator("#pair-header")).to_contain_text("0 of 2")
    expect(page.locator("#annotate-slot-work")).to_be_hidden()
    for secret in SECRETS + ["secret-system", "AGR_high"]:
        assert secret not in page.content(), secret
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("a")  # a pair answer, not the slot task's Artist
    expect(page.locator("#pair-header")).to_contain_text("1 of 2")
    page.keyboard.press("b")
    expect(page.locator("#annotate-slot-work")).to_be_visible()
    expect(page.locator("#pair-task-box")).to_be_hidden()
    expect(page.locator("#annotate-header")).to_contain_text("0 of 1")
    assert page.locator("#slot-6 input[type=radio]:checked").count() == 0
    with store.db.read() as session:
        assert [t.choice is not None for t in session.scalars(select(PairTask))] == [True, True]
    page.reload()  # a returning annotator with no pairs left goes straight to the slot task
    expect(page.locator("#annotate-header")).to_contain_text("0 of 1")
    expect(page.locator("#pair-work")).to_be_hidden()
