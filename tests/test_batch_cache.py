"""The running batch's cache layers grow in place: a step writes its column into spare columns of the same
buffers (no copy of the whole layer), a view handed out before never changes, and a layer out of room or
given other tensors copies what it holds into new buffers first."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from hirpf.batch_cache import SPARE_COLUMNS, PaddedBatchCache, SpareColumnsLayer, swap_remove_order
from hirpf.identities import IdentitySet
from hirpf.routing import Routing, use_identities

AGR_HIGH = IdentitySet.parse("AGR_high")


def columns(rows: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, 2, n, 4, generator=torch.Generator().manual_seed(seed))


def test_update_writes_into_the_spare_columns_and_earlier_views_stay_as_they_were():
    keys, values = columns(3, 5, 0), columns(3, 5, 1)
    layer = SpareColumnsLayer.holding(keys, values)
    buffer, first = layer.key_buffer, layer.keys
    written = [columns(3, 1, 10 + i) for i in range(SPARE_COLUMNS)]
    for new in written:
        got_keys, got_values = layer.update(new, new)
    assert layer.key_buffer is buffer  # never copied while there was room
    torch.testing.assert_close(got_keys, torch.cat([keys, *written], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(first, keys, rtol=0, atol=0)  # the view from before holds what it held
    assert layer.get_seq_length() == 5 + SPARE_COLUMNS

    layer.update(columns(3, 1, 99), columns(3, 1, 99))  # out of room: a copy with more room, same content
    assert layer.key_buffer is not buffer and layer.get_seq_length() == 6 + SPARE_COLUMNS
    torch.testing.assert_close(layer.keys[:, :, :5], keys, rtol=0, atol=0)


def test_staged_columns_are_held_only_once_assigned_and_other_tensors_are_followed():
    layer = SpareColumnsLayer.holding(columns(1, 3, 0), columns(1, 3, 1))
    held = layer.keys
    staged_keys, _ = layer.staged(columns(1, 2, 2), columns(1, 2, 3))
    assert layer.keys is held and staged_keys.shape[2] == 5  # a failed step would leave it holding this
    other = columns(1, 7, 4)
    layer.keys, layer.values = other, other  # assigned from outside: followed at the next write
    keys, _ = layer.update(columns(1, 1, 5), columns(1, 1, 5))
    torch.testing.assert_close(keys[:, :, :7], other, rtol=0, atol=0)
    assert keys.shape[2] == 8


def test_the_batch_pads_rows_left_with_zeros_and_decodes_into_its_own_buffers(tiny_engine):
    model = tiny_engine.model
    batch, generator = PaddedBatchCache(), torch.Generator().manual_seed(0)
    for length in (3, 6):
        with torch.no_grad(), use_identities(Routing([AGR_HIGH])):
            out = model(input_ids=torch.randint(5, 200, (1, length), generator=generator),
                        past_key_values=DynamicCache(config=model.config), use_cache=True)
        batch.add(out.past_key_values, length)
    first = batch.cache.layers[0]
    assert isinstance(first, SpareColumnsLayer) and first.keys.shape[:3] == (2, first.keys.shape[1], 6)
    assert torch.count_nonzero(first.keys[0, :, :3]) == 0  # the short row's left padding: zeros
    buffer = first.key_buffer
    with torch.no_grad(), use_identities(Routing([AGR_HIGH] * 2)):
        batch.decode(model, torch.tensor([[7], [8]]))
    assert batch.cache.layers[0].key_buffer is buffer and batch.columns == 7
    batch.keep([1, 0])  # the rows change places: not an order `keep` can take in place, so new buffers
    assert batch.columns == 7 and batch.cache.layers[0].key_buffer is not buffer
    assert torch.count_nonzero(batch.cache.layers[0].keys[1, :, :3]) == 0  # the short row, now second


def test_swap_remove_order_fills_each_leaving_slot_from_the_end():
    assert swap_remove_order(8, {2}) == [0, 1, 7, 3, 4, 5, 6]
    assert swap_remove_order(8, {7}) == list(range(7))
    assert swap_remove_order(5, {0, 4}) == [3, 1, 2]
    assert swap_remove_order(5, {0, 1}) == [4, 3, 2]
    assert swap_remove_order(3, {0, 1, 2}) == []


def prefilled_alone(model, lengths, seed=0):
    """Each prompt's own cache (batch 1) and the prompts, for rows of these lengths."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        ids = torch.randint(5, 200, (1, length), generator=generator)
        with torch.no_grad(), use_identities(Routing([AGR_HIGH])):
            out = model(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
        rows.append((ids, out.past_key_values))
    return rows


def test_rows_leave_and_join_in_place_and_decode_as_they_would_alone(tiny_engine):
    """A leaving row's slot takes the last row (one row copied, the buffers kept); a row no wider than the
    batch joins into the room left; every row then decodes as it would alone."""
    model = tiny_engine.model
    rows = prefilled_alone(model, [3, 6, 4, 5])
    batch = PaddedBatchCache()
    for ids, cache in rows[:3]:
        batch.add(cache, ids.shape[1])
    buffer = batch.cache.layers[0].key_buffer
    batch.keep(swap_remove_order(3, {0}))  # row 0 leaves: row 2 takes its slot
    assert batch.rows == 2 and batch.cache.layers[0].key_buffer is buffer
    batch.add(rows[3][1], 5)  # 5 columns of 6: into the room row 0 left
    assert batch.rows == 3 and batch.cache.layers[0].key_buffer is buffer
    assert torch.count_nonzero(batch.cache.layers[0].keys[2, :, :1]) == 0  # its left padding: zeros
    in_batch = [rows[2], rows[1], rows[3]]  # in batch order
    tokens = torch.tensor([[7], [8], [9]])
    with torch.no_grad(), use_identities(Routing([AGR_HIGH] * 3)):
        logits = batch.decode(model, tokens)
    for i, (ids, _) in enumerate(in_batch):
        with torch.no_grad(), use_identities(Routing([AGR_HIGH])):
            alone = model(input_ids=torch.cat([ids, tokens[i:i + 1]], dim=1)).logits[:, -1]
        torch.testing.assert_close(logits[i:i + 1], alone, rtol=1e-4, atol=1e-4)


def test_an_in_place_join_that_fails_half_way_leaves_the_running_rows_as_they_were(tiny_engine, monkeypatch):
    model = tiny_engine.model
    rows = prefilled_alone(model, [3, 6, 4], seed=1)
    batch = PaddedBatchCache()
    for ids, cache in rows[:2]:
        batch.add(cache, ids.shape[1])
    batch.keep(swap_remove_order(2, {0}))
    before = [(la.keys.clone(), la.values.clone()) for la in batch.cache.layers]
    mask, stage_row, calls = batch.mask.clone(), SpareColumnsLayer.stage_row, []

    def failing(layer, *args):
        calls.append(layer)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return stage_row(layer, *args)
    monkeypatch.setattr(SpareColumnsLayer, "stage_row", failing)
    with pytest.raises(RuntimeError, match="injected"):
        batch.add(rows[2][1], 4)
    assert torch.equal(batch.mask, mask)
    for layer, (keys, values) in zip(batch.cache.layers, before):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)

