"""Visitors served at once: the Chat tab's replies share the engine's scheduler (one running batch, an
identity set per row), driven with `gradio_client` against the app on loopback.

The model is a tiny float64 Llama with random experts (`exact_engine`): there a row decoded in a batch
gives exactly what it gives alone, so "the same text as each visitor alone" is an exact comparison.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest

from hirpf.environment import SETTINGS
from hirpf.identities import PROFESSIONS, IdentitySet

from app_serving import captions, client, replies, served, transcript

# (identity set, message): each visitor its own set, the empty set among them.
VISITORS = [("Doctor,AGR_high", "Hi!"), ("", "What do you do at work?"),
            ("EXT_low,NEU_high,OPE_low,Artist", "Describe your ideal weekend in a few words."),
            ("Programmer", "Why?"), ("CON_high,OPE_high", "Do you like music?"),
            ("AGR_low,Doctor", "Tell me about your family.")]
GREEDY = {"temperature": 0, "max_new_tokens": 16}
REPLY_EVENTS = ("chat", "regenerate", "debate")  # stream one reply (or statement) at a time
STATIC_BATCH_EVENTS = ("compare", "questionnaire", "survey")  # one batched call each


def panel(identities: str) -> dict:
    """The identity panel's API arguments for a set."""
    names = IdentitySet.parse(identities).names
    return {"traits": [n for n in names if n not in PROFESSIONS], "profession": [n for n in names if n in PROFESSIONS]}


def caption_of(identities: str) -> str:
    return f"Identity: {IdentitySet.parse(identities).describe()}"


@pytest.fixture(scope="module")
def exact_url(exact_engine):
    with served(exact_engine) as url:
        yield url


@contextmanager
def all_arrive_first(scheduler, requests: int):
    """Hold the scheduler's first forward pass until `requests` requests have been submitted, so that all of
    them decode together in one batch whatever the timing of the HTTP calls."""
    arrived, lock, all_in = [0], threading.Lock(), threading.Event()
    submit = scheduler.submit

    def counted_submit(*args, **kwargs):
        stream = submit(*args, **kwargs)
        with lock:
            arrived[0] += 1
            if arrived[0] >= requests:
                all_in.set()
        return stream

    scheduler.submit = counted_submit  # the instance's attribute, read by `scheduler.stream`
    hook = scheduler.runner.model.register_forward_pre_hook(lambda *_: all_in.wait(60) and None)
    try:
        yield
    finally:
        hook.remove()
        del scheduler.submit


@contextmanager
def slowed(model, seconds: float):
    """Each forward pass of `model` takes `seconds` longer, so that a reply is still streaming when a test
    acts on it."""
    hook = model.register_forward_pre_hook(lambda *_: time.sleep(seconds))
    try:
        yield
    finally:
        hook.remove()


def test_visitors_chatting_at_once_get_their_own_replies_as_each_alone(exact_url, exact_engine):
    alone = [transcript(client(exact_url).predict(message=m, **panel(s), **GREEDY, api_name="/chat"))
             for s, m in VISITORS]
    assert len({tuple(replies(t)) for t in alone}) == len(VISITORS)  # the identities change the replies
    scheduler = exact_engine.scheduler()
    visitors = [client(exact_url) for _ in VISITORS]
    with all_arrive_first(scheduler, len(VISITORS)):
        jobs = [c.submit(message=m, **panel(s), **GREEDY, api_name="/chat") for c, (s, m) in zip(visitors, VISITORS)]
        together = [transcript(job.result(timeout=120)) for job in jobs]
    assert scheduler.runner.widest_batch == len(VISITORS), "the visitors' replies were not decoded in one batch"
    for (identities, _), reply, reply_alone in zip(VISITORS, together, alone):
        assert captions(reply) == [caption_of(identities)], identities
        assert replies(reply) == replies(reply_alone), identities


def test_one_visitors_stop_ends_only_its_reply(exact_url, exact_engine):
    (a_set, a_message), (b_set, b_message) = VISITORS[0], VISITORS[2]
    long = {**GREEDY, "max_new_tokens": 60}
    b_alone = replies(transcript(client(exact_url).predict(message=b_message, **panel(b_set), **long,
                                                           api_name="/chat")))
    a, b = client(exact_url), client(exact_url)
    with slowed(exact_engine.model, 0.05):
        a_job = a.submit(message=a_message, **panel(a_set), **long, api_name="/chat")
        b_job = b.submit(message=b_message, **panel(b_set), **long, api_name="/chat")
        deadline = time.monotonic() + 60
        while not all(any(replies(transcript(o)) and replies(transcript(o))[0] for o in job.outputs())
                      for job in (a_job, b_job)):
            assert time.monotonic() < deadline and not a_job.done(), "the replies never both started streaming"
            time.sleep(0.05)
        a.predict(api_name="/stop")
        a_final, b_final = transcript(a_job.result(timeout=60)), transcript(b_job.result(timeout=120))
    assert replies(a_final)[0].endswith("*(stopped)*")
    assert "stopped" not in replies(b_final)[0] and replies(b_final) == b_alone
    assert exact_engine.scheduler().running == 0


def concurrency(demo, api_name: str) -> tuple[str, object]:
    fn = next(f for f in demo.blocks.fns.values() if f.api_name == api_name)
    return fn.concurrency_id, fn.concurrency_limit


def test_reply_events_let_a_batch_of_visitors_reach_the_scheduler(tiny_engine, monkeypatch, tmp_path):
    """Chat, regenerate and debate: up to `HIRPF_MAX_BATCH` at once in their own group, the rest queue; the
    static batches keep the model queue of one; with the scheduler off, everything waits in that queue."""
    from app.build import build_app

    monkeypatch.delenv("HIRPF_MAX_BATCH", raising=False)
    demo = build_app(tiny_engine, data_dir=tmp_path)
    assert {concurrency(demo, name) for name in REPLY_EVENTS} == {("scheduler", SETTINGS["HIRPF_MAX_BATCH"].default)}
    assert {concurrency(demo, name) for name in STATIC_BATCH_EVENTS} == {("model", 1)}
    monkeypatch.setenv("HIRPF_MAX_BATCH", "3")
    demo = build_app(tiny_engine, data_dir=tmp_path)
    assert {concurrency(demo, name) for name in REPLY_EVENTS} == {("scheduler", 3)}
    assert demo.reply_serving.through_scheduler
    serial = build_app(tiny_engine, data_dir=tmp_path, scheduler=False)
    assert {concurrency(serial, name) for name in REPLY_EVENTS + STATIC_BATCH_EVENTS} == {("model", 1)}
    assert not serial.reply_serving.through_scheduler


def test_streamed_updates_are_paced_and_the_last_one_always_arrives(monkeypatch):
    """A reply's updates reach the page at most once per interval; the final text is never held back."""
    from app import reply_serving

    clock = iter([0.0, 0.05, 0.1, 0.25, 0.3, 0.31]).__next__
    monkeypatch.setattr(reply_serving.time, "monotonic", clock)
    sent = list(reply_serving.paced(["a", "ab", "abc", "abcd", "abcde", "abcdef"], interval_s=0.2))
    assert sent == ["a", "abcd", "abcdef"]
    monkeypatch.setattr(reply_serving.time, "monotonic", lambda: 1.0)
    assert list(reply_serving.paced([])) == []
    assert list(reply_serving.paced(["only"])) == ["only"]
