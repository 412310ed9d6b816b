"""Reading the model settings a tab's controls send (conditioning, sampling), strictly: a hand-made API call
with a bad value gets a `gr.Error` naming it. Shared by the model tabs."""
from __future__ import annotations

import gradio as gr

from hirpf.prompts import Conditioning
from hirpf.sampling import Sampling

MAX_NEW_TOKENS = 512


def read_conditioning(value) -> Conditioning:
    try:
        return Conditioning.parse(value)
    except ValueError as err:
        raise gr.Error(str(err), title="Conditioning", print_exception=False) from None


def read_sampling(max_new_tokens, temperature, top_p, seed) -> Sampling:
    """Sampling settings from the panel; temperature 0 means greedy decoding, seed 0 (or none) a random one.
    The panel's own bounds (at most `MAX_NEW_TOKENS` tokens, temperature at most 2) are checked here; what
    any setting must be, by `Sampling` itself."""
    problems = []
    if isinstance(max_new_tokens, (int, float)) and max_new_tokens > MAX_NEW_TOKENS:
        problems.append(f"max new tokens must be at most {MAX_NEW_TOKENS}, got {max_new_tokens!r}")
    if isinstance(temperature, (int, float)) and temperature > 2:
        problems.append(f"temperature must be at most 2, got {temperature!r}")
    if problems:
        raise gr.Error("; ".join(problems), title="Sampling settings", print_exception=False)
    greedy = temperature == 0
    try:
        return Sampling(max_new_tokens=max_new_tokens, do_sample=not greedy,
                        temperature=1.0 if greedy else temperature, top_p=top_p, seed=seed or None)
    except ValueError as err:
        raise gr.Error(str(err), title="Sampling settings", print_exception=False) from None
