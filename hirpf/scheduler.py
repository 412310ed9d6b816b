"""Serving many requests at once, the policy: who waits, who joins the running batch, who leaves it, and
what a failure ends. The model itself is run by `hirpf.batch_runner.BatchRunner` (prefill, decode step, cache).

    submit() ──► waiting queue ──► admitted ──► runner.prefill ──► runner.add ───► runner.step, each loop turn
    (caller thread:                (while the     (loop thread;       (first token;     (one token per row)
     validate, tokenize)            batch has      those admitted      the row joins          │
                                    room)          together)           the batch)             ▼
                                                                           rows that ended (eos, length,
                                                                           stopped, error) leave at once:
                                                                           their slots go to the next waiting

A request (chat history, identity set with its strengths, conditioning, sampling settings and seed, max new
tokens, stop event) is checked and tokenized in the caller's thread, so a bad one fails there, alone. The
loop thread owns the model's decoding: at every turn it drops waiting requests whose callers stopped them,
admits waiting requests while the batch has fewer than `max_batch` rows (`HIRPF_MAX_BATCH`), takes out the
rows whose callers stopped them, then runs one decode step for all rows. With rows running, the admitted
prompts ride in that decode step (a packed step, `hirpf.packed_step`; a prompt longer than
`HIRPF_PREFILL_CHUNK` tokens a chunk per step), so a join never stops the batch, and while the batch has
room a request that arrives during the step joins it between two layers (`_take_joiner`); with none
running (or on a model that cannot pack), those admitted are prefilled together in a forward of their own
first. Each caller reads its reply from a `ReplyStream` (`hirpf.reply_stream`), which yields the whole text
so far, as `Engine.stream` does.

Faults stay with their requests: a failed joint prefill is retried one request at a time so that only the
request that breaks it fails; a failure at a request's first token or chunk ends that request; a failure of
a step ends the running rows; and if the loop thread dies all the same, every request it holds ends with the
error and `Engine.scheduler()` starts a fresh scheduler.

Why a hand-built batch and not transformers' continuous batching: `generate_batch` / the continuous
batching manager (transformers 5) packs every request's tokens into one sequence of batch 1 over a paged
cache. The expert layers take their identity rows from the batch dimension (`Routing.rows`), so a packed
batch would give all requests one identity set; carrying a set per token would need a token-to-row map
inside `hirpf.routing` and `hirpf.fast_inference`, as vLLM maps tokens to adapters. Its sampling settings
are also one per batch, with one random generator. So the batch here is an ordinary left-padded batch over
transformers' `DynamicCache`, whose rows leave and join in place where they can (a leaving row's slot
taken by the last row, a joining row written into the room it left: `hirpf.batch_cache`), else by a copy of
the batch's cache (the measured cost of a join: docs/benchmarks.md).
"""
from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from typing import NamedTuple, Sequence

import torch

from . import environment
from .batch_cache import swap_remove_order
from .batch_runner import BatchRunner, ChunkedPrefill, Row
from .identities import IdentitySet
from .prefix_cache import PrefixCache
from .prompts import Conditioning, expert_identities
from .reply_stream import FinishReason, ReplyStream
from .row_sampling import RowSampler
from .sampling import Message, Sampling

log = logging.getLogger(__name__)
_LIVE: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # A loop thread still running while the interpreter shuts down can abort the process inside torch.
    for scheduler in list(_LIVE):
        scheduler.close(timeout=5.0)


class SchedulerClosed(RuntimeError):
    """The scheduler was closed before this request finished."""


class PreparedRequest(NamedTuple):
    prompt: torch.Tensor  # [1, tokens]: our system message and the newest turns that fit, chat-templated
    experts: IdentitySet  # what the expert layers see (`hirpf.prompts.expert_identities`)
    sampling: Sampling
    sampler: RowSampler
    left_out: int  # earlier turns of the history left out to fit the context


def prepared_request(engine, history: Sequence[Message], identities: "IdentitySet | str",
                     conditioning: "Conditioning | str", sampling: Sampling | None,
                     stop_event: threading.Event | None, device: "torch.device | str") -> PreparedRequest:
    """A request read, checked, fitted to the context and tokenized in its caller's thread, for the scheduler
    and for the engine process's app side alike, so that a bad one fails there, alone (IdentityError /
    ValueError / TypeError / ContextLimitError)."""
    identities = IdentitySet.parse(identities)
    conditioning = Conditioning.parse(conditioning)
    sampling = sampling or Sampling()
    if stop_event is not None and not isinstance(stop_event, threading.Event):
        raise TypeError(f"stop_event must be a threading.Event or None, got {type(stop_event).__name__}")
    sampler = RowSampler(sampling, device=device)
    fitted = engine.fit_history(history, identities, conditioning, sampling.max_new_tokens)
    prompt = engine.encode([engine.chat_messages(fitted.history, identities, conditioning)])["input_ids"]
    return PreparedRequest(prompt, expert_identities(identities, conditioning), sampling, sampler, fitted.left_out)


class Scheduler:
    """Owns the engine's decoding: one loop thread, one running batch of up to `max_batch` rows (a
    `ReplySource`: `stream` has `Engine.stream`'s signature)."""

    def __init__(self, engine, max_batch: int | None = None, prefix_cache_mb: int | None = None,
                 prefill_chunk: int | None = None, prefill_step_share: float | None = None,
                 packed_steps: bool = True):
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.max_batch = environment.HIRPF_MAX_BATCH if max_batch is None else max_batch
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        prefix_cache_mb = environment.HIRPF_PREFIX_CACHE_MB if prefix_cache_mb is None else prefix_cache_mb
        if prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be 0 (off) or more, got {prefix_cache_mb}")
        # Earlier sequences' keys and values, by identity rows. They belong to these expert weights: code that
        # changes the weights in place must call `prefixes.clear()` (as it calls `forget_weights`).
        self.prefixes = PrefixCache(prefix_cache_mb * 2**20)
        prefill_chunk = environment.HIRPF_PREFILL_CHUNK if prefill_chunk is None else prefill_chunk
        if prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be 0 (off) or more, got {prefill_chunk}")
        if prefill_step_share is None:
            prefill_step_share = environment.HIRPF_PREFILL_STEP_SHARE
        eos = engine.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        # Only the loop thread touches the runner: the running rows, their cache, the chunked prompts.
        self.runner = BatchRunner(engine.model, frozenset([eos] if isinstance(eos, int) else eos), self.prefixes,
                                  prefill_chunk, prefill_step_share, packed_steps)
        self._wake = threading.Condition()
        self._waiting: deque[Row] = deque()
        self._closed = False
        self.failure: BaseException | None = None  # what killed the loop thread, if it died
        self._thread = threading.Thread(target=self._loop, name="hirpf-scheduler", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # --- requests --------------------------------------------------------------------------------
    def submit(self, history: Sequence[Message], identities: "IdentitySet | str",
               conditioning: "Conditioning | str" = Conditioning.EXPERTS_AND_PROMPT, sampling: Sampling | None = None,
               stop_event: threading.Event | None = None) -> ReplyStream:
        """Queue one reply to `history` (its newest turns that fit the context); returns its stream at once.
        A bad identity set, conditioning or sampling setting, or a newest message too long for the context,
        raises here (IdentityError / ValueError / ContextLimitError) and touches nothing else."""
        request = prepared_request(self.engine, history, identities, conditioning, sampling, stop_event,
                                   self.runner.device)
        return self.enqueue(request, ReplyStream(self.tokenizer, stop_event or threading.Event()))

    def enqueue(self, request: PreparedRequest, stream: ReplyStream) -> ReplyStream:
        """Queue a prepared request whose reply goes to `stream` (its stop event is the request's); the engine
        process passes requests prepared on the app's side and streams that forward each token there."""
        stream.left_out = request.left_out
        row = Row(request.prompt, request.experts, request.sampler, request.sampling.max_new_tokens, stream)
        with self._wake:
            if self._closed:
                raise SchedulerClosed("the scheduler is closed" if self.failure is None else
                                      f"the scheduler's loop died ({self.failure!r}); Engine.scheduler() starts "
                                      "a new one")
            self._waiting.append(row)
            self._wake.notify()
        return stream

    def stream(self, history: Sequence[Message], identities: "IdentitySet | str",
               conditioning: "Conditioning | str" = Conditioning.EXPERTS_AND_PROMPT, sampling: Sampling | None = None,
               stop_event: threading.Event | None = None) -> ReplyStream:
        """`Engine.stream`'s signature, served by the running batch."""
        return self.submit(history, identities, conditioning, sampling, stop_event)

    def reply(self, history: Sequence[Message], identities: "IdentitySet | str",
              conditioning: "Conditioning | str" = Conditioning.EXPERTS_AND_PROMPT,
              sampling: Sampling | None = None) -> str:
        return self.submit(history, identities, conditioning, sampling).result()

    def prefix_counters(self) -> tuple[int, int, int]:
        """The prefix store's hits, misses and reused tokens so far (for benchmarks; kept where it lives)."""
        return self.prefixes.hits, self.prefixes.misses, self.prefixes.reused_tokens

    def clear_prefixes(self) -> None:
        self.prefixes.clear()

    @property
    def running(self) -> int:
        return len(self.runner.rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def closed(self) -> bool:
        """True once it serves no more: closed, or its loop thread died (`failure` says why)."""
        return self._closed or self.failure is not None or not self._thread.is_alive()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the loop; unfinished requests end with `SchedulerClosed`."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    # --- the loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        """Supervised: an exception fails the rows it concerns (the joining ones at admission, the running ones
        at a step) and the loop goes on. If the thread dies all the same, every request it holds ends with
        the error, submit refuses new ones, and `Engine.scheduler()` starts a fresh scheduler."""
        try:
            while self._serve_once():
                pass
        except BaseException as err:
            log.exception("the scheduler's loop died")
            self.failure = err
        finally:
            self._end_all(self.failure)

    def _serve_once(self) -> bool:
        """Admit what waits, then one decode step; False once closed."""
        runner = self.runner
        with self._wake:
            while not (self._closed or self._waiting or runner.rows or runner.chunked):
                self._wake.wait()
            if self._closed:
                return False
            # A request stopped while it waited for a slot ends now, not when a slot frees.
            self._waiting = deque(self._still_wanted(self._waiting))
            joining = []
            while self._waiting and runner.occupied + len(joining) < self.max_batch:
                joining.append(self._waiting.popleft())
        try:
            with torch.no_grad():
                self._admit(joining)
                self._drop_stopped_prompts()
                if not (runner.packs and runner.rows):  # else the chunks ride in the decode step below
                    self._continue_chunked_prefill()
        except Exception as err:  # a failure of admission as a whole: the joining requests end with it
            log.exception("admitting %d requests failed", len(joining))
            chunked = {id(c.row) for c in runner.chunked}
            for row in joining:
                if not row.stream.done and row not in runner.rows and id(row) not in chunked:
                    row.stream._finish(FinishReason.ERROR, err)
        try:
            with torch.no_grad():
                self._leave_stopped()
                # A packed step also when nothing waits to ride in it yet but the batch has room: a request
                # that arrives while it runs joins it between two layers (`BatchRunner.packed_step`).
                if runner.rows and runner.packs and (runner.chunked or runner.occupied < self.max_batch):
                    self._packed_step()
                elif runner.rows:
                    self._leave(self._outcomes(runner.step()))
        except Exception as err:  # a failure of the batch as a whole: its rows end with it
            log.exception("scheduler step failed")
            self._fail_all(err)
        return True

    def _end_all(self, failure: BaseException | None) -> None:
        """The loop is over: every request still held ends, with `failure` if the loop died."""
        error = failure or SchedulerClosed("the scheduler was closed before this reply finished")
        with self._wake:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
        runner = self.runner
        for row in waiting + [c.row for c in runner.chunked] + runner.rows:
            if not row.stream.done:
                row.stream._finish(FinishReason.ERROR, error)
        runner.clear_batch()
        runner.chunked.clear()

    # --- admission ---------------------------------------------------------------------------------
    def _admit(self, rows: list[Row]) -> None:
        """Prefill the admitted requests together, each under its own identity set, and add them to the batch.
        On a CPU a short prefill costs about what a decode step does (both read every weight once), so the
        requests that arrive together are prefilled in one forward. If that forward fails, each is tried alone,
        so that a request that breaks fails by itself. A long prompt is prefilled a chunk per turn instead."""
        rows = self._still_wanted(rows)
        runner = self.runner
        runner.chunked.extend(ChunkedPrefill(r) for r in rows if runner.needs_chunks(r))
        rows = [r for r in rows if not runner.needs_chunks(r)]
        if len(rows) > 1:
            try:
                prefilled = runner.prefill(rows)
            except Exception as err:
                log.warning("joint prefill of %d requests failed (%s): prefilling each alone", len(rows), err)
            else:
                for row, (cache, logits) in zip(rows, prefilled):
                    self._join(row, cache, logits)
                return
        for row in rows:
            try:
                [(cache, logits)] = runner.prefill([row])
            except Exception as err:  # this request alone fails
                self._fail_alone(row, "at prefill", err)
                continue
            self._join(row, cache, logits)

    def _continue_chunked_prefill(self, partial=None) -> None:
        """One chunk of the oldest long prompt being prefilled (or of `partial`); it joins once its whole
        prompt is in (the loop has ended the stopped ones); a failure ends it alone."""
        if not self.runner.chunked:
            return
        row = (partial or self.runner.chunked[0]).row
        try:
            complete = self.runner.prefill_next_chunk(partial)
        except Exception as err:  # this request alone fails
            self._fail_alone(row, "at a chunk of its prefill", err)
            return
        if complete:
            self._join(*complete)

    def _drop_stopped_prompts(self) -> None:
        """Prompts stopped while they were being prefilled in chunks end now."""
        for partial in [p for p in self.runner.chunked if self._exit_reason(p.row) is not None]:
            if not partial.row.stream.done:
                partial.row.stream._finish(FinishReason.STOPPED)
            self.runner.chunked.remove(partial)

    def _packed_step(self) -> None:
        """One decode step that carries the waiting prompts' next chunks (`BatchRunner.packed_step`); the
        prompts now whole get their first tokens, then the running rows theirs, the rows that ended leave, and
        the new rows join (into the room the leaving ones left). Should it fail, nothing changed: the chunk
        and the step run apart, so that a failure of either ends only the requests it concerns."""
        try:
            row_logits, complete = self.runner.packed_step(self._take_joiner, self._joiner_failed)
        except Exception as err:
            log.warning("a packed step failed (%s): its prompt chunks and the decode step run apart", err)
            for partial in list(self.runner.chunked):  # each alone, so that only a prompt that breaks fails
                self._continue_chunked_prefill(partial)
            if self.runner.rows:
                self._leave(self._outcomes(self.runner.step()))
            return
        # First tokens first: a joiner's reader need not wait for the running rows' sampling (7 ms for 7 rows
        # on the 2-core Xeon) or the leaving rows' cache work.
        joining = [(row, cache) for row, cache, logits in complete if self._first_token(row, logits)]
        try:
            self._leave(self._outcomes(self.runner.choose(row_logits)))
        finally:  # held nowhere else: should leaving fail, they join the rows that fail with it
            for row, cache in joining:
                self._add(row, cache)

    def _take_joiner(self) -> Row | None:
        """A waiting request for the step in flight to take in (asked before each of its layers): the oldest,
        while the batch has room and if its prompt is short (a long one goes in paced chunks, from the next
        step on); one stopped while it waited ends here."""
        runner = self.runner
        if not self._waiting:  # read without the lock first: asked about 30 times a step
            return None
        with self._wake:
            while self._waiting and runner.occupied < self.max_batch and not self._closed:
                if runner.is_long(self._waiting[0]):
                    return None
                row = self._waiting.popleft()
                if self._still_wanted([row]):
                    return row
        return None

    def _joiner_failed(self, row: Row, err: Exception) -> None:
        self._fail_alone(row, "joining a step in flight", err)

    @staticmethod
    def _fail_alone(row: Row, what: str, err: Exception) -> None:
        """This request alone ends with `err` (it failed `what`); the others go on."""
        log.warning("request failed %s: %s", what, err)
        row.stream._finish(FinishReason.ERROR, err)

    def _join(self, row: Row, cache, logits: torch.Tensor) -> None:
        """The row's first token; it joins the batch unless that ended it."""
        if self._first_token(row, logits):
            self._add(row, cache)

    def _first_token(self, row: Row, logits: torch.Tensor) -> bool:
        """The row's first token; whether the row goes on to join (not ended by it). A failure ends it alone."""
        try:
            finished = self.runner.first_token(row, logits)
        except Exception as err:  # this request alone fails
            self._fail_alone(row, "at its first token", err)
            return False
        if finished:
            row.stream._finish(finished)
        return not finished

    def _add(self, row: Row, cache) -> None:
        """The row joins the running batch. A failure ends it alone (the batch is as it was)."""
        try:
            self.runner.add(row, cache)
        except Exception as err:  # this request alone fails
            self._fail_alone(row, "joining the batch", err)

    # --- leaving -----------------------------------------------------------------------------------
    @staticmethod
    def _exit_reason(row: Row) -> FinishReason | None:
        """STOPPED if the row's caller stopped it; ERROR if its stop flag fails (the row is finished with that
        error here: it alone ends); None while it is wanted."""
        try:
            return FinishReason.STOPPED if row.stream.stop_event.is_set() else None
        except Exception as err:
            log.warning("a request's stop flag failed: %s", err)
            row.stream._finish(FinishReason.ERROR, err)
            return FinishReason.ERROR

    def _still_wanted(self, rows) -> list[Row]:
        """The rows nobody stopped; the others end here."""
        kept = []
        for row in rows:
            reason = self._exit_reason(row)
            if reason == FinishReason.STOPPED:
                row.stream._finish(FinishReason.STOPPED)
            elif reason is None:
                kept.append(row)
        return kept

    def _leave_stopped(self) -> None:
        reasons = {i: self._exit_reason(r) for i, r in enumerate(self.runner.rows)}
        self._leave({i: reason for i, reason in reasons.items() if reason})

    def _outcomes(self, ended: dict[int, FinishReason | Exception]) -> dict[int, FinishReason]:
        """A step's ended rows by finish reason; a row whose own token choice failed ends here with its error."""
        reasons = {}
        for i, outcome in ended.items():
            if isinstance(outcome, Exception):
                self.runner.rows[i].stream._finish(FinishReason.ERROR, outcome)
                outcome = FinishReason.ERROR
            reasons[i] = outcome
        return reasons

    def _leave(self, ended: dict[int, FinishReason]) -> None:
        """The rows at the indices of `ended` leave the batch, finished with their reason (ERROR: already
        finished with its error). A row that ended well leaves its sequence to the prefix store first, so a
        caller who reads the end of its reply and asks again finds it there."""
        if not ended:
            return
        finished = {i: reason for i, reason in ended.items() if reason != FinishReason.ERROR}
        self.runner.store_prefixes(finished)
        for i, reason in finished.items():
            self.runner.rows[i].stream._finish(reason)
        self.runner.keep(swap_remove_order(len(self.runner.rows), ended))

    def _fail_all(self, err: BaseException) -> None:
        for row in self.runner.rows:
            if not row.stream.done:
                row.stream._finish(FinishReason.ERROR, err)
        self.runner.clear_batch()
