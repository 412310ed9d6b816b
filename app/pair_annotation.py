"""Annotating a blind pairwise study: the user's message, two replies side by side, one question.

    panel = build_pair_panel(identity, data_dir, slot_box=..., held=...)  # inside the Human evaluation tab
    event.then(**panel.refresh)   # after whatever changes the sign-in: shows the pair panel or the slot one

The panel shows the study the admin made active (`annotation.pair_studies.activate_study`) to the annotator
signed in through `identity` (a `gr.JSON` holding `{"token": <session token>, "name": ...}`, the Human
evaluation tab's sign-in). One panel is on screen at a time: while the annotator has pairs of the active
study left, the pair panel shows and `slot_box` (the slot-task panel) is hidden; otherwise the reverse. The
two share keys (`a` picks Artist in a slot task), and each key handler acts only while its panel shows. While
`held` (the one-time resume code) has a value, neither shows: the code must be confirmed first.

Everything it sends to a browser comes from `annotation.pair_tasks.PairTaskView` (the
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

from .annotator_sign_in import signed_in_annotator
from .assets import asset
from .evaluation_store import EVALUATION_TITLE as TITLE
from .evaluation_store import open_store
from .markup import markdown_text, transcript_html

DONE = "**All done: there are no more pairs for you.** Thank you!"


def reply_html(text: str, name: str) -> str:
    """One reply as escaped HTML, headed by its shown name (A or B)."""
    return transcript_html([{"speaker": name, "text": text}], agent=name)


class PairPanel:
    """The pair panel of one Human evaluation tab: its components (made by `lay_out`; its column is hidden until
    someone with pairs left is signed in), its handlers, and `wire`. `identity`: the tab's sign-in;
    `slot_box`: the slot-task panel, hidden while this one shows; `held`: the resume code box (no task while
    a code waits to be confirmed). `refresh` is the keyword arguments of an event (`.then(**refresh)`) that
    shows the right panel."""

    def __init__(self, identity: gr.JSON, data_dir: str | Path | None = None, slot_box: gr.Column | None = None,
                 held: gr.Textbox | None = None):
        self.identity, self.data_dir, self.slot_box, self.held = identity, data_dir, slot_box, held

    def lay_out(self) -> None:
        with gr.Column(visible=False, elem_id="pair-work") as self.work_box:
            with gr.Row():
                self.header = gr.Markdown(elem_id="pair-header")
                self.back = gr.Button("Edit my last answer", size="sm", scale=0, elem_id="pair-back")
            self.note = gr.Markdown(elem_id="pair-message")
            with gr.Column(visible=False, elem_id="pair-task-box") as self.task_box:
                self.question = gr.Markdown(elem_id="pair-question")
                self.message = gr.Markdown(elem_id="pair-prompt")
                css = asset("annotation_transcript.css")
                with gr.Row(equal_height=True):
                    self.first = gr.HTML(elem_id="pair-reply-a", css_template=css)
                    self.second = gr.HTML(elem_id="pair-reply-b", css_template=css)
                with gr.Row():
                    self.pick_a = gr.Button("A (a)", variant="primary", elem_id="pair-pick-a")
                    self.pick_tie = gr.Button("About the same (t)", visible=False, elem_id="pair-pick-tie")
                    self.pick_b = gr.Button("B (b)", variant="primary", elem_id="pair-pick-b")
                with gr.Row():
                    self.reason = gr.Textbox(label="Reason for skipping", scale=3, elem_id="pair-skip-reason",
                                             max_lines=1)
                    self.skip = gr.Button("Skip this pair", scale=1, elem_id="pair-skip")
            self.task = gr.Textbox(visible=False, elem_id="pair-task")  # the opaque id of the pair on screen
            self.since = gr.State(0.0)
        self.others = [] if self.slot_box is None else [self.slot_box]  # hidden while this panel shows
        self.screen = [self.work_box, self.header, self.note, self.task_box, self.question, self.message, self.first,
                       self.second, self.pick_tie, self.reason, self.task, self.since, *self.others]

    def slots_shown(self, visible: bool) -> dict:
        return {box: gr.Column(visible=visible) for box in self.others}

    def hidden(self) -> dict:
        return {self.work_box: gr.Column(visible=False), self.task: "", self.first: "", self.second: "",
                self.message: ""}

    def show(self, view: PairTaskView | None, text: str = "", editing: bool = False) -> dict:
        out = {self.work_box: gr.Column(visible=True), self.note: text, self.reason: "", self.since: time.time()}
        if view is None:  # nothing (left) to pair: the slot panel takes over, under a note when there is one
            if not text:
                return self.hidden() | self.slots_shown(True)
            return out | {self.header: "", self.task_box: gr.Column(visible=False), self.task: "", self.first: "",
                          self.second: "", self.note: f"{text} {DONE}"} | self.slots_shown(True)
        done, assigned, _ = view.progress
        ask = markdown_text(view.question)
        if editing:
            ask = f"**Editing your last answer (yours: {view.answer}).** " + ask
        return out | {self.header: f"Progress: **{done} of {assigned}** done", self.task_box: gr.Column(visible=True),
                      self.question: f"### {ask}", self.message: f"**The message:** {markdown_text(view.prompt)}",
                      self.first: reply_html(view.reply_a, "A"), self.second: reply_html(view.reply_b, "B"),
                      self.pick_tie: gr.Button(visible=view.ties_allowed),
                      self.task: view.task} | self.slots_shown(False)

    def annotator_of(self, who: Mapping | None) -> str | None:
        return signed_in_annotator(open_store(self.data_dir).db, who)

    def current(self, who: Mapping | None, text: str = "", code: str | None = None) -> dict:
        annotator = self.annotator_of(who)
        if annotator is None:
            return self.hidden()
        store = open_store(self.data_dir)
        study = active_study(store.db)
        if study is None:
            return self.show(None)
        try:
            view = next_pair_task(store.db, study, annotator, store.policy)
        except NotFound:
            return self.hidden()
        if view is not None and code:  # the resume code is on screen: no task before it is confirmed
            return self.hidden() | self.slots_shown(False)
        return self.show(view, text)

    def choose(self, choice: str):
        def answer(who: Mapping | None, task_id: str, started: float) -> dict:
            annotator = self.annotator_of(who)
            if annotator is None or not task_id:
                raise gr.Error("Sign in first.", title=TITLE, print_exception=False)
            try:
                answer_pair(open_store(self.data_dir).db, task_id, choice, annotator=annotator,
                            seconds=max(0.0, time.time() - started) if started else None)
            except (StoreError, PairStudyError) as error:
                raise gr.Error(str(error), title=TITLE, print_exception=False) from None
            return self.current(who, "Saved.")  # a note keeps "Edit my last answer" on screen after the last one
        return answer

    def skip_task(self, who: Mapping | None, task_id: str, why: str) -> dict:
        annotator = self.annotator_of(who)
        if annotator is None or not task_id:
            raise gr.Error("Sign in first.", title=TITLE, print_exception=False)
        try:
            skip_pair(open_store(self.data_dir).db, task_id, why, annotator=annotator)
        except StoreError as error:
            raise gr.Error(str(error), title=TITLE, print_exception=False) from None
        return self.current(who, "Skipped.")

    def edit_last(self, who: Mapping | None) -> dict:
        annotator = self.annotator_of(who)
        db = open_store(self.data_dir).db
        study = active_study(db)
        view = last_answered_pair(db, study, annotator) if annotator and study else None
        if view is None:
            return self.current(who, "You have not answered a pair yet.")
        return self.show(view, editing=True)

    def refreshed(self, who: Mapping | None, code: str | None = None) -> dict:
        return self.current(who, code=code)

    def wire(self) -> None:
        quick = dict(queue=False, show_progress="hidden")
        who, screen = self.identity, self.screen
        self.refresh = dict(fn=self.refreshed, inputs=[who, *([self.held] if self.held else [])], outputs=screen,
                            api_name=False, **quick)
        for button, choice in ((self.pick_a, "A"), (self.pick_b, "B"), (self.pick_tie, "tie")):
            button.click(self.choose(choice), [who, self.task, self.since], screen, api_name=False, **quick)
        self.skip.click(self.skip_task, [who, self.task, self.reason], screen, api_name=False, **quick)
        self.back.click(self.edit_last, [who], screen, api_name=False, **quick)


def build_pair_panel(identity: gr.JSON, data_dir: str | Path | None = None, slot_box: gr.Column | None = None,
                     held: gr.Textbox | None = None) -> PairPanel:
    """The panel laid out inside the current Blocks and wired."""
    panel = PairPanel(identity, data_dir, slot_box, held)
    panel.lay_out()
    panel.wire()
    return panel


def install_pair_shortcuts(demo: gr.Blocks) -> None:
    """The `a` / `b` / `t` keys, once per page."""
    demo.load(None, js=asset("pair_shortcuts.js"))
