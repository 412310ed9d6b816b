"""How a streamed reply reaches the model: the chat's replies (chat, regenerate) and each debate statement.

Through the engine's scheduler (`hirpf.scheduler`), the default: up to `HIRPF_MAX_BATCH` visitors decode
together in one running batch, each row with its own identity set, and Gradio lets that many of
these events run at once (their own concurrency group, "scheduler"); later ones queue. A visitor's Stop
sets its request's stop event, and the scheduler takes that row alone out of the batch.

One at a time through `Engine.stream`, on the shared model queue of one, where the scheduler cannot or
should not serve: on ZeroGPU (each call runs in its own worker process with its own model, where a batch
shared across visitors cannot live) and with `HIRPF_SCHEDULER=0` (`--no-scheduler`), the serial path kept
for comparison (`benchmarks/bench_serving.py`) and as a fallback.

The other model actions (Compare, questionnaires, surveys) keep the model queue of one: each is already
one static batch that knows all its rows up front.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, TypeVar

from hirpf import environment
from hirpf.reply_stream import ReplySource

from .zerogpu import on_zerogpu

SCHEDULER_QUEUE_ID = "scheduler"
# A streamed reply reaches the page at most this often. Every update re-sends the whole transcript, so with a
# full batch of visitors one update per token costs the server (and each browser) more CPU than the model's
# batched step (the rates behind this: docs/benchmarks.md); five updates a second still read as live typing.
UPDATE_INTERVAL_S = 0.2

T = TypeVar("T")


def paced(updates: Iterable[T], interval_s: float = UPDATE_INTERVAL_S) -> Iterator[T]:
    """`updates` (each one the whole state so far), at most one per `interval_s`; the last one always."""
    last_sent, held = float("-inf"), []  # held: the newest update not yet sent, if any
    for update in updates:
        now = time.monotonic()
        if now - last_sent >= interval_s:
            last_sent, held = now, []
            yield update
        else:
            held = [update]
    yield from held


@dataclass(frozen=True)
class ReplyServing:
    through_scheduler: bool
    queue: dict  # the reply events' Gradio concurrency settings (concurrency_id, concurrency_limit)

    def source(self, engine) -> ReplySource:
        """What streams a reply: the engine's scheduler, or the engine itself."""
        return engine.scheduler() if self.through_scheduler else engine


def reply_serving(model_queue: dict, scheduler: bool = True) -> ReplyServing:
    """Through the scheduler when `scheduler` is on and not on ZeroGPU; otherwise on `model_queue`."""
    if scheduler and not on_zerogpu():
        limit = environment.HIRPF_MAX_BATCH
        return ReplyServing(True, {"concurrency_id": SCHEDULER_QUEUE_ID, "concurrency_limit": limit})
    return ReplyServing(False, model_queue)
