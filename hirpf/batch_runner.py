"""The scheduler's runner: what runs the model for the running batch, one call at a time from the loop thread.

    prefill(rows) ─────────► first_token(row, logits), add(row, cache) ──► step() ──► …   keep(indices)
    (one forward, each row      (its first token; its cache joins       (one token for   (rows leave; their
     under its own identity,     the batch's)                            every running    sequences stored
     continuing a stored prefix)                                         row)             first: store_prefixes)
    prefill_next_chunk() ──► … ──► (cache, logits) ──► first_token, add    a long prompt, one chunk per step
    packed_step(take_joiner) ──► (cache, logits) of the prompts it completed ──► first_token, add
    (a decode step that carries prompts' tokens, and takes in between two layers a request that arrives)

It knows nothing of queues, stop events or failures: which requests run, when they leave and what happens
when a call raises is the scheduler's policy (`hirpf.scheduler`). An `add` that raises leaves the running
batch as it was (`PaddedBatchCache.add` is all-or-nothing); a `step` that raises leaves it unusable, and the
scheduler ends its rows.

The batch is an ordinary left-padded batch over transformers' `DynamicCache` (`hirpf.batch_cache`), with the
identity rows of the running requests in batch order (`Routing`, rebuilt when rows join or leave; the expert
layers cache masks and plans by content, so that is cheap). Every row picks its token with its own settings
and its own seeded generator (`hirpf.row_sampling`).
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

import torch
from transformers import DynamicCache

from .batch_cache import PaddedBatchCache
from .identities import IdentitySet
from .packed_step import LayerJoin, PackedStep, PromptChunk, forward_to_layer
from .packed_step import enable as enable_packed_steps
from .padding import pad_left
from .prefill_pacing import PrefillPacer
from .prefix_cache import PrefixCache
from .reply_stream import FinishReason, ReplyStream
from .routing import Routing, use_identities
from .row_sampling import RowSampler


class Row:
    """A request inside the runner: its prompt, what the experts see, how it picks tokens, where they go."""

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

    def choose(self, logits: torch.Tensor, eos_ids: frozenset) -> FinishReason | None:
        """Pick and record the next token from `logits` `[1, vocab]` (it goes to the stream); the finish reason
        if this ends the row."""
        token = self.sampler.next_token(self.ids[:, :self.length], logits)
        if token in eos_ids:
            return FinishReason.EOS
        self.ids[0, self.length] = token
        self.length += 1
        self.stream._push(token)
        return FinishReason.LENGTH if self.generated >= self.max_new_tokens else None


Joining = tuple[Row, DynamicCache, torch.Tensor]  # a prompt now whole: its row, its cache, its last token's logits


class ChunkedPrefill:
    """A long prompt being prefilled a chunk at a time: its cache so far and how many tokens it holds."""

    def __init__(self, row: Row):
        self.row = row
        self.cache: DynamicCache | None = None  # made at its first chunk (from the prefix store if it can)
        self.done = 0


class BatchRunner:
    """The running rows, their batch cache and the long prompts being prefilled a chunk at a time."""

    def __init__(self, model, eos_ids: frozenset, prefixes: PrefixCache, prefill_chunk: int,
                 prefill_step_share: float = 0.0, packed_steps: bool = True):
        self.model, self.eos_ids, self.prefixes, self.prefill_chunk = model, eos_ids, prefixes, prefill_chunk
        # Chunks of at most `prefill_chunk` tokens, each sized to a share of a decode step's time.
        self.pacer = PrefillPacer(prefill_chunk, prefill_step_share) if prefill_chunk else None
        # While rows run, joining prompts ride in the decode step in chunks (`packed_step`) where the model
        # allows it; with chunked prefill off, or on a model it cannot pack, prompts get forwards of their own.
        self.packs = bool(packed_steps and prefill_chunk and enable_packed_steps(model))
        self.device = model.device
        self.rows: list[Row] = []  # in batch order
        self.batch = PaddedBatchCache()
        self.routing: Routing | None = None  # the rows' identities; None: rebuild at the next step
        self.packed_routing: Routing | None = None  # the same, for a packed step that carries no prompt yet
        self.chunked: deque[ChunkedPrefill] = deque()  # oldest first
        self.steps = 0  # decode steps run (for tests and benchmarks)
        self.widest_batch = 0  # the most rows one step decoded
        self.prefills = 0  # forwards that prefilled prompt tokens (packed steps included)
        self.packed_steps = 0  # decode steps that carried prompt tokens
        self.widest_prefill = 0  # the most prompts one such forward took

    @property
    def occupied(self) -> int:
        """Rows running or being prefilled in chunks: each holds a place of the batch."""
        return len(self.rows) + len(self.chunked)

    def needs_chunks(self, row: Row) -> bool:
        """Whether `row`'s prompt goes in chunks: any prompt while rows run and steps pack, else a long one."""
        return (self.packs and bool(self.rows)) or self.is_long(row)

    def is_long(self, row: Row) -> bool:
        """A prompt longer than `prefill_chunk` tokens: prefilled a paced chunk at a time (a shorter one goes
        whole)."""
        return bool(self.prefill_chunk) and row.prompt.shape[1] > self.prefill_chunk

    # --- prefill ----------------------------------------------------------------------------------
    def prefill(self, rows: list[Row]) -> list[tuple[DynamicCache, torch.Tensor]]:
        """One forward over the rows' prompts, each continuing the longest prefix the store holds for it;
        per row, (its cache, batch 1, `length` columns; the logits of its last prompt token). Each prompt's
        keys and values go to the prefix store.

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

    def prefill_next_chunk(self, partial: "ChunkedPrefill | None" = None) -> "Joining | None":
        """The next chunk of the oldest chunked prompt (vLLM's chunked prefill): the running rows wait for one
        chunk per step, not for the whole prompt; the pacer sizes the chunk (at most `prefill_chunk` tokens).
        Its first chunk continues the longest prefix the store holds for it. Once its whole prompt is in, it
        leaves `chunked` and this returns (its row, its cache, the logits of its last prompt token) to join;
        until then, None. If this raises, it has left. `partial`: another prompt of `chunked` than the oldest."""
        partial = partial or self.chunked[0]
        row = partial.row
        try:
            self._start_from_prefix(partial)
            length = row.prompt.shape[1]
            end = min(partial.done + self.pacer.next_chunk(len(self.rows)), length) if self.is_long(row) else length
            started = time.perf_counter()
            with use_identities([row.identities]):
                out = self.model(input_ids=row.prompt[:, partial.done:end],
                                 attention_mask=torch.ones(1, end, dtype=torch.long, device=self.device),
                                 position_ids=torch.arange(partial.done, end, device=self.device)[None],
                                 past_key_values=partial.cache, use_cache=True, logits_to_keep=1)
            self._finish_device_work()
            if self.rows:  # the pacer sizes chunks that make running rows wait
                self.pacer.record_chunk(time.perf_counter() - started, end - partial.done)
            self.prefills += 1
        except Exception:
            self.chunked.remove(partial)
            raise
        partial.done = end
        if end < row.prompt.shape[1]:
            return None
        self.chunked.remove(partial)
        return self._prompt_complete(partial, out.logits[:, -1])

    def _start_from_prefix(self, partial: ChunkedPrefill) -> None:
        """At a prompt's first chunk: its cache starts from the longest prefix the store holds for it."""
        if partial.cache is None:
            row = partial.row
            hit = self.prefixes.lookup(row.identity_key, row.prompt, self.model.config)
            partial.cache, partial.done = hit if hit else (DynamicCache(config=self.model.config), 0)

    def _prompt_complete(self, partial: ChunkedPrefill, logits: torch.Tensor) -> "Joining":
        """A prompt whose every token is in its cache: to the prefix store, then (row, cache, logits) to join."""
        row, cache = partial.row, partial.cache
        self.prefixes.store(row.identity_key, row.prompt, [(la.keys, la.values) for la in cache.layers])
        return row, cache, logits

    # --- the running batch ------------------------------------------------------------------------
    def first_token(self, row: Row, logits: torch.Tensor) -> FinishReason | None:
        """The row's first token, from its prefill's logits; the reason if that token ended it."""
        return row.choose(logits, self.eos_ids)

    def add(self, row: Row, cache: DynamicCache) -> None:
        """The row, its first token chosen, joins the batch (`PaddedBatchCache.add` checks the cache before
        changing the batch)."""
        self.batch.add(cache, row.prompt.shape[1])
        self.rows.append(row)
        self.routing = self.packed_routing = None

    def step(self) -> dict[int, FinishReason | Exception]:
        """One token for every running row; what ended a row, by its index: a finish reason, or the error
        its own token choice raised (e.g. a NaN the sampler refuses). The ended rows are still in the batch."""
        rows = self.rows
        if self.routing is None:
            self.routing = Routing([r.identities for r in rows])
        tokens = torch.tensor([[r.last_token] for r in rows], device=self.device)
        started = time.perf_counter()
        with use_identities(self.routing):
            logits = self.batch.decode(self.model, tokens)
        if self.pacer is not None:
            self._finish_device_work()
            self.pacer.record_step(time.perf_counter() - started, len(rows))
        self.steps += 1
        return self.choose(logits)

    def packed_step(self, take_joiner: "Callable[[], Row | None] | None" = None,
                    joiner_failed: "Callable[[Row, Exception], None] | None" = None
                    ) -> tuple[torch.Tensor, list["Joining"]]:
        """`step`, carrying in the same forward the next chunks of the prompts waiting to join (oldest first, as
        many tokens as the pacer allows: `hirpf.packed_step`), and the requests that arrive while it runs:
        before each decoder layer `take_joiner()` may hand over one (a short prompt; the batch has room for
        it), which is run alone through the layers passed and rides the rest (`PackedStep.join`); should that
        fail, `joiner_failed(row, error)` and the step goes on without it. Returns the running rows' logits
        `[rows, vocab]` (their tokens not yet chosen: `choose`, once the prompts now whole have their first
        tokens), and those prompts, each (row, cache, logits of its last prompt token) to join. If it raises,
        no cache of the batch or of a chunked prompt changed (the prompts that joined in flight start again
        from the prefix store): the step and the chunks can run apart."""
        rows = self.rows
        # One budget of prompt tokens per step, as vLLM's: a short prompt joins whole, as it would with a
        # forward of its own, and uses it first; the long prompts, oldest first, share what is left (a short
        # prompt riding beside a long one's full chunk had made the slowest steps of a join). The pacer sizes
        # and measures only steps that carry a long prompt: a short prompt's tokens, with little cache to
        # attend to, cost less than a long prompt's later chunks, and a busy batch's many short joins had set
        # the cost of a long prompt's token too low (bench_serving's join case, the same code twice: the
        # prompt joined in 5.8 s, its running rows waiting 3.9 times their steady p95 between tokens, against
        # 16.9 s and 2.1 times).
        long_waiting = any(self.is_long(p.row) for p in self.chunked)
        budget = self.pacer.next_chunk(len(rows), packed=True) if long_waiting else 0
        partials, chunks, long_rides = [], [], False
        for partial in sorted(self.chunked, key=lambda p: self.is_long(p.row)):  # short ones first, stable
            long = self.is_long(partial.row)
            if long and budget <= 0:
                continue
            self._start_from_prefix(partial)
            left = partial.row.prompt.shape[1] - partial.done
            take = min(budget, left) if long else left
            budget -= left
            long_rides |= long
            partials.append(partial)
            chunks.append(PromptChunk(partial.cache, partial.done, partial.done + take))
        joined_in_flight: list[ChunkedPrefill] = []

        def join(layer: int) -> LayerJoin | None:
            row = take_joiner()
            if row is None:
                return None
            partial = ChunkedPrefill(row)
            try:
                joined = self._catch_up(partial, layer)
            except Exception as err:  # this request alone fails; the step goes on
                joiner_failed(row, err)
                return None
            self.chunked.append(partial)
            partials.append(partial)
            joined_in_flight.append(partial)
            return joined

        step = PackedStep(self.batch, chunks, [r.identities for r in rows] + [p.row.identities for p in partials],
                          join=join if take_joiner is not None else None)
        ids = torch.cat([torch.tensor([r.last_token for r in rows], device=self.device)]
                        + [p.row.prompt[0, c.start:c.end] for p, c in zip(partials, chunks)])[None]
        if not partials:  # a decode step that prompts may join: the rows' routing, kept while they run
            if self.packed_routing is None:
                self.packed_routing = Routing(step.identities, tokens_per_row=step.tokens_per_row())
            routing = self.packed_routing
        else:
            routing = None
        started = time.perf_counter()
        try:
            logits = step.run(self.model, ids, routing)
            step.commit()
        except Exception:
            for partial in joined_in_flight:  # its cache holds some layers of its prompt: start it again
                partial.cache, partial.done = None, 0
            raise
        self._finish_device_work()
        if long_rides:
            self.pacer.record_packed(time.perf_counter() - started, len(rows), step.tokens - len(rows))
        elif not partials and self.pacer is not None:  # nothing joined: a decode step's time, as `step`'s
            self.pacer.record_step(time.perf_counter() - started, len(rows))
        self.steps += 1
        if partials:
            self.packed_steps += 1
            self.prefills += 1
        self.widest_prefill = max(self.widest_prefill, len(partials))
        # logits [rows + chunks, vocab]: the rows' next tokens, then each chunk's last
        complete = []
        for i, (partial, chunk) in enumerate(zip(partials, step.chunks)):
            partial.done = chunk.end
            if chunk.end == partial.row.prompt.shape[1]:
                self.chunked.remove(partial)
                complete.append(self._prompt_complete(partial, logits[len(rows) + i][None]))
        return logits[:len(rows)], complete

    def _catch_up(self, partial: ChunkedPrefill, layer: int) -> LayerJoin:
        """A prompt joining a step in flight before decoder `layer`: from the longest prefix the store holds, run
        alone through the layers before it (into its own cache)."""
        self._start_from_prefix(partial)
        row, start = partial.row, partial.done
        end = row.prompt.shape[1]
        with use_identities([row.identities]):
            hidden, layer_kwargs = forward_to_layer(
                self.model, layer, input_ids=row.prompt[:, start:end],
                attention_mask=torch.ones(1, end, dtype=torch.long, device=self.device),
                position_ids=torch.arange(start, end, device=self.device)[None], past_key_values=partial.cache,
                use_cache=True)
        return LayerJoin(PromptChunk(partial.cache, start, end), hidden, layer_kwargs["position_embeddings"],
                         row.identities)

    def choose(self, logits: torch.Tensor) -> dict[int, FinishReason | Exception]:
        """Every running row's next token from its logits `[rows, vocab]`; what ended a row, by its index."""
        rows = self.rows
        self.widest_batch = max(self.widest_batch, len(rows))
        ended: dict[int, FinishReason | Exception] = {}
        for i, row in enumerate(rows):
            try:
                reason = row.choose(logits[i:i + 1], self.eos_ids)
            except Exception as err:  # this row's alone
                ended[i] = err
                continue
            if reason:
                ended[i] = reason
        return ended

    def _finish_device_work(self) -> None:
        """Wait for the device's queued work, so that a time measured around a forward is the forward's (a
        GPU returns before its kernels finish; a CPU finishes in the call)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def store_prefixes(self, indices) -> None:
        """Give these rows' sequences (what the cache holds of them: its right-hand columns, the padding cut
        off) to the prefix store, as copies (a view would keep the whole batch's tensors alive)."""
        if not self.prefixes.budget_bytes:
            return
        for i in indices:
            row, held = self.rows[i], int(self.batch.mask[i].sum())
            layers = [(la.keys[i:i + 1, :, -held:].clone(), la.values[i:i + 1, :, -held:].clone())
                      for la in self.batch.cache.layers]
            self.prefixes.store(row.identity_key, row.ids[0, :held], layers)

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at `indices` (in that order; `swap_remove_order` gives one that moves the fewest
        rows); the others leave the batch."""
        self.rows = [self.rows[i] for i in indices]
        self.batch.keep(indices)
        self.routing = self.packed_routing = None

    def clear_batch(self) -> None:
        """Drop every running row and the batch cache (the chunked prompts stay)."""
        self.rows, self.batch, self.routing, self.packed_routing = [], PaddedBatchCache(), None, None
