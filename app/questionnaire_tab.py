"""The Questionnaire tab: agents answer a personality or profession scale, or a social-simulation survey.

Questionnaire: a bank (ours, or an uploaded scale file in our format or a HIS format, `hirpf.scales`), the
identity sets (the panel's set, the ten single poles or the three professions, each run with the empty set
as the reference), and the judge: one of the local judges (`logits`: next-token probabilities over the digits;
`likelihood`: the option texts scored as the reply; `statement`: the statement itself as the agent's words,
against the empty set's) or `interview` (the paper's protocol, only when an OpenAI-compatible endpoint is
configured with HIRPF_JUDGE_BASE_URL and HIRPF_JUDGE_MODEL). The run is `hirpf.eval.questionnaire` itself,
and so are its results: a radar chart of the factor scores against the target poles, the per-item answers,
and the CSV and JSON files of the CLI.

Survey: a survey file (our example or an upload, `hirpf.eval.survey`); each identity set's answer is its
probability distribution over the options, shown as a table and a chart per question.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from hirpf import environment
from hirpf.eval.common import EvalError, engine_config
from hirpf.eval.questionnaire import REFERENCE, default_identity_sets, score, write_run
from hirpf.eval.questionnaire import document as questionnaire_document
from hirpf.eval.questionnaire_judges import DEFAULT_JUDGE, JUDGE_NAMES, answer
from hirpf.eval.survey import load_survey, survey_distributions, survey_outputs
from hirpf.identities import IdentitySet, single_poles
from hirpf.prompts import Conditioning
from hirpf.scales import DATA_DIR, Scale, ScaleError, default_scale, load_scale
from hirpf.serving_threads import releasing_thread_team

from .assets import MODEL_TAB_CSS
from .built_app import BuiltApp
from .chat_transcript import CONDITIONING_LABELS
from .identity_panel import IdentityPanel, read_identities
from .model_inputs import read_conditioning
from .model_slot import ModelLoadError, ModelSlot
from .standalone import MODEL_QUEUE, main, model_slot, tab_app
from .zerogpu import gpu

EXAMPLE_SURVEY = DATA_DIR / "example_survey.json"
BANKS = [("Personality bank (ours, Big Five)", "personality"), ("Profession bank (ours)", "profession"),
         ("Upload a scale file", "upload")]
IDENTITY_CHOICES = [("The panel's identity set", "panel"), ("All ten single poles", "poles"),
                    ("The three professions", "professions")]
SURVEYS = [("Example survey (ours)", "example"), ("Upload a survey file", "upload")]
COMMAND_OF_KIND = {"personality": "scale", "profession": "profession"}
BATCH_SIZE = 16
# The page's table shows each item's keyed score only: the judge's raw answer is that score for a
# +keyed item and 6 minus it for a -keyed one (the `keyed` column says which), and the CSV has both.
ANSWER_COLUMNS = {"identities": "identities", "factor": "factor", "keyed": "keyed", "text": "statement",
                  "score": "score"}
ANSWER_COLUMN_WIDTHS = ["22%", "10%", "10%", "46%", "12%"]
# The statement judge is the default: with the shipped experts it is the local judge that reads the identities
# (8 of 10 poles on their side, against 6 for `likelihood`; `logits` is at chance because this small model
# rarely answers with a digit; README, "Questionnaires and surveys").
WHY_JUDGE = {
    "statement": "the default: it asks no question, it measures how much likelier the agent is to say each "
                 "statement about itself than the empty set is, which is what a small model can show",
    "likelihood": "the agent's likelihood of each option's words as its answer",
    "logits": "the digit the agent would answer; a small model rarely answers with a digit, so its scores "
              "stay near the middle",
    "interview": "the paper's protocol: an interviewer and a referee model rate the agent's own words",
}
EMPTY_RESULT = "*No results yet.* Choose the identity sets and a judge, then press **Run questionnaire**."
EMPTY_SURVEY = "*No results yet.* Choose the identity sets and a survey, then press **Run survey**."
ENV_JUDGE_BASE_URL = "HIRPF_JUDGE_BASE_URL"
ENV_JUDGE_MODEL = "HIRPF_JUDGE_MODEL"
SCALE_FORMATS = ("our format {\"name\", \"kind\": \"personality\"|\"profession\", \"items\": [...]}, or a HIS list of "
                 "{factor, polarity, content} or {question, profession} items")


@dataclass(frozen=True)
class JudgeEndpoint:
    """Where the interview judge's interviewer and referee run (an OpenAI-compatible endpoint), and where
    its responses are cached (None: no cache)."""

    base_url: str
    model: str
    cache_dir: Path | None = None


def judge_endpoint_from_env() -> JudgeEndpoint | None:
    """The interview judge's endpoint from HIRPF_JUDGE_BASE_URL, HIRPF_JUDGE_MODEL (default: the CLI's) and
    HIRPF_JUDGE_CACHE_DIR (default: the CLI's cache; 'none' switches it off); None when no URL is set. The key,
    if the endpoint needs one, comes from OPENAI_API_KEY."""
    base_url = environment.HIRPF_JUDGE_BASE_URL
    if not base_url:
        return None
    cache = environment.HIRPF_JUDGE_CACHE_DIR
    return JudgeEndpoint(base_url, environment.HIRPF_JUDGE_MODEL, None if cache is None else Path(cache))


class ProgressBar:
    """The `bar.update(n)` that hirpf's runs call, driving the page's progress bar."""

    def __init__(self, progress: gr.Progress, total: int, desc: str):
        self.progress, self.total, self.desc, self.done = progress, total, desc, 0
        progress((0, total), desc=desc, unit="answers")

    def update(self, n: int = 1) -> None:
        self.done += n
        self.progress((self.done, self.total), desc=self.desc, unit="answers")


def file_problem(err: Exception, path: str | Path) -> gr.Error:
    """A loader's error about an uploaded file, naming the file as the visitor knows it (not the server's
    upload folder)."""
    message = str(err).replace(str(path), Path(path).name)
    return gr.Error(message, title="File problem", print_exception=False)


def read_scale(bank: str, scale_file: str | None, items_per_factor) -> Scale:
    if items_per_factor is None or int(items_per_factor) != items_per_factor or items_per_factor < 0:
        raise gr.Error(f"items per factor must be a whole number ≥ 0 (0 = all), got {items_per_factor!r}",
                       title="Questionnaire", print_exception=False)
    if bank == "upload":
        if not scale_file:
            raise gr.Error(f"Upload a scale file first: {SCALE_FORMATS}.", title="File problem",
                           print_exception=False)
        try:
            scale = load_scale(scale_file)
        except ScaleError as err:
            raise file_problem(err, scale_file) from None
    elif bank in ("personality", "profession"):
        scale = default_scale(bank)
    else:
        raise gr.Error(f"unknown bank {bank!r}; choose personality, profession or upload", title="Questionnaire",
                       print_exception=False)
    return scale.subset(int(items_per_factor)) if items_per_factor else scale


def read_identity_sets(choice: str, traits, profession) -> list[IdentitySet]:
    """The chosen identity sets, each run beside the empty set (the reference every score is compared with)."""
    if choice == "panel":
        sets = [read_identities(traits, profession)]
    elif choice == "poles":
        sets = single_poles()
    elif choice == "professions":
        sets = default_identity_sets("profession")
    else:
        raise gr.Error(f"unknown identity choice {choice!r}; choose panel, poles or professions",
                       title="Identity sets", print_exception=False)
    return list(dict.fromkeys(sets + [REFERENCE]))


def get_engine(slot: ModelSlot):
    try:
        return slot.get()
    except ModelLoadError as err:
        raise gr.Error(str(err), title="Model") from None


def scores_table(document: dict, factors: tuple[str, ...]) -> pd.DataFrame:
    """One row per identity set: its factor scores and whether it moved toward its targets."""
    rows = []
    for entry in document["identity_sets"]:
        name = entry["identities"]
        row = {"identities": f"{name} (reference)" if name == str(REFERENCE) else name,
               **{f: entry["scores"].get(f) for f in factors}}
        if "poles" in entry:  # personality: hits per target pole
            row["poles hit"] = ", ".join(f"{p['pole']} {'✓' if p['hit'] else '✗' if p['hit'] is False else '?'}"
                                         for p in entry["poles"])
            row["accuracy"] = entry["accuracy"]
        else:
            row["own field"], row["other fields"] = entry.get("own_field"), entry.get("other_field")
            row["hit"] = entry.get("hit")
        rows.append(row)
    return pd.DataFrame(rows)


def questionnaire_summary(document: dict) -> str:
    scale = document["scale"]
    judge = document["judge"]
    lines = [f"**{scale['name']}** ({scale['kind']}, {scale['items']} items, conditioning "
             f"{document['config']['conditioning']}).",
             f"Judge: **{judge}**, {WHY_JUDGE.get(judge, 'as chosen')}."]
    if scale["kind"] == "personality":
        lines.append(f"Direction accuracy (high poles above the midpoint and the empty set, low poles below "
                     f"both): **{document['accuracy'] if document['accuracy'] is not None else 'n/a (no poles)'}**.")
    else:
        lines.append(f"Profession accuracy (own field above the others): **{document['accuracy']}**; own-field "
                     f"mean {document.get('own_field_mean')}, other-field mean {document.get('other_field_mean')}.")
    if document["failed_answers"]:
        lines.append(f"{document['failed_answers']} answers failed (every referee sample malformed) and are left "
                     "out of the scores.")
    return "\n\n".join(lines)


def show_mode(choice: str):
    """The chosen mode's column, the other hidden."""
    return gr.Column(visible=choice == "questionnaire"), gr.Column(visible=choice == "survey")


def show_upload(choice: str):
    """The file field, shown while the choice is an upload."""
    return gr.File(visible=choice == "upload")


def hide_results():
    """A new run's page: the old result goes, so the one progress indicator is not drawn over it."""
    return "", gr.Column(visible=False)


def show_results():
    """The finished run's result."""
    return gr.Column(visible=True)


class QuestionnaireHandlers:
    """The Questionnaire tab's model handlers, around the app's model (`slot`) and the interview judge's
    endpoint (`judge`, None: only the local judges). `build_questionnaire_tab` lays the tab out and wires
    these (through `gpu` at that moment)."""

    def __init__(self, slot: ModelSlot, judge: JudgeEndpoint | None):
        self.slot, self.judge = slot, judge

    def questionnaire(self, bank: str, items_per_factor: float, identity_sets: str, traits: list[str],
                      profession: list[str], judge_name: str, conditioning: str, scale_file: str | None = None,
                      progress=gr.Progress()):
        """Give the scale to the chosen identity sets; returns the summary, the radar chart, the scores, the
        per-item answers and the run's files (answers.csv, scores.csv, result.json, radar.png)."""
        scale = read_scale(bank, scale_file, items_per_factor)
        sets = read_identity_sets(identity_sets, traits, profession)
        mode = read_conditioning(conditioning)
        # (the judge radio itself refuses a judge it does not offer, the interview judge without an endpoint)
        engine = get_engine(self.slot)
        mode = engine.effective_conditioning(mode)
        bar = ProgressBar(progress, len(sets) * len(scale.items), f"{len(scale.items)} items x {len(sets)} sets")
        interview = interview_judge(self.judge) if judge_name == "interview" else None
        try:
            with releasing_thread_team():  # this web-server worker lives on (hirpf/serving_threads.py)
                results = answer(judge_name, engine, scale, sets, mode, BATCH_SIZE, bar, interview)
        except EvalError as err:
            raise gr.Error(str(err), title="Questionnaire") from None
        scored = score(scale, results)
        config = engine_config(engine, mode, seed=0)
        folder = Path(tempfile.mkdtemp(prefix="hirpf-questionnaire-"))
        document = write_run(folder, questionnaire_document(
            COMMAND_OF_KIND[scale.kind], judge_name, scale, Path(scale_file).name if bank == "upload" else None,
            results, scored, config), scale, results, scored, sets)
        table = pd.DataFrame([a.row() for a in results])[list(ANSWER_COLUMNS)].rename(columns=ANSWER_COLUMNS)
        downloads = [document["files"][k] for k in ("answers", "scores", "radar")] + [str(folder / "result.json")]
        return (questionnaire_summary(document), document["files"]["radar"], scores_table(document, scale.factors),
                table, downloads)

    def survey(self, survey_source: str, identity_sets: str, traits: list[str], profession: list[str],
               conditioning: str, survey_file: str | None = None, progress=gr.Progress()):
        """Put the survey to the chosen identity sets; returns the summary, a chart per question, the table of
        option probabilities per identity set and the run's files."""
        if survey_source == "upload":
            if not survey_file:
                raise gr.Error("Upload a survey file first (JSON, see the field's label for the format).",
                               title="File problem", print_exception=False)
            try:
                questions = load_survey(survey_file)
            except EvalError as err:
                raise file_problem(err, survey_file) from None
        else:
            questions = load_survey(EXAMPLE_SURVEY)
        sets = read_identity_sets(identity_sets, traits, profession)
        mode = read_conditioning(conditioning)
        engine = get_engine(self.slot)
        mode = engine.effective_conditioning(mode)
        bar = ProgressBar(progress, len(sets) * len(questions.questions),
                          f"{len(questions.questions)} questions x {len(sets)} sets")
        with releasing_thread_team():  # this web-server worker lives on (hirpf/serving_threads.py)
            results = survey_distributions(engine, questions, sets, mode, BATCH_SIZE, bar)
        folder = Path(tempfile.mkdtemp(prefix="hirpf-survey-"))
        summaries, rows, files = survey_outputs(questions, sets, results, folder)
        charts = [(str(files[f"chart_{q['id']}"]), f"{q['id']}: {q['text']}") for q in summaries]
        summary = [f"**{questions.name}**: {len(summaries)} questions, {len(sets)} identity sets "
                   f"(conditioning {mode.value}). Most likely answer per identity set:"]
        for q in summaries:
            tops = "; ".join(f"{a['identities']}: {a['top']}" for a in q["answers"])
            summary.append(f"- *{q['id']}*: {tops}")
        return "\n".join(summary), charts, pd.DataFrame(rows), [str(files["table"])]


def build_questionnaire_tab(slot: ModelSlot, model_queue: dict, judge: JudgeEndpoint | None = None) -> dict:
    """Lay out the tab inside the current Blocks and wire its events; returns its main components.
    `judge`: the interview judge's endpoint (None: only the local judges are offered)."""
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            mode = gr.Radio([("Questionnaire (scale)", "questionnaire"), ("Survey", "survey")], value="questionnaire",
                            label="Mode", elem_id="questionnaire-mode")
            identity_choice = gr.Radio(IDENTITY_CHOICES, value="poles", label="Identity sets",
                                       info="each is run beside the empty set, the reference",
                                       elem_id="questionnaire-identity-sets")
            # Editable only while the identity choice is the panel's set (the default choice ignores it).
            panel = IdentityPanel("questionnaire", "The panel's identity set", interactive=False)
            conditioning = gr.Radio(
                choices=[(CONDITIONING_LABELS[c], c.value) for c in Conditioning],
                value=Conditioning.EXPERTS_AND_PROMPT.value, label="Conditioning",
                elem_id="questionnaire-conditioning")
        with gr.Column(scale=3):
            with gr.Column(visible=True, elem_id="questionnaire-scale-mode") as scale_mode:
                with gr.Row():
                    bank = gr.Radio(BANKS, value="personality", label="Bank", elem_id="questionnaire-bank")
                    items_per_factor = gr.Number(value=4, precision=0, minimum=0, label="Items per factor (0 = all)",
                                                 elem_id="questionnaire-items-per-factor")
                scale_file = gr.File(label=f"Scale file (JSON): {SCALE_FORMATS}", file_types=[".json"],
                                     type="filepath", visible=False, elem_id="questionnaire-scale-file")
                judge_note = ("Local: `logits` reads the digit the agent would answer, `likelihood` the option "
                              "words, `statement` how much likelier the agent is to say the statement about itself "
                              "than the empty set is (for a small model, which rarely answers with a digit). "
                              + ("`interview`: the agent answers in its own words, an interviewer asks two "
                                 f"follow-ups and a referee rates the transcript ({judge.model} at {judge.base_url})."
                                 if judge else
                                 f"`interview` needs an OpenAI-compatible endpoint: set {ENV_JUDGE_BASE_URL} (and "
                                 f"{ENV_JUDGE_MODEL}) before starting the app."))
                # The interview judge is offered only when its endpoint is configured.
                judges = [name for name in JUDGE_NAMES if name != "interview" or judge is not None]
                judge_choice = gr.Radio(judges, value=DEFAULT_JUDGE, label="Judge",
                                        info=judge_note, elem_id="questionnaire-judge")
                run_scale = gr.Button("Run questionnaire", variant="primary", elem_id="questionnaire-run")
                # The run's one progress indicator shows here, where its result will appear.
                scale_summary = gr.Markdown(EMPTY_RESULT, elem_id="questionnaire-outcome", min_height=60)
                with gr.Column(visible=False, elem_id="questionnaire-results") as scale_results:
                    # No label over the image: it would cover the chart's own title and legend.
                    radar = gr.Image(label="Factor scores", show_label=False, type="filepath", interactive=False,
                                     elem_id="questionnaire-radar")
                    scores = gr.Dataframe(label="Scores per identity set", interactive=False, wrap=True,
                                          elem_id="questionnaire-scores")
                    answers = gr.Dataframe(label="Answers per item (score toward the factor's high pole, 1-5)",
                                           headers=list(ANSWER_COLUMNS.values()), interactive=False,
                                           max_height=420, wrap=True, column_widths=ANSWER_COLUMN_WIDTHS,
                                           elem_id="questionnaire-answers")
                    scale_files = gr.File(label="Downloads (CSV, JSON, PNG)", file_count="multiple",
                                          interactive=False, elem_id="questionnaire-files")
            with gr.Column(visible=False, elem_id="questionnaire-survey-mode") as survey_mode:
                survey_choice = gr.Radio(SURVEYS, value="example", label="Survey", elem_id="survey-choice")
                survey_file = gr.File(label="Survey file (JSON): {\"name\", \"questions\": [{\"id\", \"text\", "
                                            "\"options\": [...], \"labels\": \"letters\"|\"digits\"}]}",
                                      file_types=[".json"], type="filepath", visible=False, elem_id="survey-file")
                run_survey = gr.Button("Run survey", variant="primary", elem_id="survey-run")
                survey_summary = gr.Markdown(EMPTY_SURVEY, elem_id="survey-summary", min_height=60)
                with gr.Column(visible=False, elem_id="survey-results") as survey_results:
                    # "contain": the wide bar charts whole, not cropped to square thumbnails.
                    charts = gr.Gallery(label="Answer distribution per identity set", columns=1, height="auto",
                                        object_fit="contain", elem_id="survey-charts")
                    distributions = gr.Dataframe(label="Probability of each option, per identity set",
                                                 interactive=False, max_height=420, wrap=True,
                                                 elem_id="survey-table")
                    survey_files = gr.File(label="Download (CSV)", file_count="multiple", interactive=False,
                                           elem_id="survey-files")

    handlers = QuestionnaireHandlers(slot, judge)
    identity_inputs = [identity_choice, *panel.inputs]
    hidden = {"queue": False, "show_progress": "hidden", "api_visibility": "undocumented"}
    mode.change(show_mode, mode, [scale_mode, survey_mode], api_name="questionnaire_mode", **hidden)
    bank.change(show_upload, bank, scale_file, api_name="questionnaire_bank", **hidden)
    survey_choice.change(show_upload, survey_choice, survey_file, api_name="survey_source", **hidden)
    private = {**hidden, "api_visibility": "private"}
    identity_choice.change(lambda choice: panel.editable(choice == "panel"), identity_choice, panel.inputs,
                           **private)
    # Clear the old result, run (its one progress indicator on the summary), then show the new result.
    run_scale.click(hide_results, None, [scale_summary, scale_results], **private).then(
        gpu(handlers.questionnaire),
        [bank, items_per_factor, *identity_inputs, judge_choice, conditioning, scale_file],
        [scale_summary, radar, scores, answers, scale_files], api_name="questionnaire",
        show_progress_on=scale_summary, **model_queue).success(show_results, None, scale_results, **private)
    run_survey.click(hide_results, None, [survey_summary, survey_results], **private).then(
        gpu(handlers.survey), [survey_choice, *identity_inputs, conditioning, survey_file],
        [survey_summary, charts, distributions, survey_files], api_name="survey",
        show_progress_on=survey_summary, **model_queue).success(show_results, None, survey_results, **private)
    return {"panel": panel, "mode": mode, "radar": radar, "answers": answers, "charts": charts}


def interview_judge(endpoint: JudgeEndpoint):
    """The paper's interview judge against `endpoint`; one model plays interviewer and referee."""
    from hirpf.eval.interview import InterviewJudge
    from hirpf.llm_client import ChatClient

    client = ChatClient(endpoint.base_url, endpoint.model, cache_dir=endpoint.cache_dir)
    return InterviewJudge(client, client)


def standalone_app(engine=None, data_dir=None) -> BuiltApp:
    """The Questionnaire tab alone, around `engine` (default: the tiny random model)."""
    slot = model_slot(engine)
    return tab_app("Questionnaire", lambda demo: build_questionnaire_tab(slot, MODEL_QUEUE, judge_endpoint_from_env()),
                   css=MODEL_TAB_CSS)


if __name__ == "__main__":
    main(standalone_app)
