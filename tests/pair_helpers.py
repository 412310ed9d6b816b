"""What the pair-study tests share: replies that name their maker, and an annotator answering a whole queue."""
from __future__ import annotations

from sqlalchemy import select

from annotation.assignment import AssignmentPolicy
from annotation.pair_generation import missing_replies, store_reply
from annotation.pair_tasks import answer_pair, next_pair_task
from db.models import PairTask


def fill_replies(database, study: str) -> None:
    """Replies that say who made them, so tests can see which one an annotator was shown."""
    for item in missing_replies(database, study):
        store_reply(database, item.reply_id, f"{item.condition.label} {'+'.join(item.identities)} {item.prompt}")


def answer_all(database, study: str, annotator: str, pick) -> None:
    """Answer every pair of the annotator's queue with `pick(stored reply text a, b) -> "a"|"b"|"tie"`."""
    while (view := next_pair_task(database, study, annotator, AssignmentPolicy(overlap=3, batch=100))) is not None:
        with database.read() as session:
            task = session.scalar(select(PairTask).where(PairTask.public_id == view.task))
            stored = pick(task.pair.reply_a.text, task.pair.reply_b.text)
            shown = "tie" if stored == "tie" else ("A" if stored == task.shown_first else "B")
        answer_pair(database, view.task, shown, annotator=annotator)
