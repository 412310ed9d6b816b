"""Surveys (`survey`): a social-simulation questionnaire answered by identity-composed agents.

    python -m hirpf.eval survey --questions hirpf/data/example_survey.json --poles --json

Survey file (ours, documented in docs/evaluation.md):

    {"name": "...", "questions": [
      {"id": "four_day_week", "text": "...", "labels": "digits",
       "options": ["Strongly disagree", ..., "Strongly agree"]},
      {"id": "city_budget", "text": "...", "options": ["...", "...", "..."]}]}

Options are labelled A, B, C... (`"labels": "letters"`, the default) or 1, 2, 3... (`"digits"`, for ordered
scales such as Likert items; the result then also carries the mean). Each identity set's answer is the
distribution over the labels as the first token of its reply (`choices.py`), so it is deterministic and
costs one forward pass per batch.
"""
from __future__ import annotations

import argparse
import re
import string
from dataclasses import dataclass
from pathlib import Path

from ..charts import distribution_chart
from ..paths import read_json_file
from .common import (
    EvalError,
    add_identity_arguments,
    conditioning_for,
    identity_sets_from_args,
    load_engine,
    log,
    output_dir,
    progress,
    run_config,
    write_csv,
    write_json,
)

LABELS = {"letters": tuple(string.ascii_uppercase[:10]), "digits": tuple("123456789")}


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    options: tuple[str, ...]
    labels: tuple[str, ...]
    ordered: bool  # digit labels: an ordered scale, so a mean makes sense

    def prompt(self) -> str:
        options = "\n".join(f"{label}) {option}" for label, option in zip(self.labels, self.options))
        kind = "number" if self.ordered else "letter"
        return f"{self.text}\n\n{options}\n\nAnswer as yourself. Reply with the {kind} of your choice only."


@dataclass(frozen=True)
class Survey:
    name: str
    questions: tuple[Question, ...]


def load_survey(path: str | Path) -> Survey:
    """Read and check a survey file; errors name the file and the question."""
    path = Path(path)
    data = read_json_file(path, "survey file", EvalError)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list) or not data["questions"]:
        raise EvalError(f"{path}: expected an object with a non-empty 'questions' list")
    questions, seen = [], set()
    for index, entry in enumerate(data["questions"]):
        question = _question(entry, index, path)
        if question.id in seen:
            raise EvalError(f"{path}: question {index}: id {question.id!r} is used twice")
        seen.add(question.id)
        questions.append(question)
    return Survey(str(data.get("name") or path.stem), tuple(questions))


def _question(entry, index: int, path: Path) -> Question:
    where = f"{path}: question {index}"
    if not isinstance(entry, dict):
        raise EvalError(f"{where}: expected an object")
    text, options = entry.get("text"), entry.get("options")
    if not isinstance(text, str) or not text.strip():
        raise EvalError(f"{where}: 'text' must be non-empty text")
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        raise EvalError(f"{where}: 'options' must be a list of non-empty texts")
    style = entry.get("labels", "letters")
    if style not in LABELS:
        raise EvalError(f"{where}: 'labels' must be 'letters' or 'digits', got {style!r}")
    if not 2 <= len(options) <= len(LABELS[style]):
        raise EvalError(f"{where}: {len(options)} options; {style} labels allow 2 to {len(LABELS[style])}")
    question_id = entry.get("id", f"q{index + 1}")
    if not isinstance(question_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", question_id):
        raise EvalError(f"{where}: 'id' must be letters, digits, '_' or '-', got {question_id!r}")
    return Question(question_id, text.strip(), tuple(o.strip() for o in options), LABELS[style][:len(options)],
                    style == "digits")


def survey_distributions(engine, survey: Survey, identity_sets, conditioning, batch_size: int = 16, bar=None):
    """For each question, each identity set's probabilities over the options: `{question id: [[p, ...] per
    set]}` and the matching option masses."""
    from .choices import choice_probabilities  # imports torch; the app's page imports this module before it

    results = {}
    for question in survey.questions:
        conversations = [[{"role": "user", "content": question.prompt()}]] * len(identity_sets)
        probabilities, mass = choice_probabilities(engine, conversations, list(identity_sets), conditioning,
                                                   question.labels, batch_size, bar)
        results[question.id] = (probabilities.tolist(), mass.tolist())
    return results


def survey_outputs(survey: Survey, identity_sets, results: dict, directory: Path):
    """What `run` (and the app, which holds its own engine) makes of `survey_distributions` results:
    `(questions, rows, files)` = each question with every set's probabilities, top option and (ordered
    scales) mean; the long table (question, identities, label, option, probability); and the files written
    to `directory`: a chart per question (`chart_<id>`: survey-<id>.png) and the table (`table`: survey.csv)."""
    questions, rows, files = [], [], {}
    for question in survey.questions:
        probabilities, masses = results[question.id]
        answers = []
        for s, p, m in zip(identity_sets, probabilities, masses):
            entry = {"identities": str(s), "probabilities": {k: round(x, 6) for k, x in zip(question.labels, p)},
                     "top": question.labels[max(range(len(p)), key=p.__getitem__)], "option_mass": round(m, 6)}
            if question.ordered:
                entry["mean"] = round(sum((k + 1) * x for k, x in enumerate(p)), 4)
            answers.append(entry)
            rows += [{"question": question.id, "identities": str(s), "label": label, "option": option,
                      "probability": round(x, 6)}
                     for label, option, x in zip(question.labels, question.options, p)]
        questions.append({"id": question.id, "text": question.text, "labels": list(question.labels),
                          "options": list(question.options), "answers": answers})
        files[f"chart_{question.id}"] = distribution_chart(
            directory / f"survey-{question.id}.png", [str(s) for s in identity_sets],
            [f"{label}) {option}" for label, option in zip(question.labels, question.options)], probabilities,
            question.text)
    files["table"] = write_csv(directory / "survey.csv", rows)
    return questions, rows, files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", required=True, help="survey file (see docs/evaluation.md, or "
                                                           "hirpf/data/example_survey.json)")
    add_identity_arguments(parser)


def run(args) -> dict:
    survey = load_survey(args.questions)
    identity_sets = identity_sets_from_args(args)
    engine = load_engine(args)
    conditioning = conditioning_for(args, engine)
    log.info("survey %s: %d questions x %d identity sets", survey.name, len(survey.questions), len(identity_sets))
    with progress(len(survey.questions) * len(identity_sets), "survey") as bar:
        results = survey_distributions(engine, survey, identity_sets, conditioning, args.batch_size, bar)
    directory = output_dir(args, "survey")
    questions, _, files = survey_outputs(survey, identity_sets, results, directory)
    document = {"command": "survey", "survey": survey.name, "identity_sets": [str(s) for s in identity_sets],
                "questions": questions, "config": run_config(args, engine),
                "files": {k: str(v) for k, v in files.items()}}
    write_json(directory / "result.json", document)
    log.info("survey: files in %s", directory)
    return document


def summarize(document: dict) -> str:
    lines = [f"survey: {document['survey']}"]
    for question in document["questions"]:
        lines.append(f"{question['id']}: {question['text']}")
        for answer in question["answers"]:
            shares = " ".join(f"{label}:{p:.2f}" for label, p in answer["probabilities"].items())
            lines.append(f"  {answer['identities']}: {shares}  (top {answer['top']})")
    lines.append(f"table: {document['files']['table']}")
    return "\n".join(lines)

