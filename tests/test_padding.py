"""Left padding, the one helper (`hirpf.padding`): token lists to a batch, tensors to a width."""
from __future__ import annotations

import torch

from hirpf.padding import left_padded, pad_left


def test_token_lists_are_left_padded_with_their_mask():
    ids, mask = left_padded([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
    ids, _ = left_padded([[5], [8, 9]], pad=2)
    assert ids.tolist() == [[2, 5], [8, 9]]


def test_keys_pad_their_token_dimension_and_a_wide_enough_tensor_is_returned_as_is():
    keys = torch.ones(2, 3, 4, 8)  # [batch, heads, tokens, dim]
    padded = pad_left(keys, 6)
    assert padded.shape == (2, 3, 6, 8) and padded[:, :, :2].eq(0).all() and padded[:, :, 2:].eq(1).all()
    assert pad_left(keys, 4) is keys
    assert pad_left(torch.ones(1, 2, dtype=torch.long), 3, value=7).tolist() == [[7, 1, 1]]
