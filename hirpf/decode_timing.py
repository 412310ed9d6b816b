"""What a model's own decode step costs, outside any serving code: the bare `model(...)` call at a batch over a
cache of a fixed length. The engine process times it to choose its thread count
(`hirpf.serving_threads.engine_threads`); `benchmarks/bench_serving.py` divides the served throughput by it;
`benchmarks/bench_gpu.py` compares the experts' step with the plain model's.
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch
from transformers import DynamicCache

from hirpf.routing import Routing, use_identities

WARM_UP_STEPS = 3


def decode_step_seconds(cases: dict, batch: int = 8, context: int = 100, steps: int = 40,
                        threads: dict[str, int] | None = None) -> dict[str, float]:
    """Median seconds of one greedy decode step at `batch` rows over a `context`-token cache, per case
    (`{name: (model, Routing or None)}`). The cases take turns step by step, so that a machine's drift reaches
    all of them alike; each step starts again from the same prompt cache (a copy), so every step reads the
    same length. `threads`: torch's thread count for a case's steps (by name; the others run with the count
    set on entry, which is set again on return)."""
    entry_threads = torch.get_num_threads()
    try:
        return _timed_steps(cases, batch, context, steps, threads or {}, entry_threads)
    finally:
        torch.set_num_threads(entry_threads)


def _timed_steps(cases: dict, batch: int, context: int, steps: int, threads: dict[str, int],
                 entry_threads: int) -> dict[str, float]:
    prepared = {}
    for name, (model, routing) in cases.items():
        device = model.device
        ids = torch.randint(4, model.config.vocab_size, (batch, context), device=device,
                            generator=torch.Generator(device).manual_seed(0))
        with torch.no_grad(), _identities(routing):
            out = model(input_ids=ids, use_cache=True)
        prepared[name] = (model, routing, out.past_key_values, out.logits[:, -1:].argmax(-1))
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(WARM_UP_STEPS + steps):
        for name, (model, routing, prompt_cache, token) in prepared.items():
            torch.set_num_threads(threads.get(name, entry_threads))
            cache = DynamicCache(config=model.config)
            for layer, la in enumerate(prompt_cache.layers):
                cache.update(la.keys.clone(), la.values.clone(), layer)
            _synchronize(model.device)
            start = time.perf_counter()
            with torch.no_grad(), _identities(routing):
                model(input_ids=token, past_key_values=cache, use_cache=True)
            _synchronize(model.device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[WARM_UP_STEPS:]) for name, t in times.items()}


def _identities(routing: Routing | None):
    return use_identities(routing) if routing is not None else contextlib.nullcontext()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
