"""Prefill chunks sized by time: a share of a decode step, from measured costs."""
from __future__ import annotations

import pytest

from hirpf.prefill_pacing import PACKED_SHORTEST, SHORTEST, PrefillPacer


def test_with_no_row_running_the_chunk_is_the_longest_allowed():
    pacer = PrefillPacer(longest=256, step_share=0.5)
    pacer.record_step(0.1, 8)
    pacer.record_chunk(1.0, 100)
    assert pacer.next_chunk(rows=0) == 256


def test_a_short_first_chunk_measures_before_the_chunks_are_sized():
    pacer = PrefillPacer(longest=256, step_share=0.5)
    assert pacer.next_chunk(rows=8) == SHORTEST
    pacer.record_step(0.1, 8)
    assert pacer.next_chunk(rows=8) == SHORTEST  # no chunk measured yet


def test_a_chunk_costs_the_share_of_a_step():
    pacer = PrefillPacer(longest=256, step_share=0.5)
    pacer.record_step(0.120, 8)
    pacer.record_chunk(0.016, 16)  # 1 ms a token
    assert pacer.next_chunk(rows=8) == 60  # 0.5 x 120 ms / 1 ms
    slow = PrefillPacer(longest=256, step_share=0.5)  # a machine where a token costs more than a step
    slow.record_step(0.1, 8)
    slow.record_chunk(4.0, 16)
    assert slow.next_chunk(rows=8) == SHORTEST
    fast = PrefillPacer(longest=256, step_share=0.5)  # a GPU: a step costs more than the longest chunk
    fast.record_step(0.02, 8)
    fast.record_chunk(0.0016, 160)
    assert fast.next_chunk(rows=8) == 256


def test_the_estimates_follow_a_change_within_a_few_measurements():
    pacer = PrefillPacer(longest=1024, step_share=1.0)
    pacer.record_chunk(0.1, 100)
    for _ in range(3):
        pacer.record_step(0.1, 8)
    assert pacer.next_chunk(rows=8) == 100
    for _ in range(8):  # the batch widened: steps take twice as long
        pacer.record_step(0.2, 8)
    assert 180 <= pacer.next_chunk(rows=8) <= 200


def test_a_spike_in_the_step_times_does_not_move_the_step_estimate():
    pacer = PrefillPacer(longest=1024, step_share=0.5)
    for seconds in (0.15, 0.14, 0.35, 0.16, 0.15, 0.30, 0.15):  # a shared machine: two steps in seven slowed
        pacer.record_step(seconds, 7)
    assert pacer.step_seconds_at(7) == 0.15
    pacer.record_packed(0.25, rows=7, tokens=50)  # what the chunk added to a typical step: 2 ms a token
    assert pacer.seconds_per_token == pytest.approx(0.002)


def test_a_share_of_zero_gives_fixed_chunks_and_bad_settings_are_refused():
    pacer = PrefillPacer(longest=64, step_share=0)
    pacer.record_step(0.1, 8)
    pacer.record_chunk(10.0, 16)
    assert pacer.next_chunk(rows=8) == 64
    assert PrefillPacer(longest=8, step_share=0.5).next_chunk(rows=8) == 8  # never above the longest
    with pytest.raises(ValueError, match="longest"):
        PrefillPacer(longest=0, step_share=0.5)
    with pytest.raises(ValueError, match="step_share"):
        PrefillPacer(longest=64, step_share=-1)


def test_steps_are_timed_per_width_and_the_nearest_width_stands_in():
    pacer = PrefillPacer(longest=1024, step_share=0.5)
    pacer.record_step(0.05, 1)
    pacer.record_step(0.20, 8)
    pacer.record_chunk(0.001, 1)  # 1 ms a token
    assert pacer.step_seconds_at(7) == 0.20 and pacer.step_seconds_at(2) == 0.05  # the nearest measured width
    assert pacer.next_chunk(rows=1) == 25 and pacer.next_chunk(rows=8) == 50  # 100, but at most twice the last
    assert pacer.next_chunk(rows=8) == 100


def test_a_packed_step_costs_its_prompt_tokens_what_they_added_to_a_plain_step():
    pacer = PrefillPacer(longest=1024, step_share=0.5)
    pacer.record_step(0.20, 8)
    pacer.record_packed(0.30, rows=8, tokens=50)  # 100 ms more than a plain step of 8 rows: 2 ms a token
    assert pacer.seconds_per_token == pytest.approx(0.002)
    assert pacer.next_chunk(rows=8) == 50  # 0.5 x 200 ms / 2 ms
    pacer.record_packed(0.19, rows=8, tokens=50)  # within the noise: no negative cost
    assert pacer.seconds_per_token >= 0


def test_a_chunk_at_most_doubles_so_that_a_cost_measured_low_by_chance_sends_no_huge_chunk():
    pacer = PrefillPacer(longest=1024, step_share=0.5)
    pacer.record_step(0.20, 8)
    assert pacer.next_chunk(rows=8) == SHORTEST  # nothing measured yet
    pacer.record_packed(0.2001, rows=8, tokens=SHORTEST)  # within the noise: the tokens look free
    assert pacer.next_chunk(rows=8) == 2 * SHORTEST
    assert pacer.next_chunk(rows=8) == 4 * SHORTEST


def test_a_chunk_riding_in_a_step_may_be_shorter_than_one_with_a_forward_of_its_own():
    pacer = PrefillPacer(longest=256, step_share=0.5)
    pacer.record_step(0.120, 7)
    assert pacer.next_chunk(rows=7, packed=True) == SHORTEST  # the first measures the cost of a token
    pacer.record_packed(0.200, rows=7, tokens=16)  # 5 ms a token: the share of a step is 12 tokens
    assert pacer.next_chunk(rows=7, packed=True) == 12
    pacer.record_packed(0.360, rows=7, tokens=12)  # a token now costs 20 ms (the estimate follows: 8.5 ms)
    assert PACKED_SHORTEST <= pacer.next_chunk(rows=7, packed=True) < 12
    assert pacer.next_chunk(rows=7) == SHORTEST  # a chunk with a forward of its own keeps the longer floor


def test_a_width_not_timed_lately_is_stood_in_for_by_a_recent_one():
    now = [0.0]
    pacer = PrefillPacer(longest=512, step_share=0.5, clock=lambda: now[0])
    pacer.record_step(0.230, 6)  # 6 rows, on a machine busy with something else
    now[0] = 30.0
    for _ in range(3):
        pacer.record_step(0.090, 7)
    assert pacer.step_seconds_at(6) == 0.090  # the 6-row time is too old beside the 7-row ones
    pacer.record_step(0.080, 6)
    assert pacer.step_seconds_at(6) == 0.080
    now[0] = 100.0  # no plain step for a while (a long prompt joining): the estimates stay
    assert pacer.step_seconds_at(7) == 0.090 and pacer.step_seconds_at(6) == 0.080
