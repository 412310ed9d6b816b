"""The annotation-only app (`python app.py --annotation_only`): what a browser, `/config` and the API get holds
nothing of the model or of the identity codes, checked with raw HTTP and in Debian's Chromium; annotators
and the admin still work."""
from __future__ import annotations

import json
import re

import httpx
from playwright.sync_api import expect

from hirpf.identities import ALIASES, ALL_IDENTITIES

from annotation_client import ANSWER, Screen, seed_dialogues
from app_serving import browser_page, client, needs_chromium, open_tab, served_annotation_app

# Words of the model side: the experts, the identity codes, the model status line and its endpoint.
MODEL_WORDS = ["expert", "model_status", "model ready", "embedded", "lora", "identity-driven", "role-playing",
               "Chat", "Debate", "Questionnaire"]
CODES = [name for name in list(ALL_IDENTITIES) + list(ALIASES) if "_" in name]  # AGR_high, EMS_low, ...


def assert_blind(name: str, text: str) -> None:
    lowered = text.lower()
    for word in MODEL_WORDS + CODES:
        assert word.lower() not in lowered, f"{word!r} in the {name}"


def test_settings_turn_the_annotation_only_app_on(monkeypatch):
    from app.launch_options import launch_options

    monkeypatch.delenv("HIRPF_ANNOTATION_ONLY", raising=False)
    assert not launch_options([]).annotation_only and launch_options(["--annotation_only"]).annotation_only
    monkeypatch.setenv("HIRPF_ANNOTATION_ONLY", "1")
    assert launch_options([]).annotation_only


def test_page_config_and_api_say_nothing_of_the_model(tmp_path, app_env):
    app_env.setenv("HIRPF_ADMIN_PASSWORD", "pw-for-the-admin")
    seed_dialogues(tmp_path, 2)
    with served_annotation_app(tmp_path) as url:
        texts = {"page": httpx.get(url).text, "config": httpx.get(url + "config").text,
                 "API info": httpx.get(url + "gradio_api/info").text,
                 "client's API view": json.dumps(client(url).view_api(return_format="dict", print_info=False))}
        annotator = client(url)
        screen = Screen.of(annotator.predict(name="Ada", api_name="/annotation_sign_in"))
        done = Screen.of(annotator.predict(annotator=screen.who, task_id=screen.task, **ANSWER,
                                           api_name="/annotation_submit"), screen.who)
        endpoints = client(url).view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name, text in texts.items():
        assert_blind(name, text)
    assert "annotation_sign_in" in texts["API info"] and "admin_open" in texts["API info"]
    assert not [e for e in endpoints if "model" in e or "chat" in e or "debate" in e]
    assert done.message == "Saved." and "1 of 2" in done.header


@needs_chromium
def test_the_annotation_only_page_in_a_browser(tmp_path, app_env):
    seed_dialogues(tmp_path, 1)
    with served_annotation_app(tmp_path) as url, browser_page(url, "#annotate-name textarea") as page:
        assert_blind("rendered page", page.content())
        assert page.get_by_role("tab").count() == 2  # Human evaluation, Evaluation admin
        page.locator("#annotate-name textarea").fill("Ada")
        page.locator("#annotate-start").click()
        expect(page.locator("#annotate-header")).to_contain_text("Signed in as Ada · Progress: 0 of 1 done")
        expect(page.locator("#annotate-resume-code textarea")).to_have_value(re.compile(r"^\w{4}-\w{4}-\w{4}$"))
        page.locator("#annotate-code-ack").click()
        expect(page.locator("#annotate-transcript")).to_be_visible()
        assert_blind("page with a task", page.content())
        open_tab(page, "Evaluation admin")
        assert_blind("admin tab", page.content())
