"""How many CPU threads torch runs the model with in a serving process (the app, and the serving benchmarks).

Torch's default is one thread per core. A serving process runs the model from several threads at once (the
scheduler's loop, `Engine.stream`'s worker, a questionnaire's batch in a web-server worker, the load at start)
beside the web server's own threads, and each thread that runs torch in parallel gets an OpenMP team of its
own: on a CPU with few cores the teams and the web server take cores from each other, and on a 2-core CPU
the scheduler served more with one torch thread than with two, while a lone forward in the main thread was
faster with two (the figures: docs/benchmarks.md#figures-behind-choices-in-the-code). So a serving process
leaves one core to the rest, as vLLM's CPU
backend advises for its serving front end: one fewer than the cores, at least one (`HIRPF_SERVING_THREADS`
sets it). Torch's thread count is process-wide: it is set once, where the serving process loads its model.
"""
from __future__ import annotations

import logging
import os

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
