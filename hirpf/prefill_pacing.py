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

import statistics
import time
from collections import deque

# Weight of the newest measurement in the running average of a prefilled token's cost: it varies with the
# prompt already in the cache, and a few chunks should be enough to follow a change.
SMOOTHING = 0.3
# A decode step's time is the median of the last this many at its width: a shared machine's step times have
# spikes (on the 2-core Xeon, steady 7-row steps of 130-170 ms, one in five 210-350 ms), and an average
# pulled up by them sized every chunk too long twice over: by a larger budget, and by a lower cost per token
# (a packed step's prompt tokens cost what it took beyond a plain step). Four steps follow a real change.
STEP_WINDOW = 7
# A width's step times stand for it only while they are this recent beside the newest step time of any width:
# a width seen rarely keeps old times (a batch one row short only between a leave and a join), and after 8
# visitors of the served app, whose web server shared the cores, 6-row steps were remembered at 0.23 s while
# 7-row ones took 0.09 s; a 1,500-token prompt's tokens then seemed free beside 6 rows (a packed step less its
# plain step) and it joined in chunks of 60-130 tokens, the running rows waiting 2.4-4.0 times their steady
# p95 between tokens. Relative to the newest, not to the clock: while a long prompt joins every step is packed
# and no plain step is timed, and its estimates must not age out.
STEP_MAX_AGE_S = 5.0
# A chunk too short to measure (or to be worth a forward pass of its own).
SHORTEST = 16
# A chunk riding in a decode step (`hirpf.packed_step`) costs no forward of its own, only its tokens'
# arithmetic, so it may be shorter, down to this, when a token costs that much: on the 2-core Xeon with two
# threads 16 prompt tokens beside 7 rows cost 0.5-0.7 of a 7-row step (the step itself 120-145 ms), and
# 16-token chunks held the running rows' p50 wait between tokens at twice its steady value for a share of 0.5.
PACKED_SHORTEST = 4


class PrefillPacer:
    """Sizes prefill chunks to `step_share` of a decode step's time, at most `longest` tokens; `step_share`
    0 gives fixed chunks of `longest` tokens. A decode step's time is kept per number of running rows (a
    batch of 8 takes longer than a batch of 1), and the nearest measured width stands in for an unmeasured one."""

    def __init__(self, longest: int, step_share: float, clock=time.monotonic):
        if longest < 1:
            raise ValueError(f"the longest chunk must be at least 1 token, got {longest}")
        if not 0 <= step_share:
            raise ValueError(f"step_share must be 0 (fixed chunks) or more, got {step_share}")
        self.longest, self.step_share, self.clock = longest, step_share, clock
        # (when, seconds) of the last STEP_WINDOW steps, by running rows
        self.step_times: dict[int, deque[tuple[float, float]]] = {}
        self.seconds_per_token: float | None = None
        self.last_chunk = 0  # the last chunk sized while rows ran (0: none yet)

    def step_seconds_at(self, rows: int) -> float | None:
        """A decode step's time at `rows` running rows: measured, or the nearest width measured recently
        (`STEP_MAX_AGE_S`); None before any."""
        if not self.step_times:
            return None
        newest = max(at for times in self.step_times.values() for at, _ in times)
        recent = {width: [seconds for at, seconds in times if newest - at <= STEP_MAX_AGE_S]
                  for width, times in self.step_times.items()}
        recent = {width: seconds for width, seconds in recent.items() if seconds}
        return statistics.median(recent[min(recent, key=lambda width: (abs(width - rows), -width))])

    def next_chunk(self, rows: int, packed: bool = False) -> int:
        """Tokens for the next chunk while `rows` rows run; `packed`: it rides in a decode step (it may then be
        as short as `PACKED_SHORTEST`, once the cost of a token is measured)."""
        if not rows or not self.step_share:
            return self.longest
        step = self.step_seconds_at(rows)
        if step is None or self.seconds_per_token is None:
            self.last_chunk = min(self.longest, SHORTEST)  # a short first chunk measures the cost of one
            return self.last_chunk
        budget = self.longest if self.seconds_per_token <= 0 else self.step_share * step / self.seconds_per_token
        # At most twice the last chunk: a cost measured low by chance (a difference of two noisy times, for a
        # packed step) must not send one huge chunk; a true low cost is reached in a few doublings.
        budget = min(budget, 2 * self.last_chunk) if self.last_chunk else budget
        shortest = PACKED_SHORTEST if packed else SHORTEST
        self.last_chunk = max(min(shortest, self.longest), min(self.longest, round(budget)))
        return self.last_chunk

    def record_step(self, seconds: float, rows: int) -> None:
        """A decode step of `rows` rows took `seconds`."""
        self.step_times.setdefault(rows, deque(maxlen=STEP_WINDOW)).append((self.clock(), seconds))

    def record_chunk(self, seconds: float, tokens: int) -> None:
        """A chunk prefilled in a forward of its own took `seconds`."""
        if tokens > 0:
            self.seconds_per_token = _average(self.seconds_per_token, seconds / tokens)

    def record_packed(self, seconds: float, rows: int, tokens: int) -> None:
        """A decode step of `rows` rows that carried `tokens` prompt tokens took `seconds`: what they added to a
        plain step of that width is their cost (`hirpf.packed_step`); before any plain step, the whole step."""
        if tokens > 0:
            added = seconds - (self.step_seconds_at(rows) or 0.0)
            self.seconds_per_token = _average(self.seconds_per_token, max(added, 0.0) / tokens)


def _average(current: float | None, new: float) -> float:
    return new if current is None else (1 - SMOOTHING) * current + SMOOTHING * new
