"""Packed steps: the running rows' decode tokens and joining prompts' chunks in one forward give what the
decode step and separate prefills give, each token under its own identity set; a packed step that fails
changes no cache."""
from __future__ import annotations

import threading

import pytest
import torch
from transformers import DynamicCache

from hirpf import packed_step
from hirpf.batch_cache import PaddedBatchCache
from hirpf.identities import IdentitySet
from hirpf.packed_step import LayerJoin, PackedStep, PromptChunk
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

        step = PackedStep(batch, chunks, SETS[:2] + SETS[2:])
        ids = torch.cat([torch.tensor(tokens), first[0, 3:], second[0]])[None]
        logits = step.run(model, ids)
        step.commit()
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
        step = PackedStep(batch, [PromptChunk(held, 3, 6)], SETS[:3])
        last = model.model.layers[-1].self_attn.o_proj
        monkeypatch.setattr(last, "forward", lambda x: (_ for _ in ()).throw(MemoryError("no room")))
        with pytest.raises(MemoryError):
            step.run(model, torch.randint(10, 500, (1, 5), generator=generator))
    assert batch.mask is before[1]
    assert all(la.keys is k and la.values is v for la, (k, v) in zip(batch.cache.layers, before[0]))
    assert all(la.keys is k and la.values is v for la, (k, v) in zip(held.layers, before[2]))


def joining_before(model, layer: int, prompt: torch.Tensor, held: int, cache: DynamicCache, identities) -> LayerJoin:
    """`prompt`'s tokens after the `held` its `cache` holds, run alone through the layers before `layer`, as the
    scheduler's runner does for a request that arrives while a step runs."""
    with use_identities([identities]):
        hidden, layer_kwargs = packed_step.forward_to_layer(
            model, layer, input_ids=prompt[:, held:], attention_mask=torch.ones_like(prompt),
            position_ids=torch.arange(held, prompt.shape[1])[None], past_key_values=cache, use_cache=True)
    return LayerJoin(PromptChunk(cache, held, prompt.shape[1]), hidden, layer_kwargs["position_embeddings"],
                     identities)


@pytest.mark.parametrize("layer", [0, -1], ids=["before the first layer", "before the last"])
def test_a_prompt_that_joins_a_step_in_flight_gets_what_its_prefill_alone_gives(model, layer):
    """Between two layers of a running step a prompt (3 of its 7 tokens stored) is run alone through the layers
    passed and rides the rest: its logits and keys and values are its prefill's alone, the rows' the decode
    step's, and the step asked before every layer."""
    generator = torch.Generator().manual_seed(3)
    layers = len(packed_step.decoder_layers(model))
    layer %= layers
    with torch.no_grad():
        batch, tokens = running_batch(model, generator)
        prompt = torch.randint(10, 500, (1, 7), generator=generator)
        held, _ = prefilled(model, prompt[:, :3], SETS[3])
        apart = PaddedBatchCache()
        apart.cache, apart.mask = copy_cache(batch.cache, model.config), batch.mask.clone()
        with use_identities(SETS[:2]):
            want_rows = apart.decode(model, torch.tensor([[t] for t in tokens]))
        want_cache, want = prefilled(model, prompt, SETS[3])

        asked, cache = [], copy_cache(held, model.config)

        def join(index):
            asked.append(index)
            return joining_before(model, index, prompt, 3, cache, SETS[3]) if index == layer else None

        step = PackedStep(batch, [], SETS[:2], join=join)
        logits = step.run(model, torch.tensor([tokens]))
        step.commit()
    assert asked == list(range(layers))
    assert logits.shape[0] == 3
    torch.testing.assert_close(logits[:2], want_rows, rtol=0, atol=1e-10)
    torch.testing.assert_close(logits[2], want[-1], rtol=0, atol=1e-10)
    for mine, theirs in zip(cache.layers, want_cache.layers):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=0, atol=1e-10)
        torch.testing.assert_close(mine.values, theirs.values, rtol=0, atol=1e-10)
    for mine, theirs in zip(batch.cache.layers, apart.cache.layers):
        torch.testing.assert_close(mine.values, theirs.values, rtol=0, atol=1e-10)


def test_two_prompts_join_one_step_in_flight_at_different_layers(model):
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        batch, tokens = running_batch(model, generator)
        prompts = [torch.randint(10, 500, (1, n), generator=generator) for n in (5, 3)]
        wants = [prefilled(model, p, s)[1][-1] for p, s in zip(prompts, SETS[2:])]
        caches = [DynamicCache(config=model.config) for _ in prompts]
        joins = {0: 0, 1: 1}  # layer -> which prompt joins before it (the tiny model has two)

        def join(index):
            if index not in joins:
                return None
            i = joins[index]
            return joining_before(model, index, prompts[i], 0, caches[i], SETS[2 + i])

        step = PackedStep(batch, [], SETS[:2], join=join)
        logits = step.run(model, torch.tensor([tokens]))
        step.commit()
    torch.testing.assert_close(logits[2], wants[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(logits[3], wants[1], rtol=0, atol=1e-10)
    assert [c.get_seq_length() for c in caches] == [5, 3]


def test_a_step_in_flight_does_not_touch_another_threads_forward_of_the_same_model(model):
    """The hooks that let prompts join act only in the thread running the step: a forward of the same model in
    another thread, made while the step waits between two layers, gives what it gives with no step running."""
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(10, 500, (1, 6), generator=generator)
    with torch.no_grad(), use_identities([SETS[2]]):
        want = model(input_ids=ids, use_cache=False).logits
    between_layers, other_done, got = threading.Event(), threading.Event(), []

    def other_forward():
        assert between_layers.wait(60)
        with torch.no_grad(), use_identities([SETS[2]]):
            got.append(model(input_ids=ids, use_cache=False).logits)
        other_done.set()

    def join(index):
        if index == 1:
            between_layers.set()
            assert other_done.wait(60)
        return None

    thread = threading.Thread(target=other_forward)
    thread.start()
    with torch.no_grad():
        batch, tokens = running_batch(model, generator)
        step = PackedStep(batch, [], SETS[:2], join=join)
        step.run(model, torch.tensor([tokens]))
    thread.join(60)
    torch.testing.assert_close(got[0], want, rtol=0, atol=0)


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
