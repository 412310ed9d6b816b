"""Prefix reuse in the scheduler: a prompt that begins as an earlier sequence did (under the same identity
rows) is prefilled from where they part, and the reply is the one a full prefill gives."""
from __future__ import annotations

import threading

import pytest
import torch

from hirpf.engine import Sampling
from hirpf.identities import IdentitySet
from hirpf.prefix_cache import PrefixCache
from hirpf.prompts import Conditioning
from hirpf.routing import Routing
from hirpf.scheduler import Scheduler

from scheduler_helpers import PausingSampler, alone, submit_with

GREEDY = Sampling(max_new_tokens=10, do_sample=False)


@pytest.fixture
def scheduler(exact_engine):
    s = Scheduler(exact_engine, max_batch=4, prefix_cache_mb=64)
    yield s
    s.close()


def test_a_conversation_reuses_its_earlier_turns_and_replies_as_a_full_prefill(exact_engine, scheduler):
    doctor = IdentitySet.parse("AGR_low,Doctor")
    history = [{"role": "user", "content": "Good morning, doctor."}]
    first = scheduler.submit(history, doctor, sampling=GREEDY)
    first.result(timeout=300)
    assert scheduler.prefixes.hits == 0 and scheduler.prefixes.misses == 1
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "What should I do?"}]
    second = scheduler.submit(history, doctor, sampling=GREEDY)
    second.result(timeout=300)
    assert scheduler.prefixes.hits == 1
    prompts = [exact_engine.encode([exact_engine.chat_messages(h, doctor, Conditioning.EXPERTS_AND_PROMPT)])
               ["input_ids"][0].tolist() for h in (history[:1], history)]
    # What the store held: the first prompt and the reply tokens the batch fed back (a reply cut by its
    # length has its last token chosen, not fed).
    held = prompts[0] + first.token_ids[:len(first.token_ids) - (first.finish_reason == "length")]
    common = next((i for i, (a, b) in enumerate(zip(held, prompts[1])) if a != b), min(len(held), len(prompts[1])))
    assert scheduler.prefixes.reused_tokens == common >= len(prompts[0])  # at least the whole first prompt
    assert second.token_ids == alone(exact_engine, history, doctor, GREEDY)  # float64: token for token


def test_stored_keys_serve_only_the_same_identity_rows_and_strengths(exact_engine, scheduler):
    history = [{"role": "user", "content": "Tell me about your day."}]
    doctor, other = IdentitySet.parse("Doctor"), IdentitySet.parse("Doctor").with_strengths("Doctor=0.5")
    scheduler.submit(history, doctor, sampling=GREEDY).result(timeout=300)
    weaker = scheduler.submit(history, other, sampling=GREEDY)
    weaker.result(timeout=300)
    assert scheduler.prefixes.hits == 0  # same prompt text, other strengths: other keys and values
    assert weaker.token_ids == alone(exact_engine, history, other, GREEDY)
    again = scheduler.submit(history, doctor, sampling=GREEDY)
    again.result(timeout=300)
    assert scheduler.prefixes.hits == 1
    assert again.token_ids == alone(exact_engine, history, doctor, GREEDY)


def test_rows_that_join_a_running_batch_from_the_store_match_alone(exact_engine, scheduler):
    """A question on a cached identity prompt joins beside rows that are decoding, and all match alone."""
    sets = [IdentitySet.parse(s) for s in ("EXT_high,Artist", "NEU_low", "EXT_high,Artist", "NEU_low")]
    questions = ["Hello!", "How are you?", "What do you paint?", "Any plans?"]
    histories = [[{"role": "user", "content": q}] for q in questions]
    for h, s in zip(histories[:2], sets[:2]):
        scheduler.submit(h, s, sampling=GREEDY).result(timeout=300)
    streams = [scheduler.submit(h, s, sampling=GREEDY) for h, s in zip(histories, sets)]
    for stream, h, s in zip(streams, histories, sets):
        stream.result(timeout=300)
        assert stream.token_ids == alone(exact_engine, h, s, GREEDY)
    assert scheduler.prefixes.hits >= 4  # every row found at least its identity prompt


def test_requests_that_arrive_together_are_prefilled_in_one_forward_and_match_alone(exact_engine, monkeypatch):
    """Second turns (long stored prefixes), a first question on a stored identity prompt and a question under
    a set never seen (nothing stored) wait while the loop is held; they are prefilled in one forward, each
    continuing its own stored prefix, and every reply is the one it gets alone."""
    scheduler = Scheduler(exact_engine, max_batch=8, prefix_cache_mb=64)
    try:
        sets = [IdentitySet.parse(s) for s in ("EXT_high,Artist", "NEU_low", "AGR_low,Doctor")]
        turns = [[{"role": "user", "content": q}] for q in ("Hello there, how was the exhibition?", "Hi.")]
        for h, s in zip(turns, sets):
            first = scheduler.submit(h, s, sampling=GREEDY)
            h += [{"role": "assistant", "content": first.result(timeout=300)}, {"role": "user", "content": "Why?"}]
        Held = type("Held", (PausingSampler,), {"reached": threading.Event(), "resume": threading.Event()})
        holding = submit_with(Held, monkeypatch, scheduler, turns[0][:1], sets[0], sampling=GREEDY)
        assert Held.reached.wait(120)
        prefills = scheduler.runner.prefills
        requests = [(turns[0], sets[0]), (turns[1], sets[1]), ([{"role": "user", "content": "Ok"}], sets[1]),
                    ([{"role": "user", "content": "Where do you work these days?"}], sets[2])]
        streams = [scheduler.submit(h, s, sampling=GREEDY) for h, s in requests]
        Held.resume.set()
        for stream, (h, s) in zip(streams + [holding], requests + [(turns[0][:1], sets[0])]):
            stream.result(timeout=300)
            assert stream.token_ids == alone(exact_engine, h, s, GREEDY), str(s)
        assert scheduler.runner.prefills == prefills + 1 and scheduler.runner.widest_prefill == 4
    finally:
        scheduler.close()


def _layers(n_tokens: int, value: float = 0.0, layers: int = 2):
    return [(torch.full((1, 1, n_tokens, 2), value), torch.full((1, 1, n_tokens, 2), value)) for _ in range(layers)]


def test_the_store_keeps_the_longest_prefix_within_its_budget():
    key = Routing([IdentitySet.parse("Doctor")]).key
    per_token = 2 * 2 * 2 * 4  # two layers of keys and values, 2 floats each
    store = PrefixCache(budget_bytes=10 * per_token)
    store.store(key, torch.tensor([1, 2, 3]), _layers(3, 1.0))
    store.store(key, torch.tensor([1, 2, 3, 4, 5]), _layers(5, 2.0))  # extends the first: replaces it
    assert len(store) == 1 and store.stored_bytes == 5 * per_token
    cache, length = store.lookup(key, torch.tensor([[1, 2, 3, 4, 9, 9]]), None)
    assert length == 4 and cache.layers[0].keys.shape[2] == 4 and float(cache.layers[1].values[0, 0, 0, 0]) == 2.0
    _, length = store.lookup(key, torch.tensor([[1, 2, 3, 4, 5]]), None)
    assert length == 4  # the last prompt token is always prefilled: the first reply token needs its logits
    assert store.lookup(Routing([IdentitySet.parse("Artist")]).key, torch.tensor([[1, 2, 3]]), None) is None
    assert store.lookup(key, torch.tensor([[7, 1, 2]]), None) is None
    store.store(key, torch.tensor([7, 8, 9, 10, 11, 12]), _layers(6))  # over the budget: the oldest goes
    assert len(store) == 1 and store.lookup(key, torch.tensor([[1, 2, 3, 4]]), None) is None
    store.store(key, torch.arange(11), _layers(11))  # larger than the whole budget: not kept
    assert len(store) == 1
    off = PrefixCache(budget_bytes=0)
    off.store(key, torch.tensor([1, 2]), _layers(2))
    assert len(off) == 0 and off.lookup(key, torch.tensor([[1, 2, 3]]), None) is None


def test_a_view_of_a_larger_buffer_is_stored_as_a_copy_of_what_it_holds():
    """A growing cache's keys are views of buffers with spare columns: stored as they are, an entry would
    keep the whole buffer alive beyond what the budget counts."""
    key = Routing([IdentitySet.parse("Doctor")]).key
    buffer = torch.randn(1, 2, 40, 2)
    view = buffer[:, :, :3]
    whole = torch.randn(1, 2, 3, 2)
    store = PrefixCache(budget_bytes=1 << 20)
    store.store(key, torch.tensor([1, 2, 3]), [(view, whole)])
    cache, _ = store.lookup(key, torch.tensor([[1, 2, 3, 4]]), None)
    kept_keys, kept_values = cache.layers[0].keys, cache.layers[0].values
    entry = store._entries[next(iter(store._entries))]
    assert entry.layers[0][0].untyped_storage().nbytes() == view.numel() * 4  # a copy the size of what it holds
    assert entry.layers[0][1] is whole  # not a view: kept as it is
    torch.testing.assert_close(kept_keys, view, rtol=0, atol=0)
    torch.testing.assert_close(kept_values, whole, rtol=0, atol=0)
