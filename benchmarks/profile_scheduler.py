"""Where a scheduler step's time goes beyond the model's forward: cProfile on the scheduler's loop thread.

    python benchmarks/profile_scheduler.py [--json] [--rows 8] [--max_new_tokens 48] [--threads 2]

The embedded model with the shipped experts (the decode dtype `HIRPF_DECODE_DTYPE` resolves to, `auto` by
default). `--rows` requests with different identity sets arrive together (one joint prefill), each read by a
client thread as a visitor's stream would be, until they end. Reported from the loop thread's profile:

- `decode_forward_s` / `prefill_forward_s`: the model's forward called by `BatchRunner.step` / by
  `BatchRunner.prefill` (`hirpf/batch_runner.py`);
- `step_overhead_s`: everything else in `step`, split by what it calls (sampling and the row's token
  bookkeeping in `Row.choose`, the cache's `decode`, a finished row's removal);
- `prefill_overhead_s`: `prefill` beyond its forward (prefix lookups and stores, cache copies);
- per decode step: the forward's and the overhead's milliseconds.

And, outside the loop thread, what the client threads spend re-decoding their reply's tokens for every update
(`ReplyStream.__iter__` decodes the whole text so far each time): `stream_decode_ms_per_step`, all rows.
cProfile slows Python calls more than torch kernels, so the overhead shares it gives are an upper bound.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hirpf.engine import Engine  # noqa: E402
from hirpf.fast_inference import decode_dtype_in_use, fold_reach_in_use  # noqa: E402
from hirpf.identities import IdentitySet  # noqa: E402
from hirpf.sampling import Sampling  # noqa: E402
from hirpf.scheduler import Scheduler  # noqa: E402

SETS = [IdentitySet.parse(s) for s in (
    "AGR_high", "AGR_low,Doctor", "CON_high,EXT_low,Artist", "NEU_high,OPE_low", "Programmer",
    "AGR_high,CON_low,EXT_high,NEU_low,OPE_high,Doctor", "EXT_high,Artist", "OPE_high,NEU_low,Programmer")]


class ProfiledScheduler(Scheduler):
    """A scheduler whose loop thread runs under cProfile (a profile is per thread)."""

    def __init__(self, *args, **kwargs):
        self.profile = cProfile.Profile()
        super().__init__(*args, **kwargs)

    def _loop(self) -> None:
        self.profile.enable()
        try:
            super()._loop()
        finally:
            self.profile.disable()


def function_key(stats: pstats.Stats, name: str, path_part: str = "") -> tuple:
    """The pstats key of the function `name` whose file contains `path_part` (the first one found)."""
    for key in stats.stats:
        if key[2] == name and path_part in key[0]:
            return key
    raise KeyError(f"{name} ({path_part}) not in the profile")


def cumulative_from(stats: pstats.Stats, callee: tuple, caller: tuple) -> float:
    """Seconds `callee` took (with what it called) when called from `caller`."""
    entry = stats.stats[callee][4].get(caller)
    return entry[3] if entry else 0.0


def breakdown(stats: pstats.Stats) -> dict:
    step = function_key(stats, "step", "batch_runner.py")
    prefill = function_key(stats, "prefill", "batch_runner.py")
    call = function_key(stats, "_wrapped_call_impl", "module.py")  # nn.Module.__call__
    steps = stats.stats[step][1]
    step_s, prefill_s = stats.stats[step][3], stats.stats[prefill][3]
    decode_forward = cumulative_from(stats, call, step)
    prefill_forward = cumulative_from(stats, call, prefill)
    stats.calc_callees()
    callees = {f"{k[2]} ({Path(k[0]).name})": round(v[3], 4) for k, v in stats.all_callees[step].items()
               if k != call and v[3] > 0.0005}
    return {"decode_steps": steps, "step_s": round(step_s, 3), "decode_forward_s": round(decode_forward, 3),
            "step_overhead_s": round(step_s - decode_forward, 3),
            "step_overhead_by_callee_s": dict(sorted(callees.items(), key=lambda kv: -kv[1])),
            "prefill_s": round(prefill_s, 3), "prefill_forward_s": round(prefill_forward, 3),
            "prefill_overhead_s": round(prefill_s - prefill_forward, 3),
            "per_step_ms": {"forward": round(1e3 * decode_forward / steps, 2),
                            "overhead": round(1e3 * (step_s - decode_forward) / steps, 2)}}


def stream_decode_ms_per_step(engine: Engine, streams) -> float:
    """What re-decoding every row's whole reply costs once (what each step's text updates cost the readers),
    at the replies' final lengths: an upper bound over the run."""
    start = time.perf_counter()
    for stream in streams:
        engine.tokenizer.decode(list(stream.token_ids), skip_special_tokens=True)
    return round(1e3 * (time.perf_counter() - start), 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    engine = Engine.load("embedded", load_in_8bit=False, dtype="float32")
    warm = Scheduler(engine, max_batch=args.rows)  # plans, mask tables, allocator
    warm.reply([{"role": "user", "content": "Hello"}], SETS[0], sampling=Sampling(max_new_tokens=4, seed=1))
    warm.close()
    scheduler = ProfiledScheduler(engine, max_batch=args.rows)
    start = time.perf_counter()
    streams = [scheduler.submit([{"role": "user", "content": f"Tell me about your work, part {i}."}],
                                SETS[i % len(SETS)], sampling=Sampling(max_new_tokens=args.max_new_tokens, seed=1 + i))
               for i in range(args.rows)]
    readers = [threading.Thread(target=lambda s=s: [None for _ in s]) for s in streams]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    wall = time.perf_counter() - start
    scheduler.close()
    stats = pstats.Stats(scheduler.profile)
    document = {"rows": args.rows, "max_new_tokens": args.max_new_tokens, "torch_threads": args.threads,
                "decode_dtype": decode_dtype_in_use(engine.model),
                "fold_reach": fold_reach_in_use(engine.model),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "wall_s": round(wall, 3), "tokens": sum(len(s.token_ids) for s in streams),
                **breakdown(stats), "stream_decode_ms_per_step": stream_decode_ms_per_step(engine, streams)}
    print(json.dumps(document, indent=2))
    if not args.json:
        stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
