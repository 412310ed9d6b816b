"""ZeroGPU support: `gpu` is `spaces.GPU` when the `spaces` package is importable (Hugging Face Spaces),
otherwise a decorator that changes nothing. Put it on every function that runs the model.

ZeroGPU lends a GPU for at most `duration` seconds a call (its default, 60 s, is short for a debate or an
all-poles questionnaire): `HIRPF_GPU_DURATION` sets it (`hirpf.environment`). There the function runs in
a worker process: Stop cancels the event, but the generation's stop flag lives in the app's process, so a
cancelled generation may run on in the worker until its token limit (ZeroGPU is not tested here). Each
call's worker has its own copy of the model, so the engine's scheduler (one running batch shared by the
visitors) cannot live there: on ZeroGPU replies stream through `Engine.stream`, one call per worker
(`app.reply_serving`).
"""
from __future__ import annotations

from hirpf import environment

try:
    import spaces
except ImportError:  # not on Spaces: plain CPU or a dedicated GPU
    spaces = None

def on_zerogpu() -> bool:
    """True where `gpu` hands functions to ZeroGPU (the `spaces` package is importable)."""
    return spaces is not None


def gpu(fn):
    return spaces.GPU(duration=environment.HIRPF_GPU_DURATION)(fn) if on_zerogpu() else fn
