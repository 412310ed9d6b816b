"""What an admin reads about the store: the progress overview (`overview`) and the agreement report
(`build_report`).

The agreement report covers everything stored: humans against the targets, against the LLM judges, and each
other. The figures come from `annotation.agreement`; this module only gathers the label pairs.

    {"human_vs_target": {"per_slot", "overall", "per_annotator", "per_system", "scale"},
     "human_vs_judge":  {"per_slot", "overall", "per_judge": {name: {..., "per_system"}}, "scale"},
     "inter_annotator": {"per_slot", "overall", "scale"},
     "counts": {...}}

Identity dialogues are compared slot by slot (`per_slot`, with `overall` accuracy, mean kappa and exact
match over the six slots); scale interviews, answered with one option, under `scale`. Skipped tasks carry no
answer and do not count. Human vs judge pairs every human answer of a dialogue with every judge's
prediction for it; `per_slot`/`overall` pool the judges, `per_judge` splits them.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import func, select

from annotation.agreement import inter_annotator_agreement, option_agreement, slot_agreement
from annotation.pseudonyms import Pseudonyms
from annotation.store import IMPORTED_PREFIX
from db import Database
from db.models import KINDS, Annotation, AnnotationTask, Annotator, Dialogue, JudgePrediction, TaskStatus
from hirpf.identities import IdentitySet
from hirpf.labels import slots_from_identities

OPTION = ("option",)  # scale answers as a one-slot labelling, for the inter-annotator helper


@dataclass(frozen=True)
class AnnotatorProgress:
    id: str                 # public id
    display_name: str
    external_id: str | None
    imported: bool          # a label set imported from a file, not a person annotating here
    done: int               # answered or skipped
    assigned: int
    skipped: int


@dataclass(frozen=True)
class Overview:
    dialogues: dict[str, int]             # per kind, every kind present
    annotators: list[AnnotatorProgress]   # most recent first


def overview(database: Database) -> Overview:
    """What an admin watches: dialogues per kind, and every annotator's progress."""
    with database.read() as session:
        kinds = dict(session.execute(select(Dialogue.kind, func.count()).group_by(Dialogue.kind)).all())
        counts: dict[int, dict[str, int]] = defaultdict(dict)
        for annotator_id, status, n in session.execute(select(
                AnnotationTask.annotator_id, AnnotationTask.status, func.count())
                .group_by(AnnotationTask.annotator_id, AnnotationTask.status)):
            counts[annotator_id][status] = n
        annotators = []
        for a in session.scalars(select(Annotator).order_by(Annotator.id.desc())):
            mine = counts.get(a.id, {})
            done, skipped = mine.get(TaskStatus.DONE, 0), mine.get(TaskStatus.SKIPPED, 0)
            annotators.append(AnnotatorProgress(
                id=a.public_id, display_name=a.display_name, external_id=a.external_id,
                imported=(a.external_id or "").startswith(IMPORTED_PREFIX), done=done + skipped,
                assigned=sum(mine.values()), skipped=skipped))
    return Overview({kind: kinds.get(kind, 0) for kind in KINDS}, annotators)


@dataclass(frozen=True)
class _Answer:
    annotator: str
    annotator_name: str
    dialogue: int
    kind: str
    system: str | None
    target: dict | None
    target_option: int | None
    slots: dict | None
    option: int | None


def build_report(database: Database) -> dict:
    answers, judges, counts = _load(database)
    identity = [a for a in answers if a.kind == "identity"]
    scale = [a for a in answers if a.kind == "scale_interview"]
    return {"human_vs_target": _human_vs_target(identity, scale),
            "human_vs_judge": _human_vs_judge(identity, scale, judges),
            "inter_annotator": _inter_annotator(identity, scale),
            "counts": counts}


def _load(database: Database) -> tuple[list[_Answer], dict[int, dict[str, JudgePrediction]], dict]:
    with database.read() as session:
        rows = session.execute(
            select(Annotator.public_id, Annotator.display_name, Dialogue.id, Dialogue.kind, Dialogue.system,
                   Dialogue.target, Dialogue.target_option, Annotation.slots, Annotation.option)
            .select_from(Annotation).join(AnnotationTask).join(Annotator).join(Dialogue)
            .order_by(Annotation.id)).all()
        pseudonyms = Pseudonyms()  # the report names annotators by pseudonyms of its own, never their ids
        answers = [_Answer(annotator=pseudonyms(r[0]), annotator_name=r[1], dialogue=r[2], kind=r[3], system=r[4],
                           target=slots_from_identities(IdentitySet.parse(r[5])) if r[3] == "identity" else None,
                           target_option=r[6], slots=r[7], option=r[8]) for r in rows]
        judges: dict[int, dict[str, JudgePrediction]] = defaultdict(dict)
        for prediction in session.scalars(select(JudgePrediction).order_by(JudgePrediction.id)):
            judges[prediction.dialogue_id][prediction.judge] = prediction
        counts = {name: session.scalar(select(func.count()).select_from(model)) for name, model in
                  (("dialogues", Dialogue), ("annotators", Annotator), ("tasks", AnnotationTask),
                   ("annotations", Annotation), ("judge_predictions", JudgePrediction))}
        counts["skipped"] = session.scalar(select(func.count()).select_from(AnnotationTask)
                                           .where(AnnotationTask.status == TaskStatus.SKIPPED))
    return answers, judges, counts


def _human_vs_target(identity: list[_Answer], scale: list[_Answer]) -> dict:
    section = slot_agreement([a.slots for a in identity], [a.target for a in identity])
    section["per_annotator"] = {}
    for annotator in sorted({a.annotator for a in identity}):
        mine = [a for a in identity if a.annotator == annotator]
        section["per_annotator"][annotator] = {"display_name": mine[0].annotator_name,
                                               **slot_agreement([a.slots for a in mine], [a.target for a in mine])}
    section["per_system"] = _per_system(identity, lambda group: slot_agreement(
        [a.slots for a in group], [a.target for a in group]))
    with_target = [a for a in scale if a.target_option is not None]
    section["scale"] = option_agreement([a.option for a in with_target], [a.target_option for a in with_target])
    return section


def _human_vs_judge(identity: list[_Answer], scale: list[_Answer], judges: dict) -> dict:
    def pairs(answers: list[_Answer], judge: str | None) -> list[tuple[_Answer, JudgePrediction]]:
        return [(a, p) for a in answers for name, p in judges.get(a.dialogue, {}).items()
                if judge is None or name == judge]

    def compare(answers: list[_Answer], judge: str | None = None) -> dict:
        matched = pairs(answers, judge)
        return slot_agreement([a.slots for a, _ in matched], [p.slots for _, p in matched])

    section = compare(identity)
    names = sorted({name for by_judge in judges.values() for name in by_judge})
    section["per_judge"] = {}
    for name in names:
        figures = compare(identity, name)
        figures["per_system"] = _per_system(identity, lambda group, name=name: compare(group, name))
        matched = pairs(scale, name)
        figures["scale"] = option_agreement([a.option for a, _ in matched], [p.option for _, p in matched])
        section["per_judge"][name] = figures
    matched = pairs(scale, None)
    section["scale"] = option_agreement([a.option for a, _ in matched], [p.option for _, p in matched])
    return section


def _inter_annotator(identity: list[_Answer], scale: list[_Answer]) -> dict:
    section = inter_annotator_agreement(_by_unit(identity, lambda a: a.slots))
    section["scale"] = inter_annotator_agreement(_by_unit(scale, lambda a: {"option": a.option}), slots=OPTION)
    return section


def _by_unit(answers: list[_Answer], labels) -> dict:
    units: dict[int, dict[str, dict]] = defaultdict(dict)
    for a in answers:
        units[a.dialogue][a.annotator] = labels(a)
    return dict(units)


def _per_system(answers: list[_Answer], figures) -> dict:
    systems = sorted({a.system for a in answers if a.system is not None})
    return {system: figures([a for a in answers if a.system == system]) for system in systems}
