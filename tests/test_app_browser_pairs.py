"""The pairwise-study panel in a real browser (Playwright driving Debian's Chromium): an annotator answers by
keyboard, each answer is stored in stored terms with the order they were shown, the last answer can be
edited, and nothing in the page or `/config` names a condition, identity, model or the study.

The panel is shown in a small page of its own: a hidden sign-in JSON (set here from a session token) and
`app.pair_annotation.build_pair_panel`, as the Human evaluation tab holds it.
"""
from __future__ import annotations

import json
import urllib.request

import gradio as gr
import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from annotation import sessions
from annotation.pair_generation import missing_replies, store_reply
from annotation.pair_studies import activate_study, parse_condition, plan_pairs, poles, save_study
from app.built_app import BuiltApp
from app.evaluation_store import open_store
from app.launching import launch
from app.pair_annotation import build_pair_panel, install_pair_shortcuts
from db.models import PairTask

from app_serving import browser_page, needs_chromium, screenshot

pytestmark = needs_chromium
STUDY = "secret-study-name"
SECRETS = ["experts+prompt", "prompt@", "AGR_", "CON_", "EXT_", "NEU_", "OPE_", "embedded", "runs/secret-ckpt",
           STUDY, "agreeableness-high"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("pairs-data")
    with pytest.MonkeyPatch.context() as env:
        for name in ("DATABASE_URL", "HIRPF_ASSIGNMENT"):
            env.delenv(name, raising=False)
        store = open_store(data_dir)
        condition = parse_condition("experts+prompt@1.0", base_model="embedded", checkpoint="runs/secret-ckpt")
        save_study(store.db, STUDY, plan_pairs("discrimination", poles()[:3], [condition], ["How was your day?"]))
        for item in missing_replies(store.db, STUDY):
            store_reply(store.db, item.reply_id, f"Reply number {item.reply_id}, <b>not bold</b>.")
        activate_study(store.db, STUDY)
        annotator = store.register_annotator("Ada")
        with gr.Blocks() as demo:
            identity = gr.JSON(visible=False)
            who = gr.Textbox(label="session token", elem_id="harness-annotator")
            panel = build_pair_panel(identity, data_dir)
            who.submit(lambda token: {"token": token, "name": "Ada"}, who, identity).then(**panel.refresh)
            install_pair_shortcuts(demo)
        _, url, _ = launch(BuiltApp(demo), "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
        try:
            with browser_page(url) as page:
                yield page, url, store, annotator
        finally:
            demo.close()


def stored_choices(store) -> list[tuple[str, str | None]]:
    with store.db.read() as session:
        return [(t.shown_first, t.choice) for t in session.scalars(select(PairTask).order_by(PairTask.position))]


def test_an_annotator_answers_by_keyboard_and_edits_the_last_answer(setup):
    page, url, store, annotator = setup
    token = sessions.start(store.db, annotator)
    page.locator("#harness-annotator textarea, #harness-annotator input").first.fill(token)
    page.keyboard.press("Enter")
    header = page.locator("#pair-header")
    expect(header).to_contain_text("0 of 3")
    expect(page.locator("#pair-reply-a")).to_contain_text("not bold")  # escaped text, not markup
    assert page.locator("#pair-reply-a b").count() == 0
    expect(page.locator("#pair-pick-tie")).to_be_hidden()  # a discrimination study: no ties
    screenshot(page, "pair-annotation")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("t")  # not allowed here: nothing happens
    page.keyboard.press("a")
    expect(header).to_contain_text("1 of 3")
    page.keyboard.press("b")
    expect(header).to_contain_text("2 of 3")
    (first_shown, first), (second_shown, second), _ = stored_choices(store)
    assert first == first_shown  # "A" is whichever reply this annotator saw first
    assert second == {"a": "b", "b": "a"}[second_shown]
    page.locator("#pair-back").click()
    expect(page.locator("#pair-question")).to_contain_text("Editing your last answer (yours: B)")
    page.keyboard.press("a")
    # The header read "2 of 3" before the edit too: wait until the page is back on the third pair, which it
    # shows only once the edit is stored (on a busy machine the store was read, or a skip clicked, too soon).
    expect(page.locator("#pair-question")).not_to_contain_text("Editing your last answer")
    expect(header).to_contain_text("2 of 3")
    assert stored_choices(store)[1] == (second_shown, second_shown)
    page.locator("#pair-skip-reason textarea, #pair-skip-reason input").first.fill("both replies are empty")
    page.locator("#pair-skip").click()
    expect(page.locator("#pair-message")).to_contain_text("All done")
    assert stored_choices(store)[2][1] is None


def test_nothing_on_the_page_or_in_the_config_names_what_is_compared(setup):
    page, url, store, annotator = setup
    shown = page.content()
    with urllib.request.urlopen(f"{url.rstrip('/')}/config") as response:
        config = json.dumps(json.load(response))
    for secret in SECRETS:
        assert secret not in shown and secret not in config, secret

