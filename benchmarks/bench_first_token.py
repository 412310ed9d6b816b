"""Time to first token and tokens/s through the engine process, as `bench_serving.py` serves its scheduler path:
one client alone, then 8 clients in a closed loop (embedded model, shipped experts). One JSON line per run.

For comparing two versions of the serving code on a noisy machine: run it in turn in two work trees of the
repository (each copy of this file runs its own work tree's code), before and after a change, several times
each, alternating, and compare the runs made beside each other:

    .venv/bin/python ../before/benchmarks/bench_first_token.py --label before
    .venv/bin/python benchmarks/bench_first_token.py --label after

`ratio` is `bench_serving.py`'s `ttft_p95_ratio_8` over these windows (8 clients' p95 ÷ the lone request's p50).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The work tree this file is in, before the installed one: each work tree's copy runs its own code.
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import bench_serving  # noqa: E402
import torch  # noqa: E402

from hirpf.engine import Engine  # noqa: E402
from hirpf.serving_threads import serving_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="", help="a name for this run's line (e.g. the commit)")
    parser.add_argument("--lone_window", type=float, default=20.0, help="seconds of the lone client")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of the 8 clients")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(serving_threads())
    engine = Engine.load("embedded", load_in_8bit=False, dtype="float32")
    engine.serve_in_a_process(True)
    api = bench_serving.SchedulerPath(engine)
    bench_serving.one_request(api, args.max_new_tokens)  # warm-up
    spread = bench_serving.one_request(api, args.max_new_tokens)
    lone = bench_serving.run_clients(api, engine, 1, args.max_new_tokens, 0, args.lone_window)
    many = bench_serving.run_clients(api, engine, args.clients, args.max_new_tokens, spread, args.window)
    print(json.dumps({
        "label": args.label, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "lone_ttft_p50_s": lone["ttft_p50_s"], "lone_tokens_per_s": lone["aggregate_tokens_per_s"],
        f"tokens_per_s_{args.clients}": many["aggregate_tokens_per_s"],
        f"ttft_p50_s_{args.clients}": many["ttft_p50_s"], f"ttft_p95_s_{args.clients}": many["ttft_p95_s"],
        "ratio": round(many["ttft_p95_s"] / lone["ttft_p50_s"], 3), "requests": many["requests_in_window"]}),
        flush=True)
    engine.scheduler().close()


if __name__ == "__main__":
    main()
