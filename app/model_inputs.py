"""Reading the model settings a tab's controls send (conditioning, sampling), strictly: a hand-made API call
with a bad value gets a `gr.Error` naming it. Shared by the model tabs."""
from __future__ import annotations

import gradio as gr

from hirpf.engine import Sampling
from hirpf.prompts import Conditioning

MAX_NEW_TOKENS = 512


def read_conditioning(value) -> Conditioning:
    try:
        return Conditioning.parse(value)
    except ValueError as err:
        raise gr.Error(str(err), title="Conditioning", print_exception=False) from None


def read_sampling(max_new_tokens, temperature, top_p, seed) -> Sampling:
    """Sampling settings from the panel; temperature 0 means greedy decoding, seed 0 (or none) a random one."""
    problems = []
    if max_new_tokens is None or not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        problems.append(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens!r}")
    if temperature is None or not 0 <= float(temperature) <= 2:
        problems.append(f"temperature must be between 0 and 2, got {temperature!r}")
    if top_p is None or not 0 < float(top_p) <= 1:
        problems.append(f"top-p must be in (0, 1], got {top_p!r}")
    if seed is not None and (int(seed) != seed or seed < 0):
        problems.append(f"seed must be a whole number ≥ 0 (0 for random), got {seed!r}")
    if problems:
        raise gr.Error("; ".join(problems), title="Sampling settings", print_exception=False)
    return Sampling(max_new_tokens=int(max_new_tokens), do_sample=float(temperature) > 0,
                    temperature=float(temperature) or 1.0, top_p=float(top_p),
                    seed=int(seed) if seed else None)
