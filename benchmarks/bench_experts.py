"""Speed of the identity experts on the embedded model (float32, CPU), against PEFT on the same model.

    python benchmarks/bench_experts.py [--json] [--steps 150] [--rank 8]

Reported (timings are reported here, never asserted in tests):
  1. decode time per token at batch 1 with 0, 1, 3 and 6 active identities, against the base model
     without experts;
  2. throughput of a batch of 8 rows with 8 different identity sets, against the base model at batch 8;
  3. the cost of changing identities between two calls: one-token calls that alternate between two
     sets of six against calls that repeat one set (each call passes its identities, as a chat turn does),
     and what applying a set costs every call (`routing_setup_ms`);
  4. the same for PEFT with 13 plain LoRA adapters of the same rank on the same targets and layers
     (`layers_to_transform` reproduces the alternate layout): stacked active adapters
     (`base_model.set_adapter([...])`), mixed batches (`adapter_names=`), `add_weighted_adapter`.

How: this machine's speed drifts by 10-30% within minutes, so whole-run timings of two configurations
taken one after the other are not comparable. Every configuration keeps its own KV cache and the
configurations take turns one decode step at a time; each reports the median of its step times.
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
from hirpf.identities import GROUPS, IdentitySet  # noqa: E402
from hirpf.inject import add_experts, expert_layers  # noqa: E402
from hirpf.routing import Routing, use_identities  # noqa: E402

SETS = {
    0: IdentitySet(),
    1: IdentitySet.parse("AGR_high"),
    3: IdentitySet.parse("AGR_high,CON_low,Doctor"),
    6: IdentitySet.parse("AGR_high,CON_low,EXT_high,NEU_low,OPE_high,Doctor"),
}
OTHER_6 = IdentitySet.parse("AGR_low,CON_high,EXT_low,NEU_high,OPE_low,Artist")
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


def decoder(model, inputs, rows=None, restart_every=32, **forward_kwargs):
    """A generator: each `next()` runs and times one greedy decode step with the KV cache; it starts over
    from the prompt every `restart_every` steps so every configuration decodes at the same lengths."""
    while True:
        routing = Routing(rows) if rows is not None else None
        context = (lambda routing=routing: use_identities(routing)) if routing is not None else contextlib.nullcontext
        with torch.no_grad(), context():
            out = model(**inputs, use_cache=True, **forward_kwargs)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(restart_every):
            with torch.no_grad(), context():
                start = time.perf_counter()
                out = model(input_ids=token, past_key_values=past, use_cache=True, **forward_kwargs)
                elapsed = time.perf_counter() - start
            token = out.logits[:, -1:].argmax(-1)
            yield elapsed


def take_turns(cases: dict, steps: int) -> dict:
    """Median seconds per step of each case, the cases advancing one step at a time in turn."""
    times = {name: [] for name in cases}
    for _name, timer in cases.items():  # warm-up
        next(timer)
    for _ in range(steps):
        for name, timer in cases.items():
            times[name].append(next(timer))
    return {name: statistics.median(t) for name, t in times.items()}


def switch_cost(change_and_call, call, first, second, steps):
    """Milliseconds that changing the identity set adds to a one-token call: calls that alternate between
    two sets against calls that keep one."""
    def switching():
        i = 0
        while True:
            i += 1
            yield change_and_call(first if i % 2 else second)

    def steady():
        while True:
            yield call()

    t = take_turns({"steady": steady(), "switching": switching()}, steps)
    return (t["switching"] - t["steady"]) * 1000


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_second(times: dict) -> dict:
    return {name: round((8 if "batch8" in name else 1) / sec, 2) for name, sec in times.items()}


def measure_hirpf(base, model, one, eight, steps):
    cases = {"base": decoder(base, one)}
    for k, s in SETS.items():
        cases[f"{k}_identities"] = decoder(model, one, s)
    cases["base_batch8"] = decoder(base, eight)
    cases["mixed_batch8"] = decoder(model, eight, MIXED)
    t = take_turns(cases, steps)

    token = one["input_ids"][:, -1:]

    def call(identities):  # every call passes its identities, as a chat turn does
        def run():
            with torch.no_grad(), use_identities(identities):
                model(token)
        return timed(run)

    switch_ms = switch_cost(call, lambda: call(SETS[6]), SETS[6], OTHER_6, steps)
    return {
        "tokens_per_s": per_second(t),
        "overhead_by_identities": {k: round(t[f"{k}_identities"] / t["base"], 4) for k in SETS},
        "overhead_6_identities": t["6_identities"] / t["base"],
        "mixed_batch_ratio": t["base_batch8"] / t["mixed_batch8"],
        "switch_ms": switch_ms,
        "routing_setup_ms": routing_setup_ms(model, token, steps),
    }


def routing_setup_ms(model, token, steps) -> float:
    """What every call pays to apply its identities, switching or not: the `Routing` and each expert
    fast path's plan (masks and weights, from the caches once a set has been seen)."""
    banks = list({id(layer.fast_path): layer.fast_path for layer in expert_layers(model).values()}.values())
    x = model.get_input_embeddings()(token)
    times = []
    with torch.no_grad():
        for i in range(steps):
            start = time.perf_counter()
            routing = Routing(SETS[6] if i % 2 else OTHER_6)
            for bank in banks:
                bank._plan(x, routing)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


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


def measure_peft(base, config, one, eight, steps):
    model = peft_model(copy.deepcopy(base), config.rank, config.alpha, config.target_modules,
                       base.config.num_hidden_layers)
    six, other = list(SETS[6]), list(OTHER_6)
    single = [next(iter(s)) for s in MIXED]  # PEFT gives a row one adapter only

    def with_adapters(names, timer):
        """Each step re-selects its adapters: the configurations share one PeftModel."""
        while True:
            model.base_model.set_adapter(names)
            yield next(timer)

    def without_adapters(timer):
        while True:
            with model.disable_adapter():  # left before yielding: the other configurations share the model
                elapsed = next(timer)
            yield elapsed

    cases = {
        "base": without_adapters(decoder(model, one)),
        "stacked_1": with_adapters(six[:1], decoder(model, one)),
        "stacked_6": with_adapters(six, decoder(model, one)),
        "base_batch8": decoder(base, eight),
        "mixed_batch8": with_adapters(six, decoder(model, eight, adapter_names=single)),
    }
    t = take_turns(cases, steps)

    token = one["input_ids"][:, -1:]

    def change_and_call(names):
        def run():
            model.base_model.set_adapter(names)
            with torch.no_grad():
                model(token)
        return timed(run)

    def call_steady():
        with torch.no_grad():
            return timed(lambda: model(token))

    model.base_model.set_adapter(six)
    switch_ms = switch_cost(change_and_call, call_steady, six, other, steps)
    weighted_ms = timed(lambda: model.add_weighted_adapter(six, [1.0] * 6, "weighted_6",
                                                           combination_type="cat")) * 1000
    model.set_adapter("weighted_6")
    weighted = take_turns({"weighted_6": decoder(model, one), "base": decoder(base, one)}, steps // 3)
    return {
        "tokens_per_s": per_second(t) | {"weighted_6": round(1 / weighted["weighted_6"], 2)},
        "overhead_6_identities": t["stacked_6"] / t["base"],
        "mixed_batch_ratio": t["base_batch8"] / t["mixed_batch8"],
        "switch_ms": switch_ms,
        "add_weighted_adapter_ms": weighted_ms,
        "weighted_6_overhead": weighted["weighted_6"] / weighted["base"],
    }


def table(result) -> str:
    peft = result.get("peft", {})
    na = float("nan")
    lines = [
        "| measure | HIRPF experts | PEFT |",
        "|---|---|---|",
        f"| time per token, 6 identities / base, batch 1 | {result['overhead_6_identities']:.3f} | "
        f"{peft.get('overhead_6_identities', na):.3f} (stacked `set_adapter`) |",
        f"| throughput, mixed batch of 8 / base batch 8 | {result['mixed_batch_ratio']:.3f} | "
        f"{peft.get('mixed_batch_ratio', na):.3f} (`adapter_names`, one adapter a row) |",
        f"| changing identities between calls (ms) | {result['switch_ms']:.2f} | {peft.get('switch_ms', na):.2f} |",
        f"| applying a set, paid by every call (ms) | {result['routing_setup_ms']:.2f} | - |",
    ]
    if peft:
        lines.append(f"| `add_weighted_adapter` of 6 (ms), then time per token / base | - | "
                     f"{peft['add_weighted_adapter_ms']:.0f}, {peft['weighted_6_overhead']:.3f} |")
    lines += ["", "time per token / base, batch 1, by active identities: " + ", ".join(
        f"{k}: {v:.3f}" for k, v in result["overhead_by_identities"].items()),
        "tokens/s: " + ", ".join(f"{k} {v}" for k, v in result["tokens_per_s"].items())]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=150, help="timed decode steps per configuration")
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
    result = {"device": "cpu", "dtype": "float32", "threads": torch.get_num_threads(), "layout": args.layout,
              "rank": args.rank, "targets": list(config.target_modules), "steps": args.steps}
    result |= measure_hirpf(base, model, one, eight, args.steps)
    if not args.skip_peft:
        result["peft"] = measure_peft(base, config, one, eight, args.steps)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return result


if __name__ == "__main__":
    main()
