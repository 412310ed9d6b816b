"""The Human evaluation tab: annotators label anonymized dialogues, blind to who or what produced them.

Blindness is kept by construction: everything this tab sends to a browser comes from `Store.task_view`
(speakers X and Y, the anonymized text, an opaque task id, the annotator's own answer) or from what the
annotator typed. Targets, systems, sources and file names never leave the server, no component starts
with a value, and element ids are generic (`slot-1` ... `slot-6`, `slot-scale`, `annotate-*`).

Signing in takes a secret (`annotation.sign_in`): a name plus the resume code shown once at the first
sign-in (and the study's access code to join, when the admin set one), or a Hugging Face account where
OAuth is on. A sign-in opens a session (`annotation.sessions`): the browser's localStorage keeps its random,
expiring token and the name shown, so closing and reopening the page resumes at the next item; sign-out
ends the session and empties that storage. Every event names the annotator by that token only: the
annotator's id never leaves the server, and an id from an export signs nobody in. The stored sign-in is
read by the page's load event itself (its `js` hands the stored value to the server function):
`gr.BrowserState` reads storage after that event has sent its inputs, so a resume through it depends on a
race. Events are plain database calls: no model queue, `queue=False`.

`python -m app.annotation_tab [--port P] [--data_dir DIR]` serves this tab on its own.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import gradio as gr

from annotation import sessions
from annotation.sign_in import NAME_PREFIX, SignInRefused, sign_in_by_name
from annotation.store import MAX_COMMENT_CHARS, NotFound, Store, StoreError, TaskView, last_answered
from hirpf.identities import PROFESSIONS
from hirpf.labels import NONE, PROFESSION_SLOT, SCALE_OPTIONS, SLOTS, LabelError

from .annotator_sign_in import oauth_configured, session_token, sign_in_mode
from .assets import asset
from .built_app import BuiltApp
from .evaluation_store import EVALUATION_TITLE as TITLE
from .evaluation_store import SLOT_TITLES, open_store, start_policy
from .markup import markdown_text, transcript_html
from .pair_annotation import build_pair_panel, install_pair_shortcuts
from .standalone import main, tab_app
from .throttle import Throttle, Throttled, client_of

SLOT_IDS = {slot: f"slot-{i}" for i, slot in enumerate(SLOTS, start=1)}
SCALE_ID = "slot-scale"
TRAIT_CHOICES = [("High", "high"), ("Low", "low"), ("Neither", NONE)]
PROFESSION_CHOICES = [(p, p) for p in PROFESSIONS] + [("None of these", NONE)]
# The submit endpoint's parameter for each slot, as an error names it.
SLOT_PARAMETERS = dict(zip(SLOTS, ("agreeableness", "conscientiousness", "extraversion", "neuroticism", "openness",
                                   "profession")))
SCALE_CHOICES = [(f"{i}. {text.capitalize()}", i) for i, text in enumerate(SCALE_OPTIONS, start=1)]

MAX_DISPLAY_NAME = 100
MAX_CODE_CHARS = 100
HF_PREFIX = "hf:"  # external id of a Hugging Face sign-in ("name:" ones come from annotation.sign_in)

SIGN_IN_TEXT = """### Label dialogues for the human evaluation
You will read conversations between two speakers, **X** and **Y**, and judge the personality and profession of
the one you are asked about. Your place is kept."""
NAME_SIGN_IN_TEXT = """**First time?** Choose a name (or your participant number); if your study gave you an access
code, type it in *Code*. You then get a **resume code**: write it down. **Returning?** Your name and your resume
code continue where you left off, on any browser."""
HF_SIGN_IN_TEXT = "Sign in with your Hugging Face account to start:"

SHORTCUTS_HELP = """| Key | Does |
|---|---|
| `h` / `l` / `n` | trait slot: High / Low / Neither, then on to the next slot |
| `d` / `a` / `p` / `n` | profession slot: Doctor / Artist / Programmer / None of these |
| `1`-`6`, `↑` / `↓` | go to slot 1-6, or the previous / next slot (the current one is outlined) |
| `1`-`5` | statement tasks: pick option 1-5 |
| `Enter` | submit (`Ctrl+Enter` while typing a comment) |

Keys do nothing while you type in a text box, except `Ctrl+Enter`."""


# --- what the page shows --------------------------------------------------------------------------------
def display_name(raw: str | None) -> str:
    name = " ".join(str(raw or "").split())
    if not name:
        raise gr.Error("Type your name (or participant number) to sign in.", title=TITLE, print_exception=False)
    if len(name) > MAX_DISPLAY_NAME:
        raise gr.Error(f"Your name is {len(name)} characters long; the limit is {MAX_DISPLAY_NAME}.", title=TITLE,
                       print_exception=False)
    return name


def failure(err: Exception) -> gr.Error:
    return gr.Error(str(err), title=TITLE, print_exception=False)


RESUME_CODE_TEXT = """### Write down your resume code
It is shown **only this once** and cannot be recovered. With your name it lets you continue later, on any
browser; nobody else can sign in as you without it. Copy it (the button at the right of the box) or write it
down, then confirm to start."""
NOTHING_ASSIGNED_TEXT = ("**No dialogues are waiting for you yet.** Your place is kept: come back later and sign "
                         "in with your name and resume code, or ask the study's organiser when dialogues arrive.")
ALL_DONE_TEXT = ("**All done: there is nothing left for you to label.** Thank you! Come back later in case new "
                 "dialogues arrive.")


class AnnotationTab:
    """One Human evaluation tab: its components (made by `lay_out`), its handlers (what the annotator's events
    do: sign in, answer, skip, edit the last answer, sign out), and `wire` (to `demo.load` too). `throttle`:
    backoff for wrong codes per client address; the same lockout counts failures per name, without the
    backoff, so that somebody else's wrong guesses delay an annotator only once they reach the lockout."""

    def __init__(self, demo: gr.Blocks, data_dir: str | Path | None, throttle: Throttle):
        self.demo, self.data_dir, self.throttle = demo, data_dir, throttle
        self.per_name = Throttle(base_delay_s=0.0, lockout_after=throttle.lockout_after, lockout_s=throttle.lockout_s)
        self.mode = sign_in_mode()

    def lay_out(self) -> None:
        self.identity = gr.JSON(visible=False, elem_id="annotate-signed-in")  # {"token": ..., "name": ...} or None
        # Server side, per page: which task is on screen and since when (for the time spent on it).
        self.session = gr.State({})
        # At the top of the tab, so that it cannot be missed: the one-time resume code, which must be confirmed
        # before the first task shows. Emptied on confirming: the page keeps the code no longer than that.
        with gr.Column(visible=False, elem_id="annotate-code-banner") as self.code_banner:
            gr.Markdown(RESUME_CODE_TEXT)
            with gr.Row(equal_height=True):
                self.resume_code = gr.Textbox(label="Your resume code", interactive=False, buttons=["copy"], scale=3,
                                              elem_id="annotate-resume-code")
                self.acknowledge = gr.Button("I have written it down", variant="primary", scale=1,
                                             elem_id="annotate-code-ack")
        with gr.Column(elem_id="annotate-sign-in") as self.sign_in_box:
            gr.Markdown(SIGN_IN_TEXT)
            with gr.Column(visible=self.mode == "name", elem_id="annotate-name-sign-in"):
                gr.Markdown(NAME_SIGN_IN_TEXT)
                with gr.Row(equal_height=True):
                    self.name_box = gr.Textbox(label="Your name", max_length=MAX_DISPLAY_NAME, scale=3,
                                               elem_id="annotate-name", placeholder="e.g. Ada, or P07")
                    self.code_box = gr.Textbox(label="Code", max_length=MAX_CODE_CHARS, scale=2,
                                               elem_id="annotate-code", type="password",
                                               placeholder="resume code, or the study's access code")
                    self.start = gr.Button("Start annotating", variant="primary", scale=1, elem_id="annotate-start")
            if oauth_configured():
                gr.Markdown(HF_SIGN_IN_TEXT if self.mode == "hf" else "Or sign in with your Hugging Face account:")
                gr.LoginButton(elem_id="annotate-hf-login")
        with gr.Column(visible=False, elem_id="annotate-work") as self.work_box:
            self.sign_out = gr.Button("Sign out", size="sm", scale=0, elem_id="annotate-sign-out")
            # The slot-task panel; the pair panel (below) shows instead while pairs are left (one at a time).
            with gr.Column(elem_id="annotate-slot-work") as self.slot_box:
                with gr.Row(equal_height=True):
                    self.header = gr.Markdown(elem_id="annotate-header")
                    self.back = gr.Button("Edit my last answer", size="sm", scale=0, visible=False,
                                          elem_id="annotate-back")
                self.prompt = gr.Markdown(elem_id="annotate-prompt")
                with gr.Column(elem_id="annotate-task-box") as self.task_box:
                    self.transcript = gr.HTML(elem_id="annotate-transcript", js_on_load=None, padding=True,
                                              css_template=asset("annotation_transcript.css"))
                    with gr.Row(elem_id="annotate-slots"):
                        self.slot_inputs = [gr.Radio(PROFESSION_CHOICES if slot == PROFESSION_SLOT else TRAIT_CHOICES,
                                                     value=None, label=f"{i}. {SLOT_TITLES[slot]}",
                                                     elem_id=SLOT_IDS[slot], min_width=150)
                                            for i, slot in enumerate(SLOTS, start=1)]
                    self.scale_input = gr.Radio(SCALE_CHOICES, value=None, visible=False, label="Your answer",
                                                elem_id=SCALE_ID)
                    self.comment = gr.Textbox(label="Comment (optional)", lines=2, max_length=MAX_COMMENT_CHARS,
                                              elem_id="annotate-comment")
                    self.submit = gr.Button("Submit (Enter)", variant="primary", elem_id="annotate-submit")
                    with gr.Row(equal_height=True):
                        self.skip_reason = gr.Textbox(label="Reason for skipping", scale=3,
                                                      elem_id="annotate-skip-reason",
                                                      placeholder="e.g. the conversation is empty or not in English")
                        self.skip = gr.Button("Skip this dialogue", scale=1, elem_id="annotate-skip")
                self.message = gr.Markdown(elem_id="annotate-message")
                self.task = gr.Textbox(visible=False, elem_id="annotate-task")  # the opaque id of the task on screen
                with gr.Accordion("Keyboard shortcuts", open=False, elem_id="annotate-shortcuts"):
                    gr.Markdown(SHORTCUTS_HELP)
            self.pairs = build_pair_panel(self.identity, self.data_dir, slot_box=self.slot_box, held=self.resume_code)

    def store(self) -> Store:
        return open_store(self.data_dir)

    def signed_out(self, note: str = "") -> dict:
        return {self.identity: None, self.sign_in_box: gr.Column(visible=True),
                self.work_box: gr.Column(visible=False), self.task: "", self.message: note, self.session: {},
                self.code_banner: gr.Column(visible=False), self.resume_code: ""}

    def annotator_of(self, who: Mapping | None) -> str:
        """The annotator whose live session the browser's sign-in holds; SessionEnded otherwise."""
        return sessions.annotator_of(self.store().db, session_token(who))

    def show(self, who: Mapping, view: TaskView | None, note: str = "", editing: bool = False) -> dict:
        """The screen for `view` (None: nothing left to do)."""
        done, assigned, skipped = view.progress if view else self.store().progress(self.annotator_of(who))
        out = {self.sign_in_box: gr.Column(visible=False), self.work_box: gr.Column(visible=True),
               self.header: f"Signed in as **{markdown_text(who.get('name') or '')}** · Progress: **{done} of "
                            f"{assigned}** done", self.message: note, self.skip_reason: "",
               self.session: {"task": view and view.task, "since": time.time()},
               self.back: gr.Button(visible=done > skipped)}  # only once there is an answer to go back to
        if view is None:
            out.update({self.prompt: ALL_DONE_TEXT if assigned else NOTHING_ASSIGNED_TEXT,
                        self.task_box: gr.Column(visible=False), self.task: "", self.transcript: ""})
            return out
        agent = view.agent
        answer = view.answer
        if view.kind == "scale_interview":
            ask = (f"Statement: “{markdown_text(view.statement or '')}”\n\nHow accurately does this statement "
                   f"describe **speaker {agent}** in the conversation below?")
        else:
            ask = (f"Judge **speaker {agent}** in the conversation below: for each trait, does {agent} come "
                   f"across as high, low or neither? Which profession, if any, does {agent} have?")
        if editing:
            ask = ("**Editing your last answer.** Submit saves the change, then you continue where you left off."
                   "\n\n" + ask)
        slots = (answer and answer.slots) or {}
        out.update({self.prompt: ask, self.task_box: gr.Column(visible=True),
                    self.transcript: transcript_html(view.transcript, agent),
                    self.scale_input: gr.Radio(value=answer and answer.option, visible=view.kind == "scale_interview"),
                    self.comment: (answer and answer.comment) or "", self.task: view.task})
        for slot, component in zip(SLOTS, self.slot_inputs):
            out[component] = gr.Radio(value=slots.get(slot), visible=view.kind == "identity")
        return out

    def next_screen(self, who: Mapping, note: str = "") -> dict:
        try:
            return self.show(who, self.store().next_task(self.annotator_of(who)), note)
        except sessions.SessionEnded:
            return self.signed_out("Your sign-in has ended (signed out, signed in elsewhere, or expired); please "
                              "sign in again with your name and resume code.")
        except NotFound:  # the database no longer knows this session's annotator
            return self.signed_out("Your sign-in is no longer known here; please sign in again.")

    def resume(self, annotator: dict | None = None, profile: gr.OAuthProfile | None = None) -> dict:
        """When the page opens: continue where the stored sign-in (a session token) left off (a Hugging Face
        login signs in by itself)."""
        if session_token(annotator):
            who = {"token": annotator["token"], "name": str(annotator.get("name") or "")}
            return {self.identity: who, **self.next_screen(who)}
        if profile is not None:
            return self.sign_in(None, None, profile)
        return {self.task: gr.skip()}  # the page starts signed out (an empty dict would read as one output value)

    def sign_in(self, name: str | None = None, code: str | None = None, profile: gr.OAuthProfile | None = None,
                request: gr.Request = None) -> dict:
        """Sign in with a name and a code (first time: the study's access code, if it has one; then the
        resume code you were given), or, when signed in to Hugging Face on the Space, as that account; shows
        the first pending task."""
        fresh = None
        try:
            if profile is not None:
                shown_name = profile.name or profile.username
                annotator = self.store().register_annotator(shown_name, external_id=HF_PREFIX + profile.username)
            elif self.mode != "name":
                raise StoreError("This study signs in with Hugging Face accounts only.")
            else:
                shown_name = display_name(name)
                # Failures count against the address and against the name tried, and only the name's own
                # success clears its count: a correct sign-in as oneself resets nothing for another name.
                client, target = client_of(request), NAME_PREFIX + shown_name.casefold()
                self.throttle.check(client)
                self.per_name.check(target, subject="for this name")
                try:
                    signed = sign_in_by_name(self.store(), shown_name, code)
                except SignInRefused as refused:
                    left = min(self.throttle.failed(client), self.per_name.failed(target))
                    raise StoreError(f"{refused} ({left} attempts left before a lockout.)" if left < 3
                                     else str(refused)) from None
                self.per_name.succeeded(target)
                annotator = signed.annotator
                fresh = signed.new_resume_code
            token = sessions.start(self.store().db, annotator)  # ends the annotator's earlier session, if any
        except (StoreError, Throttled) as err:
            raise failure(err) from None
        who = {"token": token, "name": shown_name}
        screen = self.next_screen(who)
        if fresh and screen.get(self.identity, who):  # the task waits until the code is confirmed
            screen.update({self.code_banner: gr.Column(visible=True), self.resume_code: fresh,
                           self.task_box: gr.Column(visible=False)})
        return {self.identity: who, self.code_box: "", **screen}

    def confirm_resume_code(self, task_id: str | None = None) -> dict:
        """The annotator has the code: hide it (and empty it) and show the task, if there is one."""
        return {self.code_banner: gr.Column(visible=False), self.resume_code: "",
                self.task_box: gr.Column(visible=bool(task_id))}

    def forget_sign_in(self, annotator: dict | None = None) -> dict:
        """End the session and forget the sign-in in this browser (the annotator's work stays stored)."""
        sessions.end(self.store().db, session_token(annotator))
        return self.signed_out("Signed out. Sign in with the same name and your resume code to continue later.")

    def signed_in(self, annotator: dict | None) -> str:
        """The annotator of the sign-in an event sent, or the error the page shows."""
        if not session_token(annotator):
            raise failure(StoreError("Sign in first."))
        try:
            return self.annotator_of(annotator)
        except sessions.SessionEnded as ended:
            raise failure(StoreError(f"Sign in again: {ended}.")) from None

    def submit_answer(self, annotator: dict | None, task_id: str, agreeableness: str | None = None,
                      conscientiousness: str | None = None, extraversion: str | None = None,
                      neuroticism: str | None = None, openness: str | None = None, profession: str | None = None,
                      option: int | None = None, comment_text: str | None = None, state: dict | None = None) -> dict:
        """Answer the task on screen (six slots, or one option for a statement task) and show the next one.
        Sending the same answer twice stores it once; a field the task does not have is refused by name."""
        who = self.signed_in(annotator)
        if not task_id:
            raise failure(StoreError("There is no task on screen to answer."))
        state = state or {}
        seconds = time.time() - state["since"] if state.get("task") == task_id else None
        values = dict(zip(SLOTS, (agreeableness, conscientiousness, extraversion, neuroticism, openness,
                                  profession)))
        try:
            kind = self.store().task_view(task_id, annotator=who).kind
            if kind == "scale_interview":
                extra = [slot for slot, v in values.items() if v is not None]
                if extra:
                    raise StoreError(f"{', '.join(SLOT_PARAMETERS[s] for s in extra)}: this statement task is "
                                     "answered with one option; slot labels do not belong to it.")
                if option is None:
                    raise StoreError("Pick one of the five options first.")
                result = self.store().submit(task_id, option=option, comment=comment_text or "", seconds=seconds,
                                        annotator=who)
            else:
                if option is not None:
                    raise StoreError("option: this task is answered with the six slots; an option belongs to "
                                     "statement tasks only.")
                missing = [SLOT_TITLES[s] for s, v in values.items() if v is None]
                if missing:
                    raise StoreError(f"Choose a label for every slot; missing: {', '.join(missing)}.")
                result = self.store().submit(task_id, slots=values, comment=comment_text or "", seconds=seconds,
                                        annotator=who)
        except (StoreError, LabelError) as err:
            raise failure(err) from None
        note = {"stored": "Saved.", "edited": "Your change was saved.", "unchanged": "Already saved."}[result.status]
        return self.next_screen(annotator, note)

    def skip_task(self, annotator: dict | None, task_id: str, reason: str | None = None) -> dict:
        """Set the task on screen aside with a reason, and show the next one."""
        who = self.signed_in(annotator)
        if not (reason or "").strip():
            raise failure(StoreError("Say why you skip this dialogue (type a reason next to the Skip button)."))
        try:
            self.store().skip(task_id, reason, annotator=who)
        except StoreError as err:
            raise failure(err) from None
        return self.next_screen(annotator, "Skipped.")

    def edit_last(self, annotator: dict | None) -> dict:
        """Show the annotator's last answer again, to change it."""
        who = self.signed_in(annotator)
        try:
            view = last_answered(self.store(), who)
        except NotFound:
            return self.signed_out("Your sign-in is no longer known here; please sign in again.")
        if view is None:
            raise failure(StoreError("You have not answered anything yet."))
        return self.show(annotator, view, editing=True)

    def wire(self) -> None:
        identity, task, pairs = self.identity, self.task, self.pairs
        screen = [identity, self.sign_in_box, self.work_box, self.header, self.prompt, self.task_box, self.transcript,
                  *self.slot_inputs, self.scale_input, self.comment, self.skip_reason, self.message, task,
                  self.session, self.code_banner, self.resume_code, self.back]
        events = {"outputs": screen, "queue": False, "show_progress": "hidden"}
        remember = {"fn": None, "inputs": [identity], "js": asset("remember_sign_in.js")}
        signing_in = {**events, "outputs": [*screen, self.code_box]}  # a sign-in also empties the code box
        self.demo.load(self.resume, [identity], api_name="annotation_resume", js=asset("read_sign_in.js"),
                       **signing_in).then(**remember).then(**pairs.refresh)
        self.demo.load(None, js=asset("annotation_shortcuts.js"))
        install_pair_shortcuts(self.demo)
        gr.on([self.start.click, self.name_box.submit, self.code_box.submit], self.sign_in,
              [self.name_box, self.code_box], api_name="annotation_sign_in",
              **signing_in).then(**remember).then(**pairs.refresh)
        self.sign_out.click(self.forget_sign_in, [identity], api_name="annotation_sign_out", **events).then(**remember)
        self.submit.click(self.submit_answer,
                          [identity, task, *self.slot_inputs, self.scale_input, self.comment, self.session],
                          api_name="annotation_submit", **events)
        self.skip.click(self.skip_task, [identity, task, self.skip_reason], api_name="annotation_skip", **events)
        self.back.click(self.edit_last, [identity], api_name="annotation_edit_last", **events)
        self.acknowledge.click(self.confirm_resume_code, [task], [self.code_banner, self.resume_code, self.task_box],
                               queue=False, show_progress="hidden", api_visibility="private").then(**pairs.refresh)


def build_annotation_tab(demo: gr.Blocks, data_dir: str | Path | None = None,
                         throttle: Throttle | None = None) -> dict:
    """Lay out the annotator's view inside the current Blocks and wire its events (to `demo.load` too).
    `throttle`: backoff for wrong codes per client address (default: 5 failures within 15 minutes lock it out
    for 15 minutes), see `AnnotationTab`."""
    start_policy()  # a bad setting stops the start, not the first annotator
    tab = AnnotationTab(demo, data_dir, throttle or Throttle(lockout_after=5))
    tab.lay_out()
    tab.wire()
    return {"identity": tab.identity, "slots": tab.slot_inputs, "scale": tab.scale_input, "submit": tab.submit,
            "task": tab.task}


def standalone_app(engine=None, data_dir: str | Path | None = None) -> BuiltApp:
    """The Human evaluation tab alone (it needs no model: `engine` is ignored)."""
    return tab_app(TITLE, lambda demo: build_annotation_tab(demo, data_dir=data_dir))


if __name__ == "__main__":
    main(standalone_app)
