"""A conversation through the scheduler with prefix reuse off and on: time to first token per turn.

    python benchmarks/bench_prefix_reuse.py [--json] [--turns 6] [--max_new_tokens 48] [--repeats 2]

The embedded model with the shipped experts (float32, CPU), one visitor, one identity set, greedy replies
(so both settings see the same conversation), each turn sent with the whole history as the app sends it.
With the store off (`prefix_cache_mb=0`) every turn prefills its whole prompt; with it on, a turn finds the
previous turn's prompt and reply stored and prefills the rest. Each setting runs the conversation
`--repeats` times on a fresh scheduler; a turn's time is the fastest of its repeats. Reported per turn:
prompt tokens, tokens reused, time to first token off and on.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hirpf.engine import Engine, Sampling  # noqa: E402
from hirpf.identities import IdentitySet  # noqa: E402
from hirpf.prompts import Conditioning  # noqa: E402
from hirpf.scheduler import Scheduler  # noqa: E402

IDENTITIES = IdentitySet.parse("AGR_low,Doctor")
MESSAGES = ["Good morning. I have had a headache for three days.", "It gets worse in the evening.",
            "I drink a lot of coffee, maybe five cups.", "Should I stop all at once?", "What about painkillers?",
            "And if it does not get better?", "Thank you, doctor.", "One more thing: can I still run?"]


def conversation(engine: Engine, store_mb: int, turns: int, sampling: Sampling) -> list[dict]:
    scheduler = Scheduler(engine, max_batch=1, prefix_cache_mb=store_mb)
    history, rows = [], []
    try:
        for message in MESSAGES[:turns]:
            history.append({"role": "user", "content": message})
            prompt = engine.encode([engine.chat_messages(history, IDENTITIES, Conditioning.EXPERTS_AND_PROMPT)])
            reused_before = scheduler.prefixes.reused_tokens
            sent = time.perf_counter()
            stream = scheduler.submit(history, IDENTITIES, sampling=sampling)
            first = None
            for _ in stream:
                if first is None:
                    first = time.perf_counter() - sent
            rows.append({"prompt_tokens": prompt["input_ids"].shape[1], "ttft_s": first,
                         "reused_tokens": scheduler.prefixes.reused_tokens - reused_before, "reply": stream.text})
            history.append({"role": "assistant", "content": stream.text})
    finally:
        scheduler.close()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    if not 1 <= args.turns <= len(MESSAGES):
        parser.error(f"--turns must be 1 to {len(MESSAGES)}")
    torch.set_num_threads(args.threads)
    engine = Engine.load("embedded", load_in_8bit=False, dtype="float32")
    sampling = Sampling(max_new_tokens=args.max_new_tokens, do_sample=False)
    conversation(engine, 0, 1, sampling)  # warm up plans, mask tables and the allocator
    runs = {"off": [], "on": []}
    for _ in range(args.repeats):
        for setting, store_mb in (("off", 0), ("on", 256)):
            runs[setting].append(conversation(engine, store_mb, args.turns, sampling))
    table = []
    for turn in range(args.turns):
        off, on = runs["off"][0][turn], runs["on"][0][turn]
        table.append({"turn": turn + 1, "prompt_tokens": on["prompt_tokens"], "reused_tokens": on["reused_tokens"],
                      "ttft_off_s": round(min(r[turn]["ttft_s"] for r in runs["off"]), 4),
                      "ttft_on_s": round(min(r[turn]["ttft_s"] for r in runs["on"]), 4),
                      "same_reply": off["reply"] == on["reply"]})
    later = table[1:] or table
    document = {
        "ttft_ratio_off_on_later_turns": round(statistics.mean(r["ttft_off_s"] / r["ttft_on_s"] for r in later), 2),
        "settings": {"turns": args.turns, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                     "identities": str(IDENTITIES), "torch_threads": args.threads,
                     "model": "embedded + shipped experts, float32, CPU, greedy"},
        "table": table,
    }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        for row in table:
            print(f"turn {row['turn']}: {row['prompt_tokens']} prompt tokens, {row['reused_tokens']} reused; "
                  f"first token {row['ttft_off_s']:.3f} s off, {row['ttft_on_s']:.3f} s on")
        print(f"turns 2+: first token {document['ttft_ratio_off_on_later_turns']}x sooner with the store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
