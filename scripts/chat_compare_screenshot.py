"""Remake `docs/images/chat-compare.png`, the README's picture of the Chat tab with a Compare result: the app
with the embedded model and the shipped experts, on loopback, driven by Debian's Chromium as a visitor
would (identities, one message, Send, then Compare with the box empty). Greedy decoding, so a rerun on the
same weights draws the same replies.

    .venv/bin/python scripts/chat_compare_screenshot.py [--output docs/images/chat-compare.png]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from app.build import build_app
from app.launching import launch
from hirpf.engine import Engine
from hirpf.paths import PROJECT_ROOT

IDENTITIES = ["EXT_low", "NEU_high"]
MESSAGE = "I have to give a talk to two hundred people tomorrow. Any advice?"
MAX_NEW_TOKENS = 48
REPLY_TIMEOUT_MS = 1_500_000  # the embedded model on a busy CPU (minutes per reply under load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "docs" / "images" / "chat-compare.png")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's Chromium is needed: apt-get install -y --no-install-recommends chromium")
    from playwright.sync_api import expect, sync_playwright

    built = build_app(Engine.load("embedded"))
    _, url, _ = launch(built, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.set_default_timeout(REPLY_TIMEOUT_MS)
            page.goto(url)
            for name in IDENTITIES:
                page.locator(f'#chat-traits input[name="{name}"]').check()
            page.locator("#chat-sampling").get_by_text("Sampling").click()
            for slider, value in (("chat-max-new-tokens", MAX_NEW_TOKENS), ("chat-temperature", 0)):
                field = page.locator(f"#{slider} input[type=number]")
                field.fill(str(value))
                field.press("Enter")
                expect(page.locator(f"#{slider} input[type=range]")).to_have_value(str(value))
            page.locator("#chat-sampling").get_by_text("Sampling").click()
            page.locator("#chat-message textarea").fill(MESSAGE)
            page.locator("#chat-message textarea").press("Enter")
            page.wait_for_function("() => document.querySelectorAll('#chat-transcript .thought-group').length === 1"
                                   " && !document.querySelector('#chat-transcript .loading-spinner')")
            page.locator("#chat-compare").click()
            baseline = page.locator("#chat-compare-baseline-reply")
            expect(baseline).to_contain_text("Prompt only", timeout=REPLY_TIMEOUT_MS)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.locator("#tab-chat").screenshot(path=str(args.output))
            browser.close()
    finally:
        built.blocks.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
