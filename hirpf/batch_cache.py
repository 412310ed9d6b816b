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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .padding import pad_left


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
            self.cache, self.mask = row_cache, row_mask
            return
        width = max(self.columns, length)
        joined = [(torch.cat([pad_left(mine.keys, width), pad_left(theirs.keys, width)]),
                   torch.cat([pad_left(mine.values, width), pad_left(theirs.values, width)]))
                  for mine, theirs in zip(self.cache.layers, row_cache.layers)]
        mask = torch.cat([pad_left(self.mask, width), pad_left(row_mask, width)])
        self._swap_in(joined, mask)

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at `indices` (in that order); cut columns that are padding in all of them."""
        if not indices:
            self.cache = self.mask = None
            return
        index = torch.tensor(indices, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        # Left padding is a prefix of zeros in every row: the shortest prefix can go.
        drop = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())
        kept = [(layer.keys.index_select(0, index)[:, :, drop:], layer.values.index_select(0, index)[:, :, drop:])
                for layer in self.cache.layers]
        self._swap_in(kept, mask[:, drop:])  # all-or-nothing, as in `add`

    def append_column(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Take every layer's keys and values with one more column, a token per row computed elsewhere (a packed
        step: `hirpf.packed_step`); every row's mask gains the column."""
        self._swap_in(layers, F.pad(self.mask, (0, 1), value=1))

    def _swap_in(self, layers: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        """Replace every layer's keys and values and the mask; nothing here allocates, so nothing fails half way."""
        for layer, (keys, values) in zip(self.cache.layers, layers):
            layer.keys, layer.values = keys, values
        self.mask = mask

    @classmethod
    def prefilled(cls, model, ids: torch.Tensor, mask: torch.Tensor) -> tuple["PaddedBatchCache", torch.Tensor]:
        """Left-padded prompts (`ids`, `mask` `[rows, columns]`, as `hirpf.padding.left_padded` makes them) run
        through `model` in one forward: (their batch cache, the logits of each row's last token `[rows, vocab]`).
        Positions count each row's own tokens from its first real one, as in an unpadded run."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        batch = cls()
        batch.cache, batch.mask = out.past_key_values, mask
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
        if type(layer) is not DynamicLayer:
            raise ValueError(f"the scheduler batches full-attention caches only; this model's cache has a "
                             f"{type(layer).__name__} layer (sliding window or other), whose rows cannot be re-padded")


def _device(cache: DynamicCache) -> torch.device:
    return cache.layers[0].keys.device
