"""The admin tab's "Pair studies" section: build a blind pairwise study, follow its build, show it to the
annotators, and read its report (issue 25).

    builds = PairBuilds(data_dir, slot)            # one per app; `slot`: the app's ModelSlot, None without a model
    section = build_pair_section(builds, unlocked, require, offer)   # a PairSection, in the admin panel

A build stores the study's plan at once (`annotation.pair_studies.save_study`) and generates the replies in
a background thread (`annotation.pair_generation.PairBuildJob`) on the app's model; the page follows it with
a timer. Replies are stored one by one, so a build stopped by a restart is continued when the app comes back
(`PairBuilds.resume_unfinished`, for the studies whose conditions name this app's model). Without a model
(`--annotation_only`) a build cannot run; importing pairs made elsewhere (JSONL) still works.

Everything here is unblinded (conditions, identities, the study name) and reaches only an unlocked admin
session: each event calls `require(token)` first, the chart goes inline in the answer (no file a link could
fetch), and exports go through `offer` (`app.admin_downloads`, session-bound links).
"""
from __future__ import annotations

import base64
import html
import io
import json
import tempfile
import threading
from pathlib import Path
from typing import Callable

import gradio as gr

from annotation.pair_generation import PairBuildJob, check_engine, missing_replies, reply_counts
from annotation.pair_import import read_pair_file
from annotation.pair_report import (
    build_pair_report,
    format_pair_report,
    pair_chart,
    write_pairs_csv,
    write_pairs_jsonl,
)
from annotation.pair_studies import (
    PairStudyError,
    activate_study,
    active_study,
    parse_condition,
    plan_pairs,
    poles,
    professions,
    save_study,
    study_names,
    study_row,
)
from annotation.store import StoreError
from hirpf.identities import PROFESSIONS, TRAIT_POLES
from hirpf.sampling import Sampling

from .evaluation_store import open_store
from .markup import code_block
from .model_slot import ModelLoadError

TITLE = "Evaluation admin"
IDENTITY_CHOICES = [("The ten trait poles", "poles"), ("The professions", "professions"),
                    ("Identity sets typed below", "typed")]
NO_MODEL_TEXT = ("Building a study generates replies, which needs the model: run the full app (not "
                 "`--annotation_only`) to build one. Importing pairs made elsewhere (JSONL) works here.")
MAX_NEW_TOKENS = 96
SECTION_TEXT = ("Blind pairwise studies: two replies to one message, side by side. *Discrimination*: the same "
                "condition, two opposite identities (is the identity seen?). *Preference*: one identity set under "
                "two conditions (which setting shows it best?).")


def _error(err: Exception | str) -> gr.Error:
    return gr.Error(html.escape(str(err)), title=TITLE, print_exception=False)


class PairBuilds:
    """The app's running study builds, by study name, on the app's model (`slot`: a ModelSlot or None)."""

    def __init__(self, data_dir: str | Path | None, slot=None, max_new_tokens: int = MAX_NEW_TOKENS):
        self.data_dir, self.slot, self.max_new_tokens = data_dir, slot, max_new_tokens
        self.jobs: dict[str, PairBuildJob] = {}
        self._lock = threading.Lock()

    @property
    def model(self) -> str | None:
        """What the app's conditions record as their base model (the slot's description)."""
        return None if self.slot is None else self.slot.description

    def db(self):
        return open_store(self.data_dir).db

    def engine(self):
        if self.slot is None:
            raise PairStudyError(NO_MODEL_TEXT)
        return self.slot.get()

    def check(self, conditions) -> None:
        """Refuse, before anything is stored, a condition this app's model cannot serve (experts it lacks)."""
        engine = self.engine()
        for condition in conditions:
            check_engine(condition, engine)

    def start(self, study: str) -> PairBuildJob:
        """Generate what `study` lacks on this app's model (the running job, if one is)."""
        engine = self.engine()
        with self._lock:
            job = self.jobs.get(study)
            if job is None or not job.running:
                job = PairBuildJob(self.db(), study, lambda condition: engine,
                                   sampling=Sampling(max_new_tokens=self.max_new_tokens, do_sample=False))
                self.jobs[study] = job.start()
            return job

    def resume_unfinished(self) -> threading.Thread | None:
        """In the background, once the model is loaded: continue every build a restart cut short whose
        conditions all name this app's model (a study built elsewhere is left alone)."""
        if self.slot is None:
            return None

        def run() -> None:
            try:
                self.slot.wait()
            except ModelLoadError:
                return  # no model, nothing to build with: the page already says why the load failed
            db = self.db()
            for study in study_names(db):
                missing = missing_replies(db, study)
                if missing and all(item.condition.base_model == self.model for item in missing):
                    self.start(study)

        thread = threading.Thread(target=run, name="pair-build-resume", daemon=True)
        thread.start()
        return thread

    def progress(self, study: str) -> tuple[int, int, str]:
        """(replies stored, replies needed, state) of a study: "running", "failed: ..." or "stopped"."""
        job = self.jobs.get(study)
        done, total = reply_counts(self.db(), study)
        if job is not None and job.running:
            return done, total, "running"
        if job is not None and job.error is not None:
            return done, total, f"failed: {job.error}"
        return done, total, "done" if done == total else "stopped"


def identity_sets(choice: str, design: str, typed: str | None) -> list:
    """What `plan_pairs` takes: opposite pairs (discrimination) or identity sets (preference)."""
    if choice == "typed":
        sets = [[name.strip() for name in line.split(",") if name.strip()] for line in (typed or "").splitlines()]
        sets = [s for s in sets if s]
        if not sets:
            raise ValueError("identity sets: type one set a line, names separated by commas (e.g. AGR_high, Doctor)")
        if design == "discrimination" and any(len(s) != 2 for s in sets):
            raise ValueError("identity sets: a discrimination study takes two opposite identities a line "
                             "(e.g. AGR_high, AGR_low)")
        return [tuple(s) for s in sets] if design == "discrimination" else sets
    if choice not in ("poles", "professions"):
        raise ValueError(f"identities: unknown choice {choice!r}")
    if design == "discrimination":
        return poles() if choice == "poles" else professions()
    return [[name] for name in (TRAIT_POLES if choice == "poles" else PROFESSIONS)]


def prompts_of(typed: str | None, path: str | None) -> list[str]:
    """One user message a line, typed or from an uploaded text file (both, when both are given)."""
    text = typed or ""
    if path:
        text += "\n" + Path(path).read_text(encoding="utf-8-sig")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError("prompts: type one user message a line, or upload a text file of them")
    return prompts


def progress_html(done: int, total: int, state: str) -> str:
    share = done / total if total else 1.0
    return (f'<progress value="{done}" max="{max(total, 1)}" style="width:100%"></progress>'
            f"<p>Replies <b>{done} of {total}</b> ({share:.0%}) · {html.escape(state)}</p>")


def chart_html(report: dict) -> str:
    """The report's chart inline (a data: URL): the PNG never becomes a file someone else could fetch."""
    with tempfile.TemporaryDirectory() as folder:
        png = pair_chart(report, Path(folder) / "chart.png").read_bytes()
    return f'<img alt="pair study chart" src="data:image/png;base64,{base64.b64encode(png).decode()}" ' \
           'style="max-width:100%">'


def build_form() -> dict:
    """The build's fields and button (the full app only)."""
    with gr.Row():
        name = gr.Textbox(label="Study name", elem_id="admin-pair-name")
        conditions = gr.Textbox(label="Conditions (comma-separated)", value="experts+prompt@1.0, prompt",
                                elem_id="admin-pair-conditions")
    with gr.Row():
        identities = gr.Radio(IDENTITY_CHOICES, value="poles", label="Identities", elem_id="admin-pair-identities")
        typed_sets = gr.Textbox(label="Identity sets (one a line, comma-separated)", lines=2,
                                elem_id="admin-pair-sets")
    with gr.Row():
        prompts = gr.Textbox(label="Prompts (one user message a line)", lines=3, elem_id="admin-pair-prompts")
        prompts_file = gr.File(label="…or a text file of prompts", file_types=[".txt"],
                               elem_id="admin-pair-prompts-file")
    button = gr.Button("Build the study", variant="primary", elem_id="admin-pair-build")
    return {"button": button, "inputs": [name, conditions, identities, typed_sets, prompts, prompts_file]}


class PairSection:
    """The "Pair studies" accordion of one admin tab: its components (made by `lay_out`, inside the admin
    panel), its handlers (each checks the admin session's token first: `require`; files go through
    `offer`), and `wire`. `unlocked`: the admin session's token, a `gr.State`."""

    def __init__(self, builds: PairBuilds, unlocked: gr.State, require: Callable[[str | None], None],
                 offer: Callable[[str, str, str], str]):
        self.builds, self.unlocked, self.require, self.offer = builds, unlocked, require, offer

    def lay_out(self) -> None:
        with gr.Accordion("Pair studies", open=False, elem_id="admin-pairs"):
            gr.Markdown(SECTION_TEXT)
            self.design = gr.Radio(["discrimination", "preference"], value="discrimination", label="Design",
                                   elem_id="admin-pair-design")
            # Without a model only the note: the annotation-only page names no experts or identity codes at all.
            self.form = build_form() if self.builds.slot is not None else None
            if self.form is None:
                gr.Button("Build (needs the model app)", variant="primary", interactive=False,
                          elem_id="admin-pair-build")
                gr.Markdown(NO_MODEL_TEXT, elem_id="admin-pair-no-model")
            self.build_progress = gr.HTML(elem_id="admin-pair-progress")
            self.poll = gr.Timer(1.0, active=False)
            with gr.Row():
                self.import_file = gr.File(label="Import pairs (JSONL)", file_types=[".jsonl"],
                                           elem_id="admin-pair-import")
                self.import_button = gr.Button("Import as a new study", elem_id="admin-pair-import-button")
            self.import_note = gr.Markdown(elem_id="admin-pair-import-note")
            gr.Markdown("#### Show a study to the annotators, read its report")
            with gr.Row():
                self.study = gr.Dropdown([], label="Study", allow_custom_value=False, elem_id="admin-pair-study")
                self.list_studies = gr.Button("Refresh list", size="sm", scale=0, elem_id="admin-pair-list")
                self.activate = gr.Button("Show to annotators", elem_id="admin-pair-activate")
                self.deactivate = gr.Button("Show none", elem_id="admin-pair-deactivate")
            self.active_note = gr.Markdown(elem_id="admin-pair-active")
            self.report_button = gr.Button("Report", elem_id="admin-pair-report-button")
            self.report_text = gr.Markdown(elem_id="admin-pair-report")
            self.chart = gr.HTML(elem_id="admin-pair-chart")
            with gr.Row():
                self.export_csv = gr.Button("Export CSV", size="sm", elem_id="admin-pair-export-csv")
                self.export_jsonl = gr.Button("Export JSONL", size="sm", elem_id="admin-pair-export-jsonl")
            self.export_link = gr.Markdown(elem_id="admin-pair-export-link")

        self.building = gr.State("")  # the study whose build this page follows

    @property
    def listing(self) -> list:
        """What `studies` fills: the study list and the line saying which study annotators see."""
        return [self.study, self.active_note]

    def studies(self, token: str | None, selected: str | None = None) -> dict:
        self.require(token)
        db = self.builds.db()
        names = study_names(db)
        active = active_study(db)
        shown = next((n for n in names if _public_id(db, n) == active), None)
        return {self.study: gr.Dropdown(choices=names, value=selected if selected in names else shown),
                self.active_note: (f"Annotators see: **{html.escape(shown)}**" if shown
                                   else "Annotators see no pair study.")}

    def start_build(self, token, design_value, study_name, condition_text, identity_choice, sets_text, prompt_text,
                    prompt_path):
        self.require(token)
        study_name = " ".join((study_name or "").split())
        try:
            parsed = [parse_condition(text, base_model=self.builds.model)
                      for text in (condition_text or "").split(",") if text.strip()]
            if not parsed:
                raise ValueError("conditions: type at least one, e.g. experts+prompt@1.0, prompt")
            plan = plan_pairs(design_value, identity_sets(identity_choice, design_value, sets_text), parsed,
                              prompts_of(prompt_text, prompt_path))
            self.builds.check(parsed)
            save_study(self.builds.db(), study_name, plan)
            self.builds.start(study_name)
        except (ValueError, StoreError, OSError) as err:
            raise _error(err) from None
        return {self.building: study_name, self.poll: gr.Timer(active=True),
                self.build_progress: progress_html(*self.builds.progress(study_name)),
                **self.studies(token, study_name)}

    def follow(self, token, study_name):
        self.require(token)
        if not study_name:
            return {self.poll: gr.Timer(active=False)}
        done, total, state = self.builds.progress(study_name)
        return {self.build_progress: progress_html(done, total, state), self.poll: gr.Timer(active=state == "running")}

    def import_pairs(self, token, path, design_value):
        self.require(token)
        if not path:
            raise _error("Choose a JSONL file of pairs first.")
        try:
            plan = read_pair_file(path, design_value)
            name_from_file = Path(path).stem
            save_study(self.builds.db(), name_from_file, plan, new_only=True)
        except StoreError as err:
            raise _error(err) from None
        return {self.import_note: f"Imported {len(plan.pairs)} pairs as study **{html.escape(name_from_file)}**.",
                **self.studies(token, name_from_file)}

    def show_study(self, token, study_name):
        self.require(token)
        try:
            activate_study(self.builds.db(), study_name or None)
        except StoreError as err:
            raise _error(err) from None
        return self.studies(token, study_name)

    def hide_studies(self, token):
        self.require(token)
        activate_study(self.builds.db(), None)
        return self.studies(token)

    def report(self, token, study_name):
        self.require(token)
        if not study_name:
            raise _error("Choose a study first.")
        try:
            found = build_pair_report(self.builds.db(), study_name)
        except StoreError as err:
            raise _error(err) from None
        return {self.report_text: code_block(format_pair_report(found)), self.chart: chart_html(found),
                self.export_link: self.offer(token, "pair-report.json",
                                             json.dumps(found, indent=2, ensure_ascii=False))}

    def export(self, fmt: str):
        """The handler of one export button: the study's answers as `fmt` (csv or jsonl), a session link."""
        def run(token, study_name):
            self.require(token)
            out = io.StringIO(newline="")
            (write_pairs_csv if fmt == "csv" else write_pairs_jsonl)(self.builds.db(), out, study_name or None)
            return {self.export_link: self.offer(token, f"pairs.{fmt}", out.getvalue())}
        return run

    def wire(self) -> None:
        token, listing, study, link = self.unlocked, self.listing, self.study, self.export_link
        if self.form is not None:
            self.form["button"].click(self.start_build, [token, self.design, *self.form["inputs"]],
                                      [self.building, self.poll, self.build_progress, *listing],
                                      api_name="admin_pair_build")
        self.poll.tick(self.follow, [token, self.building], [self.build_progress, self.poll], queue=False,
                       show_progress="hidden", api_name=False)
        self.import_button.click(self.import_pairs, [token, self.import_file, self.design],
                                 [self.import_note, *listing], api_name="admin_pair_import")
        self.list_studies.click(self.studies, [token], listing, api_name=False)
        self.activate.click(self.show_study, [token, study], listing, api_name="admin_pair_activate")
        self.deactivate.click(self.hide_studies, [token], listing, api_name=False)
        self.report_button.click(self.report, [token, study], [self.report_text, self.chart, link],
                                 api_name="admin_pair_report")
        self.export_csv.click(self.export("csv"), [token, study], [link], api_name=False)
        self.export_jsonl.click(self.export("jsonl"), [token, study], [link], api_name=False)


def build_pair_section(builds: PairBuilds, unlocked: gr.State, require: Callable[[str | None], None],
                       offer: Callable[[str, str, str], str]) -> PairSection:
    """The section laid out inside the admin panel and wired; the admin tab's unlock fills its `listing`
    with `studies`, for the session it opened."""
    section = PairSection(builds, unlocked, require, offer)
    section.lay_out()
    section.wire()
    return section


def _public_id(db, name: str) -> str:
    with db.read() as session:
        return study_row(session, name).public_id
