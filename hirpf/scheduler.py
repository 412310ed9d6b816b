"""Serving many requests at once: one decode loop, one batch, a different identity set in every row.

    submit() ──► waiting queue ──► prefill ──────────► joins the running batch ──► one token per row per step
    (caller thread:                (loop thread; those (PaddedBatchCache.add)      under Routing(rows of the
     validate, tokenize)            waiting, together,                            batch as it is now)
                                    each its own identity)
                                                              finished / stopped rows leave at once ──►
                                                              their slots go to the next waiting request;
                                                              their tokens and cache go to the prefix store

A request (chat history, identity set with its strengths, conditioning, sampling settings and seed, max new
tokens, stop event) is checked and tokenized in the caller's thread, so a bad one fails there, alone. The
loop thread owns the model's decoding: it admits waiting requests while the batch has fewer than
`max_batch` rows (`HIRPF_MAX_BATCH`, default 8), prefills those admitted together in one forward, each row
under its own identity set (`Scheduler._prefill`), then runs one decode step for all rows. A prompt that
begins as an earlier request's sequence did under the same identity rows (the identity prompt; in a chat,
the whole conversation so far) is prefilled only from where they part (`hirpf.prefix_cache`): on a CPU the
prefill of a joining request is what the running rows and its own first token wait for. A prompt longer than
`HIRPF_PREFILL_CHUNK` tokens (default 256) is prefilled a chunk per decode step instead, so the running rows
keep streaming while it joins (`Scheduler._prefill_one_chunk`). The step's
identity rows are the running rows' sets, in batch order; a `Routing` is built again whenever rows join or
leave (the expert layers cache masks and plans by content, so that is cheap). Every row picks its token
with its own settings and its own seeded generator (`hirpf.row_sampling`). Each caller reads its reply
from a `ReplyStream`, which yields the whole text so far, as `Engine.stream` does.

Why a hand-built batch and not transformers' continuous batching: `generate_batch` / the continuous
batching manager (transformers 5) packs every request's tokens into one sequence of batch 1 over a paged
cache. The expert layers take their identity rows from the batch dimension (`Routing.rows`), so a packed
batch would give all requests one identity set; carrying a set per token would need a token-to-row map
inside `hirpf.routing` and `hirpf.fast_inference`, as vLLM maps tokens to adapters. Its sampling settings
are also one per batch, with one random generator. So the batch here is an ordinary left-padded batch over
transformers' `DynamicCache`, whose per-layer tensors are re-padded and index-selected as rows join and
leave (`hirpf.batch_cache`). Joining costs one copy of the batch's cache (about 1 ms per 100 cached tokens
per row on the embedded model); leaving, one index select.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from typing import Iterator, Sequence

import torch
from transformers import DynamicCache

from .batch_cache import PaddedBatchCache, pad_left
from .identities import IdentitySet
from .prefix_cache import PrefixCache, prefix_cache_setting
from .prompts import Conditioning, expert_identities
from .routing import Routing, use_identities
from .row_sampling import RowSampler
from .sampling import Message, Sampling
from .settings import whole_number_setting

ENV_MAX_BATCH = "HIRPF_MAX_BATCH"
DEFAULT_MAX_BATCH = 8
ENV_PREFILL_CHUNK = "HIRPF_PREFILL_CHUNK"
DEFAULT_PREFILL_CHUNK = 256
log = logging.getLogger(__name__)
_LIVE: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # A loop thread still running while the interpreter shuts down can abort the process inside torch.
    for scheduler in list(_LIVE):
        scheduler.close(timeout=5.0)


def max_batch_setting() -> int:
    """`HIRPF_MAX_BATCH` (default 8): rows decoded together; later requests wait in a queue."""
    return whole_number_setting(ENV_MAX_BATCH, DEFAULT_MAX_BATCH, minimum=1)


def prefill_chunk_setting() -> int:
    """`HIRPF_PREFILL_CHUNK` (default 256): a prompt longer than this is prefilled this many tokens at a time,
    one chunk between decode steps, so the running rows keep streaming while it joins; 0 turns it off."""
    return whole_number_setting(ENV_PREFILL_CHUNK, DEFAULT_PREFILL_CHUNK, minimum=0, meaning_of_minimum=" (0: off)")


class SchedulerClosed(RuntimeError):
    """The scheduler was closed before this request finished."""


class ReplyStream:
    """One request's reply. Iterate it for the whole text so far, each time it grows (as `Engine.stream`);
    closing it, breaking out of the loop or setting the request's stop event ends the request at the next
    step. A request that failed raises its error at the end of the iteration (and from `result`)."""

    def __init__(self, tokenizer, stop_event: threading.Event):
        self.tokenizer, self.stop_event = tokenizer, stop_event
        self.token_ids: list[int] = []  # generated so far (an end-of-sequence token is not kept)
        self.finish_reason: str | None = None  # "eos", "length", "stopped", or "error"
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

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
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


class _Row:
    """A request inside the scheduler: its prompt, what the experts see, how it picks tokens."""

    def __init__(self, prompt: torch.Tensor, identities: IdentitySet, sampler: RowSampler, max_new_tokens: int,
                 stream: ReplyStream):
        self.prompt, self.identities, self.sampler = prompt, identities, sampler
        self.identity_key = Routing([identities]).key  # what its keys and values depend on, beside its tokens
        self.max_new_tokens, self.stream = max_new_tokens, stream
        # The prompt and every generated token, for the repetition penalty: a buffer filled as it goes.
        self.ids = torch.zeros(1, prompt.shape[1] + max_new_tokens, dtype=torch.long, device=prompt.device)
        self.ids[:, :prompt.shape[1]] = prompt
        self.length = prompt.shape[1]

    @property
    def generated(self) -> int:
        return self.length - self.prompt.shape[1]

    @property
    def last_token(self) -> int:
        return int(self.ids[0, self.length - 1])

    def choose(self, logits: torch.Tensor, eos_ids: frozenset) -> str | None:
        """Pick and record the next token from `logits` `[1, vocab]`; the finish reason if this ends the row."""
        token = self.sampler.next_token(self.ids[:, :self.length], logits)
        if token in eos_ids:
            return "eos"
        self.ids[0, self.length] = token
        self.length += 1
        self.stream._push(token)
        return "length" if self.generated >= self.max_new_tokens else None


class _PartialPrefill:
    """A long prompt being prefilled a chunk at a time: its cache so far and how many tokens it holds."""

    def __init__(self, row: _Row):
        self.row = row
        self.cache: DynamicCache | None = None  # made at its first chunk (from the prefix store if it can)
        self.done = 0


class Scheduler:
    """Owns the engine's decoding: one loop thread, one running batch of up to `max_batch` rows."""

    def __init__(self, engine, max_batch: int | None = None, prefix_cache_mb: int | None = None,
                 prefill_chunk: int | None = None):
        self.engine, self.model, self.tokenizer = engine, engine.model, engine.tokenizer
        self.max_batch = max_batch_setting() if max_batch is None else max_batch
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        prefix_cache_mb = prefix_cache_setting() if prefix_cache_mb is None else prefix_cache_mb
        if prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be 0 (off) or more, got {prefix_cache_mb}")
        # Earlier sequences' keys and values, by identity rows. They belong to these expert weights: code that
        # changes the weights in place must call `prefixes.clear()` (as it calls `forget_weights`).
        self.prefixes = PrefixCache(prefix_cache_mb * 2**20)
        self.prefill_chunk = prefill_chunk_setting() if prefill_chunk is None else prefill_chunk
        if self.prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be 0 (off) or more, got {self.prefill_chunk}")
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else eos)
        self.device = self.model.device
        self._wake = threading.Condition()
        self._waiting: deque[_Row] = deque()
        self._closed = False
        self.failure: BaseException | None = None  # what killed the loop thread, if it died
        # Only the loop thread touches the running rows, their cache and the step's routing.
        self._rows: list[_Row] = []
        self._batch = PaddedBatchCache()
        self._routing: Routing | None = None
        self._partial: deque[_PartialPrefill] = deque()  # long prompts being prefilled a chunk per step
        self.steps = 0  # decode steps run (for tests and benchmarks)
        self.widest_batch = 0  # the most rows one step decoded
        self.prefills = 0  # prefill forwards run
        self.widest_prefill = 0  # the most requests one prefill forward took
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
        identities = IdentitySet.parse(identities)
        conditioning = Conditioning.parse(conditioning)
        sampling = sampling or Sampling()
        if stop_event is not None and not isinstance(stop_event, threading.Event):
            raise TypeError(f"stop_event must be a threading.Event or None, got {type(stop_event).__name__}")
        sampler = RowSampler(sampling, device=self.device)
        fitted = self.engine.fit_history(history, identities, conditioning, sampling.max_new_tokens)
        messages = self.engine.chat_messages(fitted.history, identities, conditioning)
        prompt = self.engine.encode([messages])["input_ids"]
        stream = ReplyStream(self.tokenizer, stop_event or threading.Event())
        stream.left_out = fitted.left_out
        row = _Row(prompt, expert_identities(identities, conditioning), sampler, sampling.max_new_tokens, stream)
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

    @property
    def running(self) -> int:
        return len(self._rows)

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
        with self._wake:
            while not (self._closed or self._waiting or self._rows or self._partial):
                self._wake.wait()
            if self._closed:
                return False
            # A request stopped while it waited for a slot ends now, not when a slot frees.
            self._waiting = deque(self._still_wanted(self._waiting))
            joining = []
            while self._waiting and len(self._rows) + len(self._partial) + len(joining) < self.max_batch:
                joining.append(self._waiting.popleft())
        try:
            with torch.no_grad():
                self._admit(joining)
                self._prefill_one_chunk()
        except Exception as err:  # a failure of admission as a whole: the joining requests end with it
            log.exception("admitting %d requests failed", len(joining))
            partial = {id(p.row) for p in self._partial}
            for row in joining:
                if not row.stream.done and row not in self._rows and id(row) not in partial:
                    row.stream._finish("error", err)
        try:
            with torch.no_grad():
                self._leave_stopped()
                if self._rows:
                    self._step()
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
        for row in waiting + [p.row for p in self._partial] + self._rows:
            if not row.stream.done:
                row.stream._finish("error", error)
        self._rows, self._batch, self._partial = [], PaddedBatchCache(), deque()

    @staticmethod
    def _exit_reason(row: _Row) -> str | None:
        """"stopped" if the row's caller stopped it; "error" if its stop flag fails (the row is finished with
        that error here: it alone ends); None while it is wanted."""
        try:
            return "stopped" if row.stream.stop_event.is_set() else None
        except Exception as err:
            log.warning("a request's stop flag failed: %s", err)
            row.stream._finish("error", err)
            return "error"

    def _still_wanted(self, rows) -> list[_Row]:
        """The rows nobody stopped; the others end here."""
        kept = []
        for row in rows:
            reason = self._exit_reason(row)
            if reason == "stopped":
                row.stream._finish("stopped")
            elif reason is None:
                kept.append(row)
        return kept

    def _admit(self, rows: list[_Row]) -> None:
        """Prefill the waiting requests together, each under its own identity set, and add them to the batch.
        On a CPU a short prefill costs about what a decode step does (both read every weight once), so the
        requests that arrive together are prefilled in one forward. If that forward fails, each is tried alone,
        so that a request that breaks fails by itself."""
        rows = self._still_wanted(rows)
        if self.prefill_chunk:  # a long prompt is prefilled a chunk per step instead (`_prefill_one_chunk`)
            self._partial.extend(_PartialPrefill(r) for r in rows if r.prompt.shape[1] > self.prefill_chunk)
            rows = [r for r in rows if r.prompt.shape[1] <= self.prefill_chunk]
        if len(rows) > 1:
            try:
                prefilled = self._prefill(rows)
            except Exception as err:
                log.warning("joint prefill of %d requests failed (%s): prefilling each alone", len(rows), err)
            else:
                for row, (cache, logits) in zip(rows, prefilled):
                    self._join(row, cache, logits)
                return
        for row in rows:
            try:
                [(cache, logits)] = self._prefill([row])
            except Exception as err:  # this request alone fails
                log.warning("request failed at prefill: %s", err)
                row.stream._finish("error", err)
                continue
            self._join(row, cache, logits)

    def _prefill_one_chunk(self) -> None:
        """The next `prefill_chunk` tokens of the oldest long prompt being prefilled (vLLM's chunked prefill):
        the running rows wait for one chunk per step, not for the whole prompt. It continues the longest
        prefix the store holds for it; once its whole prompt is in, it joins the batch. A failure ends it alone."""
        if not self._partial:
            return
        partial = self._partial[0]
        row = partial.row
        if self._exit_reason(row) is not None:  # stopped while it was being prefilled
            if not row.stream.done:
                row.stream._finish("stopped")
            self._partial.popleft()
            return
        try:
            if partial.cache is None:
                hit = self.prefixes.lookup(row.identity_key, row.prompt, self.model.config)
                partial.cache, partial.done = hit if hit else (DynamicCache(config=self.model.config), 0)
            end = min(partial.done + self.prefill_chunk, row.prompt.shape[1])
            with use_identities([row.identities]):
                out = self.model(input_ids=row.prompt[:, partial.done:end],
                                 attention_mask=torch.ones(1, end, dtype=torch.long, device=self.device),
                                 position_ids=torch.arange(partial.done, end, device=self.device)[None],
                                 past_key_values=partial.cache, use_cache=True, logits_to_keep=1)
            self.prefills += 1
        except Exception as err:  # this request alone fails
            log.warning("request failed at a chunk of its prefill: %s", err)
            row.stream._finish("error", err)
            self._partial.popleft()
            return
        partial.done = end
        if end < row.prompt.shape[1]:
            return
        self._partial.popleft()
        cache = partial.cache
        self.prefixes.store(row.identity_key, row.prompt, [(la.keys, la.values) for la in cache.layers])
        self._join(row, cache, out.logits[:, -1])

    def _prefill(self, rows: list[_Row]) -> list[tuple[DynamicCache, torch.Tensor]]:
        """One forward over the rows' prompts, each continuing the longest prefix the store holds for it;
        per row, (its cache, batch 1, `length` columns; the logits of its last prompt token).

        Every row feeds the same number of new tokens, `T`, the longest part any row has left to prefill: a
        row with less left recomputes the end of its stored prefix (its cache is cut to `length - T`), and a
        row shorter than `T` is padded on the left. So the joint cache is left-padded like the running
        batch's, and each row's columns end at the right edge:

            row 0  [ pad  c c c | t t t t ]      c: stored prefix, t: computed now
            row 1  [ c    c c c | c c t t ]      (its last two stored columns recomputed)
            row 2  [ pad  pad   | pad t t ]      (nothing stored, a 2-token prompt)
        """
        found = [self.prefixes.lookup(r.identity_key, r.prompt, self.model.config) for r in rows]
        lengths = [r.prompt.shape[1] for r in rows]
        new = max(length - (hit[1] if hit else 0) for length, hit in zip(lengths, found))
        kept = [max(0, length - new) for length in lengths]  # cached columns each row keeps
        width = max(kept)
        cache = DynamicCache(config=self.model.config)
        if width:
            like = next(hit[0] for hit in found if hit).layers  # shapes for the rows that keep nothing
            for layer in range(len(like)):
                keys, values = [], []
                for hit, keep in zip(found, kept):  # a row that keeps columns had at least that many stored
                    stored = hit[0].layers[layer] if keep else like[layer]
                    keys.append(pad_left(stored.keys[:, :, :keep], width))
                    values.append(pad_left(stored.values[:, :, :keep], width))
                cache.update(torch.cat(keys), torch.cat(values), layer)
        ids = torch.zeros(len(rows), new, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(rows), width + new, dtype=torch.long, device=self.device)
        positions = torch.zeros(len(rows), new, dtype=torch.long, device=self.device)
        for i, (row, length, keep) in enumerate(zip(rows, lengths, kept)):
            fed = length - keep
            ids[i, new - fed:] = row.prompt[0, keep:]
            mask[i, width + new - length:] = 1
            positions[i, new - fed:] = torch.arange(keep, length, device=self.device)
        with use_identities([r.identities for r in rows]):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        self.prefills += 1
        self.widest_prefill = max(self.widest_prefill, len(rows))
        prefilled = []
        for i, (row, length) in enumerate(zip(rows, lengths)):
            own = DynamicCache(config=self.model.config)
            for layer, la in enumerate(cache.layers):
                # copies: a view would keep the joint tensors alive in the store and in the batch
                own.update(la.keys[i:i + 1, :, -length:].clone(), la.values[i:i + 1, :, -length:].clone(), layer)
            # Free to store: the batch never changes these tensors in place, it concatenates into new ones.
            self.prefixes.store(row.identity_key, row.prompt, [(la.keys, la.values) for la in own.layers])
            prefilled.append((own, out.logits[i:i + 1, -1]))
        return prefilled

    def _join(self, row: _Row, cache: DynamicCache, logits: torch.Tensor) -> None:
        """The row's first token from its prefill's logits; then it joins the batch, unless that ended it."""
        try:
            finished = row.choose(logits, self.eos_ids)
            if not finished:
                self._batch.add(cache, row.prompt.shape[1])  # checks the cache before changing the batch
        except Exception as err:  # this request alone fails
            log.warning("request failed at its first token: %s", err)
            row.stream._finish("error", err)
            return
        if finished:
            row.stream._finish(finished)
            return
        self._rows.append(row)
        self._routing = None

    def _step(self) -> None:
        """One token for every running row."""
        rows = self._rows
        if self._routing is None:
            self._routing = Routing([r.identities for r in rows])
        tokens = torch.tensor([[r.last_token] for r in rows], device=self.device)
        mask, positions = self._batch.step_inputs()
        with use_identities(self._routing):
            out = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions,
                             past_key_values=self._batch.cache, use_cache=True)
        self._batch.advance(mask)
        self.steps += 1
        self.widest_batch = max(self.widest_batch, len(rows))
        logits = out.logits[:, -1]
        ended = {}
        for i, row in enumerate(rows):
            try:
                reason = row.choose(logits[i:i + 1], self.eos_ids)
            except Exception as err:  # e.g. a NaN the sampler refuses: this row alone ends
                row.stream._finish("error", err)
                ended[i] = None
                continue
            if reason:
                ended[i] = reason
        self._remove(ended)

    def _leave_stopped(self) -> None:
        reasons = {i: self._exit_reason(r) for i, r in enumerate(self._rows)}
        # A stopped row's sequence goes to the prefix store; a row whose stop flag failed has already ended.
        self._remove({i: reason if reason == "stopped" else None for i, reason in reasons.items() if reason})

    def _remove(self, ended: dict[int, str | None]) -> None:
        """Take the rows at the indices of `ended` out of the batch (finishing them with their reason)."""
        if not ended:
            return
        self._store_prefixes([i for i, reason in ended.items() if reason is not None])  # not a failed row's
        for i, reason in ended.items():
            if reason is not None:
                self._rows[i].stream._finish(reason)
        keep = [i for i in range(len(self._rows)) if i not in ended]
        self._rows = [self._rows[i] for i in keep]
        self._batch.keep(keep)
        self._routing = None

    def _store_prefixes(self, indices) -> None:
        """Give the leaving rows' sequences (what the cache holds of them: its right-hand columns, the padding
        cut off) to the prefix store, as copies (a view would keep the whole batch's tensors alive)."""
        if not self.prefixes.budget_bytes:
            return
        for i in indices:
            row, held = self._rows[i], int(self._batch.mask[i].sum())
            layers = [(la.keys[i:i + 1, :, -held:].clone(), la.values[i:i + 1, :, -held:].clone())
                      for la in self._batch.cache.layers]
            self.prefixes.store(row.identity_key, row.ids[0, :held], layers)

    def _fail_all(self, err: BaseException) -> None:
        for row in self._rows:
            if not row.stream.done:
                row.stream._finish("error", err)
        self._rows, self._batch, self._routing = [], PaddedBatchCache(), None
