"""Questionnaires (`scale`, `profession`): agents rate statements about themselves on a 1-5 accuracy scale.

    python -m hirpf.eval scale --poles --judge logits --json
    python -m hirpf.eval profession --judge logits --json

Answers come from one of the judges in `questionnaire_judges.py` (`--judge`, default `statement`).

Scoring: a reverse-keyed item scores 6 - answer; a factor's score is the mean over its items. `scale`: a
`_high` pole is a hit when its factor scores above the midpoint 3 and above the empty set (the reference),
a `_low` pole when below both; accuracy = hits / poles over all identity sets. `profession`: every
profession agent answers every profession's items; a hit when its own field's mean beats the other fields'.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Sequence

from ..charts import RadarPanel, radar_chart
from ..identities import PROFESSIONS, IdentitySet, single_poles
from ..scales import Scale, ScaleError, default_scale, load_scale
from .answers import Answer
from .answers import rounded as _rounded
from .common import (
    EvalError,
    add_identity_arguments,
    check_positive,
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
from .questionnaire_judges import DEFAULT_JUDGE, JUDGE_NAMES, answer

MIDPOINT = 3.0
KIND_OF_COMMAND = {"scale": "personality", "profession": "profession"}
REFERENCE = IdentitySet()


# --- scoring -------------------------------------------------------------------------------------------
def factor_scores(answers: Sequence[Answer]) -> dict[IdentitySet, dict[str, float | None]]:
    """Mean keyed score per factor for each identity set (failed answers left out; None if none remain)."""
    collected: dict[IdentitySet, dict[str, list[float]]] = {}
    for a in answers:
        per_factor = collected.setdefault(a.identities, {})
        values = per_factor.setdefault(a.item.factor, [])
        if a.score is not None:
            values.append(a.score)
    return {s: {f: (mean(v) if v else None) for f, v in per_factor.items()} for s, per_factor in collected.items()}


def pole_hit(pole: str, score: float | None, reference: float | None) -> bool | None:
    """Does a factor score move in the pole's direction past both the midpoint and the reference?
    None when a score is missing."""
    if score is None or reference is None:
        return None
    if pole.endswith("_high"):
        return score > MIDPOINT and score > reference
    return score < MIDPOINT and score < reference


def direction_accuracy(scores: dict[IdentitySet, dict[str, float | None]]) -> tuple[list[dict], float | None]:
    """Per identity set, each trait pole's score, reference and hit; and the accuracy over all poles."""
    if REFERENCE not in scores:
        raise EvalError("direction accuracy needs the empty identity set as a reference")
    reference = scores[REFERENCE]
    per_set, hits = [], []
    for s, factor_score in scores.items():
        poles = []
        for pole in s.traits:
            trait = pole.split("_")[0]
            hit = pole_hit(pole, factor_score.get(trait), reference.get(trait))
            poles.append({"pole": pole, "score": _rounded(factor_score.get(trait)),
                          "reference": _rounded(reference.get(trait)), "hit": hit})
            if hit is not None:
                hits.append(hit)
        judged = [p["hit"] for p in poles if p["hit"] is not None]
        per_set.append({"identities": str(s), "scores": _rounded_dict(factor_score), "poles": poles,
                        "accuracy": _rounded(sum(judged) / len(judged)) if judged else None})
    return per_set, (_rounded(sum(hits) / len(hits)) if hits else None)


def profession_accuracy(scores: dict[IdentitySet, dict[str, float | None]]) -> tuple[list[dict], float | None]:
    """Per identity set with a profession: own-field mean versus the mean of the other fields; a hit when
    own > other. Accuracy over those sets."""
    reference = scores.get(REFERENCE, {})
    per_set, hits = [], []
    for s, field_score in scores.items():
        entry = {"identities": str(s), "scores": _rounded_dict(field_score), "profession": s.profession}
        own = field_score.get(s.profession) if s.profession else None
        others = [v for f, v in field_score.items() if f != s.profession and v is not None]
        if s.profession and own is not None and others:
            other = mean(others)
            hit = own > other
            hits.append(hit)
            entry |= {"own_field": _rounded(own), "other_field": _rounded(other), "hit": hit,
                      "reference_own_field": _rounded(reference.get(s.profession))}
        per_set.append(entry)
    return per_set, (_rounded(sum(hits) / len(hits)) if hits else None)


# --- the commands ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale_file", default=None,
                        help="a scale in our format or a HIS format (default: our bank for the command)")
    parser.add_argument("--items_per_factor", type=int, default=None,
                        help="only the first N items of each factor (quick runs)")
    parser.add_argument("--judge", choices=JUDGE_NAMES, default=DEFAULT_JUDGE,
                        help="logits: next-token probabilities over 1-5 (local); likelihood: the option texts "
                             "scored as the reply (local); statement: the statement's own likelihood as the "
                             "agent's words, against the empty set's (local); interview: the paper's "
                             "interviewer + referee protocol (an OpenAI-compatible endpoint)")
    add_identity_arguments(parser)
    from .interview import add_interview_arguments

    add_interview_arguments(parser)


def default_identity_sets(command: str) -> list[IdentitySet]:
    """`scale`: the ten poles and the reference; `profession`: each profession and the reference."""
    if command == "scale":
        return single_poles() + [REFERENCE]
    return [IdentitySet((p,)) for p in PROFESSIONS] + [REFERENCE]


def run(args) -> dict:
    kind = KIND_OF_COMMAND[args.command]
    try:
        scale = load_scale(args.scale_file, kind) if args.scale_file else default_scale(kind)
    except ScaleError as err:
        raise EvalError(str(err)) from None
    if args.items_per_factor is not None:
        scale = scale.subset(check_positive("--items_per_factor", args.items_per_factor))
    chosen = args.identities or args.poles or args.combinations or args.sample is not None
    identity_sets = identity_sets_from_args(args, reference=True) if chosen else default_identity_sets(args.command)
    interview = None
    if args.judge == "interview":
        from .interview import interview_judge_from_args

        interview = interview_judge_from_args(args)  # fails early on a bad endpoint setting, before the model loads
    engine = load_engine(args)
    conditioning = conditioning_for(args, engine)
    total = len(identity_sets) * len(scale.items)
    log.info("%s: %d items x %d identity sets, judge %s, conditioning %s", args.command, len(scale.items),
             len(identity_sets), args.judge, conditioning.value)
    with progress(total, f"{args.command} ({args.judge})") as bar:
        answers = answer(args.judge, engine, scale, identity_sets, conditioning, args.batch_size, bar, interview)
    scored = score(scale, answers)
    result = document(args.command, args.judge, scale, args.scale_file, answers, scored, run_config(args, engine))
    return write_run(output_dir(args, args.command), result, scale, answers, scored, identity_sets)


# --- score -> document -> files ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleScores:
    """A scale's answers scored: factor means per identity set, and the accuracy the scale's kind defines."""

    factors: dict[IdentitySet, dict[str, float | None]]
    per_set: list[dict]
    accuracy: float | None


def score(scale: Scale, answers: Sequence[Answer]) -> ScaleScores:
    factors = factor_scores(answers)
    per_set, accuracy = (direction_accuracy if scale.kind == "personality" else profession_accuracy)(factors)
    return ScaleScores(factors, per_set, accuracy)


def document(command: str, judge: str, scale: Scale, scale_file: str | Path | None, answers: Sequence[Answer],
             scored: ScaleScores, config: dict) -> dict:
    """The run's JSON document (without its files): accuracy, per identity set, the judge's figures."""
    failures = sum(a.answer is None for a in answers)
    result = {"command": command, "accuracy": scored.accuracy, "judge": judge,
              "scale": {"name": scale.name, "kind": scale.kind, "items": len(scale.items),
                        "file": str(scale_file) if scale_file else "built-in bank"},
              "identity_sets": scored.per_set, "failed_answers": failures, "config": config}
    result |= judge_figures(answers, scored.factors)
    if scale.kind == "profession":
        judged = [p for p in scored.per_set if "own_field" in p]
        result["own_field_mean"] = _rounded(mean(p["own_field"] for p in judged)) if judged else None
        result["other_field_mean"] = _rounded(mean(p["other_field"] for p in judged)) if judged else None
    if failures:
        log.info("%d answers failed (every referee sample malformed); they are left out of the scores", failures)
    return result


def write_run(directory: Path, result: dict, scale: Scale, answers: Sequence[Answer], scored: ScaleScores,
              identity_sets: Sequence[IdentitySet]) -> dict:
    """Write answers.csv, scores.csv, radar.png (and transcripts.json for the interview judge) and
    result.json into `directory`; returns the document with their paths under "files"."""
    directory = Path(directory)
    files = {"answers": write_csv(directory / "answers.csv", [a.row() for a in answers]),
             "scores": write_csv(directory / "scores.csv", _score_rows(scored.factors, scale.factors)),
             "radar": _radar(directory / "radar.png", scale, scored.factors, identity_sets)}
    if any("transcript" in a.detail for a in answers):
        files["transcripts"] = write_json(directory / "transcripts.json", [
            {"identities": str(a.identities), "item": a.item_index, **a.detail} for a in answers])
    result = result | {"files": {k: str(v) for k, v in files.items()}}
    write_json(directory / "result.json", result)
    log.info("%s accuracy: %s; files in %s", result["command"], result["accuracy"], directory)
    return result


def judge_figures(answers: Sequence[Answer], scores) -> dict:
    """What says whether the judge measured anything: the spread of each factor's score across the identity
    sets (standard deviation, and the largest distance from the empty set), and for the logits judge the
    probability mass the model put on the digits at all (low mass: it wanted to say something else)."""
    factors = sorted({f for per in scores.values() for f in per})
    reference = scores.get(REFERENCE, {})
    spread = {}
    for f in factors:
        values = [per[f] for per in scores.values() if per.get(f) is not None]
        centre = mean(values) if values else None
        shifts = [abs(v - reference[f]) for v in values if reference.get(f) is not None]
        spread[f] = {"std": _rounded(mean((v - centre) ** 2 for v in values) ** 0.5) if values else None,
                     "max_shift_from_empty_set": _rounded(max(shifts)) if shifts else None}
    figures = {"score_spread": spread}
    masses = [a.detail["option_mass"] for a in answers if "option_mass" in a.detail]
    if masses:
        figures["digit_mass"] = {"mean": _rounded(mean(masses)), "min": _rounded(min(masses)),
                                 "max": _rounded(max(masses))}
    return figures


def summarize(document: dict) -> str:
    lines = [f"accuracy: {document['accuracy']}"]
    for entry in document["identity_sets"]:
        scores = ", ".join(f"{f} {v}" for f, v in entry["scores"].items())
        lines.append(f"  {entry['identities']}: {scores}" + (f"  hit: {entry['hit']}" if "hit" in entry else ""))
    lines.append(f"files: {document['files']['answers']} (and beside it)")
    return "\n".join(lines)


def _score_rows(scores, factors) -> list[dict]:
    return [{"identities": str(s), "factor": f, "score": _rounded(per.get(f))} for s, per in scores.items()
            for f in factors]


def _radar(path: Path, scale: Scale, scores, identity_sets) -> Path:
    """Each identity set's factor scores against its targets (5 for a high pole or the own profession, 1 for
    a low pole), with the empty set as the reference line."""
    factors = scale.factors
    reference = [scores.get(REFERENCE, {}).get(f) for f in factors]
    panels = []
    for s in identity_sets:
        if s == REFERENCE:
            continue
        if scale.kind == "personality":
            poles = {p.split("_")[0]: p for p in s.traits}
            target = [(5.0 if poles[f].endswith("_high") else 1.0) if f in poles else None for f in factors]
        else:
            target = [5.0 if f == s.profession else None for f in factors]
        panels.append(RadarPanel(str(s), [scores[s].get(f) for f in factors], reference, target))
    return radar_chart(path, factors, panels, title=f"{scale.name}: scores (blue), empty set (grey), targets (red)")


def _rounded_dict(values: dict) -> dict:
    return {k: _rounded(v) for k, v in values.items()}
