"""How many tokens of a joining prompt to prefill between two decode steps.

A long prompt joins the running batch a chunk at a time (chunked prefill, as vLLM does), and every chunk
delays the running rows' next token by the chunk's own time. A fixed chunk length cannot suit every machine:
on a GPU a 256-token chunk costs less than a decode step, on a 2-core CPU it costs several steps, and the
visitors already streaming see their reply stall. So the chunk is sized by time: a `step_share` of a decode
step's time, from what the recent steps and chunks took on this machine, with this batch. The cost of a
prefilled token grows with the prompt already in the cache (attention reads it), so the recent chunks' cost
per token, not a constant, is the estimate for the next. A row then waits for at most a step and
`step_share` of one between two tokens (issue 22's target: the running rows' p95 time between tokens while
a long prompt joins at most twice its steady value).

With no rows running there is no one to keep waiting: the chunk is the longest allowed (`longest`).
"""
from __future__ import annotations

# Weight of the newest measurement in the running averages: steps vary with the batch's width and the
# machine's load, and a few steps should be enough to follow a change.
SMOOTHING = 0.3
# A chunk too short to measure (or to be worth a forward pass of its own).
SHORTEST = 16


class PrefillPacer:
    """Sizes prefill chunks to `step_share` of a decode step's time, at most `longest` tokens; `step_share`
    0 gives fixed chunks of `longest` tokens."""

    def __init__(self, longest: int, step_share: float):
        if longest < 1:
            raise ValueError(f"the longest chunk must be at least 1 token, got {longest}")
        if not 0 <= step_share:
            raise ValueError(f"step_share must be 0 (fixed chunks) or more, got {step_share}")
        self.longest, self.step_share = longest, step_share
        self.step_seconds: float | None = None
        self.seconds_per_token: float | None = None

    def next_chunk(self, rows_running: bool) -> int:
        """Tokens for the next chunk."""
        if not rows_running or not self.step_share:
            return self.longest
        if self.step_seconds is None or self.seconds_per_token is None:
            return min(self.longest, SHORTEST)  # a short first chunk measures the cost of one
        budget = self.step_share * self.step_seconds / self.seconds_per_token
        return max(min(SHORTEST, self.longest), min(self.longest, round(budget)))

    def record_step(self, seconds: float) -> None:
        self.step_seconds = _average(self.step_seconds, seconds)

    def record_chunk(self, seconds: float, tokens: int) -> None:
        if tokens > 0:
            self.seconds_per_token = _average(self.seconds_per_token, seconds / tokens)


def _average(current: float | None, new: float) -> float:
    return new if current is None else (1 - SMOOTHING) * current + SMOOTHING * new
