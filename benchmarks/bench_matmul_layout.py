"""Which weight layout the CPU GEMM prefers for the expert banks' inference copies, at decode sizes.

    python benchmarks/bench_matmul_layout.py [--json] [--repeats 400]

For the embedded model's shapes (hidden 576; q/k/v together 960 outputs; o 576; the folded [x, mixed]
inputs of a rank-8 bank of ten experts), at 1 and 8 input rows: `F.linear` over a weight stored
[out, in] (nn.Linear's layout) against `torch.mm` / `torch.addmm` over the same weight stored [in, out]
(what `hirpf.experts` keeps). Each reports the median microseconds of `--repeats` calls, the two layouts
taking turns call by call (this machine drifts).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {  # name: (in, out)
    "qkv": (576, 960),
    "o": (576, 576),
    "qkv folded with 3x10 experts of rank 8": (576 + 240, 960),
    "o folded with 10 experts of rank 8": (576 + 80, 576),
}


def median_us(calls: dict, repeats: int) -> dict:
    times = {name: [] for name in calls}
    for fn in calls.values():  # warm-up
        for _ in range(20):
            fn()
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(t) * 1e6, 1) for name, t in times.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=400)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    result = {"threads": torch.get_num_threads(), "repeats": args.repeats, "us": {}}
    for name, (n_in, n_out) in SHAPES.items():
        weight = torch.randn(n_out, n_in)
        weight_t = weight.t().contiguous()
        bias = torch.randn(n_out)
        for rows in (1, 8):
            x = torch.randn(rows, n_in)
            result["us"][f"{name}, {rows} row(s)"] = median_us({
                "F.linear [out, in]": lambda x=x, weight=weight, bias=bias: F.linear(x, weight, bias),
                "addmm [in, out]": lambda x=x, weight_t=weight_t, bias=bias: torch.addmm(bias, x, weight_t),
            }, args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for case, figures in result["us"].items():
            print(f"{case:50s} " + "  ".join(f"{k}: {v:7.1f} us" for k, v in figures.items()))
    return result


if __name__ == "__main__":
    main()
