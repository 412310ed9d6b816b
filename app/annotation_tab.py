"""The Human evaluation tab: annotators label anonymized dialogues, blind to who or what produced them.

Blindness is kept by construction: everything this tab sends to a browser comes from `Store.task_view`
(speakers X and Y, the anonymized text, an opaque task id, the annotator's own answer) or from what the
annotator typed. Targets, systems, sources and file names never leave the server, no component starts
with a value, and element ids are generic (`slot-1` ... `slot-6`, `slot-scale`, `annotate-*`).

The sign-in (the annotator's opaque id and name) is kept in the browser's localStorage, so closing and
reopening the page resumes at the next item; signing in again with the same display name (or Hugging Face
account) finds the same annotator from any browser. It is read by the page's load event itself (its `js`
hands the stored value to the server function): `gr.BrowserState` reads storage after that event has sent
its inputs, so a resume through it depends on a race. Events are plain database calls: no model queue,
`queue=False`.

Other tabs send dialogues here through `send_to_evaluation` (the debate tab does).
"""
from __future__ import annotations

import html
import os
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

import gradio as gr
from gradio.utils import get_space

from annotation.assignment import AssignmentPolicy
from annotation.store import (MAX_COMMENT_CHARS, NotFound, Store, StoreError, TaskView, last_answered,
                              prepare_dialogue)
from hirpf.labels import NONE, PROFESSION_SLOT, SCALE_OPTIONS, SLOTS, LabelError
from db.engine import DEFAULT_FILE, Database, database_url
from hirpf.identities import PROFESSIONS, TRAIT_WORDS, IdentityError, IdentitySet

SLOT_IDS = {slot: f"slot-{i}" for i, slot in enumerate(SLOTS, start=1)}
SCALE_ID = "slot-scale"
SLOT_TITLES = {**{t: w.capitalize() for t, w in TRAIT_WORDS.items()}, PROFESSION_SLOT: "Profession"}
TRAIT_CHOICES = [("High", "high"), ("Low", "low"), ("Neither", NONE)]
PROFESSION_CHOICES = [(p, p) for p in PROFESSIONS] + [("None of these", NONE)]
SCALE_CHOICES = [(f"{i}. {text.capitalize()}", i) for i, text in enumerate(SCALE_OPTIONS, start=1)]

MAX_DISPLAY_NAME = 100
NAME_PREFIX, HF_PREFIX = "name:", "hf:"  # external ids of display-name and Hugging Face sign-ins
STORAGE_KEY = "hirpf-annotator"  # localStorage key of the sign-in
POLICY_ENV = "HIRPF_ASSIGNMENT"
TITLE = "Human evaluation"

SIGN_IN_TEXT = """### Label dialogues for the human evaluation
Sign in with a name (or a study code) to start. You will read conversations between two speakers, **X** and
**Y**, and judge the personality and profession of the one you are asked about. Your place is kept: sign in
again with the same name, on any browser, to continue."""

SHORTCUTS_HELP = """| Key | Does |
|---|---|
| `h` / `l` / `n` | trait slot: High / Low / Neither, then on to the next slot |
| `d` / `a` / `p` / `n` | profession slot: Doctor / Artist / Programmer / None of these |
| `1`-`6`, `↑` / `↓` | go to slot 1-6, or the previous / next slot (the current one is outlined) |
| `1`-`5` | statement tasks: pick option 1-5 |
| `Enter` | submit (`Ctrl+Enter` while typing a comment) |

Keys do nothing while you type in a text box, except `Ctrl+Enter`."""

TRANSCRIPT_CSS = """
.turn { display: flex; gap: 10px; margin: 6px 0; padding: 8px 10px; border-radius: 8px;
        background: var(--background-fill-secondary); }
.turn.judged { border-left: 4px solid var(--color-accent); }
.who { font-weight: 700; min-width: 1.5em; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; }
"""

# The load event's inputs: the stored sign-in (or null) instead of the hidden component's empty value.
READ_SIGN_IN_JS = f"""() => {{
  let stored = null;
  try {{ stored = JSON.parse(localStorage.getItem("{STORAGE_KEY}") || "null"); }} catch (error) {{}}
  return [stored];
}}"""
# After an event that may have changed the sign-in: keep it, or forget it, in this browser.
REMEMBER_SIGN_IN_JS = f"""(signedIn) => {{
  if (signedIn && signedIn.annotator) localStorage.setItem("{STORAGE_KEY}", JSON.stringify(signedIn));
  else localStorage.removeItem("{STORAGE_KEY}");
}}"""

# Installed once per page by a load event: keyboard shortcuts for the slots and Submit. Keys act only
# while the task form is on screen and never while a text box has the focus (Ctrl+Enter excepted).
SHORTCUTS_JS = """() => {
  if (window.hirpfAnnotationKeys) return;
  window.hirpfAnnotationKeys = true;
  const style = document.createElement("style");
  style.textContent = ".hirpf-slot-current { outline: 3px solid var(--color-accent); outline-offset: 2px; }";
  document.head.appendChild(style);
  const SLOTS = ["slot-1", "slot-2", "slot-3", "slot-4", "slot-5", "slot-6"];
  const TRAIT_KEYS = { h: "high", l: "low", n: "none" };
  const PROFESSION_KEYS = { d: "Doctor", a: "Artist", p: "Programmer", n: "none" };
  let current = 0;
  const shown = (id) => { const el = document.getElementById(id); return !!el && el.offsetParent !== null; };
  const mark = () => SLOTS.forEach((id, i) =>
    document.getElementById(id)?.classList.toggle("hirpf-slot-current", i === current));
  const choose = (id, value) => {
    const input = document.querySelector(`#${id} input[type=radio][value="${value}"]`);
    if (input) input.click();
    return !!input;
  };
  document.addEventListener("click", (event) => {
    const i = SLOTS.findIndex((id) => event.target.closest?.(`#${id}`));
    if (i >= 0) { current = i; mark(); }
    if (event.target.closest?.("#annotate-submit, #annotate-skip, #annotate-back")) { current = 0; mark(); }
  }, true);
  document.addEventListener("keydown", (event) => {
    if (!shown("annotate-task-box")) return;
    const typing = event.target.matches?.("textarea, input:not([type=radio]):not([type=checkbox])");
    if (event.key === "Enter") {
      if (event.target.matches?.("button") || (typing && !(event.ctrlKey || event.metaKey))) return;
      event.preventDefault();
      document.getElementById("annotate-submit")?.click();
      return;
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (shown("slot-scale")) {
      if ("12345".includes(key) && key.length === 1 && choose("slot-scale", key)) event.preventDefault();
      return;
    }
    if (!shown(SLOTS[0])) return;
    let handled = true;
    if (key >= "1" && key <= "6" && key.length === 1) current = Number(key) - 1;
    else if (key === "arrowdown" || key === "j") current = Math.min(current + 1, SLOTS.length - 1);
    else if (key === "arrowup" || key === "k") current = Math.max(current - 1, 0);
    else {
      const value = (current === SLOTS.length - 1 ? PROFESSION_KEYS : TRAIT_KEYS)[key];
      handled = !!value && choose(SLOTS[current], value);
      if (handled) current = Math.min(current + 1, SLOTS.length - 1);
    }
    if (handled) { event.preventDefault(); mark(); }
  });
  mark();
}"""


# --- the store ----------------------------------------------------------------------------------------
_stores: dict[str, Store] = {}
_stores_guard = threading.Lock()


def evaluation_database_url(data_dir: str | Path | None = None) -> str:
    """`DATABASE_URL` when set, else the SQLite file in `data_dir` (None: the default data directory)."""
    if os.environ.get("DATABASE_URL") or data_dir is None:
        return database_url()
    return database_url(f"sqlite:///{Path(data_dir) / DEFAULT_FILE}")


def open_store(data_dir: str | Path | None = None) -> Store:
    """The process's store for that database (opened, and migrated, on first use; then shared by the tabs).
    Its assignment policy starts from `HIRPF_ASSIGNMENT`; the admin tab may change it while the app runs."""
    url = evaluation_database_url(data_dir)
    with _stores_guard:
        if url not in _stores:
            _stores[url] = Store(Database(url), policy_from_text(os.environ.get(POLICY_ENV, "")))
        return _stores[url]


_POLICY_KEYS = {"overlap": "overlap", "cap": "cap", "shared": "shared_fraction", "batch": "batch", "seed": "seed"}


def policy_from_text(text: str) -> AssignmentPolicy:
    """An assignment policy from `overlap=2,cap=3,shared=0.2,batch=20,seed=7` (any of them; empty: defaults).
    Raises ValueError naming the bad part."""
    values: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        key = _POLICY_KEYS.get(name.strip())
        if not sep or key is None:
            raise ValueError(f"{POLICY_ENV}: {part!r} is not one of {', '.join(k + '=...' for k in _POLICY_KEYS)}")
        try:
            values[key] = float(raw) if key == "shared_fraction" else int(raw)
        except ValueError:
            raise ValueError(f"{POLICY_ENV}: {part!r}: {raw.strip()!r} is not a number") from None
    return AssignmentPolicy(**values)


def policy_as_text(policy: AssignmentPolicy) -> str:
    cap = f",cap={policy.cap}" if policy.cap is not None else ""
    return (f"overlap={policy.overlap}{cap},shared={policy.shared_fraction:g},batch={policy.batch},"
            f"seed={policy.seed}")


# --- from other tabs ------------------------------------------------------------------------------------
def send_to_evaluation(turns: Sequence[Mapping], target_a, target_b, system: str, *,
                       data_dir: str | Path | None = None) -> str:
    """Store a two-agent conversation (a debate) for human evaluation: one identity dialogue per agent, with
    that agent's statements as the assistant's turns and the other's as the user's, so annotators judge
    each agent on its own. `turns`: `{"speaker": "A"|"B", "content": str}` in speaking order. Both
    dialogues are checked before either is stored; `gr.Error` names what is wrong."""
    try:
        targets = {"A": IdentitySet.parse(target_a), "B": IdentitySet.parse(target_b)}
    except IdentityError as err:
        raise gr.Error(f"Cannot send to human evaluation: {err}", title=TITLE, print_exception=False) from None
    statements = []
    for i, turn in enumerate(turns or []):
        speaker = turn.get("speaker") if isinstance(turn, Mapping) else None
        if speaker not in targets or not isinstance(turn.get("content"), str):
            raise gr.Error(f"Cannot send to human evaluation: turn {i} needs speaker A or B and text content",
                           title=TITLE, print_exception=False)
        statements.append((speaker, turn["content"]))
    dialogues = []
    for agent in ("A", "B"):
        transcript = [{"role": "assistant" if speaker == agent else "user", "content": text}
                      for speaker, text in statements]
        try:
            prepare_dialogue(transcript, targets[agent], source="app", system=system)  # check both first
        except StoreError as err:
            raise gr.Error(f"Cannot send agent {agent}'s side to human evaluation: {err}", title=TITLE,
                           print_exception=False) from None
        dialogues.append((transcript, targets[agent]))
    store = open_store(data_dir)
    added = [store.add_dialogue(t, target, source="app", system=system).created for t, target in dialogues]
    if all(added):
        return "Sent to human evaluation: 2 dialogues added (one per agent)."
    if not any(added):
        return "These dialogues are already stored for human evaluation."
    return "Sent to human evaluation: 1 dialogue added, 1 already stored."


# --- what the page shows --------------------------------------------------------------------------------
def oauth_configured() -> bool:
    """Hugging Face sign-in: on a Space with `hf_oauth: true` (which sets `OAUTH_CLIENT_ID`). Elsewhere
    Gradio would mock the login with the machine's own Hugging Face token, or refuse to start."""
    return bool(os.environ.get("OAUTH_CLIENT_ID")) and get_space() is not None


def transcript_html(turns: Sequence[Mapping], agent: str) -> str:
    """The anonymized turns as escaped HTML (dialogue text is stored verbatim, HTML and all); the speaker
    to judge is marked. Braces are escaped too: the HTML component treats its value as a template."""
    def text(value: str) -> str:
        return html.escape(value).replace("{", "&#123;").replace("}", "&#125;").replace("$", "&#36;")

    return "".join(f'<div class="turn {"judged" if t["speaker"] == agent else "other"}">'
                   f'<span class="who">{text(t["speaker"])}</span><div class="text">{text(t["text"])}</div></div>'
                   for t in turns)


def markdown_text(value: str) -> str:
    """User-supplied text shown inside Markdown, read as plain text."""
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~" else c for c in value)


def signed_in_as(who: Mapping | None) -> str | None:
    """The annotator id from the browser's stored sign-in, None when signed out."""
    if isinstance(who, Mapping) and isinstance(who.get("annotator"), str) and who["annotator"]:
        return who["annotator"]
    return None


def display_name(raw: str | None) -> str:
    name = " ".join(str(raw or "").split())
    if not name:
        raise gr.Error("Type your name (or study code) to sign in.", title=TITLE, print_exception=False)
    if len(name) > MAX_DISPLAY_NAME:
        raise gr.Error(f"Your name is {len(name)} characters long; the limit is {MAX_DISPLAY_NAME}.", title=TITLE,
                       print_exception=False)
    return name


def failure(err: Exception) -> gr.Error:
    return gr.Error(str(err), title=TITLE, print_exception=False)


def build_annotation_tab(demo: gr.Blocks, data_dir: str | Path | None = None) -> dict:
    """Lay out the annotator's view inside the current Blocks and wire its events (to `demo.load` too)."""
    policy_from_text(os.environ.get(POLICY_ENV, ""))  # a bad setting stops the start, not the first annotator
    identity = gr.JSON(visible=False, elem_id="annotate-signed-in")  # {"annotator": id, "name": ...} or None
    # Server side, per page: whose task is on screen and since when (for the time spent on it).
    session = gr.State({})
    with gr.Column(elem_id="annotate-sign-in") as sign_in_box:
        gr.Markdown(SIGN_IN_TEXT)
        with gr.Row(equal_height=True):
            name = gr.Textbox(label="Your name or study code", max_length=MAX_DISPLAY_NAME, scale=3,
                              elem_id="annotate-name", placeholder="e.g. Ada, or P07")
            start = gr.Button("Start annotating", variant="primary", scale=1, elem_id="annotate-start")
        if oauth_configured():
            gr.Markdown("Or sign in with your Hugging Face account:")
            gr.LoginButton(elem_id="annotate-hf-login")
    with gr.Column(visible=False, elem_id="annotate-work") as work_box:
        with gr.Row(equal_height=True):
            header = gr.Markdown(elem_id="annotate-header")
            back = gr.Button("Edit my last answer", size="sm", scale=0, elem_id="annotate-back")
            sign_out = gr.Button("Sign out", size="sm", scale=0, elem_id="annotate-sign-out")
        prompt = gr.Markdown(elem_id="annotate-prompt")
        with gr.Column(elem_id="annotate-task-box") as task_box:
            transcript = gr.HTML(elem_id="annotate-transcript", css_template=TRANSCRIPT_CSS, js_on_load=None,
                                 padding=True)
            with gr.Row(elem_id="annotate-slots"):
                slot_inputs = [gr.Radio(PROFESSION_CHOICES if slot == PROFESSION_SLOT else TRAIT_CHOICES,
                                        value=None, label=f"{i}. {SLOT_TITLES[slot]}", elem_id=SLOT_IDS[slot],
                                        min_width=150)
                               for i, slot in enumerate(SLOTS, start=1)]
            scale_input = gr.Radio(SCALE_CHOICES, value=None, visible=False, label="Your answer", elem_id=SCALE_ID)
            comment = gr.Textbox(label="Comment (optional)", lines=2, max_length=MAX_COMMENT_CHARS,
                                 elem_id="annotate-comment")
            submit = gr.Button("Submit (Enter)", variant="primary", elem_id="annotate-submit")
            with gr.Row(equal_height=True):
                skip_reason = gr.Textbox(label="Reason for skipping", scale=3, elem_id="annotate-skip-reason",
                                         placeholder="e.g. the conversation is empty or not in English")
                skip = gr.Button("Skip this dialogue", scale=1, elem_id="annotate-skip")
        message = gr.Markdown(elem_id="annotate-message")
        task = gr.Textbox(visible=False, elem_id="annotate-task")  # the opaque id of the task on screen
        with gr.Accordion("Keyboard shortcuts", open=False, elem_id="annotate-shortcuts"):
            gr.Markdown(SHORTCUTS_HELP)

    screen = [identity, sign_in_box, work_box, header, prompt, task_box, transcript, *slot_inputs, scale_input,
              comment, skip_reason, message, task, session]

    def store() -> Store:
        return open_store(data_dir)

    def signed_out(note: str = "") -> dict:
        return {identity: None, sign_in_box: gr.Column(visible=True), work_box: gr.Column(visible=False),
                task: "", message: note, session: {}}

    def show(who: Mapping, view: TaskView | None, note: str = "", editing: bool = False) -> dict:
        """The screen for `view` (None: nothing left to do)."""
        annotator = signed_in_as(who)
        done, assigned = (view.progress if view else store().progress(annotator))[:2]
        out = {sign_in_box: gr.Column(visible=False), work_box: gr.Column(visible=True),
               header: f"Signed in as **{markdown_text(who.get('name') or '')}** · Progress: **{done} of "
                       f"{assigned}** done", message: note, skip_reason: "",
               session: {"annotator": annotator, "task": view and view.task, "since": time.time()}}
        if view is None:
            out.update({prompt: "**All done: there is nothing left for you to label.** Thank you! Come back later "
                                "in case new dialogues arrive.", task_box: gr.Column(visible=False), task: "",
                        transcript: ""})
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
        out.update({prompt: ask, task_box: gr.Column(visible=True), transcript: transcript_html(
            view.transcript, agent), scale_input: gr.Radio(value=answer and answer.option,
                                                           visible=view.kind == "scale_interview"),
            comment: (answer and answer.comment) or "", task: view.task})
        for slot, component in zip(SLOTS, slot_inputs):
            out[component] = gr.Radio(value=slots.get(slot), visible=view.kind == "identity")
        return out

    def next_screen(who: Mapping, note: str = "") -> dict:
        try:
            return show(who, store().next_task(signed_in_as(who)), note)
        except NotFound:  # the database no longer knows this browser's annotator
            return signed_out("Your sign-in is no longer known here; please sign in again.")

    def resume(annotator: dict | None = None, profile: gr.OAuthProfile | None = None) -> dict:
        """When the page opens: continue where the stored sign-in left off (a Hugging Face login signs in by
        itself)."""
        if signed_in_as(annotator):
            return {identity: {"annotator": annotator["annotator"], "name": str(annotator.get("name") or "")},
                    **next_screen(annotator)}
        if profile is not None:
            return sign_in(None, profile)
        return {task: gr.skip()}  # the page starts signed out (an empty dict would read as one output value)

    def sign_in(name: str | None = None, profile: gr.OAuthProfile | None = None) -> dict:
        """Sign in with a display name (the same name finds the same annotator again) or, when signed in to
        Hugging Face on the Space, as that account; shows the first pending task."""
        try:
            if profile is not None:
                shown_name, external = profile.name or profile.username, HF_PREFIX + profile.username
            else:
                shown_name = display_name(name)
                external = NAME_PREFIX + shown_name.casefold()
            annotator = store().register_annotator(shown_name, external_id=external)
        except StoreError as err:
            raise failure(err) from None
        who = {"annotator": annotator, "name": shown_name}
        return {identity: who, **next_screen(who)}

    def forget_sign_in() -> dict:
        """Forget the sign-in in this browser (the annotator's work stays stored)."""
        return signed_out("Signed out. Sign in with the same name to continue later.")

    def submit_answer(annotator: dict | None, task_id: str, agreeableness: str | None = None,
                      conscientiousness: str | None = None, extraversion: str | None = None,
                      neuroticism: str | None = None, openness: str | None = None, profession: str | None = None,
                      option: int | None = None, comment_text: str | None = None, state: dict | None = None) -> dict:
        """Answer the task on screen (six slots, or one option for a statement task) and show the next one.
        Sending the same answer twice stores it once."""
        if not signed_in_as(annotator):
            raise failure(StoreError("Sign in first."))
        if not task_id:
            raise failure(StoreError("There is no task on screen to answer."))
        state = state or {}
        seconds = time.time() - state["since"] if state.get("task") == task_id else None
        try:
            who = signed_in_as(annotator)
            kind = store().task_view(task_id, annotator=who).kind
            if kind == "scale_interview":
                if option is None:
                    raise StoreError("Pick one of the five options first.")
                result = store().submit(task_id, option=option, comment=comment_text or "", seconds=seconds,
                                        annotator=who)
            else:
                values = dict(zip(SLOTS, (agreeableness, conscientiousness, extraversion, neuroticism, openness,
                                          profession)))
                missing = [SLOT_TITLES[s] for s, v in values.items() if v is None]
                if missing:
                    raise StoreError(f"Choose a label for every slot; missing: {', '.join(missing)}.")
                result = store().submit(task_id, slots=values, comment=comment_text or "", seconds=seconds,
                                        annotator=who)
        except (StoreError, LabelError) as err:
            raise failure(err) from None
        note = {"stored": "Saved.", "edited": "Your change was saved.", "unchanged": "Already saved."}[result.status]
        return next_screen(annotator, note)

    def skip_task(annotator: dict | None, task_id: str, reason: str | None = None) -> dict:
        """Set the task on screen aside with a reason, and show the next one."""
        if not signed_in_as(annotator):
            raise failure(StoreError("Sign in first."))
        if not (reason or "").strip():
            raise failure(StoreError("Say why you skip this dialogue (type a reason next to the Skip button)."))
        try:
            store().skip(task_id, reason, annotator=signed_in_as(annotator))
        except StoreError as err:
            raise failure(err) from None
        return next_screen(annotator, "Skipped.")

    def edit_last(annotator: dict | None) -> dict:
        """Show the annotator's last answer again, to change it."""
        who = signed_in_as(annotator)
        if not who:
            raise failure(StoreError("Sign in first."))
        try:
            view = last_answered(store(), who)
        except NotFound:
            return signed_out("Your sign-in is no longer known here; please sign in again.")
        if view is None:
            raise failure(StoreError("You have not answered anything yet."))
        return show(annotator, view, editing=True)

    events = {"outputs": screen, "queue": False, "show_progress": "hidden"}
    remember = {"fn": None, "inputs": [identity], "js": REMEMBER_SIGN_IN_JS}
    demo.load(resume, [identity], api_name="annotation_resume", js=READ_SIGN_IN_JS, **events).then(**remember)
    demo.load(None, js=SHORTCUTS_JS)
    gr.on([start.click, name.submit], sign_in, [name], api_name="annotation_sign_in", **events).then(**remember)
    sign_out.click(forget_sign_in, None, api_name="annotation_sign_out", **events).then(**remember)
    submit.click(submit_answer, [identity, task, *slot_inputs, scale_input, comment, session],
                 api_name="annotation_submit", **events)
    skip.click(skip_task, [identity, task, skip_reason], api_name="annotation_skip", **events)
    back.click(edit_last, [identity], api_name="annotation_edit_last", **events)
    return {"identity": identity, "slots": slot_inputs, "scale": scale_input, "submit": submit, "task": task}
