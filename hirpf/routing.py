"""Per-call identity routing: which experts each batch row may use, passed without global state.

A call (a forward pass, a `generate`, a training step) runs inside `use_identities(rows)`. The rows live in
a `ContextVar`, so each thread and each asyncio task sees only its own call: two requests served at once by
one model never see each other's identities, and nothing persists after the `with` block. Code that runs a
model in a helper thread (streaming generation) must enter the context inside that thread. Outside any
context the expert layers add nothing: the model is the plain base model.

The mask tables an expert layer needs are built once per call and per layer shape, then reused for every
layer and every decoding step, so switching identities between calls costs only building this object.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .identities import ALL_IDENTITIES, IdentitySet

_CURRENT: contextvars.ContextVar["Routing | None"] = contextvars.ContextVar("hirpf_routing", default=None)


@dataclass(frozen=True)
class MaskTable:
    """How one layer's experts mix for each batch row (shapes `[rows, E]`)."""

    bias: torch.Tensor  # 0 for allowed experts, -inf for masked ones (added to router logits)
    scale: torch.Tensor  # alpha/r for experts of a unit the row engages, 0 elsewhere
    uniform: torch.Tensor  # scale / number of allowed experts in the unit (the router-off mixture)
    any_active: bool  # False: no row engages this layer, so it can skip its experts entirely


class Routing:
    """The identity rows of one call and the mask tables derived from them."""

    def __init__(self, rows: "Sequence[IdentitySet] | IdentitySet | torch.Tensor"):
        if isinstance(rows, IdentitySet):
            rows = [rows]
        if isinstance(rows, torch.Tensor):
            active = rows.to(torch.bool)
            if active.dim() != 2 or active.shape[1] != len(ALL_IDENTITIES):
                raise ValueError(f"identity rows must be [batch, {len(ALL_IDENTITIES)}] booleans, got {tuple(rows.shape)}")
        else:
            sets = [IdentitySet.parse(r) for r in rows]
            if not sets:
                raise ValueError("use_identities needs at least one row")
            active = torch.stack([s.active_vector() for s in sets])
        self.active = active
        self._tables: dict[tuple, MaskTable] = {}
        # Results shared by projections that read the same input (q, k, v): bank id -> (input, result).
        self.shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def batch_size(self) -> int:
        return self.active.shape[0]

    def table(self, expert_ids: tuple[int, ...], units: tuple[tuple[int, int], ...], rows: int,
              scaling: float, hard_mask: bool, device, dtype) -> MaskTable:
        key = (expert_ids, units, rows, scaling, hard_mask, device, dtype)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = self._build(expert_ids, units, rows, scaling, hard_mask, device, dtype)
        return table

    def _build(self, expert_ids, units, rows, scaling, hard_mask, device, dtype) -> MaskTable:
        active = self._rows(rows)[:, list(expert_ids)]  # [rows, E]
        allowed = torch.zeros_like(active)
        for start, stop in units:
            unit = active[:, start:stop]
            engaged = unit.any(dim=1, keepdim=True)
            # Hard mask: only the chosen experts. Without it (the ablation, as the original code ran), every
            # expert of a unit mixes once the row chooses any identity of that unit.
            allowed[:, start:stop] = unit if hard_mask else engaged.expand_as(unit)
        engaged_units = torch.zeros_like(active)
        for start, stop in units:
            engaged_units[:, start:stop] = allowed[:, start:stop].any(dim=1, keepdim=True)
        # A row with nothing allowed in a unit keeps bias 0 there (no all -inf softmax, no NaN) and scale 0.
        bias = torch.where(engaged_units & ~allowed, float("-inf"), 0.0)
        scale = engaged_units.to(torch.float32) * scaling
        counts = torch.zeros(active.shape, dtype=torch.float32)
        for start, stop in units:
            counts[:, start:stop] = allowed[:, start:stop].sum(dim=1, keepdim=True).clamp(min=1)
        uniform = allowed.to(torch.float32) * scaling / counts
        to = dict(device=device, dtype=dtype)
        return MaskTable(bias.to(**to), scale.to(**to), uniform.to(**to), bool(allowed.any()))

    def _rows(self, rows: int) -> torch.Tensor:
        """The identity rows for a batch of `rows`: generation with beams or several return sequences
        repeats each input row k times in a block (`repeat_interleave`), so the rows follow it."""
        b = self.batch_size
        if rows == b:
            return self.active
        if rows % b:
            raise ValueError(f"the model got a batch of {rows} rows but {b} identity rows were given")
        return self.active.repeat_interleave(rows // b, dim=0)


@contextmanager
def use_identities(rows: "Sequence[IdentitySet] | IdentitySet | torch.Tensor") -> Iterator[Routing]:
    """Run the model with one identity set per batch row (or one set for every row)."""
    routing = Routing(rows)
    token = _CURRENT.set(routing)
    try:
        yield routing
    finally:
        _CURRENT.reset(token)


def current_routing() -> "Routing | None":
    return _CURRENT.get()
