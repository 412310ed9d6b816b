"""What a web server's Python costs a decode step that runs in another thread of its process.

    python benchmarks/bench_interpreter_lock.py [--json] [--shares 0,0.1,0.2] [--steps 12] [--burst_ms 4]

The served app runs the scheduler's loop beside the web server's own thread in one process. A decode step is
thousands of torch calls, and each lets go of the interpreter lock while it runs and takes it back after: if
another thread of the process has Python to run then, the step waits until that thread lets go (at its next
blocking call, or after the interpreter's switch interval, 5 ms by default). So a thread that keeps a share
of a core busy in Python takes about that share of the loop's time too, and the two add up to about one
core, whatever the cores.

The embedded model with the shipped experts decodes a batch of 8 (the 8 clients' identity sets of
`bench_serving.py`) over a 100-token cache, with one torch thread, as the app serves; beside it a thread runs
pure Python in bursts of `--burst_ms` that fill each `--shares` share of its time (0: no such thread), as a
web server answering its visitors does. Each case is the median of `--steps` steps, the cases taking turns.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import CLIENT_SETS  # noqa: E402

from hirpf.decode_timing import decode_step_seconds  # noqa: E402
from hirpf.engine import Engine  # noqa: E402
from hirpf.prompts import Conditioning, expert_identities  # noqa: E402
from hirpf.routing import Routing  # noqa: E402


class PythonBursts:
    """A thread that runs pure Python for `burst_s` at a time, so as to fill `share` of its time."""

    def __init__(self, share: float, burst_s: float):
        self.share, self.burst_s = share, burst_s
        self.stopped = threading.Event()
        self.busy_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pause = self.burst_s * (1 - self.share) / self.share
        while not self.stopped.is_set():
            start = time.perf_counter()
            while time.perf_counter() - start < self.burst_s:
                sum(range(200))  # interpreter work, no torch call, no blocking call
            self.busy_s += time.perf_counter() - start
            self.stopped.wait(pause)

    def __enter__(self):
        self.started = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()
        self.wall_s = time.perf_counter() - self.started


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shares", default="0,0.1,0.2", help="comma list: the Python thread's share of its time")
    ap.add_argument("--burst_ms", type=float, default=4.0, help="each burst of Python, in milliseconds")
    ap.add_argument("--steps", type=int, default=12, help="decode steps timed per case and round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the cases, taking turns")
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = ap.parse_args(argv)
    shares = [float(s) for s in args.shares.split(",")]
    if any(not 0 <= s < 1 for s in shares):
        ap.error(f"--shares must lie in [0, 1), got {args.shares}")
    torch.set_num_threads(1)  # as the app serves on two cores (hirpf.serving_threads)
    engine = Engine.load("embedded", load_in_8bit=False, dtype="float32")  # with the shipped experts
    rows = Routing([expert_identities(s, Conditioning.EXPERTS_AND_PROMPT) for s in CLIENT_SETS])
    case = {"experts_mixed_8": (engine.model, rows)}
    steps: dict[float, list[float]] = {s: [] for s in shares}
    python_share: dict[float, list[float]] = {s: [] for s in shares}
    for _ in range(args.rounds):
        for share in shares:
            if share == 0:
                steps[share].append(decode_step_seconds(case, steps=args.steps)["experts_mixed_8"])
                continue
            with PythonBursts(share, args.burst_ms / 1000) as bursts:
                steps[share].append(decode_step_seconds(case, steps=args.steps)["experts_mixed_8"])
            python_share[share].append(bursts.busy_s / bursts.wall_s)
    alone = statistics.median(steps[0.0]) if 0.0 in steps else None  # the slowdowns' reference
    document = {
        "cases": [{"python_thread_share": share,
                   "python_thread_share_measured": (round(statistics.median(python_share[share]), 3)
                                                    if python_share[share] else 0.0),
                   "decode_step_ms": round(statistics.median(steps[share]) * 1000, 1),
                   "slowdown": round(statistics.median(steps[share]) / alone, 3) if alone else None}
                  for share in shares],
        "settings": {"burst_ms": args.burst_ms, "steps": args.steps, "rounds": args.rounds, "torch_threads": 1,
                     "switch_interval_ms": sys.getswitchinterval() * 1000,
                     "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        for c in document["cases"]:
            print(f"Python thread {c['python_thread_share']:.2f} of a core (measured "
                  f"{c['python_thread_share_measured']:.2f}): decode step {c['decode_step_ms']} ms, "
                  f"x{c['slowdown']}")
    return document


if __name__ == "__main__":
    main()
