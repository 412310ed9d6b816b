"""The running batch's key/value cache: one row per request, left-padded, re-shaped as rows join and leave.

    columns ──────────────────────────────────────────────►  (cache positions; newest on the right)
    row 0   [ pad pad  k k k k k k k k k ]   joined first
    row 1   [ k   k    k k k k k k k k k ]   longest prompt
    row 2   [ pad pad  pad pad pad k k k ]   joined two steps ago
             └ attention mask 0 ┘

Every row decodes one token per step, so each row's tokens stay contiguous and end at the right edge: only
left padding is ever needed. A joining row is prefilled alone into its own `DynamicCache` and concatenated
along the batch dimension, the shorter side padded on the left; a leaving row is dropped with an index
select, and columns that became padding in every remaining row are cut. Keys are cached after the rotary
embedding, so moving a row's columns does not change what its attention sees; its position ids count only
its own tokens.

Each layer's keys and values are the left part of larger buffers (`SpareColumnsLayer`): a step writes its new
column in place into the spare ones, instead of concatenating the whole layer into a new tensor as
transformers' `DynamicLayer` does. On a CPU that copy, into freshly allocated memory at every step and layer,
was most of a step once a long row had joined: a batch of 8 padded to 1,500 columns spent 131 of its 224 ms
in `torch.cat` (2-core Xeon, one profiled step), and 7 ms of 95 at 200 columns.

Rows leave and join in place where they can, the same way: a leaving row's slot takes a row from the end
(`swap_remove_order`), so `keep` moves one row per leaving row and the buffers keep their room for it, and a
row no wider than the batch joins into that room (`add`). Copying the whole batch into new buffers at every
leave and join had cost 17 and 8.5 ms (8 clients, 2-core Xeon), on the way of every new request's first token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .padding import pad_left

# Columns a layer's buffers hold beyond its tokens: a layer that runs out is copied once into buffers with
# this many more, or a quarter more columns, whichever is more (so a growing prompt is copied a few times).
SPARE_COLUMNS = 64


class SpareColumnsLayer(DynamicLayer):
    """A cache layer whose `keys`/`values` `[rows, heads, tokens, dim]` are views of the left columns of larger
    buffers: `update` writes the new columns into the spare ones (in place) and widens the views. A view
    handed out before never sees a change: only columns right of every committed view are written, and rows
    beyond them (a joining row: `stage_row`), except the leaving rows' slots that `move_rows` fills. Whoever
    assigns other tensors to `keys`/`values` is followed: the next write first copies them into new buffers
    unless they are this layer's own views (as `staged` returns them, which a packed step's commit assigns)."""

    def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, held: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = key_buffer.dtype, key_buffer.device, True
        self.key_buffer, self.value_buffer = key_buffer, value_buffer
        self.keys, self.values = key_buffer[:, :, :held], value_buffer[:, :, :held]

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, spare: int = SPARE_COLUMNS) -> "SpareColumnsLayer":
        """A layer holding copies of `keys`/`values`, with `spare` columns of room."""
        return cls(_with_spare_columns(keys, spare), _with_spare_columns(values, spare), keys.shape[2])

    def staged(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) with the new columns after the held ones, written into the spare columns; the layer
        still holds what it held (the same tensors) until they are assigned to it (`update` does that at once).
        Out of room, or holding tensors that are not its buffers' views, it first copies what it holds into
        new buffers."""
        rows, held, new = self.keys.shape[0], self.keys.shape[2], key_states.shape[2]
        if not self.holds_own_views() or held + new > self.key_buffer.shape[2]:
            spare = max(new, SPARE_COLUMNS, held // 4)
            self.key_buffer = _with_spare_columns(self.keys, spare)
            self.value_buffer = _with_spare_columns(self.values, spare)
        self.key_buffer[:rows, :, held:held + new] = key_states
        self.value_buffer[:rows, :, held:held + new] = value_states
        return self.key_buffer[:rows, :, :held + new], self.value_buffer[:rows, :, :held + new]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys, self.values = self.staged(key_states, value_states)
        return self.keys, self.values

    def holds_own_views(self) -> bool:
        """Whether `keys`/`values` are the top-left corner of this layer's buffers (else: assigned from outside)."""
        return _is_left_view(self.keys, self.key_buffer) and _is_left_view(self.values, self.value_buffer)

    @property
    def spare_rows(self) -> int:
        return self.key_buffer.shape[0] - self.keys.shape[0] if self.holds_own_views() else 0

    def stage_row(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write a row `[1, heads, ≤ held, dim]` right-aligned into the first spare row, zeros on its left; the
        layer holds it only once `hold_rows` says so (nothing it holds changes before)."""
        row, held, length = self.keys.shape[0], self.keys.shape[2], keys.shape[2]
        for buffer, part in ((self.key_buffer, keys), (self.value_buffer, values)):
            buffer[row, :, :held - length] = 0
            buffer[row, :, held - length:held] = part[0]

    def move_rows(self, rows: int, moves: list[tuple[int, int]]) -> None:
        """Hold the first `rows` rows, each (source, slot) of `moves` first copied into that slot (its own
        columns only): slots are leaving rows', sources rows beyond `rows`."""
        held = self.keys.shape[2]
        for source, slot in moves:
            self.key_buffer[slot, :, :held] = self.key_buffer[source, :, :held]
            self.value_buffer[slot, :, :held] = self.value_buffer[source, :, :held]
        self.hold_rows(rows)

    def hold_rows(self, rows: int) -> None:
        held = self.keys.shape[2]
        self.keys, self.values = self.key_buffer[:rows, :, :held], self.value_buffer[:rows, :, :held]


def _is_left_view(view: torch.Tensor, buffer: torch.Tensor) -> bool:
    return view.data_ptr() == buffer.data_ptr() and view.stride() == buffer.stride()


def swap_remove_order(rows: int, leaving) -> list[int]:
    """The indices of the rows that stay, in the order `PaddedBatchCache.keep` can keep them in place: each
    leaving row's slot below the new row count taken by a staying row from the end, the others where they are."""
    leaving = set(leaving)
    staying = rows - len(leaving)
    tail = [i for i in range(staying, rows) if i not in leaving]  # staying rows beyond the new row count
    return [tail.pop() if i in leaving else i for i in range(staying)]


def _with_spare_columns(t: torch.Tensor, spare: int) -> torch.Tensor:
    buffer = t.new_empty(t.shape[0], t.shape[1], t.shape[2] + spare, t.shape[3])
    buffer[:, :, :t.shape[2]] = t
    return buffer


def left_padded_layers(parts: list[list[tuple[torch.Tensor, torch.Tensor]]], width: int) -> list[SpareColumnsLayer]:
    """Per layer, the rows of `parts` (each a list of per-layer (keys, values) `[rows, heads, ≤ width, dim]`)
    stacked in order, each right-aligned in `width` columns with zeros on its left (finite: a masked column
    weighs 0, and 0 × NaN would not be 0), copied once into buffers with spare columns."""
    layers = []
    for tensors in zip(*parts):
        like = tensors[0][0]
        rows = sum(keys.shape[0] for keys, _ in tensors)
        shape = (rows, like.shape[1], width + SPARE_COLUMNS, like.shape[3])
        key_buffer, value_buffer = like.new_empty(shape), like.new_empty(shape)  # the spare columns stay unset
        row = 0
        for keys, values in tensors:
            n, held = keys.shape[0], keys.shape[2]
            for buffer, part in ((key_buffer, keys), (value_buffer, values)):
                buffer[row:row + n, :, :width - held] = 0
                buffer[row:row + n, :, width - held:width] = part
            row += n
        layers.append(SpareColumnsLayer(key_buffer, value_buffer, width))
    return layers


def _tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_of(layers: list[SpareColumnsLayer]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = layers
    return cache


class PaddedBatchCache:
    """A `DynamicCache` over the running rows plus the `[rows, columns]` attention mask that says which
    columns hold each row's tokens."""

    def __init__(self):
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, columns] long: 1 where a row has a token

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @property
    def columns(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def add(self, row_cache: DynamicCache, length: int) -> None:
        """Append a row prefilled alone (`row_cache` holds `length` tokens, batch 1) as the last row.

        All-or-nothing: every new tensor is built before any is swapped in, so a failure half way (an
        allocation error when a long prompt joins a full machine) leaves the running rows' cache as it was and
        fails only the joining request. The price: old and new tensors live together for a moment."""
        _check_layers(row_cache)
        row_mask = torch.ones(1, length, dtype=torch.long, device=_device(row_cache))
        if self.cache is None:
            self.cache, self.mask = _cache_of(left_padded_layers([_tensors(row_cache)], length)), row_mask
            return
        if length <= self.columns and all(layer.spare_rows for layer in self.cache.layers):
            # Into the room a leaving row left: written where no row is held, then held, so a failure half way
            # changes nothing the running rows read.
            mask = torch.cat([self.mask, pad_left(row_mask, self.columns)])
            for layer, (keys, values) in zip(self.cache.layers, _tensors(row_cache)):
                layer.stage_row(keys, values)
            for layer in self.cache.layers:
                layer.hold_rows(self.rows + 1)
            self.mask = mask
            return
        width = max(self.columns, length)
        layers = left_padded_layers([_tensors(self.cache), _tensors(row_cache)], width)
        mask = torch.cat([pad_left(self.mask, width), pad_left(row_mask, width)])
        self._swap_in(layers, mask)

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at `indices` (in that order); cut columns that are padding in all of them. In
        place (the leaving rows' slots overwritten, no copy of the rest) when every row that moves comes from
        beyond the kept rows (`swap_remove_order` gives such an order) and the padding to cut is small;
        else into new buffers, all-or-nothing as `add`."""
        if not indices:
            self.cache = self.mask = None
            return
        index = torch.tensor(indices, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        # Left padding is a prefix of zeros in every row: the shortest prefix can go.
        drop = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())
        moves = [(source, slot) for slot, source in enumerate(indices) if source != slot]
        if (drop < max(SPARE_COLUMNS, self.columns // 4) and all(source >= len(indices) for source, _ in moves)
                and all(layer.holds_own_views() for layer in self.cache.layers)):
            for layer in self.cache.layers:  # the padding stays: the mask hides it
                layer.move_rows(len(indices), moves)
            self.mask = mask
            return
        rows = [[(layer.keys[i:i + 1, :, drop:], layer.values[i:i + 1, :, drop:]) for layer in self.cache.layers]
                for i in indices]
        self._swap_in(left_padded_layers(rows, self.columns - drop), mask[:, drop:])  # all-or-nothing, as `add`

    def append_column(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Take every layer's keys and values with one more column, a token per row computed elsewhere (a packed
        step: `hirpf.packed_step`, which wrote them with `SpareColumnsLayer.staged`); every row's mask gains the
        column. Nothing here allocates but the mask, before any layer changes."""
        mask = F.pad(self.mask, (0, 1), value=1)
        for layer, (keys, values) in zip(self.cache.layers, layers):
            layer.keys, layer.values = keys, values
        self.mask = mask

    def _swap_in(self, layers: list[SpareColumnsLayer], mask: torch.Tensor) -> None:
        """Replace every layer and the mask, all built before: nothing here allocates, so nothing fails half way."""
        self.cache.layers, self.mask = layers, mask

    @classmethod
    def prefilled(cls, model, ids: torch.Tensor, mask: torch.Tensor) -> tuple["PaddedBatchCache", torch.Tensor]:
        """Left-padded prompts (`ids`, `mask` `[rows, columns]`, as `hirpf.padding.left_padded` makes them) run
        through `model` in one forward: (their batch cache, the logits of each row's last token `[rows, vocab]`).
        Positions count each row's own tokens from its first real one, as in an unpadded run."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        batch = cls()
        batch.cache, batch.mask = _cache_of(left_padded_layers([_tensors(out.past_key_values)], mask.shape[1])), mask
        return batch, out.logits[:, -1]

    def decode(self, model, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step: `tokens` `[rows, 1]`, each row's newest token, run through `model` over this cache
        (which then holds them); the logits of the next token `[rows, vocab]`. The caller enters the rows'
        identities (`use_identities`) around it, as for any forward."""
        mask = F.pad(self.mask, (0, 1), value=1)
        positions = self.mask.sum(dim=1, keepdim=True)  # each row's own token count: its next position
        out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=self.cache,
                    use_cache=True)
        self.mask = mask
        return out.logits[:, -1]


def _check_layers(cache: DynamicCache) -> None:
    for layer in cache.layers:
        if type(layer) not in (DynamicLayer, SpareColumnsLayer):
            raise ValueError(f"the scheduler batches full-attention caches only; this model's cache has a "
                             f"{type(layer).__name__} layer (sliding window or other), whose rows cannot be re-padded")


def _device(cache: DynamicCache) -> torch.device:
    return cache.layers[0].keys.device
