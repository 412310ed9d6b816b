"""Annotating a blind pairwise study: the user's message, two replies side by side, one question.

    build_pair_panel(identity, data_dir)   # inside a gr.Blocks; `identity` is the annotation tab's sign-in

The panel shows the study the admin made active (`annotation.pair_studies.activate_study`) to the annotator
signed in through `identity` (a `gr.JSON` holding `{"annotator": <public id>, ...}`, the Human evaluation
tab's sign-in). Everything it sends to a browser comes from `annotation.pair_tasks.PairTaskView` (the
question, the message, the two reply texts in this annotator's order, an opaque task id, their own answer)
or from what they typed: no condition, identity, model, stored side or study name. Element ids are generic
(`pair-*`). Keys (`app/assets/pair_shortcuts.js`): `a` / `b` pick a reply, `t` "about the same" where the
study allows it; nothing while a text box has the focus. Events are plain database calls (`queue=False`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import gradio as gr

from annotation.pair_studies import PairStudyError, active_study
from annotation.pair_tasks import PairTaskView, answer_pair, last_answered_pair, next_pair_task, skip_pair
from annotation.store import NotFound, StoreError

from .annotation_tab import markdown_text, signed_in_as, transcript_html
from .assets import asset
from .services import EVALUATION_TITLE as TITLE
from .services import open_store

NO_STUDY = "There is no pairwise study to annotate at the moment."
DONE = "**All done: there are no more pairs for you.** Thank you!"


def reply_html(text: str, name: str) -> str:
    """One reply as escaped HTML, headed by its shown name (A or B)."""
    return transcript_html([{"speaker": name, "text": text}], agent=name)


def build_pair_panel(identity: gr.JSON, data_dir: str | Path | None = None) -> gr.Column:
    """The panel's components and events; returns its column (hidden until someone is signed in)."""
    with gr.Column(visible=False, elem_id="pair-work") as work_box:
        with gr.Row():
            header = gr.Markdown(elem_id="pair-header")
            back = gr.Button("Edit my last answer", size="sm", scale=0, elem_id="pair-back")
        note = gr.Markdown(elem_id="pair-message")
        with gr.Column(visible=False, elem_id="pair-task-box") as task_box:
            question = gr.Markdown(elem_id="pair-question")
            message = gr.Markdown(elem_id="pair-prompt")
            css = asset("annotation_transcript.css")
            with gr.Row(equal_height=True):
                first = gr.HTML(elem_id="pair-reply-a", css_template=css)
                second = gr.HTML(elem_id="pair-reply-b", css_template=css)
            with gr.Row():
                pick_a = gr.Button("A (a)", variant="primary", elem_id="pair-pick-a")
                pick_tie = gr.Button("About the same (t)", visible=False, elem_id="pair-pick-tie")
                pick_b = gr.Button("B (b)", variant="primary", elem_id="pair-pick-b")
            with gr.Row():
                reason = gr.Textbox(label="Reason for skipping", scale=3, elem_id="pair-skip-reason", max_lines=1)
                skip = gr.Button("Skip this pair", scale=1, elem_id="pair-skip")
        task = gr.Textbox(visible=False, elem_id="pair-task")  # the opaque id of the pair on screen
        since = gr.State(0.0)
    screen = [work_box, header, note, task_box, question, message, first, second, pick_tie, reason, task, since]

    def show(view: PairTaskView | None, text: str = "", editing: bool = False) -> dict:
        out = {work_box: gr.Column(visible=True), note: text, reason: "", since: time.time()}
        if view is None:
            return out | {header: "", task_box: gr.Column(visible=False), task: "", first: "", second: "",
                          note: f"{text} {DONE}" if text and text != NO_STUDY else text or DONE}
        done, assigned, _ = view.progress
        ask = markdown_text(view.question)
        if editing:
            ask = f"**Editing your last answer (yours: {view.answer}).** " + ask
        return out | {header: f"Progress: **{done} of {assigned}** done", task_box: gr.Column(visible=True),
                      question: f"### {ask}", message: f"**The message:** {markdown_text(view.prompt)}",
                      first: reply_html(view.reply_a, "A"), second: reply_html(view.reply_b, "B"),
                      pick_tie: gr.Button(visible=view.ties_allowed), task: view.task}

    def current(who: Mapping | None, text: str = "") -> dict:
        annotator = signed_in_as(who)
        if annotator is None:
            return {work_box: gr.Column(visible=False), task: ""}
        store = open_store(data_dir)
        study = active_study(store.db)
        if study is None:
            return show(None, NO_STUDY)
        try:
            return show(next_pair_task(store.db, study, annotator, store.policy), text)
        except NotFound:
            return {work_box: gr.Column(visible=False), task: ""}

    def choose(choice: str):
        def answer(who: Mapping | None, task_id: str, started: float) -> dict:
            annotator = signed_in_as(who)
            if annotator is None or not task_id:
                raise gr.Error("Sign in first.", title=TITLE, print_exception=False)
            try:
                answer_pair(open_store(data_dir).db, task_id, choice, annotator=annotator,
                            seconds=max(0.0, time.time() - started) if started else None)
            except (StoreError, PairStudyError) as error:
                raise gr.Error(str(error), title=TITLE, print_exception=False) from None
            return current(who)
        return answer

    def skip_task(who: Mapping | None, task_id: str, why: str) -> dict:
        annotator = signed_in_as(who)
        if annotator is None or not task_id:
            raise gr.Error("Sign in first.", title=TITLE, print_exception=False)
        try:
            skip_pair(open_store(data_dir).db, task_id, why, annotator=annotator)
        except StoreError as error:
            raise gr.Error(str(error), title=TITLE, print_exception=False) from None
        return current(who, "Skipped.")

    def edit_last(who: Mapping | None) -> dict:
        annotator = signed_in_as(who)
        db = open_store(data_dir).db
        study = active_study(db)
        view = last_answered_pair(db, study, annotator) if annotator and study else None
        if view is None:
            return current(who, "You have not answered a pair yet.")
        return show(view, editing=True)

    quick = dict(queue=False, show_progress="hidden")
    identity.change(current, [identity], screen, api_name=False, **quick)
    for button, choice in ((pick_a, "A"), (pick_b, "B"), (pick_tie, "tie")):
        button.click(choose(choice), [identity, task, since], screen, api_name=False, **quick)
    skip.click(skip_task, [identity, task, reason], screen, api_name=False, **quick)
    back.click(edit_last, [identity], screen, api_name=False, **quick)
    return work_box


def install_pair_shortcuts(demo: gr.Blocks) -> None:
    """The `a` / `b` / `t` keys, once per page."""
    demo.load(None, js=asset("pair_shortcuts.js"))
