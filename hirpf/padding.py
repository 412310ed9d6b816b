"""Left padding, the one helper: decoder-only batches pad on the left so that every row ends at its newest
token (the column the next token is read from, and the one a decode step appends after)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def pad_left(t: torch.Tensor, width: int, value: int | float = 0) -> torch.Tensor:
    """Pad the token dimension (dim 2 of keys `[batch, heads, tokens, dim]`, dim 1 of ids or a mask
    `[batch, tokens]`) on the left with `value`, to `width` tokens."""
    missing = width - (t.shape[2] if t.dim() == 4 else t.shape[1])
    if missing == 0:
        return t
    return F.pad(t, (0, 0, missing, 0), value=value) if t.dim() == 4 else F.pad(t, (missing, 0), value=value)


def left_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as one batch: (ids `[rows, longest]` left-padded with `pad`, attention mask, 1 on tokens)."""
    width = max(len(row) for row in rows)
    ids = torch.cat([pad_left(torch.tensor([list(row)], dtype=torch.long), width, value=pad) for row in rows])
    mask = torch.cat([pad_left(torch.ones(1, len(row), dtype=torch.long), width) for row in rows])
    return ids, mask
