"""The app in a real browser: Playwright driving Debian's Chromium (`apt-get install chromium`; `.ci/run`
installs it), never a browser that Playwright downloads. The app runs on loopback with the embedded model.

The tests share one page and run in file order, like a visitor: panel rules first, then a chat. The last
one saves a screenshot of every tab under `artifacts/screenshots/` (git-ignored; CI keeps it).
"""
from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from hirpf.identities import PROFESSIONS, TRAIT_POLES, IdentitySet

from app_serving import browser_page, needs_chromium, screenshot, served, set_slider

REPLY_TIMEOUT_MS = 180_000  # the embedded model on a busy 2-core CPU

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def page(embedded_engine, tmp_path_factory):
    with served(embedded_engine, tmp_path_factory.mktemp("app-data")) as url, \
            browser_page(url, "#chat-traits input") as page:
        yield page


def box(page, name: str):
    group = "#chat-traits" if name in TRAIT_POLES else "#chat-profession"
    return page.locator(f'{group} input[name="{name}"]')


def summary(page):
    return page.locator("#chat-summary [data-testid=markdown]")


def choose(page, names: list[str]) -> None:
    """Make the panel show exactly `names`, waiting until the server-side rules have settled."""
    for name in TRAIT_POLES + PROFESSIONS:
        if name not in names and box(page, name).is_checked():
            box(page, name).uncheck()
    for name in names:
        box(page, name).check()
    expect(summary(page)).to_have_text(f"Speaks as: {IdentitySet.parse(names).describe()}.")


def set_max_new_tokens(page, n: int) -> None:
    if not page.locator("#chat-max-new-tokens").is_visible():
        page.locator("#chat-sampling").get_by_text("Sampling").click()
    set_slider(page, "chat-max-new-tokens", n)


def captions(page) -> list[str]:
    return [t.strip() for t in page.locator("#chat-transcript .thought-group .title > .md").all_inner_texts()]


def last_reply(page):
    return page.locator('#chat-transcript [data-testid="bot"]:not(:has(.thought-group))').last


def send(page, text: str) -> None:
    page.locator("#chat-message textarea").fill(text)
    page.locator("#chat-message textarea").press("Enter")


def wait_until_done(page) -> None:
    """No caption spinner left: the reply has ended."""
    page.wait_for_function(
        "() => document.querySelectorAll('#chat-transcript .thought-group').length > 0 && "
        "document.querySelectorAll('#chat-transcript .loading-spinner').length === 0",
        timeout=REPLY_TIMEOUT_MS)


def test_checking_one_pole_clears_the_other(page):
    choose(page, ["AGR_high", "CON_high"])
    box(page, "AGR_low").check()
    expect(box(page, "AGR_high")).not_to_be_checked()
    expect(box(page, "AGR_low")).to_be_checked()
    expect(box(page, "CON_high")).to_be_checked()  # other traits are left alone
    expect(summary(page)).to_have_text("Speaks as: a person with low agreeableness and high conscientiousness.")


def test_a_second_profession_clears_the_first(page):
    choose(page, ["Doctor"])
    box(page, "Artist").check()
    expect(box(page, "Doctor")).not_to_be_checked()
    expect(box(page, "Artist")).to_be_checked()
    expect(summary(page)).to_have_text("Speaks as: an artist.")


def test_a_message_gets_a_streamed_reply(page):
    choose(page, ["EXT_high", "Programmer"])
    set_max_new_tokens(page, 32)
    send(page, "What are you working on these days?")
    seen: list[str] = []
    deadline = time.monotonic() + REPLY_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        if last_reply(page).count():
            seen.append(last_reply(page).inner_text())
        if page.locator("#chat-transcript .thought-group").count() and \
                not page.locator("#chat-transcript .loading-spinner").count():
            break
        time.sleep(0.05)
    wait_until_done(page)
    lengths = sorted({len(t) for t in seen if t.strip()})
    assert len(lengths) >= 2, f"the reply never grew on the page: {seen[-3:]}"
    assert captions(page) == ["Identity: a programmer with high extraversion"]
    assert last_reply(page).inner_text().strip()
    # Send emptied the box (in the browser) after the chat event had read it: the message was answered.
    expect(page.locator("#chat-message textarea")).to_have_value("")
    sent = page.locator('#chat-transcript [data-testid="user"]').last
    expect(sent).to_have_text("What are you working on these days?")


def test_changing_identities_mid_chat_changes_the_next_turns_record(page):
    choose(page, ["NEU_low", "OPE_high", "Doctor"])
    set_max_new_tokens(page, 12)
    send(page, "And how do you usually relax?")
    page.wait_for_function("() => document.querySelectorAll('#chat-transcript .thought-group').length === 2",
                           timeout=REPLY_TIMEOUT_MS)
    wait_until_done(page)
    assert captions(page) == ["Identity: a programmer with high extraversion",
                              "Identity: a doctor with low neuroticism and high openness"]


def test_stop_ends_a_reply_and_keeps_its_text(page):
    set_max_new_tokens(page, 400)
    send(page, "Tell me a long story about your first year at work.")
    page.wait_for_function("() => document.querySelectorAll('#chat-transcript .thought-group').length === 3")
    expect(last_reply(page)).to_have_text(re.compile(r"\S"), timeout=REPLY_TIMEOUT_MS)
    page.locator("#chat-stop").click()
    expect(last_reply(page)).to_contain_text("(stopped)", timeout=60_000)
    wait_until_done(page)


def test_strength_sliders_follow_the_checked_identities_and_compare_answers_twice(page):
    choose(page, ["AGR_low", "Doctor"])
    expect(page.locator("#chat-strength-AGR_low")).to_be_visible()
    expect(page.locator("#chat-strength-Doctor")).to_be_visible()
    expect(page.locator("#chat-strength-AGR_high")).to_be_hidden()
    set_slider(page, "chat-strength-AGR_low", 1.6)
    set_max_new_tokens(page, 8)
    page.locator("#chat-message textarea").fill("What do you do at work?")
    page.locator("#chat-compare").click()
    # (this app's model has no experts, so both sides are prompt-only; the API tests compare real experts)
    expect(page.locator("#chat-compare-identity")).to_contain_text(
        "a doctor with low agreeableness (strength AGR_low 1.6)", timeout=REPLY_TIMEOUT_MS)
    expect(page.locator("#chat-compare-baseline-reply")).to_contain_text(
        "Prompt only: a doctor with low agreeableness", timeout=REPLY_TIMEOUT_MS)


def test_screenshots_of_every_tab(page):
    tabs = page.get_by_role("tab")
    names = tabs.all_inner_texts()
    assert "Chat" in names
    for i, name in enumerate(names):
        tabs.nth(i).click()
        screenshot(page, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
