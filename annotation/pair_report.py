"""What a pair study found, for the admin and `python -m annotation pairs report`, and its unblinded export.

Per study, for the humans and for each LLM judge (`annotation.pair_judge`) apart:

- discrimination: per condition, accuracy (the right reply picked; a tie is half right) with its Wilson 95%
  interval, against chance 0.5;
- preference: per condition, a Bradley-Terry score (log-strength, mean 0) with a bootstrap 95% interval,
  and its wins, losses and ties;
- position bias: the share of decided answers that picked the reply shown first;
- humans: agreement between annotators on the pairs several answered; judges: agreement with the human
  majority on the pairs both answered.
"""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import IO, Iterable

from sqlalchemy import select

from annotation.pair_generation import reply_counts
from annotation.pair_scoring import (
    Vote,
    bootstrap_bradley_terry,
    bradley_terry,
    choice_agreement,
    judge_agreement,
    majority_choice,
    position_bias,
    wilson_interval,
)
from annotation.pair_studies import study_names, study_row
from db import Database
from db.models import Annotator, PairCondition, PairJudgeVote, PairReply, PairTask, StudyPair, TaskStatus

CHANCE = 0.5


def _load(db: Database, study: str) -> dict:
    with db.read() as session:
        found = study_row(session, study)
        conditions = {c.id: c.label for c in session.scalars(
            select(PairCondition).where(PairCondition.study_id == found.id).order_by(PairCondition.id))}
        replies = {r.id: r.condition_id for r in session.scalars(
            select(PairReply).join(PairCondition).where(PairCondition.study_id == found.id))}
        pairs = {p.id: (conditions[replies[p.reply_a_id]], conditions[replies[p.reply_b_id]], p.expected)
                 for p in session.scalars(select(StudyPair).where(StudyPair.study_id == found.id))}
        humans = session.execute(select(PairTask.pair_id, Annotator.public_id, PairTask.choice,
                                        PairTask.shown_first).join(Annotator).join(StudyPair)
                                 .where(StudyPair.study_id == found.id, PairTask.status == TaskStatus.DONE)).all()
        judges = session.execute(select(PairJudgeVote).join(StudyPair)
                                 .where(StudyPair.study_id == found.id)).scalars().all()
        return {"name": found.name, "design": found.design, "ties_allowed": found.ties_allowed,
                "conditions": list(conditions.values()), "pairs": pairs,
                "humans": [(p, who, choice, _first_won(shown, choice)) for p, who, choice, shown in humans],
                "judges": [(v.pair_id, v.judge, v.choice, v.choice_a_first, v.choice_b_first) for v in judges]}


def _first_won(shown_first: str, choice: str) -> bool | None:
    return None if choice == "tie" else choice == shown_first


def build_pair_report(db: Database, study: str, resamples: int = 1000, seed: int = 0) -> dict:
    data = _load(db, study)
    done, total = reply_counts(db, study)
    human_choices = defaultdict(dict)
    for pair, who, choice, _ in data["humans"]:
        human_choices[pair][who] = choice
    report = {"study": data["name"], "design": data["design"], "ties_allowed": data["ties_allowed"],
              "conditions": data["conditions"], "pairs": len(data["pairs"]),
              "replies": {"stored": done, "needed": total},
              "humans": _scores(data, [(p, c, won) for p, _, c, won in data["humans"]], resamples, seed)}
    report["humans"]["annotators"] = len({who for _, who, _, _ in data["humans"]})
    report["humans"]["agreement"] = choice_agreement(human_choices)
    majority = {pair: majority_choice(list(by.values())) for pair, by in human_choices.items()}
    report["judges"] = {}
    for judge in sorted({j for _, j, *_ in data["judges"]}):
        votes = [v for v in data["judges"] if v[1] == judge]
        # Asked in both orders: the order a-first shows "a" first, the other "b" first.
        order_answers = [won for _, _, _, a_first, b_first in votes
                         for won in (_first_won("a", a_first) if a_first else None,
                                     _first_won("b", b_first) if b_first else None)]
        section = _scores(data, [(p, c, None) for p, _, c, _, _ in votes], resamples, seed)
        section["position_bias"] = position_bias(order_answers)
        section["order_flips"] = sum(1 for *_, a, b in votes if a and b and a != b and "tie" not in (a, b))
        section["vs_humans"] = judge_agreement({p: c for p, _, c, _, _ in votes}, majority)
        report["judges"][judge] = section
    return report


def _scores(data: dict, answers: list[tuple[int, str, bool | None]], resamples: int, seed: int) -> dict:
    section = {"answers": len(answers), "position_bias": position_bias([won for _, _, won in answers])}
    if data["design"] == "discrimination":
        right, n = defaultdict(float), defaultdict(int)
        for pair, choice, _ in answers:
            condition, _, expected = data["pairs"][pair]
            n[condition] += 1
            right[condition] += 0.5 if choice == "tie" else float(choice == expected)
        section["accuracy"] = {
            c: {"accuracy": right[c] / n[c] if n[c] else None, "right": right[c], "n": n[c], "chance": CHANCE,
                "interval": list(interval) if (interval := wilson_interval(right[c], n[c])) else None}
            for c in data["conditions"]}
    else:
        section["bradley_terry"] = _bradley_terry(data, answers, resamples, seed)
    return section


def _bradley_terry(data: dict, answers, resamples: int, seed: int) -> dict:
    index = {c: i for i, c in enumerate(data["conditions"])}
    votes = [Vote(index[data["pairs"][p][0]], index[data["pairs"][p][1]],
                  {"a": 1.0, "b": 0.0, "tie": 0.5}[choice]) for p, choice, _ in answers]
    tallies = {c: {"wins": 0.0, "losses": 0.0, "ties": 0} for c in data["conditions"]}
    for vote in votes:
        first, second = data["conditions"][vote.first], data["conditions"][vote.second]
        if vote.outcome == 0.5:
            tallies[first]["ties"] += 1
            tallies[second]["ties"] += 1
        else:
            winner, loser = (first, second) if vote.outcome == 1.0 else (second, first)
            tallies[winner]["wins"] += 1
            tallies[loser]["losses"] += 1
    try:
        scores = bradley_terry(votes, len(index))
        intervals = bootstrap_bradley_terry(votes, len(index), resamples=resamples, seed=seed)
    except ValueError as error:  # no votes yet, or conditions not connected by any vote
        return {"error": str(error), "per_condition": tallies}
    return {"per_condition": {c: {"score": float(scores[i]), "interval": list(intervals[i]), **tallies[c]}
                              for c, i in index.items()}}


def format_pair_report(report: dict) -> str:
    """The report as a few lines of text (the JSON has everything)."""
    lines = [f"study {report['study']} ({report['design']}): {report['pairs']} pairs, replies "
             f"{report['replies']['stored']} of {report['replies']['needed']}"]
    sections = [("humans", report["humans"])] + [(f"judge {j}", s) for j, s in report["judges"].items()]
    for who, section in sections:
        bias = section["position_bias"]
        lines.append(f"{who}: {section['answers']} answers, position bias (share of A) "
                     f"{_number(bias['share_first'])} {_interval(bias['interval'])}")
        for condition, row in section.get("accuracy", {}).items():
            lines.append(f"  {condition:<24} accuracy {_number(row['accuracy'])} {_interval(row['interval'])} "
                         f"n={row['n']} (chance {row['chance']})")
        bt = section.get("bradley_terry")
        if bt and "error" in bt:
            lines.append(f"  Bradley-Terry: {bt['error']}")
        elif bt:
            for condition, row in bt["per_condition"].items():
                lines.append(f"  {condition:<24} Bradley-Terry {row['score']:+.3f} {_interval(row['interval'])} "
                             f"wins {row['wins']:g} losses {row['losses']:g} ties {row['ties']}")
        if "agreement" in section:
            a = section["agreement"]
            lines.append(f"  agreement on {a['n_pairs']} shared pairs: {_number(a['percent_agreement'])}, "
                         f"Krippendorff's alpha {_number(a['krippendorff_alpha'])}")
        if "vs_humans" in section:
            v = section["vs_humans"]
            lines.append(f"  vs human majority on {v['n_pairs']} pairs: accuracy {_number(v['accuracy'])}, "
                         f"Cohen's kappa {_number(v['cohen_kappa'])}; {section['order_flips']} flipped with the order")
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _interval(interval) -> str:
    return "" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def pair_chart(report: dict, path) -> Path:
    """The humans' result as a PNG: accuracy per condition against chance (discrimination), or
    Bradley-Terry scores around 0 (preference), each with its 95% interval."""
    from hirpf.charts import interval_chart

    humans, title = report["humans"], f"{report['study']}: {report['humans']['answers']} answers"
    if report["design"] == "discrimination":
        rows = humans["accuracy"]
        return interval_chart(Path(path), list(rows), [r["accuracy"] for r in rows.values()],
                              [r["interval"] for r in rows.values()], reference=CHANCE,
                              x_label="accuracy (dashed: chance)", title=title)
    rows = humans["bradley_terry"]["per_condition"]
    return interval_chart(Path(path), list(rows), [r.get("score") for r in rows.values()],
                          [r.get("interval") for r in rows.values()], reference=0.0,
                          x_label="Bradley-Terry score (log-strength, mean 0)", title=title)


# --- export -----------------------------------------------------------------------------------------------
EXPORT_FIELDS = ("study", "pair", "question", "prompt", "expected", "condition_a", "identities_a", "reply_a",
                 "condition_b", "identities_b", "reply_b", "answered_by", "judge", "shown_first", "choice",
                 "skip_reason", "seconds")


def export_rows(db: Database, study: str | None = None) -> Iterable[dict]:
    """One row per answer (annotators' answered and skipped pairs, judges' votes), unblinded."""
    names = [study] if study else study_names(db)
    with db.read() as session:
        for name in names:
            found = study_row(session, name)
            pairs = session.scalars(select(StudyPair).where(StudyPair.study_id == found.id)
                                    .order_by(StudyPair.position)).all()
            labels = dict(session.execute(select(PairCondition.id, PairCondition.label)
                                          .where(PairCondition.study_id == found.id)).all())
            for pair in pairs:
                base = {"study": found.name, "pair": pair.public_id, "question": pair.question,
                        "prompt": pair.reply_a.prompt, "expected": pair.expected,
                        "condition_a": labels[pair.reply_a.condition_id],
                        "identities_a": ",".join(pair.reply_a.identities), "reply_a": pair.reply_a.text,
                        "condition_b": labels[pair.reply_b.condition_id],
                        "identities_b": ",".join(pair.reply_b.identities), "reply_b": pair.reply_b.text}
                for task, who in session.execute(
                        select(PairTask, Annotator.public_id).join(Annotator).where(
                            PairTask.pair_id == pair.id, PairTask.status != TaskStatus.PENDING)
                        .order_by(PairTask.id)).all():
                    yield {**base, "answered_by": who, "judge": None, "shown_first": task.shown_first,
                           "choice": task.choice, "skip_reason": task.skip_reason, "seconds": task.seconds}
                for vote in session.scalars(select(PairJudgeVote).where(PairJudgeVote.pair_id == pair.id)
                                            .order_by(PairJudgeVote.judge)):
                    yield {**base, "answered_by": None, "judge": vote.judge, "shown_first": None,
                           "choice": vote.choice, "skip_reason": None, "seconds": None}


def write_pairs_csv(db: Database, out: IO[str], study: str | None = None) -> int:
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    rows = list(export_rows(db, study))
    writer.writerows(rows)
    return len(rows)


def write_pairs_jsonl(db: Database, out: IO[str], study: str | None = None) -> int:
    rows = list(export_rows(db, study))
    out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return len(rows)
