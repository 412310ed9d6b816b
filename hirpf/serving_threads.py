"""How many CPU threads torch runs the model with in a serving process (the app, and the serving benchmarks).

Torch's default is one thread per core. A serving process runs the model from several threads (the
scheduler's loop, `Engine.stream`'s worker, a questionnaire's batch or a side-by-side comparison in a
web-server worker, the load at start) beside the web server's own threads and, on a small machine, the
visitors' browsers. A serving process leaves one core to the rest, as vLLM's CPU backend advises for its
serving front end: one fewer than the cores, at least one (`HIRPF_SERVING_THREADS` sets it). Torch's thread
count is process-wide: it is set once, where the serving process loads its model.

A thread that ran torch in parallel keeps its OpenMP team after it is done. With GNU OpenMP (Linux builds of
torch), once a process holds more OpenMP threads than cores, waiting threads sleep instead of spinning, so
each of the many small parallel sections of a decode step pays a wake-up: on the 2-core AVX2 machine, with
two torch threads, a decode step's kind of work in a fresh thread took 44 % longer once the main thread had
run it and kept its team, and as long as alone once that team was freed
(`benchmarks/bench_thread_teams.py`; docs/benchmarks.md#figures-behind-choices-in-the-code).
`release_thread_team` frees the calling thread's team; a thread that lives on and is not the scheduler's
loop runs its forwards in `releasing_thread_team()`.

The engine process (`hirpf.engine_process`) runs the model and nothing else: the web server and the requests'
tokenizing are in the app's process. It still leaves a core to them unless its decode step gains enough from it
(`engine_threads`, timed at its load): on the 2-core AVX2 EPYC a batch-8 step of the embedded model with the
experts ran as fast on one thread as on two (44.7 against 45.6 tokens/s), while on the 2-core Xeon with AVX512
and AMX two threads ran it 1.38-1.74 times as fast at eight loads, and in three alternating pairs the engine
process on two threads gave 8 visitors of the served app 6-11 % more tokens/s than on one (the Python API's 8
clients 15-21 %; docs/serving.md).
"""
from __future__ import annotations

import ctypes
import logging
import os
from contextlib import contextmanager
from functools import cache
from typing import Callable, NamedTuple

from . import environment

log = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform says it, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def serving_threads() -> int:
    """`HIRPF_SERVING_THREADS`, or one fewer than the available cores, at least 1."""
    return environment.HIRPF_SERVING_THREADS or max(1, available_cores() - 1)


def use_serving_threads() -> int:
    """Set torch's threads for serving (`serving_threads`); returns the number, and logs it."""
    import torch

    threads = serving_threads()
    torch.set_num_threads(threads)
    log.info("torch runs the model with %d thread(s) of %d core(s)", threads, available_cores())
    return threads


# The engine process takes every core only where a batch-8 decode step runs at least this many times as fast
# on them as on one fewer: a small gain is lost again to the web server's and the visitors' work on that core.
ALL_CORES_MIN_GAIN = 1.25


class ThreadChoice(NamedTuple):
    threads: int
    reason: str  # what decided it, for the log and the benchmarks


def engine_threads(model,
                   time_steps: "Callable[[object, dict[str, int]], dict[str, float]] | None" = None) -> ThreadChoice:
    """The engine process's torch threads for `model`: `HIRPF_SERVING_THREADS` where set; else one fewer than
    the cores (`serving_threads`), unless a batch-8 decode step runs `ALL_CORES_MIN_GAIN` times as fast on
    all of them. `time_steps(model, {name: threads})` -> median seconds of a step by name (default
    `time_decode_steps`, six to eight seconds for the embedded model on a 2-core CPU, beside the app's own load)
    is a parameter so that tests decide."""
    if environment.HIRPF_SERVING_THREADS:
        return ThreadChoice(environment.HIRPF_SERVING_THREADS, "HIRPF_SERVING_THREADS")
    cores = available_cores()
    fewer = serving_threads()
    if cores <= fewer:
        return ThreadChoice(fewer, f"{cores} core(s): nothing to leave")
    seconds = (time_steps or time_decode_steps)(model, {"fewer": fewer, "all": cores})
    gain = seconds["fewer"] / seconds["all"]
    threads = cores if gain >= ALL_CORES_MIN_GAIN else fewer
    return ThreadChoice(threads, f"a batch-8 decode step took {seconds['all'] * 1e3:.1f} ms on {cores} threads, "
                                 f"{seconds['fewer'] * 1e3:.1f} ms on {fewer} ({gain:.2f} times as fast; "
                                 f"all cores from {ALL_CORES_MIN_GAIN})")


def time_decode_steps(model, threads: dict[str, int], steps: int = 6) -> dict[str, float]:
    """Median seconds of `model`'s batch-8 decode step over a 64-token cache with each thread count (by name),
    taking turns; with the experts, a batch of 8 single identities."""
    from .decode_timing import decode_step_seconds
    from .identities import single_poles
    from .inject import expert_config
    from .routing import Routing

    routing = Routing(single_poles()[:8]) if expert_config(model) is not None else None
    return decode_step_seconds({name: (model, routing) for name in threads}, batch=8, context=64, steps=steps,
                               threads=threads)


def release_thread_team() -> bool:
    """Free the calling thread's OpenMP team, if it has one (`omp_pause_resource_all`, OpenMP 5.0), so that
    its idle threads do not slow the teams still working. The next parallel section in this thread makes a
    new team (tens of microseconds). Returns whether an OpenMP runtime took the call (each one loaded is
    asked: a process may hold more than torch's)."""
    taken = [runtime.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0 for runtime in _openmp_runtimes()]
    return any(taken)


@contextmanager
def releasing_thread_team():
    """Run the model in this block, then free this thread's OpenMP team (`release_thread_team`): for work in a
    thread that lives on after it (a web-server worker, the main thread), not the scheduler's loop."""
    try:
        yield
    finally:
        release_thread_team()


OMP_PAUSE_SOFT = 1  # omp_pause_soft: threads are freed; what a later parallel section needs is made again


@cache
def _openmp_runtimes() -> tuple[ctypes.CDLL, ...]:
    """The OpenMP runtimes loaded into this process, torch's among them (found in the process's memory map, so
    they are the very copies in use, not others on the library path); none where the platform has no /proc
    (then nothing is released), or where a runtime predates `omp_pause_resource_all`."""
    import torch  # noqa: F401  (its runtime must be loaded to be found)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if line.rstrip().endswith((".so", ".so.1", ".so.5"))}
    except OSError:
        return ()
    runtimes = []
    for path in sorted(paths):
        if os.path.basename(path).startswith(("libgomp", "libomp", "libiomp5")):
            library = ctypes.CDLL(path)
            if hasattr(library, "omp_pause_resource_all"):
                library.omp_pause_resource_all.argtypes = [ctypes.c_int]
                runtimes.append(library)
    return tuple(runtimes)
