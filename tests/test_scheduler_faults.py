"""Faults in the scheduler stay with the requests they concern: a join that fails half way fails the joiner
alone, a failure in the loop ends only its rows and the loop goes on, and a loop thread that dies all the same
is replaced at the next request (and said so in the model's status line)."""
from __future__ import annotations

import threading

import pytest

import hirpf.batch_cache as batch_cache
import hirpf.packed_step as packed_step
from app.model_slot import ModelSlot
from hirpf.engine import Engine, Sampling
from hirpf.scheduler import Scheduler

from scheduler_helpers import EIGHT_SETS, HISTORIES, alone, arriving_during_a_step, held_sampler, submit_with

LONG = Sampling(max_new_tokens=16, do_sample=False)


def fails_on_call(function, n: int):
    """`function`, except that its `n`-th call from now raises as an allocation would (a plain function, so
    that it binds as a method where it replaces one)."""
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise RuntimeError("out of memory (injected)")
        return function(*args, **kwargs)
    return failing


def test_a_join_that_fails_half_way_fails_only_the_joiner(exact_engine, monkeypatch):
    scheduler = Scheduler(exact_engine, max_batch=4, prefix_cache_mb=0)  # no store: only add() pads
    try:
        Held = held_sampler()
        running = submit_with(Held, monkeypatch, scheduler, HISTORIES[0], EIGHT_SETS[0], sampling=LONG)
        assert Held.reached.wait(120)
        # The joiner's add builds the first layer of the new batch cache, then fails in the second.
        add, layer = batch_cache.PaddedBatchCache.add, batch_cache.SpareColumnsLayer

        def add_failing_half_way(batch, *args):
            with monkeypatch.context() as during:
                during.setattr(layer, "__init__", fails_on_call(layer.__init__, 2))
                return add(batch, *args)
        monkeypatch.setattr(batch_cache.PaddedBatchCache, "add", add_failing_half_way)
        joiner = scheduler.submit(HISTORIES[1], EIGHT_SETS[1], sampling=LONG)
        Held.resume.set()
        with pytest.raises(RuntimeError, match="injected"):
            joiner.result(timeout=300)
        assert running.result(timeout=300) is not None and running.finish_reason == "length"
        assert running.token_ids == alone(exact_engine, HISTORIES[0], EIGHT_SETS[0], LONG)
    finally:
        scheduler.close()


def test_a_request_that_fails_joining_a_step_in_flight_fails_alone(exact_engine, monkeypatch):
    scheduler = Scheduler(exact_engine, max_batch=4)
    try:
        monkeypatch.setattr(scheduler.runner, "_catch_up", fails_on_call(scheduler.runner._catch_up, 1))
        with arriving_during_a_step(scheduler, HISTORIES[1], EIGHT_SETS[1], LONG) as arrival:
            running = scheduler.submit(HISTORIES[0], EIGHT_SETS[0], sampling=LONG)
            running.result(timeout=300)
            with pytest.raises(RuntimeError, match="injected"):
                arrival["stream"].result(timeout=300)
        assert running.token_ids == alone(exact_engine, HISTORIES[0], EIGHT_SETS[0], LONG)
    finally:
        scheduler.close()


def test_a_step_that_fails_after_a_request_joined_it_in_flight_loses_no_reply(exact_engine, monkeypatch):
    """The step changed no cache; the joiner's own cache, which held the layers it was run through alone,
    starts again from the prefix store: both replies are still the ones they give alone."""
    scheduler = Scheduler(exact_engine, max_batch=4)
    commit, failed = packed_step.PackedStep.commit, []

    def commit_failing_after_a_join_in_flight(step):
        if any(at > 0 for at in step._joined_at) and not failed:
            failed.append(step)
            raise RuntimeError("out of memory (injected)")
        return commit(step)
    monkeypatch.setattr(packed_step.PackedStep, "commit", commit_failing_after_a_join_in_flight)
    try:
        with arriving_during_a_step(scheduler, HISTORIES[1], EIGHT_SETS[1], LONG) as arrival:
            running = scheduler.submit(HISTORIES[0], EIGHT_SETS[0], sampling=LONG)
            running.result(timeout=300)
            arrival["stream"].result(timeout=300)
        assert failed
        assert arrival["stream"].token_ids == alone(exact_engine, HISTORIES[1], EIGHT_SETS[1], LONG)
        assert running.token_ids == alone(exact_engine, HISTORIES[0], EIGHT_SETS[0], LONG)
    finally:
        scheduler.close()


class BreaksInTheLoop(threading.Event):
    """A stop flag that works for its caller and fails when the loop thread asks it."""

    def is_set(self):
        if threading.current_thread().name == "hirpf-scheduler":
            raise RuntimeError("this stop flag broke")
        return super().is_set()


def test_a_failure_in_the_loop_ends_only_its_row_and_the_loop_goes_on(exact_engine, monkeypatch):
    scheduler = Scheduler(exact_engine, max_batch=4)
    try:
        with pytest.raises(TypeError, match="stop_event"):
            scheduler.submit(HISTORIES[0], EIGHT_SETS[0], sampling=LONG, stop_event=True)  # refused at once
        Held = held_sampler()
        running = submit_with(Held, monkeypatch, scheduler, HISTORIES[0], EIGHT_SETS[0], sampling=LONG)
        assert Held.reached.wait(120)
        broken = scheduler.submit(HISTORIES[1], EIGHT_SETS[1], sampling=LONG, stop_event=BreaksInTheLoop())
        Held.resume.set()
        with pytest.raises(RuntimeError, match="stop flag broke"):
            broken.result(timeout=300)
        assert running.result(timeout=300) is not None
        assert running.token_ids == alone(exact_engine, HISTORIES[0], EIGHT_SETS[0], LONG)
        later = scheduler.submit(HISTORIES[2], EIGHT_SETS[2], sampling=LONG)
        later.result(timeout=300)
        assert later.token_ids == alone(exact_engine, HISTORIES[2], EIGHT_SETS[2], LONG)
    finally:
        scheduler.close()


class BreaksAtDecode:
    """The model, except that a decode step (one new token per row) raises."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, **kwargs):
        if input_ids.shape[1] == 1:
            raise RuntimeError("the decode step broke")
        return self.model(input_ids=input_ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_a_dead_loop_is_replaced_by_the_next_request_and_the_status_says_so(exact_engine, monkeypatch):
    engine = Engine(exact_engine.model, exact_engine.tokenizer)
    first = engine.scheduler()
    monkeypatch.setattr(first.runner, "model", BreaksAtDecode(first.runner.model))
    killer = RuntimeError("the failure handler broke too")

    def fail_all(err):
        raise killer  # the step's failure cannot be handled: the loop thread dies

    monkeypatch.setattr(first, "_fail_all", fail_all)
    doomed = first.submit(HISTORIES[0], EIGHT_SETS[0], sampling=LONG)
    with pytest.raises(RuntimeError, match="broke too"):
        doomed.result(timeout=120)  # ends with the error, does not hang
    second = engine.scheduler()
    assert second is not first and first.closed and engine.scheduler_restarts == 1
    reply = second.submit(HISTORIES[1], EIGHT_SETS[1], sampling=LONG)
    reply.result(timeout=300)
    assert reply.token_ids == alone(exact_engine, HISTORIES[1], EIGHT_SETS[1], LONG)
    assert repr(killer) in ModelSlot.ready(engine).status()
    second.close()
