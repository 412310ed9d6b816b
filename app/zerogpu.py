"""ZeroGPU support: `gpu` is `spaces.GPU` when the `spaces` package is importable (Hugging Face Spaces),
otherwise a decorator that changes nothing. Put it on every function that runs the model."""
from __future__ import annotations

try:
    import spaces
except ImportError:  # not on Spaces: plain CPU or a dedicated GPU
    spaces = None


def gpu(fn):
    return spaces.GPU(fn) if spaces is not None else fn
