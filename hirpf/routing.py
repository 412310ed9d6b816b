"""Per-call identity routing: which experts each batch row may use, passed without global state.

A call (a forward pass, a `generate`, a training step) runs inside `use_identities(rows)`. The rows live in
a `ContextVar`, so each thread and each asyncio task sees only its own call: two requests served at once by
one model never see each other's identities, and nothing persists after the `with` block. Code that runs a
model in a helper thread (streaming generation) must enter the context inside that thread. Outside any
context the expert layers add nothing: the model is the plain base model.

The mask tables an expert layer needs depend only on (layer shape, identity rows): they are built once,
kept in a small process-wide cache, and reused by every layer, decoding step and later call with the same
rows. What is per call (the `Routing` object) is light, so switching identities between calls is cheap.
"""
from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .identities import ALL_IDENTITIES, GROUPS, IdentitySet

_CURRENT: contextvars.ContextVar["Routing | None"] = contextvars.ContextVar("hirpf_routing", default=None)


class LRU:
    """A small thread-safe least-recently-used cache (mask tables here, bank plans in experts.py)."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


# Mask tables depend only on (layer shape, identity rows): shared by all calls, so a set used before costs
# nothing to switch back to. Tables are read-only once built.
_TABLES = LRU(512)


@dataclass(frozen=True)
class MaskTable:
    """How one layer's experts mix for each batch row; tensors are `[rows, 1, 1, E, 1]` so they broadcast
    over `[rows, tokens, projections, E, rank]`."""

    bias: torch.Tensor  # 0 for allowed experts, -inf for masked ones (added to router logits)
    scale: torch.Tensor  # multiplies the gate's weights: 0 for a unit the row does not use, else the gate's factor
    fixed_weights: torch.Tensor | None  # the mixture when no router is needed (router off, or one allowed expert per unit)
    gate: str  # the experts' gate (ExpertConfig.gate): softmax per unit, or sigmoid per expert
    scale_is_one: bool  # `scale` is all ones and can be skipped
    same_rows: bool  # every row has the same identity set
    any_active: bool  # False: no row engages this layer, so it can skip its experts entirely
    key: tuple  # what the table was built from; expert banks key their cached plans on it


class Routing:
    """The identity rows of one call and the mask tables derived from them."""

    def __init__(self, rows: "Sequence[IdentitySet] | IdentitySet | torch.Tensor"):
        if isinstance(rows, IdentitySet):
            rows = [rows]
        if isinstance(rows, torch.Tensor) and rows.dim() == 3:
            active = active_from_pairs(rows)
        elif isinstance(rows, torch.Tensor):
            active = rows.to(torch.bool)
            if active.dim() != 2 or active.shape[1] != len(ALL_IDENTITIES):
                raise ValueError(f"identity rows must be [batch, {len(ALL_IDENTITIES)}] booleans or [batch, 6, 2] "
                                 f"(group, expert) pairs, got {tuple(rows.shape)}")
        else:
            sets = [IdentitySet.parse(r) for r in rows]
            if not sets:
                raise ValueError("use_identities needs at least one row")
            active = torch.stack([s.active_vector() for s in sets])
        self.active = active
        self._active_key = (tuple(active.shape), active.numpy().tobytes())
        self._tables: dict[tuple, MaskTable] = {}
        # Per expert bank: the latest (input, outputs), which siblings reading the same input reuse...
        self.shared: dict = {}
        # ...and how the bank runs in this call (weights and masks resolved once, see experts.py).
        self.plans: dict = {}

    @property
    def batch_size(self) -> int:
        return self.active.shape[0]

    def table_for(self, bank, x: torch.Tensor) -> MaskTable:
        """The mask table of an expert bank for input `x` (built on first use in this call)."""
        key = (bank.signature, x.shape[0])
        table = self._tables.get(key)
        if table is None:
            weight = bank.members[0].lora_A
            shared_key = key + (self._active_key, weight.device, weight.dtype)
            table = _TABLES.get(shared_key) or _TABLES.put(shared_key, self._build(shared_key))
            self._tables[key] = table
        return table

    def _build(self, key) -> MaskTable:
        (expert_ids, units, hard_mask, router, gate), rows, _, device, dtype = key
        active = self._rows(rows)[:, list(expert_ids)]  # [rows, E]
        allowed = torch.zeros_like(active)
        engaged = torch.zeros_like(active)
        counts = torch.ones(active.shape, dtype=torch.float64)  # exact for float64 models too
        for start, stop in units:
            unit = active[:, start:stop]
            uses = unit.any(dim=1, keepdim=True)
            # Hard mask: only the chosen experts. Without it (the ablation, as the original code ran), every
            # expert of a unit mixes once the row chooses any identity of that unit.
            allowed[:, start:stop] = unit if hard_mask else uses.expand_as(unit)
            engaged[:, start:stop] = uses.expand_as(unit)
            counts[:, start:stop] = allowed[:, start:stop].sum(dim=1, keepdim=True).clamp(min=1)
        # A row that does not use a unit keeps bias 0 there (no all -inf softmax, no NaN); `scale` zeroes it.
        bias = torch.where(engaged & ~allowed, float("-inf"), 0.0)
        # What the gate's weights are multiplied by: the paper's softmax sums to 1 over a unit's chosen
        # experts; scaled_softmax to their number; sigmoid is 2·sigmoid(logit), 1 for an untrained router.
        factor = {"softmax": torch.ones_like(counts), "scaled_softmax": counts,
                  "sigmoid": torch.full_like(counts, 2.0)}[gate]
        scale = engaged.to(torch.float64) * factor
        single_choice = bool((counts[allowed] == 1).all())
        fixed = None
        if not router:  # an untrained router's weights: 1/count each for the softmax, 1 for the other gates
            fixed = allowed.to(torch.float64) / (counts if gate == "softmax" else 1.0)
        elif hard_mask and single_choice and gate != "sigmoid":  # one expert per unit: the softmax gives it 1
            fixed = allowed.to(torch.float64) * factor
        shape = dict(device=device, dtype=dtype)

        def broadcast(t):
            return t.to(**shape).view(rows, 1, 1, -1, 1)

        return MaskTable(broadcast(bias), broadcast(scale), None if fixed is None else broadcast(fixed), gate,
                         bool((scale == 1).all()), bool((active == active[:1]).all()), bool(allowed.any()), key)

    def _rows(self, rows: int) -> torch.Tensor:
        """The identity rows for a batch of `rows`: generation with beams or several return sequences
        repeats each input row k times in a block (`repeat_interleave`), so the rows follow it."""
        b = self.batch_size
        if rows == b:
            return self.active
        if rows % b:
            raise ValueError(f"the model got a batch of {rows} rows but {b} identity rows were given")
        return self.active.repeat_interleave(rows // b, dim=0)


def active_from_pairs(pairs: torch.Tensor) -> torch.Tensor:
    """`[batch, 6, 2]` (group, expert) index pairs, padded with -1 (the HIS training format), as
    `[batch, 13]` booleans in inventory order."""
    offsets = torch.tensor([0] + [len(m) for m in GROUPS.values()][:-1]).cumsum(0)
    pairs = pairs.to("cpu", torch.long)
    valid = pairs[..., 0] >= 0
    index = torch.where(valid, offsets[pairs[..., 0].clamp(min=0)] + pairs[..., 1], 0)
    counts = torch.zeros(pairs.shape[0], len(ALL_IDENTITIES), dtype=torch.long)
    return counts.scatter_add_(1, index, valid.long()) > 0


@contextmanager
def use_identities(rows: "Sequence[IdentitySet] | IdentitySet | torch.Tensor | Routing") -> Iterator[Routing]:
    """Run the model with one identity set per batch row (or one set for every row). A `Routing` from an
    earlier call is reused as it is, with the mask tables it already built."""
    routing = rows if isinstance(rows, Routing) else Routing(rows)
    token = _CURRENT.set(routing)
    try:
        yield routing
    finally:
        _CURRENT.reset(token)

