"""What the store tests share: dialogues to add, and a snapshot that shows a refused call changed nothing
(the `database` fixture on each engine is in db_fixtures.py)."""
from __future__ import annotations

import json

from sqlalchemy import func, select

from annotation.store import Store
from db import Database
from db.models import Annotation, AnnotationTask, Annotator, Dialogue, JudgePrediction

DOCTOR = {"AGR": "high", "CON": "none", "EXT": "low", "NEU": "none", "OPE": "none", "Profession": "Doctor"}
ARTIST = {"AGR": "low", "CON": "high", "EXT": "none", "NEU": "none", "OPE": "high", "Profession": "Artist"}


def turns(i: int, persona: str = "You are a doctor with high agreeableness.") -> list[dict]:
    return [{"role": "system", "content": persona},
            {"role": "user", "content": f"How was day {i}?"},
            {"role": "assistant", "content": f"Day {i} was fine, thank you."},
            {"role": "user", "content": "Anything else?"},
            {"role": "assistant", "content": "Not much."}]


def snapshot(database: Database) -> dict:
    """Row counts and every mutable column, to show that a refused call changed nothing."""
    with database.read() as session:
        return {
            "counts": [session.scalar(select(func.count()).select_from(m))
                       for m in (Annotator, Dialogue, AnnotationTask, Annotation, JudgePrediction)],
            "tasks": sorted(session.execute(select(AnnotationTask.id, AnnotationTask.status,
                                                   AnnotationTask.skip_reason)).all()),
            "answers": sorted((a.id, json.dumps(a.slots, sort_keys=True), a.option, a.comment, a.edits)
                              for a in session.scalars(select(Annotation))),
        }


def items(store: Store, n: int, target: str = "Doctor,AGR_high,EXT_low") -> list[str]:
    return [store.add_dialogue(turns(i), target, source="simulator", system="sim-7b").dialogue for i in range(n)]


def assigned(store: Store, annotator: str) -> list[str]:
    """The annotator's dialogues (public ids) in queue order."""
    with store.db.read() as session:
        return list(session.scalars(select(Dialogue.public_id).join(AnnotationTask).join(Annotator)
                                    .where(Annotator.public_id == annotator).order_by(AnnotationTask.position)))

