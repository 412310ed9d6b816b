"""How close can a mixed batch of 8 get to the base model at all? A bound for the expert layers' design.

    python benchmarks/bench_mixing_bound.py [--steps 60]

Runs the mixed batch of `bench_experts.py` (8 rows, 8 different identity sets, rank 8, alternate layout)
three ways against the base model at batch 8, taking turns one decode step at a time:
  experts        the real expert layers;
  matmuls only   the same banks with routing and mixing removed (each bank keeps its A matmul and its
                 folded W/B matmul, nothing else): the outputs are wrong, the time is the floor that the
                 matmuls alone set, whatever the routing code does;
  unfolded       the real layers with W and B applied separately (no block-diagonal fold).
A timing diagnostic only: nothing here is a supported way to run the model.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_experts import MIXED, batch, decoder, randomize, take_turns  # noqa: E402

import hirpf.fast_inference as fast  # noqa: E402
from hirpf.base_model import load_base_model  # noqa: E402
from hirpf.experts import ExpertConfig  # noqa: E402
from hirpf.inject import add_experts  # noqa: E402


def matmuls_only(plan, x, table):
    """`InferencePlan.mixed` without its routing: the A matmul, sliced to the B matrices' input width."""
    p, e, r = plan.projections.shape
    return fast._affine(x, plan.in_weight_t, plan.in_bias)[..., :p * e * r]


def ratio(base, model, eight, steps) -> float:
    t = take_turns({"base": decoder(base, eight), "experts": decoder(model, eight, MIXED)}, steps)
    return round(t["base"] / t["experts"], 4)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args(argv)
    base, tokenizer = load_base_model("embedded", load_in_8bit=False, dtype="float32")
    model = add_experts(copy.deepcopy(base), ExpertConfig(layout="alternate", rank=8, alpha=16, dropout=0.0))
    randomize(model)
    eight = batch(tokenizer, 8)
    result = {"experts": ratio(base, model, eight, args.steps)}
    real_mixed, real_fold = fast.InferencePlan.mixed, fast.FOLD_MAX_VECTORS
    try:
        fast.InferencePlan.mixed = matmuls_only
        result["matmuls_only"] = ratio(base, model, eight, args.steps)
        fast.InferencePlan.mixed, fast.FOLD_MAX_VECTORS = real_mixed, 0
        result["unfolded"] = ratio(base, model, eight, args.steps)
    finally:
        fast.InferencePlan.mixed, fast.FOLD_MAX_VECTORS = real_mixed, real_fold
    print(json.dumps({"mixed_batch_ratio": result, "steps": args.steps}, indent=2))
    return result


if __name__ == "__main__":
    main()
