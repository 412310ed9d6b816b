"""Generating a pair study's replies: a background job over the engine's scheduler, resumable.

    job = PairBuildJob(db, "poles", engine_for).start()   # engine_for(condition) -> hirpf.engine.Engine
    job.progress()                                        # (replies stored, replies the study needs)
    job.wait()

The replies a study still lacks are its `pair_replies` rows whose text is NULL. They are queued on the
engine's `Scheduler` (`hirpf.scheduler`, one running batch, each row its own identity set and
conditioning) a window at a time, and each is stored, in its own transaction, as soon as it is finished. A
job stopped or killed half-way loses at most the replies in flight: the next job (a rerun of `pairs build`)
starts from the rows still NULL.

Decoding: greedy (`Sampling(do_sample=False)`) with the condition's seed unless `sampling` says otherwise;
the seed is stored with the condition.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Callable, NamedTuple

from sqlalchemy import func, select

from annotation.pair_studies import Condition, PairStudyError, condition_of, study_row
from annotation.store import checked_text
from db import Database
from db.models import PairCondition, PairReply
from hirpf.sampling import Sampling

DEFAULT_SAMPLING = Sampling(max_new_tokens=96, do_sample=False, repetition_penalty=1.1)


class MissingReply(NamedTuple):
    reply_id: int
    condition: Condition
    identities: tuple[str, ...]
    prompt: str


def reply_counts(db: Database, study: str) -> tuple[int, int]:
    """(replies stored, replies the study needs)."""
    with db.read() as session:
        found = study_row(session, study)
        query = select(func.count(PairReply.id), func.count(PairReply.text)).join(PairCondition).where(
            PairCondition.study_id == found.id)
        total, done = session.execute(query).one()
        return done, total


def missing_replies(db: Database, study: str) -> list[MissingReply]:
    with db.read() as session:
        found = study_row(session, study)
        rows = session.execute(select(PairReply, PairCondition).join(PairCondition).where(
            PairCondition.study_id == found.id, PairReply.text.is_(None)).order_by(PairReply.id)).all()
        return [MissingReply(reply.id, condition_of(condition), tuple(reply.identities), reply.prompt)
                for reply, condition in rows]


def check_engine(condition: Condition, engine) -> None:
    """A condition that uses experts needs a model that has them: otherwise the engine would silently fall
    back to the prompt alone and the study would compare two names for one setting."""
    if condition.conditioning not in (None, "prompt") and not engine.has_experts:
        raise PairStudyError(f"condition {condition.label!r} uses experts, but {condition.base_model} with "
                             f"checkpoint {condition.checkpoint} has none")


def store_reply(db: Database, reply_id: int, text: str) -> None:
    # A model may emit a NUL byte token, which no database here stores; nothing a reader sees is lost.
    text = checked_text(text.replace("\x00", ""), "reply", strip=False)

    def run(session):
        row = session.get(PairReply, reply_id)
        if row is not None and row.text is None:
            row.text = text

    db.write(run)


class PairBuildJob:
    """Generates the replies a study lacks in a background thread; `progress()`, `stop()`, `wait()`."""

    def __init__(self, db: Database, study: str, engine_for: Callable[[Condition], object],
                 sampling: Sampling | None = None, window: int = 32,
                 on_progress: Callable[[int, int], None] | None = None):
        self.db, self.study, self.engine_for = db, study, engine_for
        self.sampling = sampling or DEFAULT_SAMPLING
        self.window = window
        self.on_progress = on_progress
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pair-build-{study}", daemon=True)
        self._done, self._total = reply_counts(db, study)

    def start(self) -> "PairBuildJob":
        self._thread.start()
        return self

    def progress(self) -> tuple[int, int]:
        return self._done, self._total

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> tuple[int, int]:
        """Wait for the job; re-raises what stopped it."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.progress()

    def _run(self) -> None:
        try:
            missing = missing_replies(self.db, self.study)
            engines = {}
            for item in missing:
                if item.condition.label not in engines:
                    engines[item.condition.label] = self.engine_for(item.condition)
                    check_engine(item.condition, engines[item.condition.label])
            for start in range(0, len(missing), self.window):
                if self._stop.is_set():
                    return
                self._generate([(item, engines[item.condition.label]) for item in missing[start:start + self.window]])
        except BaseException as error:  # noqa: BLE001 - surfaced by wait()
            self.error = error

    def _generate(self, window: list[tuple[MissingReply, object]]) -> None:
        streams = []
        for item, engine in window:
            sampling = replace(self.sampling, seed=item.condition.seed if item.condition.seed is not None
                               else self.sampling.seed)
            identities = item.condition.identities(item.identities)
            streams.append(engine.scheduler().submit([{"role": "user", "content": item.prompt}], identities,
                                                     item.condition.conditioning or "prompt", sampling,
                                                     stop_event=self._stop))
        for (item, _), stream in zip(window, streams):
            text = stream.result()
            if stream.finish_reason == "stopped" or self._stop.is_set():
                return  # a reply cut short by stop() is not a reply: it stays NULL for the next job
            store_reply(self.db, item.reply_id, text)
            self._done += 1
            if self.on_progress:
                self.on_progress(self._done, self._total)
