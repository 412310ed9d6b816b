"""What streams a reply, as the app and the debates see it: a `ReplySource` (an `Engine`, or its scheduler)
whose `stream` returns the reply as it grows; with the scheduler that is a `ReplyStream`, which also says why
the reply ended (`FinishReason`)."""
from __future__ import annotations

import threading
import time
from enum import StrEnum
from typing import Iterator, Protocol, Sequence, runtime_checkable

from .identities import IdentitySet
from .prompts import Conditioning
from .sampling import Message, Sampling


class FinishReason(StrEnum):
    """Why a scheduler request ended. A `str`: it compares equal to its value ("eos", …)."""

    EOS = "eos"  # the model ended its reply (the end-of-sequence token is not kept)
    LENGTH = "length"  # it reached `max_new_tokens`
    STOPPED = "stopped"  # its caller set its stop event or closed its stream
    ERROR = "error"  # it failed (`ReplyStream.error` says how); the others went on


class Replies(Protocol):
    """A reply as it grows: iterating it yields the whole text so far; `close` ends it at the next token."""

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


@runtime_checkable
class ReplySource(Protocol):
    """What streams replies: `Engine` (one request at a time, `generate` in a thread) and `Scheduler` (a row
    of the running batch) both are one, and callers (the chat, debates) use either the same way."""

    def stream(self, history: Sequence[Message], identities: IdentitySet,
               conditioning: Conditioning = Conditioning.EXPERTS_AND_PROMPT, sampling: Sampling | None = None,
               stop_event: threading.Event | None = None) -> Replies: ...


class ReplyStream:
    """One scheduler request's reply. Iterate it for the whole text so far, each time it grows (as
    `Engine.stream`); closing it, breaking out of the loop or setting the request's stop event ends the request
    at the next step. A request that failed raises its error at the end of the iteration (and from `result`)."""

    def __init__(self, tokenizer, stop_event: threading.Event):
        self.tokenizer, self.stop_event = tokenizer, stop_event
        self.token_ids: list[int] = []  # generated so far (an end-of-sequence token is not kept)
        self.finish_reason: FinishReason | None = None
        self.left_out = 0  # earlier turns of the history left out to fit the context (hirpf.context_limit)
        self.error: BaseException | None = None
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._changed = threading.Condition()

    # --- the loop thread's side ------------------------------------------------------------------
    def _push(self, token: int) -> None:
        with self._changed:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self.token_ids.append(token)
            self._changed.notify_all()

    def _finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        with self._changed:
            self.finish_reason, self.error = reason, error
            self.finished_at = time.perf_counter()
            self._changed.notify_all()

    # --- the caller's side -----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return self.tokenizer.decode(list(self.token_ids), skip_special_tokens=True).strip()

    def __iter__(self) -> Iterator[str]:
        shown, seen = "", 0
        try:
            while True:
                with self._changed:
                    while len(self.token_ids) == seen and not self.done:
                        self._changed.wait()
                    ids, done = list(self.token_ids), self.done
                seen = len(ids)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                # A character split across tokens decodes as U+FFFD until its last token arrives.
                if text.strip() != shown and (done or not text.endswith("\ufffd")):
                    shown = text.strip()
                    yield shown
                if done:
                    break
        finally:
            if not self.done:
                self.stop_event.set()  # the caller stopped reading: the row leaves the batch
        if self.error is not None:
            raise self.error

    def result(self, timeout: float | None = None) -> str:
        """Wait for the end of the reply and return its text (raises the request's error)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"the reply did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.text

    def close(self) -> None:
        self.stop_event.set()
