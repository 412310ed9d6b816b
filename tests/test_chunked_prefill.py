"""Chunked prefill: a long prompt joins the running batch a chunk per decode step, so the running rows keep
streaming while it is prefilled, and every reply is the one the unchunked path gives."""
from __future__ import annotations

import pytest

from hirpf.engine import Sampling
from hirpf.prefill_pacing import PrefillPacer
from hirpf.prompts import Conditioning
from hirpf.scheduler import Scheduler

from scheduler_helpers import EIGHT_SETS, HISTORIES, alone, held_sampler, submit_with

GREEDY = Sampling(max_new_tokens=12, do_sample=False)
LONG = [{"role": "user", "content": "Tell me about hospitals, nurses and the night shift in a big city. " * 8}]
CHUNK = 32


def join_while_one_runs(scheduler, monkeypatch, joins, before_join=lambda: None):
    """A running row (held in its sampler), then `before_join` (run while the loop thread waits in that
    sampler) and the `joins` ((history, identity set) pairs) submitted together. Every reply to its end, then
    the scheduler closed: (the running row's reply, the joiners' replies)."""
    try:
        Held = held_sampler()
        running = submit_with(Held, monkeypatch, scheduler, HISTORIES[0], EIGHT_SETS[0],
                              sampling=Sampling(max_new_tokens=40, do_sample=False))
        assert Held.reached.wait(120)
        before_join()
        joiners = [scheduler.submit(history, identities, sampling=GREEDY) for history, identities in joins]
        Held.resume.set()
        for reply in joiners + [running]:
            reply.result(timeout=300)
    finally:
        scheduler.close()
    return running, joiners


def prompt_length(engine, history, identities) -> int:
    return engine.encode([engine.chat_messages(history, identities, Conditioning.EXPERTS_AND_PROMPT)])[
        "input_ids"].shape[1]


def join_long_prompt(engine, scheduler, monkeypatch, before_join=lambda: None):
    """`LONG` joining a running row: (the running row's reply, the joiner's, the joiner's prompt length)."""
    running, (joiner,) = join_while_one_runs(scheduler, monkeypatch, [(LONG, EIGHT_SETS[2])], before_join)
    return running, joiner, prompt_length(engine, LONG, EIGHT_SETS[2])


@pytest.mark.parametrize("packed", [True, False], ids=["chunks in the decode steps", "chunks between steps"])
def test_a_long_prompt_joins_in_chunks_while_the_running_rows_stream(exact_engine, monkeypatch, packed):
    scheduler = Scheduler(exact_engine, max_batch=4, prefix_cache_mb=0, prefill_chunk=CHUNK, prefill_step_share=0,
                          packed_steps=packed)
    steps_while_prefilling = []
    name = "packed_step" if packed else "step"
    step = getattr(scheduler.runner, name)

    def counting_step(*args):
        if scheduler.runner.chunked:
            steps_while_prefilling.append(scheduler.runner.chunked[0].done)
        return step(*args)

    monkeypatch.setattr(scheduler.runner, name, counting_step)
    running, joiner, length = join_long_prompt(exact_engine, scheduler, monkeypatch)
    chunks = -(-length // CHUNK)
    if packed:  # every chunk rides in a decode step of the running row; the last one's step joins it
        assert steps_while_prefilling == [CHUNK * i for i in range(chunks)]
        assert scheduler.runner.packed_steps == chunks
    else:  # a decode step of the running row after each chunk but the last (the last one joins the batch)
        assert steps_while_prefilling == [CHUNK * i for i in range(1, chunks)]
    assert joiner.token_ids == alone(exact_engine, LONG, EIGHT_SETS[2], GREEDY)
    assert running.token_ids == alone(exact_engine, HISTORIES[0], EIGHT_SETS[0],
                                      Sampling(max_new_tokens=40, do_sample=False))


def test_chunks_continue_a_stored_prefix_and_reply_as_unchunked(exact_engine):
    chunked = Scheduler(exact_engine, max_batch=2, prefix_cache_mb=16, prefill_chunk=CHUNK)
    whole = Scheduler(exact_engine, max_batch=2, prefix_cache_mb=16, prefill_chunk=0)
    try:
        replies = {}
        for name, scheduler in (("chunked", chunked), ("whole", whole)):
            first = scheduler.submit(LONG, EIGHT_SETS[1], sampling=GREEDY)
            first.result(timeout=300)
            second_turn = LONG + [{"role": "assistant", "content": first.text}, HISTORIES[4][0]]
            second = scheduler.submit(second_turn, EIGHT_SETS[1], sampling=GREEDY)
            second.result(timeout=300)
            replies[name] = (first.token_ids, second.token_ids)
            assert scheduler.prefixes.hits == 1
        assert chunked.runner.prefills > whole.runner.prefills  # it did chunk
    finally:
        chunked.close()
        whole.close()
    assert replies["chunked"] == replies["whole"]
    assert replies["chunked"][0] == alone(exact_engine, LONG, EIGHT_SETS[1], GREEDY)


def test_a_long_prompt_whose_sequence_cannot_be_stored_fails_alone_instead_of_waiting_forever(exact_engine,
                                                                                            monkeypatch):
    """Its last chunk's store raising used to escape the chunk's own error handling: the request had left the
    chunked queue and never ended."""
    scheduler = Scheduler(exact_engine, max_batch=4, prefix_cache_mb=16, prefill_chunk=CHUNK)

    def broken_store(*args):
        raise RuntimeError("the prefix store broke")

    monkeypatch.setattr(scheduler.prefixes, "store", broken_store)
    try:
        joiner = scheduler.submit(LONG, EIGHT_SETS[2], sampling=GREEDY)
        with pytest.raises(RuntimeError, match="store broke"):
            joiner.result(timeout=60)
        assert joiner.finish_reason == "error"
    finally:
        scheduler.close()


class ScriptedPacer(PrefillPacer):
    """Chunk lengths from a script, and a record of what the runner measured."""

    def __init__(self, script):
        super().__init__(longest=CHUNK, step_share=0.5)
        self.script, self.asked, self.chunks, self.steps = list(script), [], [], []

    def next_chunk(self, rows, packed=False):
        self.asked.append(rows)
        return self.script.pop(0) if self.script else CHUNK

    def record_step(self, seconds, rows):
        self.steps.append(seconds)

    def record_chunk(self, seconds, tokens):
        self.chunks.append((seconds, tokens))

    def record_packed(self, seconds, rows, tokens):
        self.chunks.append((seconds, tokens))


def test_the_pacer_sizes_each_chunk_from_the_measured_steps_and_chunks(exact_engine, monkeypatch):
    scheduler = Scheduler(exact_engine, max_batch=4, prefix_cache_mb=0, prefill_chunk=CHUNK)
    pacer = ScriptedPacer([5, 11, 3])

    def pace_the_join():
        scheduler.runner.pacer = pacer

    running, joiner, length = join_long_prompt(exact_engine, scheduler, monkeypatch, before_join=pace_the_join)
    tokens = [t for _, t in pacer.chunks]
    assert tokens[:3] == [5, 11, 3] and sum(tokens) == length  # the pacer's sizes, the whole prompt once
    assert all(seconds > 0 for seconds, _ in pacer.chunks) and pacer.steps and min(pacer.steps) > 0
    assert all(pacer.asked)  # a row was running while the prompt joined
    assert joiner.token_ids == alone(exact_engine, LONG, EIGHT_SETS[2], GREEDY)  # chunking changes no token


def test_a_short_prompt_riding_in_a_step_tells_the_pacer_nothing(exact_engine, monkeypatch):
    """The pacer sizes long prompts' chunks: a short prompt's step, its tokens cheaper than a long prompt's
    later ones, must not set the cost it sizes them by."""
    scheduler = Scheduler(exact_engine, max_batch=4, prefix_cache_mb=0, prefill_chunk=256)
    pacer = ScriptedPacer([])
    join_while_one_runs(scheduler, monkeypatch, [(HISTORIES[1], EIGHT_SETS[1])],
                        before_join=lambda: setattr(scheduler.runner, "pacer", pacer))
    assert scheduler.runner.packed_steps >= 1  # the joiner rode in a decode step
    assert pacer.asked == [] and pacer.chunks == []


def test_a_short_prompt_and_a_long_ones_chunk_share_one_step_budget(exact_engine, monkeypatch):
    """A short prompt joins whole and uses the step's budget of prompt tokens first; the long prompt's chunk
    gets what is left, so the step carries the budget, not the budget plus the short prompt."""
    scheduler = Scheduler(exact_engine, max_batch=4, prefix_cache_mb=0, prefill_chunk=64)
    short = HISTORIES[1]
    short_tokens = prompt_length(exact_engine, short, EIGHT_SETS[1])
    pacer = ScriptedPacer([short_tokens + 12])
    _, (long, joiner) = join_while_one_runs(scheduler, monkeypatch, [(LONG, EIGHT_SETS[2]), (short, EIGHT_SETS[1])],
                                            before_join=lambda: setattr(scheduler.runner, "pacer", pacer))
    first_step_tokens = pacer.chunks[0][1]
    assert first_step_tokens == short_tokens + 12  # the short prompt whole, 12 of the long one's
    assert joiner.token_ids == alone(exact_engine, short, EIGHT_SETS[1], GREEDY)
    assert long.token_ids == alone(exact_engine, LONG, EIGHT_SETS[2], GREEDY)
