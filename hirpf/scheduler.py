"""Serving many requests at once: one decode loop, one batch, a different identity set in every row.

    submit() ──► waiting queue ──► prefill alone ──► joins the running batch ──► one token per row per step
    (caller thread:                (loop thread,      (PaddedBatchCache.add)      under Routing(rows of the
     validate, tokenize)            its own identity)                            batch as it is now)
                                                              finished / stopped rows leave at once ──►
                                                              their slots go to the next waiting request;
                                                              their tokens and cache go to the prefix store

A request (chat history, identity set with its strengths, conditioning, sampling settings and seed, max new
tokens, stop event) is checked and tokenized in the caller's thread, so a bad one fails there, alone. The
loop thread owns the model's decoding: it admits waiting requests while the batch has fewer than
`max_batch` rows (`HIRPF_MAX_BATCH`, default 8), prefills each alone under its own identity set (so its
prompt is computed as `Engine.generate` would), then runs one decode step for all rows. A prompt that
begins as an earlier request's sequence did under the same identity rows (the identity prompt; in a chat,
the whole conversation so far) is prefilled only from where they part (`hirpf.prefix_cache`): on a CPU the
prefill of a joining request is what the running rows and its own first token wait for. The step's
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

from .batch_cache import PaddedBatchCache
from .identities import IdentitySet
from .prefix_cache import PrefixCache, prefix_cache_setting
from .prompts import Conditioning, expert_identities
from .routing import Routing, use_identities
from .row_sampling import RowSampler
from .sampling import Message, Sampling
from .settings import whole_number_setting

ENV_MAX_BATCH = "HIRPF_MAX_BATCH"
DEFAULT_MAX_BATCH = 8
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


class Scheduler:
    """Owns the engine's decoding: one loop thread, one running batch of up to `max_batch` rows."""

    def __init__(self, engine, max_batch: int | None = None, prefix_cache_mb: int | None = None):
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
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else eos)
        self.device = self.model.device
        self._wake = threading.Condition()
        self._waiting: deque[_Row] = deque()
        self._closed = False
        # Only the loop thread touches the running rows, their cache and the step's routing.
        self._rows: list[_Row] = []
        self._batch = PaddedBatchCache()
        self._routing: Routing | None = None
        self.steps = 0  # decode steps run (for tests and benchmarks)
        self.widest_batch = 0  # the most rows one step decoded
        self._thread = threading.Thread(target=self._loop, name="hirpf-scheduler", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # --- requests --------------------------------------------------------------------------------
    def submit(self, history: Sequence[Message], identities: "IdentitySet | str",
               conditioning: "Conditioning | str" = Conditioning.EXPERTS_AND_PROMPT, sampling: Sampling | None = None,
               stop_event: threading.Event | None = None) -> ReplyStream:
        """Queue one reply to `history`; returns its stream at once. A bad identity set, conditioning or
        sampling setting raises here (IdentityError / ValueError) and touches nothing else."""
        identities = IdentitySet.parse(identities)
        conditioning = Conditioning.parse(conditioning)
        sampling = sampling or Sampling()
        sampler = RowSampler(sampling, device=self.device)
        messages = self.engine.chat_messages(history, identities, conditioning)
        prompt = self.engine.encode([messages])["input_ids"]
        stream = ReplyStream(self.tokenizer, stop_event or threading.Event())
        row = _Row(prompt, expert_identities(identities, conditioning), sampler, sampling.max_new_tokens, stream)
        with self._wake:
            if self._closed:
                raise SchedulerClosed("the scheduler is closed")
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
        return self._closed

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the loop; unfinished requests end with `SchedulerClosed`."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    # --- the loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._waiting or self._rows):
                    self._wake.wait()
                if self._closed:
                    break
                # A request stopped while it waited for a slot ends now, not when a slot frees.
                given_up = [r for r in self._waiting if r.stream.stop_event.is_set()]
                if given_up:
                    self._waiting = deque(r for r in self._waiting if not r.stream.stop_event.is_set())
                joining = []
                while self._waiting and len(self._rows) + len(joining) < self.max_batch:
                    joining.append(self._waiting.popleft())
            for row in given_up:
                row.stream._finish("stopped")
            try:
                with torch.no_grad():
                    for row in joining:
                        self._admit(row)
                    self._leave_stopped()
                    if self._rows:
                        self._step()
            except Exception as err:  # a failure of the batch as a whole: its rows end with it
                log.exception("scheduler step failed")
                self._fail_all(err)
        closed = SchedulerClosed("the scheduler was closed before this reply finished")
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        for row in waiting + self._rows:
            row.stream._finish("error", closed)
        self._rows, self._batch = [], PaddedBatchCache()

    def _admit(self, row: _Row) -> None:
        """Prefill a waiting request alone, under its own identity set, and add it to the batch."""
        if row.stream.stop_event.is_set():
            row.stream._finish("stopped")
            return
        try:
            length = row.prompt.shape[1]
            cache, start = self.prefixes.lookup(row.identity_key, row.prompt, self.model.config) or (
                DynamicCache(config=self.model.config), 0)
            with use_identities([row.identities]):
                out = self.model(input_ids=row.prompt[:, start:], attention_mask=torch.ones_like(row.prompt),
                                 position_ids=torch.arange(start, length, device=self.device)[None],
                                 past_key_values=cache, use_cache=True, logits_to_keep=1)
            # Free to store: the batch never changes these tensors in place, it concatenates into new ones.
            self.prefixes.store(row.identity_key, row.prompt, [(la.keys, la.values) for la in cache.layers])
            finished = row.choose(out.logits[:, -1], self.eos_ids)
            if not finished:
                self._batch.add(cache, length)  # checks the cache before changing the batch
        except Exception as err:  # this request alone fails
            log.warning("request failed at prefill: %s", err)
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
        self._remove({i: "stopped" for i, r in enumerate(self._rows) if r.stream.stop_event.is_set()})

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
