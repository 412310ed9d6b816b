"""The expert layers and the scheduler on a GPU, at the embedded model's and Llama-2-7B's shapes.

    python benchmarks/bench_gpu.py [--json] [--shapes embedded,llama2-7b] [--smoke]

Random weights at real shapes (`tests/real_shapes.py`): no weights or network needed, so this runs on the
GPU machine `scripts/gpu_check.sh` is given. Per shape and base precision (float16; 8-bit where bitsandbytes
imports, on a model cut to `EIGHT_BIT_LAYERS[shape]` layers, saved and loaded as bitsandbytes loads one):

- `experts`: one decode step at batch 8 over a `CONTEXT`-token cache, the bare model against the same
  model with random experts (attention + MLP, rank 8) and 8 different identity sets in the batch;
  `mixed_8_over_base` = the experts' step time ÷ the bare model's (1.0 is free);
- `serving`: 8 requests of `MAX_NEW_TOKENS` tokens through the scheduler at once, against the same 8
  through a scheduler of one row (`max_batch=1`: one request at a time, the same code and token count);
  `speedup_8` = batched ÷ serial aggregate tokens/s.

Step times are medians over `STEPS` steps after a warm-up, with `torch.cuda.synchronize()` around each
(`hirpf/decode_timing.py`).
Without CUDA it prints `{"cuda": false, ...}` and measures nothing; `--smoke` instead runs every part on the
CPU at one layer and a few tokens (what CI does to keep this script working; not figures).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from app.tiny_model import randomize_experts  # noqa: E402
from hirpf.decode_timing import decode_step_seconds  # noqa: E402
from hirpf.engine import Engine  # noqa: E402
from hirpf.experts import ExpertConfig  # noqa: E402
from hirpf.identities import IdentitySet  # noqa: E402
from hirpf.inject import add_experts  # noqa: E402
from hirpf.routing import Routing  # noqa: E402
from hirpf.sampling import Sampling  # noqa: E402
from hirpf.scheduler import Scheduler  # noqa: E402

from real_shapes import SHAPES, character_tokenizer, random_model, save_random_base  # noqa: E402

MIXED_8 = [IdentitySet.parse(s) for s in (
    "AGR_high", "AGR_low,Doctor", "CON_high,EXT_low,Artist", "NEU_high,OPE_low", "Programmer",
    "AGR_high,CON_low,EXT_high,NEU_low,OPE_high,Doctor", "EXT_high,Artist", "OPE_high,NEU_low,Programmer")]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONTEXT, STEPS, MAX_NEW_TOKENS = 100, 40, 64
EIGHT_BIT_LAYERS = {"embedded": None, "llama2-7b": 4}  # None: every layer


def expert_layers_case(model, steps: int, context: int) -> dict:
    """The bare model's batch-8 decode step, then the same with random experts and 8 identity sets (one model
    in memory: a second 7B copy would not fit beside the first on every GPU)."""
    base_s = decode_step_seconds({"base": (model, None)}, 8, context, steps)["base"]
    add_experts(model, ExpertConfig(rank=8, dropout=0.0, target_modules=TARGETS))
    randomize_experts(model, scale=0.02)
    mixed_s = decode_step_seconds({"mixed": (model.eval(), Routing(MIXED_8))}, 8, context, steps)["mixed"]
    return {"base_step_ms": round(base_s * 1e3, 3), "mixed_8_step_ms": round(mixed_s * 1e3, 3),
            "base_tokens_per_s_8": round(8 / base_s, 1), "mixed_8_tokens_per_s": round(8 / mixed_s, 1),
            "mixed_8_over_base": round(mixed_s / base_s, 3)}


def serve(engine: Engine, max_batch: int, requests: int, max_new_tokens: int) -> dict:
    """`requests` requests (one identity set each) submitted at once to a scheduler of `max_batch` rows."""
    scheduler = Scheduler(engine, max_batch=max_batch)
    try:
        def submit(i):
            history = [{"role": "user", "content": f"Question {i}: what do you do on a Sunday?"}]
            return scheduler.submit(history, MIXED_8[i % len(MIXED_8)],
                                    sampling=Sampling(max_new_tokens=max_new_tokens, seed=1 + i))

        submit(0).result(timeout=600)  # warm-up
        start = time.perf_counter()
        streams = [submit(i) for i in range(requests)]
        for stream in streams:
            stream.result(timeout=600)
        seconds = time.perf_counter() - start
    finally:
        scheduler.close()
    tokens = sum(len(s.token_ids) for s in streams)
    ttft = [s.first_token_at - s.submitted_at for s in streams if s.first_token_at is not None]
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "ttft_p50_s": round(statistics.median(ttft), 4) if ttft else None,
            "widest_batch": scheduler.runner.widest_batch}


def serving_case(model, device: str, max_new_tokens: int) -> dict:
    """8 concurrent requests through the running batch ÷ the same 8 one at a time (the model holds experts)."""
    engine = Engine(model, character_tokenizer(model.config.vocab_size))
    serial = serve(engine, 1, 8, max_new_tokens)
    batched = serve(engine, 8, 8, max_new_tokens)
    return {"serial": serial, "batched_8": batched,
            "speedup_8": round(batched["tokens_per_s"] / serial["tokens_per_s"], 3)}


def eight_bit_model(shape: str, layers: int | None, directory: Path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    save_random_base(shape, directory, layers=layers)
    model = AutoModelForCausalLM.from_pretrained(directory, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                                 dtype=torch.float16, device_map={"": 0})
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    return model.eval()


def measure(shape: str, precision: str, device: str, smoke: bool) -> dict:
    layers = 1 if smoke else (EIGHT_BIT_LAYERS[shape] if precision == "int8" else None)
    steps, context, max_new_tokens = (2, 8, 16) if smoke else (STEPS, CONTEXT, MAX_NEW_TOKENS)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hirpf-bench-gpu-") as tmp:
        if precision == "int8":
            model = eight_bit_model(shape, layers, Path(tmp))
        else:
            model = random_model(shape, dtype={"float16": torch.float16, "float32": torch.float32}[precision],
                                 device=device, layers=layers)
        row = {"shape": shape, "precision": precision, "layers": model.config.num_hidden_layers,
               "experts": expert_layers_case(model, steps, context),
               "serving": serving_case(model, device, max_new_tokens)}
    del model
    if device == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--smoke", action="store_true",
                        help="without CUDA: every part on the CPU at one layer and a few tokens (no figures)")
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    cuda = torch.cuda.is_available()
    document: dict = {"cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else None,
                      "torch": torch.__version__, "rows": []}
    if cuda:
        try:
            import bitsandbytes  # noqa: F401
            precisions = ["float16", "int8"]
        except ImportError:
            precisions = ["float16"]
            document["int8"] = "skipped: bitsandbytes does not import"
        for shape in shapes:
            for precision in precisions:
                document["rows"].append(measure(shape, precision, "cuda", smoke=args.smoke))
    elif args.smoke:
        document["smoke"] = "CPU, one layer, a few tokens: checks that the script runs, not figures"
        document["rows"] = [measure(shape, "float32", "cpu", smoke=True) for shape in shapes]
    else:
        document["skipped"] = "no CUDA device"
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        for row in document["rows"]:
            print(f"{row['shape']:10s} {row['precision']:8s} layers {row['layers']:2d}: experts mixed 8 / base "
                  f"{row['experts']['mixed_8_over_base']}, serving speedup_8 {row['serving']['speedup_8']}")
        if not document["rows"]:
            print(document.get("skipped") or "nothing measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
