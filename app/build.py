"""`build_app`: the whole Gradio app around one model; `build_annotation_app`: the human evaluation alone,
with no model at all (`app.launching.launch` serves either).

The model is given as a loaded `Engine`, a function that loads one (started in the background at once, so
the page is usable while the weights load), or a `ModelSlot`, which its owner starts: `app.py` once the page
is served, so torch is not imported before it (a visitor's first page load or model request starts it
otherwise). Streamed replies (chat, regenerate, debate statements) go through the engine's scheduler, up to
`HIRPF_MAX_BATCH` visitors decoding together (`app.reply_serving`; `scheduler=False` or ZeroGPU: one at a
time on the model queue). The other model
actions share one model queue (`concurrency_id="model"`): whatever tab a request comes from, at most
`model_concurrency` of them run at a time, and the rest wait their turn in order.

The annotation-only app is for studies whose annotators must learn nothing of the model: its page, its
`/config` and its API hold no model status, no model tab and no identity code (tests check all three).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import gradio as gr

from .admin_downloads import AdminDownloads, remove_leftover_export_folders
from .admin_pairs import PairBuilds
from .admin_session import AdminSession
from .admin_tab import build_admin_tab
from .annotation_tab import build_annotation_tab
from .assets import MODEL_TAB_CSS, stylesheet
from .built_app import BuiltApp
from .chat_tab import build_chat_tab
from .compare_to_study import CompareToStudy
from .debate_tab import build_debate_tab
from .evaluation_store import EVALUATION_TITLE
from .model_slot import ModelSlot
from .questionnaire_tab import build_questionnaire_tab, judge_endpoint_from_env
from .reply_serving import reply_serving
from .stop_signals import StopSignals

APP_CSS = MODEL_TAB_CSS  # app/assets stylesheets of the whole app
MODEL_TABS = ("Chat", "Debate", "Questionnaire")  # the tabs whose actions run the model
INTRO = (
    "Chat with an agent whose persona is composed from **identity experts**: Big Five trait poles and a "
    "profession, switched on per request. Change the identities at any time; the next reply uses them, and "
    "each reply is labelled with the set it was generated with."
)


def status_line(slot: ModelSlot) -> str:
    """The model's state for the page; says so when identities can only act through the prompt."""
    line = slot.status()
    if slot.finished and not slot.failed and not slot.get().has_experts:
        line += " No expert checkpoint is loaded: identities act through the system prompt only."
    return line


def as_slot(engine) -> ModelSlot:
    if isinstance(engine, ModelSlot):
        return engine
    if callable(engine) and not hasattr(engine, "stream"):  # a loader, not an Engine
        return ModelSlot(engine).start()
    return ModelSlot.ready(engine, getattr(engine.model, "hirpf_base_model", "the model"))


def build_app(engine: "object | Callable[[], object] | ModelSlot", *, data_dir: str | Path | None = None,
              model_concurrency: int = 1, scheduler: bool = True,
              title: str = "HIRPF: identity-driven role-playing agents") -> BuiltApp:
    """The app: its Blocks and what serving it needs. `data_dir` is where tabs that store things (human
    evaluation) keep their data; `scheduler=False` serves streamed replies one at a time on the model queue
    (`HIRPF_SCHEDULER=0`)."""
    slot = as_slot(engine)
    stops = StopSignals()
    downloads = AdminDownloads()
    remove_leftover_export_folders()
    model_queue = {"concurrency_id": "model", "concurrency_limit": model_concurrency}
    serving = reply_serving(model_queue, scheduler)
    with gr.Blocks(title="HIRPF", analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\n{INTRO}")
        status = gr.Markdown(status_line(slot), elem_id="model-status")
        admin = AdminSession(downloads=downloads)  # the admin tab's unlock, which sending a Compare needs too
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                build_chat_tab(slot, stops, model_queue, serving, CompareToStudy(data_dir, admin))
            with gr.Tab("Debate", id="debate", elem_id="tab-debate"):
                build_debate_tab(slot, stops, serving, data_dir=data_dir)
            with gr.Tab("Questionnaire", id="questionnaire", elem_id="tab-questionnaire"):
                build_questionnaire_tab(slot, model_queue, judge_endpoint_from_env())
            with gr.Tab("Human evaluation", id="annotate", elem_id="tab-annotate"):
                build_annotation_tab(demo, data_dir=data_dir)
            with gr.Tab("Evaluation admin", id="admin", elem_id="tab-admin"):
                pair_builds = PairBuilds(data_dir, slot)
                pair_builds.resume_unfinished()  # what a restart cut short goes on once the model is loaded
                build_admin_tab(data_dir=data_dir, session=admin, pair_builds=pair_builds)

        # The model line shows on the model tabs only: annotators must not learn which model is behind the
        # dialogues they judge.
        def status_for_tab(selected: gr.SelectData):
            return gr.Markdown(visible=selected.value in MODEL_TABS)

        tabs.select(status_for_tab, None, status, queue=False, show_progress="hidden", api_name="tab_selected",
                    api_visibility="undocumented")

        # The status line follows the background load, then its timer switches itself off.
        poll = gr.Timer(1.0, active=not slot.finished)

        def refresh_status():
            return status_line(slot), gr.Timer(active=not slot.finished)

        def status_on_page_load():
            slot.start()  # a server other than app.py's may not have started the load; once it has, no-op
            return refresh_status()

        poll.tick(refresh_status, None, [status, poll], queue=False, show_progress="hidden",
                  api_name="model_status")
        demo.load(status_on_page_load, None, [status, poll], queue=False, show_progress="hidden",
                  api_name="model_status_on_load", api_visibility="undocumented")
    return BuiltApp(demo, css=stylesheet(*APP_CSS), downloads=downloads, slot=slot, reply_serving=serving)


def build_annotation_app(data_dir: str | Path | None = None, title: str = EVALUATION_TITLE) -> BuiltApp:
    """The annotators' and the admin's tabs alone: nothing is loaded, nothing about a model is shown."""
    downloads = AdminDownloads()
    remove_leftover_export_folders()
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Human evaluation", id="annotate", elem_id="tab-annotate"):
                build_annotation_tab(demo, data_dir=data_dir)
            with gr.Tab("Evaluation admin", id="admin", elem_id="tab-admin"):
                build_admin_tab(data_dir=data_dir, session=AdminSession(downloads=downloads))
    return BuiltApp(demo, downloads=downloads)
