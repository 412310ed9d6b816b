"""The scheduler: rows with different identity sets decoded together give what each gives alone."""
from __future__ import annotations

import copy
import threading
import time
import warnings

import pytest
import torch

from app.tiny_model import randomize_experts
from hirpf.engine import Engine, Sampling
from hirpf.experts import ExpertConfig
from hirpf.identities import IdentityError, IdentitySet
from hirpf.inject import add_experts
from hirpf.prompts import Conditioning
from hirpf.reply_stream import FinishReason, ReplySource
from hirpf.routing import use_identities
from hirpf.row_sampling import RowSampler
from hirpf.scheduler import Scheduler

from scheduler_helpers import (
    EIGHT_SETS,
    GREEDY,
    HISTORIES,
    PausingSampler,
    alone,
    arriving_during_a_step,
    held_sampler,
    submit_with,
)


@pytest.fixture
def scheduler(exact_engine):
    s = Scheduler(exact_engine, max_batch=8)
    yield s
    s.close()


def test_the_engine_and_its_scheduler_are_reply_sources_and_say_why_a_reply_ended(exact_engine, scheduler):
    assert isinstance(exact_engine, ReplySource) and isinstance(scheduler, ReplySource)
    assert not isinstance(object(), ReplySource)
    reply = scheduler.stream(HISTORIES[0], EIGHT_SETS[0], sampling=Sampling(max_new_tokens=2, do_sample=False))
    reply.result(timeout=300)
    assert reply.finish_reason in (FinishReason.EOS, FinishReason.LENGTH)
    assert reply.finish_reason == (FinishReason.LENGTH if len(reply.token_ids) == 2 else "eos")  # a str too


def test_eight_rows_with_eight_identity_sets_match_each_alone_exactly(exact_engine, scheduler):
    expected = [alone(exact_engine, h, s) for h, s in zip(HISTORIES, EIGHT_SETS)]
    assert len({tuple(e) for e in expected}) == 8  # the identities (and prompts) do change the replies
    streams = [scheduler.submit(h, s, sampling=GREEDY) for h, s in zip(HISTORIES, EIGHT_SETS)]
    for stream, want, identities in zip(streams, expected, EIGHT_SETS):
        stream.result(timeout=300)
        assert stream.token_ids == want, str(identities)
    assert scheduler.runner.widest_batch == 8


def test_the_same_prompt_under_eight_sets_keeps_each_rows_identity(exact_engine, scheduler):
    history = HISTORIES[1]
    expected = [alone(exact_engine, history, s, conditioning=Conditioning.EXPERTS) for s in EIGHT_SETS]
    assert len({tuple(e) for e in expected}) == 8  # one prompt: only the experts tell the rows apart
    streams = [scheduler.submit(history, s, Conditioning.EXPERTS, GREEDY) for s in EIGHT_SETS]
    assert [s.result(timeout=300) and s.token_ids for s in streams] == expected


def test_no_identity_crosses_rows_the_empty_set_is_the_plain_base_model(tiny_base_dir, scheduler):
    plain = Engine.load(str(tiny_base_dir), lora_weights=None, load_in_8bit=False, dtype="float32")
    plain.model.to(torch.float64)  # the same weights, no experts at all
    history = HISTORIES[2]
    neighbours = [scheduler.submit(history, s, sampling=GREEDY) for s in EIGHT_SETS[:3]]
    empty = scheduler.submit(history, IdentitySet(), sampling=GREEDY)
    prompt_only = scheduler.submit(history, "Doctor,AGR_high", Conditioning.PROMPT, GREEDY)  # experts see nothing
    more = [scheduler.submit(history, s, sampling=GREEDY) for s in EIGHT_SETS[3:6]]
    for stream in neighbours + [empty, prompt_only] + more:
        stream.result(timeout=300)
    assert empty.token_ids == alone(plain, history, IdentitySet())
    assert prompt_only.token_ids == alone(plain, history, IdentitySet.parse("Doctor,AGR_high"),
                                          conditioning=Conditioning.PROMPT)


class FailingSampler(RowSampler):
    """Fails at its fourth token: an error inside the loop that belongs to one row."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def next_token(self, ids, logits):
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("this row's sampler broke")
        return super().next_token(ids, logits)



def test_joining_stopping_and_failing_rows_do_not_disturb_the_others(exact_engine, scheduler, monkeypatch):
    long = Sampling(max_new_tokens=20, do_sample=False)
    expected = {i: alone(exact_engine, HISTORIES[i], EIGHT_SETS[i], long) for i in range(5)}
    stop = threading.Event()
    first = submit_with(PausingSampler, monkeypatch, scheduler, HISTORIES[0], EIGHT_SETS[0], sampling=long)
    second = scheduler.submit(HISTORIES[1], EIGHT_SETS[1], sampling=long)
    stopped = scheduler.submit(HISTORIES[2], EIGHT_SETS[2], sampling=long, stop_event=stop)
    assert PausingSampler.reached.wait(120)
    # The loop is held mid-step with three rows running: act on it.
    stop.set()
    with pytest.raises(IdentityError, match="AGR"):
        scheduler.submit(HISTORIES[3], "AGR_high,AGR_low", sampling=long)  # fails alone, at once
    with pytest.raises(ValueError, match="num_beams"):
        scheduler.submit(HISTORIES[3], EIGHT_SETS[3], sampling=Sampling(num_beams=2))
    late = scheduler.submit(HISTORIES[3], EIGHT_SETS[3], sampling=long)  # joins at the next step
    failing = submit_with(FailingSampler, monkeypatch, scheduler, HISTORIES[4], EIGHT_SETS[4], sampling=long)
    PausingSampler.resume.set()

    assert first.result(timeout=300) is not None and first.token_ids == expected[0]
    assert second.result(timeout=300) is not None and second.token_ids == expected[1]
    assert late.result(timeout=300) is not None and late.token_ids == expected[3]
    assert late.first_token_at < first.finished_at  # it really decoded beside the first rows
    stopped.result(timeout=300)
    assert stopped.finish_reason == "stopped"
    assert 0 < len(stopped.token_ids) < 20 and stopped.token_ids == expected[2][:len(stopped.token_ids)]
    with pytest.raises(RuntimeError, match="sampler broke"):
        failing.result(timeout=300)
    assert failing.finish_reason == "error" and failing.token_ids == expected[4][:3]
    # The scheduler goes on serving after all that.
    assert scheduler.submit(HISTORIES[5], EIGHT_SETS[5], sampling=GREEDY).result(timeout=300) is not None


class BreaksOnToken:
    """The model, except that a forward whose input holds `token` raises: a request that breaks at prefill."""

    def __init__(self, model, token: int):
        self.model, self.token = model, token

    def __call__(self, input_ids, **kwargs):
        if (input_ids == self.token).any():
            raise RuntimeError("this prompt broke the forward")
        return self.model(input_ids=input_ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.mark.parametrize("packed", [True, False], ids=["packed step", "joint prefill"])
def test_a_request_that_breaks_a_joint_prefill_fails_alone(exact_engine, packed, monkeypatch, caplog):
    """Requests that arrive together share one forward (a packed decode step, or a joint prefill where steps do
    not pack); when it fails, each is prefilled alone, so only the one that breaks it fails and the others
    reply as they would alone."""
    scheduler = Scheduler(exact_engine, max_batch=8, packed_steps=packed)
    try:
        expected = [alone(exact_engine, HISTORIES[i], EIGHT_SETS[i]) for i in range(3)]
        bad_history = [{"role": "user", "content": "Zebra quartz."}]
        bad_prompt = exact_engine.encode([exact_engine.chat_messages(bad_history, EIGHT_SETS[3],
                                                                     Conditioning.EXPERTS_AND_PROMPT)])["input_ids"][0]
        seen = {t for h, s, e in zip(HISTORIES, EIGHT_SETS, expected) for t in e + exact_engine.encode(
            [exact_engine.chat_messages(h, s, Conditioning.EXPERTS_AND_PROMPT)])["input_ids"][0].tolist()}
        token = next(t for t in bad_prompt.tolist() if t not in seen)
        Held = held_sampler()
        holding = submit_with(Held, monkeypatch, scheduler, HISTORIES[0], EIGHT_SETS[0], sampling=GREEDY)
        assert Held.reached.wait(120)
        monkeypatch.setattr(scheduler.runner, "model", BreaksOnToken(scheduler.runner.model, token))
        streams = [scheduler.submit(HISTORIES[i], EIGHT_SETS[i], sampling=GREEDY) for i in (1, 2)]
        bad = scheduler.submit(bad_history, EIGHT_SETS[3], sampling=GREEDY)
        Held.resume.set()
        with pytest.raises(RuntimeError, match="broke the forward"):
            bad.result(timeout=300)
        assert bad.token_ids == [] and bad.finish_reason == "error"
        for stream, want in zip([holding] + streams, expected):
            assert stream.result(timeout=300) is not None and stream.token_ids == want
        assert ("a packed step failed" if packed else "joint prefill of 3 requests failed") in caplog.text
        assert scheduler.runner.prefills == 1 + 2  # the held request's; after the shared one failed, each good one
    finally:
        scheduler.close()


def test_a_request_that_arrives_while_a_step_runs_rides_the_rest_of_that_step(exact_engine, scheduler):
    """Its first token comes out of the step it arrived in (not the next one: before, it waited for the step in
    flight to end), and its reply is the one it gives alone; the running row's too."""
    first_sampling = Sampling(max_new_tokens=20, do_sample=False)
    with arriving_during_a_step(scheduler, HISTORIES[1], EIGHT_SETS[1]) as arrival:
        running = scheduler.submit(HISTORIES[0], EIGHT_SETS[0], sampling=first_sampling)
        running.result(timeout=300)
        joiner = arrival["stream"]
        joiner.result(timeout=300)
    assert arrival["first_token_after"] == arrival["step"] + 1
    assert joiner.token_ids == alone(exact_engine, HISTORIES[1], EIGHT_SETS[1])
    assert running.token_ids == alone(exact_engine, HISTORIES[0], EIGHT_SETS[0], first_sampling)


def test_requests_beyond_max_batch_wait_and_still_match(exact_engine):
    scheduler = Scheduler(exact_engine, max_batch=3)
    try:
        streams = [scheduler.submit(h, s, sampling=GREEDY) for h, s in zip(HISTORIES, EIGHT_SETS)]
        for stream, history, identities in zip(streams, HISTORIES, EIGHT_SETS):
            stream.result(timeout=300)
            assert stream.token_ids == alone(exact_engine, history, identities)
        assert scheduler.runner.widest_batch == 3
    finally:
        scheduler.close()


def test_a_request_stopped_while_it_waits_ends_at_once(exact_engine):
    scheduler = Scheduler(exact_engine, max_batch=1)
    try:
        running = scheduler.submit(HISTORIES[0], EIGHT_SETS[0], sampling=Sampling(max_new_tokens=300, do_sample=False))
        stop = threading.Event()
        queued = scheduler.submit(HISTORIES[1], EIGHT_SETS[1], sampling=GREEDY, stop_event=stop)
        stop.set()
        queued.result(timeout=120)
        assert queued.finish_reason == "stopped" and queued.token_ids == [] and not running.done
        running.close()
        running.result(timeout=120)
        assert running.finish_reason == "stopped"
    finally:
        scheduler.close()


def test_seeded_sampling_depends_on_the_row_alone(exact_engine, scheduler):
    sampled = Sampling(max_new_tokens=10, temperature=1.3, top_k=0, top_p=1.0, seed=11)
    by_itself = scheduler.submit(HISTORIES[0], EIGHT_SETS[0], sampling=sampled)
    by_itself.result(timeout=300)
    neighbours = [scheduler.submit(h, s, sampling=Sampling(max_new_tokens=10, seed=i))
                  for i, (h, s) in enumerate(zip(HISTORIES[1:], EIGHT_SETS[1:]))]
    in_company = scheduler.submit(HISTORIES[0], EIGHT_SETS[0], sampling=sampled)
    more = [scheduler.submit(h, s, sampling=Sampling(max_new_tokens=10)) for h, s in zip(HISTORIES, EIGHT_SETS)]
    for stream in neighbours + [in_company] + more:
        stream.result(timeout=300)
    assert in_company.token_ids == by_itself.token_ids
    # A seeded row also draws what `Engine.generate` draws with that seed: the same rules, the same stream.
    assert by_itself.token_ids == alone(exact_engine, HISTORIES[0], EIGHT_SETS[0], sampled)


def test_row_sampler_draws_among_the_top_k_and_its_seed_alone_decides():
    logits = torch.randn(1, 1000, generator=torch.Generator().manual_seed(0)) * 3
    ids = torch.tensor([[1, 2, 3]])
    top = set(logits.topk(5).indices[0].tolist())
    draws = [RowSampler(Sampling(top_k=5, top_p=1.0, temperature=2.0, seed=s)).next_token(ids, logits)
             for s in range(60)]
    assert set(draws) <= top and len(set(draws)) > 1
    assert draws == [RowSampler(Sampling(top_k=5, top_p=1.0, temperature=2.0, seed=s)).next_token(ids, logits)
                     for s in range(60)]
    # top-p small enough keeps only the likeliest candidate: sampling then agrees with greedy
    greedy = RowSampler(Sampling(do_sample=False, repetition_penalty=1.0)).next_token(ids, logits)
    assert RowSampler(Sampling(top_k=50, top_p=1e-6, seed=1, repetition_penalty=1.0)).next_token(ids, logits) == greedy
    with pytest.raises(ValueError, match="top_k"):
        RowSampler(Sampling(top_k=-1))


def test_stream_yields_the_growing_text_and_closing_it_frees_the_row(exact_engine, scheduler):
    texts = list(scheduler.stream(HISTORIES[0], EIGHT_SETS[0], sampling=GREEDY))
    assert texts and all(b.startswith(a[:len(a) - 8]) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == exact_engine.tokenizer.decode(alone(exact_engine, HISTORIES[0], EIGHT_SETS[0]),
                                                      skip_special_tokens=True).strip()
    reply = scheduler.stream(HISTORIES[1], EIGHT_SETS[1], sampling=Sampling(max_new_tokens=200, do_sample=False))
    for _ in reply:
        break  # the caller walks away: the generator's cleanup stops the row
    deadline = time.time() + 60
    while not reply.done and time.time() < deadline:
        time.sleep(0.01)
    assert reply.finish_reason == "stopped" and len(reply.token_ids) < 200


def test_engine_shares_one_scheduler(exact_engine):
    engine = Engine(exact_engine.model, exact_engine.tokenizer)
    first = engine.scheduler()
    assert engine.scheduler() is first
    first.close()
    assert engine.scheduler() is not first and not engine.scheduler().closed  # a closed one is replaced
    engine.scheduler().close()


# --- the embedded model (float32) --------------------------------------------------------------------

@pytest.fixture(scope="module")
def expert_engine(embedded_engine):
    """The embedded model with random (non-trivial) alternate-layout experts, as in test_embedded.py."""
    model = add_experts(copy.deepcopy(embedded_engine.model), ExpertConfig(rank=8, dropout=0.0))
    randomize_experts(model, seed=3, scale=0.05)
    return Engine(model, embedded_engine.tokenizer)


def top_two_gap(engine: Engine, history, identities, generated: list[int]) -> float:
    """The gap between the two likeliest next tokens after `generated`, the request run alone."""
    prompt = engine.encode([engine.chat_messages(history, identities, Conditioning.EXPERTS_AND_PROMPT)])["input_ids"]
    ids = torch.cat([prompt, torch.tensor([generated], dtype=torch.long)], dim=1)
    with torch.no_grad(), use_identities([identities]):
        logits = engine.model(input_ids=ids).logits[0, -1].float()
    first, second = logits.topk(2).values.tolist()
    return first - second


def test_embedded_eight_rows_match_alone_up_to_float32_near_ties(expert_engine):
    greedy = Sampling(max_new_tokens=16, do_sample=False, repetition_penalty=1.0)  # the gap is the raw logits'
    scheduler = Scheduler(expert_engine, max_batch=8)
    try:
        streams = [scheduler.submit(h, s, sampling=greedy) for h, s in zip(HISTORIES, EIGHT_SETS)]
        for stream in streams:
            stream.result(timeout=600)
    finally:
        scheduler.close()
    assert scheduler.runner.widest_batch == 8
    differing = []
    for stream, history, identities in zip(streams, HISTORIES, EIGHT_SETS):
        want = alone(expert_engine, history, identities, greedy)
        if stream.token_ids == want:
            continue
        step = next(i for i, (a, b) in enumerate(zip(stream.token_ids + [-1], want + [-1])) if a != b)
        gap = top_two_gap(expert_engine, history, identities, want[:step])
        differing.append(f"{identities}: first differs at token {step}, top-2 logit gap there {gap:.2e}")
        # float32 sums in another order (batch shapes, padding) move logits by ~1e-5: only a near-tie flips.
        assert gap < 1e-3, differing[-1]
    if differing:
        warnings.warn("float32 near-ties flipped: " + "; ".join(differing), stacklevel=2)
    assert len(differing) <= 2, differing  # more would be a bug, not rounding
