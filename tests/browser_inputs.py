"""Helpers for the Playwright tests that set Gradio inputs the way a person does."""
from __future__ import annotations

from playwright.sync_api import expect


def set_slider(page, elem_id: str, value: int, attempts: int = 3) -> None:
    """Type `value` into a slider's number box and commit it (Enter, then leaving the box), until the
    slider shows it: on a busy machine the first keystrokes can land before the component listens."""
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
