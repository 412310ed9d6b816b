"""The serving process's torch threads: one fewer than the cores (at least one), or what the setting says; a
thread that lives on lets go of its OpenMP team."""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import pytest
import torch

from hirpf import serving_threads
from hirpf.sampling import Sampling

# Teams are seen as the process's threads (Linux's /proc), and need torch's OpenMP backend.
needs_openmp_teams = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task") or "OpenMP" not in torch.__config__.parallel_info(),
    reason="needs Linux's /proc and torch's OpenMP backend")


@contextmanager
def torch_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_one_core_is_left_to_the_rest_of_the_process(monkeypatch):
    monkeypatch.delenv("HIRPF_SERVING_THREADS", raising=False)
    monkeypatch.setattr(serving_threads, "available_cores", lambda: 16)
    assert serving_threads.serving_threads() == 15
    monkeypatch.setattr(serving_threads, "available_cores", lambda: 1)
    assert serving_threads.serving_threads() == 1


def test_the_setting_decides_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setenv("HIRPF_SERVING_THREADS", "3")
    assert serving_threads.serving_threads() == 3
    before = torch.get_num_threads()
    try:
        assert serving_threads.use_serving_threads() == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("HIRPF_SERVING_THREADS", "0")
    with pytest.raises(ValueError, match="HIRPF_SERVING_THREADS"):
        serving_threads.serving_threads()


def _threads_of_this_process() -> int:
    """The process's thread count once it has held still for 0.2 s (a thread that ended a moment ago may still
    be freeing its team: its threads leave a little later)."""
    count, still_since, deadline = len(os.listdir("/proc/self/task")), time.monotonic(), time.monotonic() + 10
    while time.monotonic() - still_since < 0.2 and time.monotonic() < deadline:
        time.sleep(0.02)
        now = len(os.listdir("/proc/self/task"))
        if now != count:
            count, still_since = now, time.monotonic()
    return count


def _in_a_thread_that_lives_on(work) -> dict:
    """Run `work(counts)` in a fresh thread; `counts` holds what it measured before the thread ends (a thread's
    OpenMP team is freed when the thread exits anyway: what matters is a thread that lives on)."""
    counts: dict = {}
    thread = threading.Thread(target=work, args=(counts,))
    thread.start()
    thread.join()
    return counts



def timed_as(seconds: dict[str, float]):
    """A `time_steps` for `engine_threads` that answers `seconds` and records what it was asked."""
    asked = []

    def time_steps(model, threads):
        asked.append(threads)
        return seconds

    return time_steps, asked


def refuse_to_time(model, threads):
    raise AssertionError("nothing should be timed here")


def test_the_engine_process_takes_every_core_only_where_its_step_gains_enough(monkeypatch):
    monkeypatch.delenv("HIRPF_SERVING_THREADS", raising=False)
    monkeypatch.setattr(serving_threads, "available_cores", lambda: 4)
    time_steps, asked = timed_as({"fewer": 0.130, "all": 0.100})  # 1.30 times as fast
    choice = serving_threads.engine_threads(None, time_steps=time_steps)
    assert choice.threads == 4 and asked == [{"fewer": 3, "all": 4}] and "1.30 times" in choice.reason
    time_steps, _ = timed_as({"fewer": 0.110, "all": 0.100})  # 1.10: the core is left to the rest
    assert serving_threads.engine_threads(None, time_steps=time_steps).threads == 3


def test_the_setting_or_a_single_core_decides_the_engine_process_threads_untimed(monkeypatch):
    monkeypatch.setenv("HIRPF_SERVING_THREADS", "2")
    assert serving_threads.engine_threads(None, time_steps=refuse_to_time) == (2, "HIRPF_SERVING_THREADS")
    monkeypatch.delenv("HIRPF_SERVING_THREADS")
    monkeypatch.setattr(serving_threads, "available_cores", lambda: 1)
    assert serving_threads.engine_threads(None, time_steps=refuse_to_time).threads == 1


def test_decode_steps_are_timed_at_each_thread_count_and_the_count_is_restored(tiny_engine):
    with torch_threads(1):
        seconds = serving_threads.time_decode_steps(tiny_engine.model, {"one": 1, "two": 2}, steps=2)
        assert torch.get_num_threads() == 1
    assert set(seconds) == {"one", "two"} and all(0 < s < 5 for s in seconds.values())

@needs_openmp_teams
def test_release_frees_the_calling_threads_team():
    def work(counts):
        counts["before"] = _threads_of_this_process()
        big = torch.randn(512, 512)
        (big @ big).exp()  # parallel sections: the thread gets a team
        counts["with team"] = _threads_of_this_process()
        counts["released"] = serving_threads.release_thread_team()
        counts["after"] = _threads_of_this_process()

    with torch_threads(2):
        counts = _in_a_thread_that_lives_on(work)
    assert counts["with team"] > counts["before"] and counts["released"]
    assert counts["after"] == counts["before"]


@needs_openmp_teams
def test_a_generation_in_a_thread_that_lives_on_leaves_no_team_behind(embedded_engine):
    """A chat's side-by-side comparison, a questionnaire, an evaluation: `Engine.generate` in a web-server
    worker or the main thread. Its idle team would halve the scheduler's speed (serving_threads.py)."""
    def generate():
        embedded_engine.generate([[{"role": "user", "content": "Hello"}]] * 8, ["AGR_high"] * 8,
                                 sampling=Sampling(max_new_tokens=2, seed=1))

    def work(counts):
        counts["before"] = _threads_of_this_process()
        generate()
        counts["after"] = _threads_of_this_process()

    with torch_threads(2):
        _in_a_thread_that_lives_on(lambda counts: generate())  # the process's own lazily made threads, made once
        counts = _in_a_thread_that_lives_on(work)
    assert counts["after"] == counts["before"]
