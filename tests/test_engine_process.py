"""The running batch in a process of its own (`hirpf.engine_process`): the same replies as the in-process
scheduler, bad requests failing in the caller's thread, stops reaching the other process, and a dead or
failed engine process reported and replaced."""
from __future__ import annotations

import os
import signal
import threading
from functools import partial

import pytest

from app.tiny_model import tiny_engine
from hirpf.engine import Engine
from hirpf.engine_process import EngineProcess, EngineProcessError
from hirpf.identities import IdentityError
from hirpf.reply_stream import FinishReason
from hirpf.sampling import Sampling
from hirpf.scheduler import Scheduler
from tests.scheduler_helpers import EIGHT_SETS, HISTORIES

GREEDY = Sampling(max_new_tokens=12, do_sample=False)
LONG = Sampling(max_new_tokens=1500, do_sample=False)


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture(scope="module")
def process(engine):
    served = EngineProcess(engine, engine.load_again)
    yield served
    served.close()


def test_replies_through_the_engine_process_equal_the_in_process_schedulers(engine, process):
    requests = list(zip(HISTORIES, EIGHT_SETS))
    in_process = Scheduler(engine)
    try:
        expected = [in_process.submit(h, s, sampling=GREEDY) for h, s in requests]
        expected = [(s.result(120), s.finish_reason) for s in expected]
    finally:
        in_process.close()
    streams = [process.submit(h, s, sampling=GREEDY) for h, s in requests]  # all eight at once
    assert [(s.result(120), s.finish_reason) for s in streams] == expected
    assert all(text for text, _ in expected)


def test_the_engine_process_says_its_thread_count_and_why(process):
    process.submit(HISTORIES[0], EIGHT_SETS[0], sampling=GREEDY).result(120)  # it has served: it said
    threads, reason = process.threads
    assert 1 <= threads <= os.cpu_count() and reason


def test_the_reply_streams_as_it_grows(process):
    seen = list(process.stream(HISTORIES[1], EIGHT_SETS[1], sampling=GREEDY))
    assert len(seen) >= 2 and all(b.startswith(a) for a, b in zip(seen, seen[1:]))


def test_a_bad_request_fails_in_the_callers_thread_and_touches_nothing_else(process):
    running = process.submit(HISTORIES[0], EIGHT_SETS[0], sampling=GREEDY)
    with pytest.raises(IdentityError):
        process.submit(HISTORIES[0], "AGR_high,AGR_low", sampling=GREEDY)
    with pytest.raises(ValueError, match="num_beams"):
        process.submit(HISTORIES[0], "", sampling=Sampling(max_new_tokens=4, num_beams=2, do_sample=False))
    with pytest.raises(TypeError, match="stop_event"):
        process.submit(HISTORIES[0], "", sampling=GREEDY, stop_event=True)
    assert running.result(120) and running.finish_reason in (FinishReason.EOS, FinishReason.LENGTH)


def test_the_engine_process_reports_and_clears_its_prefix_store(process):
    process.clear_prefixes()
    before = process.prefix_counters()
    for _ in range(2):  # the second finds the first's identity prompt
        process.submit(HISTORIES[6], EIGHT_SETS[6], sampling=GREEDY).result(120)
    hits, misses, reused = (now - then for now, then in zip(process.prefix_counters(), before))
    assert hits >= 1 and reused > 0
    with pytest.raises(ValueError, match="answers"):
        process._call("close")


def test_a_stop_reaches_the_engine_process_and_ends_that_reply_alone(process):
    stop = threading.Event()
    stopped = process.submit(HISTORIES[2], EIGHT_SETS[2], sampling=LONG, stop_event=stop)
    other = process.submit(HISTORIES[3], EIGHT_SETS[3], sampling=GREEDY)
    next(iter(stopped))  # it is decoding
    stop.set()
    stopped.result(60)
    assert stopped.finish_reason == FinishReason.STOPPED and len(stopped.token_ids) < LONG.max_new_tokens
    assert other.result(60) and other.finish_reason != FinishReason.ERROR


def test_a_dead_engine_process_fails_its_requests_and_the_engine_starts_a_new_one(engine):
    engine._scheduler, engine.scheduler_restarts = None, 0
    assert engine.serve_in_a_process()
    first = engine.scheduler()
    try:
        assert isinstance(first, EngineProcess)
        reply = first.submit(HISTORIES[4], EIGHT_SETS[4], sampling=LONG)
        next(iter(reply))
        os.kill(first._process.pid, signal.SIGKILL)
        with pytest.raises(EngineProcessError, match="ended"):
            reply.result(60)
        assert reply.finish_reason == FinishReason.ERROR and first.closed
        second = engine.scheduler()
        assert second is not first and engine.scheduler_restarts == 1
        assert second.submit(HISTORIES[5], EIGHT_SETS[5], sampling=GREEDY).result(120)
    finally:
        engine.scheduler().close()
        engine._scheduler = None
        engine.serve_in_a_process(False)


def test_only_an_engine_that_can_load_itself_again_serves_in_a_process(engine, tiny_engine):
    assert tiny_engine.load_again is not None  # Engine.load records its arguments
    tiny_engine.load_again = None
    assert not tiny_engine.serve_in_a_process() and isinstance(tiny_engine.scheduler(), Scheduler)
    tiny_engine.scheduler().close()
    tiny_engine._scheduler = None


def test_a_model_the_engine_process_cannot_load_is_said_to_every_request(engine, tmp_path):
    broken = EngineProcess(engine, partial(Engine.load, str(tmp_path / "no-such-model")))
    try:
        reply = broken.submit(HISTORIES[0], "", sampling=GREEDY)
        with pytest.raises(EngineProcessError, match="could not load the model"):
            reply.result(120)
        assert broken.closed
    finally:
        broken.close()
