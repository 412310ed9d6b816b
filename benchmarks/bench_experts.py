"""Speed of the identity experts on the embedded model (float32, CPU), against PEFT on the same model.

    python benchmarks/bench_experts.py [--json] [--rounds 5] [--new_tokens 32]

Measured in one process, configurations interleaved round by round and summarised by their median, because
this machine is noisy. Reported:
  1. decode tokens/s at batch 1 with 0, 1, 3 and 6 active identities, and the base model without experts;
  2. throughput of a batch of 8 rows with 8 different identity sets, against the base model at batch 8;
  3. the cost of changing identities between two calls (one decode step with a new set minus one with the
     same set);
  4. the same for PEFT with 13 plain LoRA adapters of the same rank on the same targets and layers
     (`layers_to_transform` reproduces the alternate layout): stacked active adapters
     (`base_model.set_adapter([...])`), mixed batches (`adapter_names=`), `add_weighted_adapter`.
Timings are reported, never asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hirpf.base_model import load_base_model  # noqa: E402
from hirpf.experts import ExpertConfig  # noqa: E402
from hirpf.identities import ALL_IDENTITIES, GROUPS, IdentitySet  # noqa: E402
from hirpf.inject import add_experts, expert_layers  # noqa: E402
from hirpf.routing import use_identities  # noqa: E402

SETS = {
    0: IdentitySet(),
    1: IdentitySet.parse("AGR_high"),
    3: IdentitySet.parse("AGR_high,CON_low,Doctor"),
    6: IdentitySet.parse("AGR_high,CON_low,EXT_high,NEU_low,OPE_high,Doctor"),
}
MIXED = [IdentitySet.parse(s) for s in (
    "AGR_high", "AGR_low,Doctor", "CON_high,EXT_low,Artist", "NEU_high,OPE_low", "Programmer",
    "AGR_high,CON_low,EXT_high,NEU_low,OPE_high,Doctor", "EXT_high,Artist", "OPE_high,NEU_low,Programmer")]
PROMPT = "Tell me about a place you would like to visit and why."


def randomize(model, seed=0):
    """Non-zero experts and routers, so every multiplication does real work."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in expert_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.01)
            if layer.router is not None:
                layer.router.weight.copy_(torch.randn(layer.router.weight.shape, generator=g) * 0.01)


def batch(tokenizer, rows):
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer([text] * rows, return_tensors="pt", add_special_tokens=False)


def decode_steps(model, inputs, steps, routing=None, **forward_kwargs):
    """Prefill, then `steps` greedy decode steps with the KV cache; returns each step's seconds.
    Timing single steps (and taking medians over many) is far steadier here than timing whole calls."""
    times = []
    context = use_identities(routing) if routing is not None else contextlib.nullcontext()
    with torch.no_grad(), context:
        out = model(**inputs, use_cache=True, **forward_kwargs)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            start = time.perf_counter()
            out = model(input_ids=token, past_key_values=past, use_cache=True, **forward_kwargs)
            times.append(time.perf_counter() - start)
            token = out.logits[:, -1:].argmax(-1)
    return times


def interleaved(cases: dict, rounds: int) -> dict:
    """Run every case once per round (rotating the order); the median step time of each case."""
    times = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name] += cases[name]()
    return {name: statistics.median(t) for name, t in times.items()}


def peft_model(base, rank, alpha, targets, layers):
    from peft import LoraConfig, get_peft_model

    model = None
    g = torch.Generator().manual_seed(1)
    for group, names in GROUPS.items():
        group_layers = [i for i in range(layers) if (i % 2 == 0) == (group == "traits")]
        for name in names:
            config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                                layers_to_transform=group_layers)
            if model is None:
                model = get_peft_model(base, config, adapter_name=name)
            else:
                model.add_adapter(name, config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return model.eval()


def switch_cost(step, flip_sets, same_set, rounds, steps):
    """Milliseconds that changing the identity set adds to a single-token call, as a chat turn with new
    identities would see it: calls alternating between two sets against calls repeating one set."""
    counter = {"i": 0}

    def alternating():
        counter["i"] += 1
        return call_times(step, flip_sets[counter["i"] % 2], steps)

    t = interleaved({"same": lambda: call_times(step, same_set, steps), "new": alternating}, rounds)
    return max(0.0, (t["new"] - t["same"]) * 1000), t["same"] * 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="interleaved repetitions per configuration")
    ap.add_argument("--steps", type=int, default=16, help="decode steps timed per repetition")
    ap.add_argument("--rank", type=int, default=8, help="expert rank (PEFT uses the same)")
    ap.add_argument("--layout", default="alternate", choices=["flat", "layered", "alternate"])
    ap.add_argument("--skip_peft", action="store_true", help="only measure HIRPF experts")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)

    base, tokenizer = load_base_model("embedded", load_in_8bit=False, dtype="float32")
    config = ExpertConfig(layout=args.layout, rank=args.rank, alpha=2 * args.rank, dropout=0.0)
    model = add_experts(copy.deepcopy(base), config)
    randomize(model)
    one, eight = batch(tokenizer, 1), batch(tokenizer, 8)

    cases = {"base": lambda: decode_steps(base, one, args.steps)}
    for k, s in SETS.items():
        cases[f"{k}_identities"] = (lambda s=s: decode_steps(model, one, args.steps, s))
    cases["base_batch8"] = lambda: decode_steps(base, eight, args.steps)
    cases["mixed_batch8"] = lambda: decode_steps(model, eight, args.steps, MIXED)
    interleaved(cases, 1)  # warm-up
    t = interleaved(cases, args.rounds)

    def one_token_call(routing):
        start = time.perf_counter()
        with torch.no_grad(), use_identities(routing):
            model(**one)
        return time.perf_counter() - start

    switch_ms, call_ms = switch_cost(one_token_call, [SETS[6], SETS[3]], SETS[6], args.rounds, args.steps)
    result = {
        "device": "cpu", "dtype": "float32", "threads": torch.get_num_threads(), "layout": args.layout,
        "rank": args.rank, "steps": args.steps, "rounds": args.rounds,
        "tokens_per_s": {name: (8 if "batch8" in name else 1) / sec for name, sec in t.items()},
        "overhead_6_identities": t["6_identities"] / t["base"],
        "mixed_batch_ratio": t["base_batch8"] / t["mixed_batch8"],
        "switch_ms": switch_ms,
        "prompt_call_ms": call_ms,
    }
    if not args.skip_peft:
        result["peft"] = measure_peft(base, config, one, eight, args)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return result


def call_times(call, routing, n):
    return [call(routing) for _ in range(n)]


def measure_peft(base, config, one, eight, args):
    model = peft_model(copy.deepcopy(base), config.rank, config.alpha, config.target_modules,
                       base.config.num_hidden_layers)
    six = list(SETS[6])
    single = [next(iter(s)) for s in MIXED]  # PEFT gives a row one adapter only

    def stacked(names):
        model.base_model.set_adapter(names)
        return decode_steps(model, one, args.steps)

    def plain_base():
        with model.disable_adapter():
            return decode_steps(model, one, args.steps)

    cases = {"base": plain_base, "stacked_6": lambda: stacked(six), "stacked_1": lambda: stacked(six[:1]),
             "mixed_batch8": lambda: decode_steps(model, eight, args.steps, adapter_names=single),
             "base_batch8": lambda: decode_steps(base, eight, args.steps)}
    interleaved(cases, 1)
    t = interleaved(cases, args.rounds)

    def one_token_call(names):
        start = time.perf_counter()
        model.base_model.set_adapter(names)
        with torch.no_grad():
            model(**one)
        return time.perf_counter() - start

    switch_ms, _ = switch_cost(one_token_call, [six, six[:3]], six, args.rounds, args.steps)

    start = time.perf_counter()
    model.add_weighted_adapter(six, [1.0] * len(six), "weighted_6", combination_type="cat")
    weighted_ms = (time.perf_counter() - start) * 1000
    model.set_adapter("weighted_6")
    weighted = statistics.median(decode_steps(model, one, args.steps * args.rounds))
    return {
        "tokens_per_s": {name: (8 if "batch8" in name else 1) / sec for name, sec in t.items()}
        | {"weighted_6": 1 / weighted},
        "overhead_6_identities": t["stacked_6"] / t["base"],
        "mixed_batch_ratio": t["base_batch8"] / t["mixed_batch8"],
        "switch_ms": switch_ms,
        "add_weighted_adapter_ms": weighted_ms,
        "weighted_6_overhead": weighted / t["base"],
    }


def table(result) -> str:
    rows = [("configuration", "HIRPF", "PEFT")]
    peft = result.get("peft", {})
    rows.append(("6 identities / base, batch 1 (time per token)", f"{result['overhead_6_identities']:.3f}",
                 f"{peft.get('overhead_6_identities', float('nan')):.3f}"))
    rows.append(("mixed batch 8 / base batch 8 (throughput)", f"{result['mixed_batch_ratio']:.3f}",
                 f"{peft.get('mixed_batch_ratio', float('nan')):.3f}"))
    rows.append(("switching identities (ms)", f"{result['switch_ms']:.2f}", f"{peft.get('switch_ms', float('nan')):.2f}"))
    lines = [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.insert(1, "|---|---|---|")
    lines.append("")
    lines.append("| tokens/s | " + " | ".join(result["tokens_per_s"]) + " |")
    lines.append("|---" * (len(result["tokens_per_s"]) + 1) + "|")
    lines.append("| HIRPF | " + " | ".join(f"{v:.1f}" for v in result["tokens_per_s"].values()) + " |")
    if peft:
        lines.append("")
        lines.append("PEFT tokens/s: " + ", ".join(f"{k} {v:.1f}" for k, v in peft["tokens_per_s"].items())
                     + f"; add_weighted_adapter {peft['add_weighted_adapter_ms']:.0f} ms, "
                     f"then {peft['weighted_6_overhead']:.3f}x base time per token")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
