"""The Debate and Questionnaire tabs in a real browser: Playwright driving Debian's Chromium (never a
downloaded browser), the app on loopback with the embedded model. A debate streams both agents' columns
on the page; a questionnaire and a survey show their charts. Each tab's finished state is saved as a
screenshot under `artifacts/screenshots/` (git-ignored; CI keeps it).
"""
from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from hirpf.identities import TRAIT_POLES, IdentitySet

from app_serving import browser_page, needs_chromium, open_tab, screenshot, served, set_slider

RUN_TIMEOUT_MS = 300_000  # the embedded model on a busy 2-core CPU

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def page(embedded_engine, tmp_path_factory):
    with served(embedded_engine, tmp_path_factory.mktemp("app-data")) as url, \
            browser_page(url, "#chat-traits input") as page:
        yield page


def choose(page, panel: str, names: list[str]) -> None:
    """Check `names` in the (empty) identity panel `panel` and wait for its summary line."""
    for name in names:
        group = "traits" if name in TRAIT_POLES else "profession"
        page.locator(f'#{panel}-{group} input[name="{name}"]').check()
    expect(page.locator(f"#{panel}-summary [data-testid=markdown]")).to_have_text(
        f"Speaks as: {IdentitySet.parse(names).describe()}.")


def column_texts(page, side: str) -> list[str]:
    return page.locator(f'#debate-transcript-{side} [data-testid="bot"]').all_inner_texts()


def test_a_debate_streams_both_sides_on_the_page(page):
    open_tab(page, "Debate")
    choose(page, "debate-a", ["EXT_high", "Doctor"])
    choose(page, "debate-b", ["EXT_low", "Artist"])
    page.locator("#debate-topic textarea").fill("Museums should be free for everyone.")
    page.locator("#debate-generation").get_by_text("Generation").click()
    set_slider(page, "debate-max-new-tokens", 24)
    page.locator("#debate-start").click()
    seen: list[tuple[int, int]] = []  # total text length of A's and B's columns, as the page showed them
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        seen.append((len("".join(column_texts(page, "a"))), len("".join(column_texts(page, "b")))))
        if page.locator("#debate-status").inner_text().startswith("Finished"):
            break
        time.sleep(0.05)
    expect(page.locator("#debate-status")).to_contain_text("Finished: 6 statements")
    a_before_b = {a for a, b in seen if a and not b}
    b_growing = {b for _, b in seen if b}
    assert len(a_before_b) >= 2, f"agent A's opening never grew on the page before B spoke: {seen[:20]}"
    assert len(b_growing) >= 3, f"agent B's column never grew on the page: {sorted(b_growing)}"
    for side in ("a", "b"):
        texts = column_texts(page, side)
        assert [t.split("\n")[0] for t in texts] == ["Opening statement", "Rebuttal 1", "Closing statement"]
    for suffix in (".json", ".md"):  # download links to both files
        expect(page.locator(f'#debate-files a[href$="{suffix}"]')).to_have_count(1)
    screenshot(page, "debate-finished")


def test_a_questionnaire_shows_its_radar_chart_and_answers(page):
    open_tab(page, "Questionnaire")
    field = page.locator("#questionnaire-items-per-factor input")
    field.fill("1")
    field.press("Tab")
    page.locator("#questionnaire-run").click()
    expect(page.locator("#questionnaire-radar img")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#questionnaire-outcome")).to_contain_text("Direction accuracy")
    expect(page.locator("#questionnaire-answers")).to_contain_text("EXT_high")
    expect(page.locator('#questionnaire-files a[href$="/answers.csv"]')).to_have_count(1)
    screenshot(page, "questionnaire-scale")


def test_a_survey_shows_the_answer_distributions(page):
    page.locator("#questionnaire-mode").get_by_text("Survey").click()
    expect(page.locator("#questionnaire-run")).to_be_hidden()
    page.locator("#survey-run").click()
    expect(page.locator("#survey-charts img").first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#survey-charts img")).to_have_count(3)
    expect(page.locator("#survey-table")).to_contain_text("four_day_week")
    screenshot(page, "questionnaire-survey")
