"""Packed steps: the running rows' decode tokens and joining prompts' chunks in one forward give what the
decode step and separate prefills give, each token under its own identity set; a packed step that fails
changes no cache."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from hirpf import packed_step
from hirpf.batch_cache import PaddedBatchCache
from hirpf.identities import IdentitySet
from hirpf.packed_step import PackedStep, PromptChunk
from hirpf.routing import Routing, use_identities

SETS = [IdentitySet.parse(s) for s in ("Doctor,AGR_high", "", "EXT_low,NEU_high,Artist", "OPE_low,Programmer")]


def prefilled(model, ids, identities) -> tuple[DynamicCache, torch.Tensor]:
    """`ids` `[1, n]` prefilled alone under `identities`: its cache and the logits of its every token."""
    cache = DynamicCache(config=model.config)
    with use_identities([identities]):
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    return cache, out.logits[0]


def copy_cache(cache: DynamicCache, config) -> DynamicCache:
    copied = DynamicCache(config=config)
    for i, layer in enumerate(cache.layers):
        copied.update(layer.keys.clone(), layer.values.clone(), i)
    return copied


@pytest.fixture()
def model(exact_engine):
    assert packed_step.enable(exact_engine.model)
    return exact_engine.model


def running_batch(model, generator) -> tuple[PaddedBatchCache, list[int]]:
    """Two rows of different lengths and identity sets in a left-padded batch, and each row's next token."""
    batch, tokens = PaddedBatchCache(), []
    for length, identities in ((7, SETS[0]), (4, SETS[1])):
        ids = torch.randint(10, 500, (1, length), generator=generator)
        cache, logits = prefilled(model, ids, identities)
        batch.add(cache, length)
        tokens.append(int(logits[-1].argmax()))
    return batch, tokens


def test_a_packed_step_gives_the_decode_step_and_the_prefills_logits_and_caches(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        batch, tokens = running_batch(model, generator)
        # A prompt that continues its cache (3 tokens held, 5 now) and a new one (6 tokens, nothing held).
        first = torch.randint(10, 500, (1, 8), generator=generator)
        second = torch.randint(10, 500, (1, 6), generator=generator)
        held, _ = prefilled(model, first[:, :3], SETS[2])
        chunks = [PromptChunk(copy_cache(held, model.config), 3, 8),
                  PromptChunk(DynamicCache(config=model.config), 0, 6)]

        # What the separate forwards give: the decode step of the batch, and each prompt alone.
        apart = PaddedBatchCache()
        apart.cache, apart.mask = copy_cache(batch.cache, model.config), batch.mask.clone()
        with use_identities(SETS[:2]):
            want_rows = apart.decode(model, torch.tensor([[t] for t in tokens]))
        _, want_first = prefilled(model, first, SETS[2])
        second_cache, want_second = prefilled(model, second, SETS[3])

        step = PackedStep(batch, chunks)
        ids = torch.cat([torch.tensor(tokens), first[0, 3:], second[0]])[None]
        routing = Routing(SETS[:2] + SETS[2:], tokens_per_row=[1, 1, 5, 6])
        with use_identities(routing):
            out = model(input_ids=ids, position_ids=step.position_ids(), use_cache=False,
                        logits_to_keep=step.last_token_indices(), hirpf_packed=step)
        step.commit()
    logits = out.logits[0]
    torch.testing.assert_close(logits[:2], want_rows, rtol=0, atol=1e-10)
    torch.testing.assert_close(logits[2], want_first[-1], rtol=0, atol=1e-10)
    torch.testing.assert_close(logits[3], want_second[-1], rtol=0, atol=1e-10)
    torch.testing.assert_close(batch.mask, apart.mask)
    for mine, theirs in zip(batch.cache.layers, apart.cache.layers):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=0, atol=1e-10)
    for mine, theirs in zip(chunks[1].cache.layers, second_cache.layers):
        torch.testing.assert_close(mine.values, theirs.values, rtol=0, atol=1e-10)
    assert chunks[0].cache.get_seq_length() == 8


def test_a_packed_step_that_fails_half_way_changes_no_cache(model, monkeypatch):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        batch, tokens = running_batch(model, generator)
        held, _ = prefilled(model, torch.randint(10, 500, (1, 3), generator=generator), SETS[2])
        before = ([(la.keys, la.values) for la in batch.cache.layers], batch.mask,
                  [(la.keys, la.values) for la in held.layers])
        step = PackedStep(batch, [PromptChunk(held, 3, 6)])
        last = model.model.layers[-1].self_attn.o_proj
        monkeypatch.setattr(last, "forward", lambda x: (_ for _ in ()).throw(MemoryError("no room")))
        with pytest.raises(MemoryError), use_identities(Routing(SETS[:3], tokens_per_row=[1, 1, 3])):
            model(input_ids=torch.randint(10, 500, (1, 5), generator=generator), position_ids=step.position_ids(),
                  use_cache=False, logits_to_keep=step.last_token_indices(), hirpf_packed=step)
    assert batch.mask is before[1]
    assert all(la.keys is k and la.values is v for la, (k, v) in zip(batch.cache.layers, before[0]))
    assert all(la.keys is k and la.values is v for la, (k, v) in zip(held.layers, before[2]))


def test_packed_rows_route_each_token_by_its_own_set_in_the_formula_too(model):
    """The training-mode formula (no fast path) and the fast path agree on a packed sequence."""
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(10, 500, (1, 9), generator=generator)
    routing = Routing([SETS[0], SETS[2], SETS[3]], tokens_per_row=[2, 3, 4])
    with torch.no_grad(), use_identities(routing):
        fast = model(input_ids=ids, use_cache=False).logits
    with torch.enable_grad(), use_identities(routing):  # grad on: the formula
        formula = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(fast, formula.detach(), rtol=0, atol=1e-10)
    # The first two tokens under SETS[0] see the same as that set's prefill of those tokens.
    with torch.no_grad(), use_identities([SETS[0]]):
        alone = model(input_ids=ids[:, :2], use_cache=False).logits
    torch.testing.assert_close(fast[:, :2], alone, rtol=0, atol=1e-10)


def test_token_counts_must_match_the_rows():
    with pytest.raises(ValueError, match="tokens_per_row"):
        Routing(SETS[:2], tokens_per_row=[1])
    with pytest.raises(ValueError, match="tokens_per_row"):
        Routing(SETS[:2], tokens_per_row=[1, 0])
    assert Routing(SETS[:2], tokens_per_row=[2, 3]).batch_size == 5


def test_a_model_whose_attention_cannot_pack_is_left_as_it_is(tiny_base_dir):
    from hirpf.engine import Engine
    from hirpf.scheduler import Scheduler

    engine = Engine.load(str(tiny_base_dir), lora_weights=None, load_in_8bit=False, dtype="float32")
    engine.model.config._attn_implementation = "eager"
    assert not packed_step.enable(engine.model)
    assert engine.model.config._attn_implementation == "eager"
    scheduler = Scheduler(engine, max_batch=2)
    try:
        assert not scheduler.runner.packs  # joins get prefill forwards of their own
        assert scheduler.reply([{"role": "user", "content": "Hi"}], "", sampling=None) is not None
    finally:
        scheduler.close()


def test_grouped_query_attention_equals_sdpa_with_the_keys_repeated_per_head():
    """The query heads that share a key head read it as rows of one query: the same attention as
    transformers' sdpa, which repeats the keys and values for each query head, under a causal chunk mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Layer:  # what sdpa_attention_forward reads of the attention module
        num_key_value_groups, is_causal, training = 3, True, False

    g = torch.Generator().manual_seed(0)
    held, n = 9, 4
    query = torch.randn(1, 6, n, 8, generator=g, dtype=torch.float64)
    key, value = (torch.randn(1, 2, held + n, 8, generator=g, dtype=torch.float64) for _ in range(2))
    mask = (torch.arange(held + n)[None, :] <= torch.arange(held, held + n)[:, None])[None, None]
    expected = sdpa_attention_forward(Layer(), query, key, value, mask, scaling=0.3)[0]
    torch.testing.assert_close(packed_step.grouped_query_attention(query, key, value, mask, 0.3), expected)
