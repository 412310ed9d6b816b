"""Decoding settings and the chat message type, shared by the engine, the scheduler and its row sampler."""
from __future__ import annotations

from dataclasses import asdict, dataclass

Message = dict  # {"role": "user" | "assistant", "content": str}


@dataclass
class Sampling:
    """Decoding settings."""

    max_new_tokens: int = 128
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    num_beams: int = 1
    seed: int | None = None

    def generate_kwargs(self) -> dict:
        kwargs = asdict(self)
        kwargs.pop("seed")
        if not self.do_sample:
            for key in ("temperature", "top_p", "top_k"):
                kwargs.pop(key)
        return kwargs
