"""Decoding settings and the chat message type, shared by the engine, the scheduler and its row sampler."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

Message = dict  # {"role": "user" | "assistant", "content": str}


@dataclass(frozen=True)
class Sampling:
    """Decoding settings, checked when made (the one place for every path: `Engine.generate`, the scheduler,
    the app, the CLI and the evaluations): a bad one raises a ValueError naming it. Frozen, so a checked
    value stays checked; `dataclasses.replace` makes a changed copy (checked again)."""

    max_new_tokens: int = 128
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    num_beams: int = 1
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be true or false, got {self.do_sample!r}")
        self._set("max_new_tokens", _whole(self.max_new_tokens, "max_new_tokens", minimum=1))
        self._set("top_k", _whole(self.top_k, "top_k (0: off)", minimum=0))
        self._set("num_beams", _whole(self.num_beams, "num_beams", minimum=1))
        if self.seed is not None:
            self._set("seed", _whole(self.seed, "seed", minimum=0))
        temperature = _number(self.temperature, "temperature")
        if temperature < 0 or (self.do_sample and temperature == 0):
            raise ValueError(f"temperature must be above 0 when sampling (greedy decoding is do_sample=False), "
                             f"got {self.temperature!r}")
        top_p = _number(self.top_p, "top_p")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        penalty = _number(self.repetition_penalty, "repetition_penalty")
        if not penalty > 0:
            raise ValueError(f"repetition_penalty must be above 0 (1: off), got {self.repetition_penalty!r}")
        self._set("temperature", temperature)
        self._set("top_p", top_p)
        self._set("repetition_penalty", penalty)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # normalising a field of a frozen instance, once, when made

    def generate_kwargs(self) -> dict:
        kwargs = asdict(self)
        kwargs.pop("seed")
        if not self.do_sample:
            for key in ("temperature", "top_p", "top_k"):
                kwargs.pop(key)
        return kwargs


def _number(value, name: str) -> float:
    """A finite real number (not a bool: `True` is not a setting anyone means), as a float; -0 becomes 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value) + 0.0


def _whole(value, name: str, minimum: int) -> int:
    """A whole number ≥ `minimum` (a float such as 3.0 is accepted as 3; a bool is refused)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != value // 1 or value < minimum):
        raise ValueError(f"{name} must be a whole number ≥ {minimum}, got {value!r}")
    return int(value)
