"""Why a thread that lives on lets go of its OpenMP team (`hirpf.serving_threads.release_thread_team`).

    python benchmarks/bench_thread_teams.py [--json] [--threads 2] [--repeats 3]

A decode step's kind of work, many small matrix products (a batch of 8 rows through 60 linear layers of the
embedded model's width, 576 → 1536, and a softmax each), timed in a fresh thread, as the scheduler's loop
runs it, in three cases, each `--repeats` times, alternating:

- `alone`: no other thread of the process has run torch in parallel;
- `beside_idle_team`: the main thread ran the same work first and kept its team (idle while the thread runs);
- `after_release`: the main thread ran it, then freed its team (`release_thread_team`).

Each case runs in a process of its own (a team, once made, stays for the life of its thread). With GNU
OpenMP, once the process holds more OpenMP threads than cores, waiting threads sleep instead of spinning and
every small parallel section pays a wake-up; the figures say what that costs on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

CASES = ("alone", "beside_idle_team", "after_release")


def work_seconds(threads: int) -> float:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(8, 576, generator=generator)
    weights = [torch.randn(1536, 576, generator=generator) for _ in range(60)]
    scores = torch.randn(8, 1536, generator=generator)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(100):
            for weight in weights:
                F.linear(rows, weight)
                scores.softmax(-1)
    return time.perf_counter() - start


def run_case(case: str, threads: int) -> float:
    """In this process: prepare the main thread as `case` says, then time the work in a fresh thread."""
    import torch

    torch.set_num_threads(threads)
    if case != "alone":
        work_seconds(threads)
    if case == "after_release":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from hirpf.serving_threads import release_thread_team

        if not release_thread_team():
            raise SystemExit("no OpenMP runtime took the release on this platform")
    seconds: list[float] = []
    thread = threading.Thread(target=lambda: seconds.append(work_seconds(threads)))
    thread.start()
    thread.join()
    return seconds[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args(argv)
    if args.case:
        print(run_case(args.case, args.threads))
        return 0
    seconds: dict[str, list[float]] = {case: [] for case in CASES}
    for _ in range(args.repeats):
        for case in CASES:
            out = subprocess.run([sys.executable, __file__, "--case", case, "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            seconds[case].append(round(float(out), 3))
    import torch

    result = {"threads": args.threads, "cores": os.cpu_count(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "seconds": seconds,
              "median_s": {case: statistics.median(v) for case, v in seconds.items()}}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for case in CASES:
            print(f"{case:18s} median {result['median_s'][case]:.2f} s  ({', '.join(map(str, seconds[case]))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
