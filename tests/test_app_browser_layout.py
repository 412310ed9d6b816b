"""What a visitor sees before reading a word: every model tab in Debian's Chromium at a laptop's 1366×768 and a
phone's 390×844, checked for boxes that spill out of their container, placeholder table headers, cut
examples and duplicate ids, and saved as screenshots under `artifacts/screenshots/` (git-ignored; CI keeps
them). Then the first things a visitor does on each tab, watched on the page. The app serves the tiny
random model: layout and events are the same as with the real one, and a run takes seconds.
"""
from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from app_serving import CHROMIUM, needs_chromium, open_tab, screenshot, served

pytestmark = needs_chromium

VIEWPORTS = {"laptop": (1366, 768), "phone": (390, 844)}
TABS = {"Chat": "tab-chat", "Debate": "tab-debate", "Questionnaire": "tab-questionnaire",
        "Human evaluation": "tab-annotate", "Evaluation admin": "tab-admin"}

# Visible elements whose box reaches past their parent's right edge (by more than a pixel) while the parent
# lets it show (a parent that clips or scrolls is the container doing its job), and the page's own width.
SPILLS = """(root) => {
  const out = [];
  for (const el of document.querySelectorAll(`#${root} *`)) {
    const parent = el.parentElement, box = el.getBoundingClientRect(), outer = parent.getBoundingClientRect();
    if (!box.width || !box.height || el.closest('.visually-hidden')) continue;
    if (getComputedStyle(parent).overflowX !== 'visible') continue;
    if (box.right > outer.right + 1 || box.left < outer.left - 1)
      out.push(`${el.tagName.toLowerCase()}.${el.className} "${(el.innerText || '').slice(0, 40)}" ` +
               `by ${Math.round(Math.max(box.right - outer.right, outer.left - box.left))}px`);
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 1)
    out.push(`the page: ${document.documentElement.scrollWidth}px wide in a ${window.innerWidth}px window`);
  return out;
}"""
# Header rows of visible tables that are Gradio's placeholders for an empty table: 1, 2, 3, ...
PLACEHOLDER_HEADERS = """(root) => [...document.querySelectorAll(`#${root} table`)]
  .filter(t => t.getBoundingClientRect().height > 0)
  .map(t => [...t.querySelectorAll('thead th')].map(th => th.innerText.trim()))
  .filter(h => h.length && h.every((text, i) => text === String(i + 1)))"""
CUT_EXAMPLES = """(root) => [...document.querySelectorAll(`#${root} .gallery-item, #${root} button.gallery-item`)]
  .map(e => e.innerText.trim()).filter(t => t.endsWith('...'))"""
DUPLICATE_IDS = """() => {
  const seen = {};
  for (const e of document.querySelectorAll('[id]')) if (e.id) seen[e.id] = (seen[e.id] || 0) + 1;
  return Object.keys(seen).filter(id => seen[id] > 1);
}"""
# A font stack whose first font lacks glyphs for `text` draws them from the fallback: two stacks that
# differ only in their fallback then measure differently.
FALLBACK_GLYPHS = """([selector, text]) => {
  const style = getComputedStyle(document.querySelector(selector));
  const canvas = document.createElement('canvas').getContext('2d');
  const width = (fallback) => { canvas.font = `${style.fontWeight} ${style.fontSize} "Source Sans Pro", ${fallback}`;
                                return canvas.measureText(text).width; };
  return [width('serif'), width('monospace')];
}"""


@pytest.fixture(scope="module")
def url(tiny_engine, tmp_path_factory):
    with served(tiny_engine, tmp_path_factory.mktemp("layout-data")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(browser, url):
    pages = []

    def open_at(viewport: str):
        width, height = VIEWPORTS[viewport]
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.wait_for_selector("#chat-traits input")
        pages.append(page)
        return page

    yield open_at
    for page in pages:
        page.close()


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_every_tab_fits_its_screen(open_page, viewport):
    page = open_page(viewport)
    assert page.evaluate(DUPLICATE_IDS) == []
    for tab, root in TABS.items():
        open_tab(page, tab)
        expect(page.locator(f"#{root}")).to_be_visible()
        page.wait_for_timeout(500)  # the tab's layout settles
        width, height = VIEWPORTS[viewport]
        screenshot(page, f"{root}-{width}x{height}")
        assert page.evaluate(SPILLS, root) == [], f"{tab} at {viewport} size"
        assert page.evaluate(PLACEHOLDER_HEADERS, root) == [], f"{tab} at {viewport} size"
        assert page.evaluate(CUT_EXAMPLES, root) == [], f"{tab} at {viewport} size"


def test_headings_draw_every_letter_in_the_page_font(open_page):
    page = open_page("laptop")
    heading = "#chat-panel h3"
    expect(page.locator(heading)).to_be_visible()
    page.evaluate("document.fonts.ready")
    with_serif, with_monospace = page.evaluate(FALLBACK_GLYPHS, [heading, page.locator(heading).inner_text()])
    assert with_serif == pytest.approx(with_monospace), "some letters come from the fallback font"


def test_the_debate_panels_line_up(open_page):
    page = open_page("laptop")
    open_tab(page, "Debate")
    a, b = (page.locator(f"#debate-{side}-traits").bounding_box() for side in "ab")
    assert a["y"] == pytest.approx(b["y"], abs=1) and a["height"] == pytest.approx(b["height"], abs=1)


def test_stop_is_not_red_while_nothing_runs(open_page):
    page = open_page("laptop")
    colour = "(id) => getComputedStyle(document.getElementById(id)).backgroundColor"
    for tab, stop, quiet in (("Chat", "chat-stop", "chat-clear"), ("Debate", "debate-stop", "debate-send")):
        open_tab(page, tab)
        assert page.evaluate(colour, stop) == page.evaluate(colour, quiet)


def progress_and_result(page, root: str, result: str) -> tuple[int, bool]:
    """How many progress indicators under `#root` are visible, and whether `#result` is, read in one go: two
    separate reads can straddle the moment a run ends and its result appears."""
    return tuple(page.evaluate("""([root, result]) => {
        const visible = (el) => {  // Playwright's own test: a box with area, and not visibility: hidden
            const box = el && el.getBoundingClientRect();
            return !!box && box.width > 0 && box.height > 0 && getComputedStyle(el).visibility !== "hidden";
        };
        const indicators = document.querySelectorAll(`#${root} .progress-text, #${root} .eta-bar`);
        return [[...indicators].filter(visible).length, visible(document.getElementById(result))];
    }""", [root, result]))


def test_a_questionnaire_shows_one_progress_indicator_in_place_of_its_result(open_page):
    page = open_page("laptop")
    open_tab(page, "Questionnaire")
    outcome, results = page.locator("#questionnaire-outcome"), page.locator("#questionnaire-results")
    expect(outcome).to_contain_text("No results yet")  # an empty state, not empty tables
    expect(results).to_be_hidden()
    judges = page.locator("#questionnaire-judge label").all_inner_texts()
    assert "statement" in judges and "interview" not in judges  # no endpoint is configured here
    expect(page.locator("#questionnaire-judge input[value=statement]")).to_be_checked()
    page.locator("#questionnaire-items-per-factor input").fill("1")
    page.locator("#questionnaire-items-per-factor input").press("Tab")
    for _ in range(2):  # the second run starts over the first one's result
        page.locator("#questionnaire-run").click()
        most, began, finished = 0, False, False  # began: the old result (if any) has left the page
        deadline = time.monotonic() + 120
        while not finished and time.monotonic() < deadline:
            shown, result_visible = progress_and_result(page, "tab-questionnaire", "questionnaire-results")
            most = max(most, shown)
            if not began:  # until the old result goes, no progress indicator may be drawn over it
                assert not (shown and result_visible), "the old result stayed on screen during the new run"
                began = not result_visible
            finished = began and result_visible and not shown
            time.sleep(0.05)
        assert finished, f"the run did not finish in time (began: {began})"
        expect(page.locator("#questionnaire-radar img")).to_be_visible()
        assert most <= 1, f"{most} progress indicators at once"
    expect(outcome).to_contain_text("statement")  # which judge ran
    headers = page.locator("#questionnaire-answers thead th").all_inner_texts()
    assert "score" in [h.strip() for h in headers] and "answer" not in [h.strip() for h in headers]


def test_the_panel_boxes_are_editable_only_when_the_panel_is_used(open_page):
    page = open_page("laptop")
    open_tab(page, "Questionnaire")
    box = page.locator('#questionnaire-traits input[name="AGR_high"]')
    expect(page.locator("#questionnaire-identity-sets input[value=poles]")).to_be_checked()
    expect(box).to_be_disabled()
    page.locator("#questionnaire-identity-sets").get_by_text("The panel's identity set").click()
    expect(box).to_be_enabled()
    page.locator("#questionnaire-identity-sets").get_by_text("The three professions").click()
    expect(box).to_be_disabled()


def test_compare_after_send_answers_the_last_message_and_goes_when_the_identity_changes(open_page):
    page = open_page("laptop")
    page.locator('#chat-traits input[name="EXT_high"]').check()
    page.locator("#chat-message textarea").fill("What did you do yesterday?")
    page.locator("#chat-message textarea").press("Enter")
    expect(page.locator("#chat-message textarea")).to_have_value("")
    page.wait_for_function("() => document.querySelectorAll('#chat-transcript .thought-group').length === 1 && "
                           "!document.querySelector('#chat-transcript .loading-spinner')")
    page.locator("#chat-compare").click()
    comparison = page.locator("#chat-comparison")
    expect(comparison).to_be_visible()  # at once: the progress shows where the answers will be
    expect(page.locator("#chat-compare-identity")).to_contain_text("a person with high extraversion",
                                                                    timeout=60_000)
    expect(page.locator(".toast-body")).to_have_count(0)  # no "type a message" error
    page.locator('#chat-traits input[name="OPE_low"]').check()
    expect(comparison).to_be_hidden()  # an old comparison never sits beside new settings
