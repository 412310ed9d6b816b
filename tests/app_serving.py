"""Serving the app for tests: on loopback, driven by `gradio_client` or by Debian's Chromium through
Playwright (never a browser Playwright downloads)."""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.build import build_app
from app.launching import launch
from hirpf.paths import PROJECT_ROOT

SCHEDULER_THREAD = "hirpf-scheduler"  # the name of `hirpf.scheduler.Scheduler`'s loop thread
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = PROJECT_ROOT / "artifacts" / "screenshots"  # git-ignored; CI keeps them as artifacts

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's Chromium is not installed (apt-get install -y --no-install-recommends chromium; "
           ".ci/run installs it)")


@contextmanager
def served(engine, data_dir: str | Path | None = None, **build):
    """The whole app around `engine` on a free loopback port; yields its URL. Tabs that store things
    write under `data_dir` (a temporary folder when None); `build`: more of `build_app`'s arguments."""
    with tempfile.TemporaryDirectory(prefix="hirpf-app-data-") as scratch:
        built = build_app(engine, data_dir=data_dir if data_dir is not None else scratch, **build)
        _, url, _ = launch(built, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
        try:
            yield url
        finally:
            built.blocks.close()


@contextmanager
def served_annotation_app(data_dir: str | Path):
    """The annotation-only app (no model) on a free loopback port; yields its URL."""
    from app.build import build_annotation_app

    built = build_annotation_app(data_dir=data_dir)
    _, url, _ = launch(built, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        built.blocks.close()


@contextmanager
def forward_calls(model):
    """(thread, time) of every forward pass of `model` while the block runs: which thread ran the model."""
    calls: list[tuple[threading.Thread, float]] = []
    hook = model.register_forward_hook(lambda *_: calls.append((threading.current_thread(), time.monotonic())))
    try:
        yield calls
    finally:
        hook.remove()


def assert_model_stopped(calls, within_s: float = 30.0) -> int:
    """After Stop: the model is called no more. A reply of its own (`Engine.stream`) runs in a model thread
    that ends; a scheduler row runs in the scheduler's loop thread, which lives on, idle once its rows have
    left. Returns how many forward passes were made."""
    model_thread = calls[0][0]
    if model_thread.name != SCHEDULER_THREAD:
        model_thread.join(timeout=within_s)
        assert not model_thread.is_alive(), "the model thread kept running after Stop"
    deadline = time.monotonic() + within_s
    count = len(calls)
    while True:
        time.sleep(0.5)
        if len(calls) == count:
            return count
        assert time.monotonic() < deadline, "the model was still being called after Stop"
        count = len(calls)


def client(url: str, address: str | None = None):
    """A `gradio_client` for the served app; `address`: the client address the app sees (sent as
    `X-Forwarded-For`, which uvicorn trusts from loopback), so tests can be several clients."""
    from gradio_client import Client

    # A generous HTTP timeout: a cancel request returns once the model thread has ended, which on a busy
    # machine can take a few seconds.
    headers = {"X-Forwarded-For": address} if address else None
    return Client(url, verbose=False, httpx_kwargs={"timeout": 60}, headers=headers)


def transcript(result) -> list[dict]:
    """The chatbot value an endpoint returned (chat, regenerate, stop and clear return it alone)."""
    assert isinstance(result, list), f"expected the chatbot's messages, got {type(result).__name__}: {result!r}"
    return result


def text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def captions(messages: list[dict]) -> list[str]:
    """The identity line recorded above each reply."""
    return [m["metadata"]["title"] for m in messages if m.get("metadata")]


def replies(messages: list[dict]) -> list[str]:
    return [text(m) for m in messages if m["role"] == "assistant" and not m.get("metadata")]


def user_messages(messages: list[dict]) -> list[str]:
    return [text(m) for m in messages if m["role"] == "user"]


@contextmanager
def browser_page(url: str, ready_selector: str | None = None):
    """A Chromium page open at `url` (waiting for `ready_selector` when given)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(20_000)
            page.goto(url)
            if ready_selector:
                page.wait_for_selector(ready_selector)
            yield page
        finally:
            browser.close()


def open_tab(page, name: str) -> None:
    """Select the tab `name`; on a narrow page, from the "More tabs" menu the tabs that do not fit go to."""
    tab, more = page.get_by_role("tab", name=name), page.get_by_label("More tabs")
    # Wait until the tab bar has rendered (after a reload on a busy machine it takes seconds): the tab itself
    # or the menu becomes visible; only then is "the tab is not visible" a fact about the page's width.
    tab.or_(more).filter(visible=True).first.wait_for(timeout=60_000)
    if tab.is_visible():
        tab.click()
        return
    more.click()
    page.locator(".overflow-dropdown button", has_text=name).click()


def set_slider(page, elem_id: str, value: int, attempts: int = 3) -> None:
    """Type `value` into a slider's number box and commit it (Enter, then leaving the box), until the
    slider shows it: on a busy machine the first keystrokes can land before the component listens."""
    from playwright.sync_api import expect

    field = page.locator(f"#{elem_id} input[type=number]")
    slider = page.locator(f"#{elem_id} input[type=range]")
    for attempt in range(attempts):
        field.fill(str(value))
        field.press("Enter")
        field.blur()
        try:
            expect(slider).to_have_value(str(value), timeout=5_000)
            return
        except AssertionError:
            if attempt == attempts - 1:
                raise


def screenshot(page, name: str, folder: Path = SCREENSHOTS) -> Path:
    """Save the whole page as `<folder>/<name>.png` (and check that something was drawn)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path
