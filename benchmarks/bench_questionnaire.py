"""How long the logits questionnaire takes: our 100-item personality bank for one identity set, on the
embedded model with the shipped experts (float32, CPU unless CUDA is there).

    .venv/bin/python benchmarks/bench_questionnaire.py [--threads 2] [--repeats 3] [--batch_size 16] [--poles] [--json]

Reports the median seconds of `answer_by_logits` (shared-prefix cache, see hirpf/eval/choices.py) for one
identity set and, as the baseline, the same 100 items with every prompt run whole (left-padded batches, no
cache); with `--poles` also the 11 sets of `--poles` (1,100 answers).
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

from hirpf.engine import Engine  # noqa: E402
from hirpf.eval.choices import option_token_ids  # noqa: E402
from hirpf.eval.common import batches  # noqa: E402
from hirpf.eval.digit_logits import answer_by_logits, likert_question  # noqa: E402
from hirpf.identities import IdentitySet, single_poles  # noqa: E402
from hirpf.prompts import Conditioning, expert_identities  # noqa: E402
from hirpf.routing import use_identities  # noqa: E402
from hirpf.scales import default_scale  # noqa: E402


def whole_prompts(engine, scale, identities, conditioning, batch_size):
    """The baseline: each prompt in full, left-padded batches, no shared prefix."""
    tokenizer = engine.tokenizer
    labels = option_token_ids(tokenizer, ["1", "2", "3", "4", "5"])
    texts = [tokenizer.apply_chat_template(
        engine.chat_messages([{"role": "user", "content": likert_question(i.text)}], identities, conditioning),
        tokenize=False, add_generation_prompt=True) for i in scale.items]
    out = []
    for chunk in batches(texts, batch_size):
        batch = tokenizer(list(chunk), return_tensors="pt", padding=True, add_special_tokens=False)
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad(), use_identities([expert_identities(identities, conditioning)] * len(chunk)):
            logits = engine.model(**batch, position_ids=positions, logits_to_keep=1).logits[:, -1]
        out.append(torch.softmax(logits[:, labels].double(), -1))
    return torch.cat(out)


def timed(fn, repeats):
    fn()  # warm-up: first-call allocations and mask tables
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--poles", action="store_true", help="also time the 11 sets of --poles")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.load("embedded", lora_weights="default", load_in_8bit=False, dtype="float32")
    scale = default_scale("personality")
    one = [IdentitySet.parse("EXT_high")]
    poles = single_poles() + [IdentitySet()]
    conditioning = Conditioning.EXPERTS_AND_PROMPT
    results = {"device": str(engine.model.device), "threads": args.threads, "items": len(scale.items),
               "batch_size": args.batch_size, "experts": engine.has_experts}
    runs = [("one_set_seconds", lambda: answer_by_logits(engine, scale, one, conditioning, args.batch_size)),
            ("one_set_whole_prompts_seconds",
             lambda: whole_prompts(engine, scale, one[0], conditioning, args.batch_size))]
    if args.poles:
        runs.append(("poles_11_sets_seconds", lambda: answer_by_logits(engine, scale, poles, conditioning,
                                                                       args.batch_size)))
    for name, fn in runs:
        median, times = timed(fn, args.repeats)
        results[name] = round(median, 3)
        results[name.replace("_seconds", "_runs")] = [round(t, 3) for t in times]
        print(f"{name}: {median:.3f} ({', '.join(f'{t:.2f}' for t in times)})", file=sys.stderr)
    # The cache must not change the answers.
    cached = answer_by_logits(engine, scale, one, conditioning, args.batch_size)
    whole = whole_prompts(engine, scale, one[0], conditioning, args.batch_size)
    results["max_abs_difference_cached_vs_whole"] = float(
        (torch.tensor([[a.detail[f"p{k}"] for k in range(1, 6)] for a in cached], dtype=torch.float64) - whole)
        .abs().max())
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
