"""Per-call identity routing: which experts each batch row may use, passed without global state.

A call (a forward pass, a `generate`, a training step) runs inside `use_identities(rows)`. The rows live in
a `ContextVar`, so each thread and each asyncio task sees only its own call: two requests served at once by
one model never see each other's identities, and nothing persists after the `with` block. Code that runs a
model in a helper thread (streaming generation) must enter the context inside that thread. Outside any
context the expert layers add nothing: the model is the plain base model.

Each row also carries a strength per chosen identity (`IdentitySet.with_strengths`), which scales that
expert's mixed contribution. Beside the 13 identities the rows carry one more expert slot, `shared`: an
expert that models trained with `ExpertConfig.shared_expert` hold for what every identity has in common. A
row engages it when it chooses any identity, at its strongest identity's strength (so strength 0 on every
chosen identity still gives the plain model). What is per call (the `Routing` object) is light, so switching identities
between calls is cheap; the fast inference path keeps what it derives from the rows (mask tables, plans)
in its own caches (`hirpf.fast_inference`).
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from .identities import ALL_IDENTITIES, DEFAULT_STRENGTH, GROUPS, IdentitySet

SHARED_EXPERT = "shared"
EXPERT_SLOTS = ALL_IDENTITIES + (SHARED_EXPERT,)  # the columns of `Routing.rows`: what an expert layer indexes

_CURRENT: contextvars.ContextVar["Routing | None"] = contextvars.ContextVar("hirpf_routing", default=None)


class Routing:
    """The identity rows of one call: which experts each row chose, and how strongly."""

    def __init__(self, rows: "Sequence[IdentitySet] | IdentitySet | torch.Tensor",
                 tokens_per_row: "Sequence[int] | None" = None):
        """`tokens_per_row`: the rows are sequences packed one after another into a batch of one (`packed`):
        row i's identity set applies to its `tokens_per_row[i]` consecutive tokens (`hirpf.packed_step`)."""
        if isinstance(rows, IdentitySet):
            rows = [rows]
        if isinstance(rows, torch.Tensor) and rows.dim() == 3:
            chosen = active_from_pairs(rows)
            strength = torch.full(chosen.shape, DEFAULT_STRENGTH, dtype=torch.float64)
        elif isinstance(rows, torch.Tensor):
            chosen = rows.to("cpu", torch.bool)  # built on the host, as from identity sets (see `rows`)
            if chosen.dim() != 2 or chosen.shape[1] != len(ALL_IDENTITIES):
                raise ValueError(f"identity rows must be [batch, {len(ALL_IDENTITIES)}] booleans or [batch, 6, 2] "
                                 f"(group, expert) pairs, got {tuple(rows.shape)}")
            strength = torch.full(chosen.shape, DEFAULT_STRENGTH, dtype=torch.float64)
        else:
            sets = [IdentitySet.parse(r) for r in rows]
            if not sets:
                raise ValueError("use_identities needs at least one row")
            chosen = torch.stack([s.active_vector() for s in sets])
            strength = torch.stack([s.strength_vector() for s in sets])
        self.packed = tokens_per_row is not None
        if self.packed:  # an identity row per token, as the expert layers index them (one row per token)
            counts = torch.as_tensor(list(tokens_per_row), dtype=torch.long)
            if counts.shape != (chosen.shape[0],) or bool((counts < 1).any()):
                raise ValueError(f"tokens_per_row needs one count of at least 1 per identity row ({chosen.shape[0]}), "
                                 f"got {list(tokens_per_row)}")
            chosen, strength = chosen.repeat_interleave(counts, dim=0), strength.repeat_interleave(counts, dim=0)
        self.chosen = chosen  # [batch, 13] bool, inventory order (packed: [tokens, 13])
        self.strength = strength  # [batch, 13] float64: each chosen identity's strength (1 elsewhere)
        # A key of host bytes: rows given as a tensor may live on the model's device.
        self.key = (tuple(chosen.shape), chosen.cpu().numpy().tobytes(), strength.cpu().numpy().tobytes())
        any_chosen = chosen.any(dim=1, keepdim=True)
        strongest = strength.masked_fill(~chosen, 0.0).amax(dim=1, keepdim=True)
        # [batch, 14]: the identities, then the shared slot (see the module doc), in `EXPERT_SLOTS` order.
        self._slots = (torch.cat([chosen, any_chosen], dim=1),
                       torch.cat([strength, torch.where(any_chosen, strongest, DEFAULT_STRENGTH)], dim=1))
        # Scratch space of the fast inference path for this call (hirpf.fast_inference): shared outputs of
        # projections that read one input, the plans resolved for this call, its mask tables.
        self.inference_state: dict = {}

    def as_rows(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with one batch row per identity row: a packed sequence `[1, tokens, ...]` is viewed as
        `[tokens, 1, ...]` (undo with the same call); any other input is returned as it is."""
        # A reshape, not a transpose: the same memory, still contiguous (a strided [tokens, 1, in] input
        # sends F.linear to a batched matmul, several times slower on a CPU).
        return x.reshape(x.shape[1], x.shape[0], *x.shape[2:]) if self.packed else x

    @property
    def batch_size(self) -> int:
        return self.chosen.shape[0]

    def rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, strength) `[n, 14]` over `EXPERT_SLOTS` for a batch of `n` rows: generation with beams or
        several return sequences repeats each input row k times in a block (`repeat_interleave`), so the rows
        follow it."""
        b = self.batch_size
        chosen, strength = self._slots
        if n == b:
            return chosen, strength
        if n % b:
            raise ValueError(f"the model got a batch of {n} rows but {b} identity rows were given")
        return chosen.repeat_interleave(n // b, dim=0), strength.repeat_interleave(n // b, dim=0)


def switch_identities(routing: Routing) -> None:
    """Inside a `use_identities` block, run the rest of the call under `routing` (a packed step that a prompt
    joined between two layers); the block's end restores what was before it, as always."""
    if _CURRENT.get() is None:
        raise RuntimeError("switch_identities is only for a call already running inside use_identities")
    _CURRENT.set(routing)


def current_routing() -> "Routing | None":
    """The identity rows of the call running in this thread or task (None: the plain base model)."""
    return _CURRENT.get()


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
    earlier call is reused as it is, with what the fast path already resolved for it."""
    routing = rows if isinstance(rows, Routing) else Routing(rows)
    token = _CURRENT.set(routing)
    try:
        yield routing
    finally:
        _CURRENT.reset(token)

