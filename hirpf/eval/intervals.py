"""The Wilson score interval of a proportion (Wilson 1927): the interval for an accuracy against chance in a
discrimination test, shared by the pair studies (`annotation.pair_scoring`) and `hirpf.eval.discriminate`::

    centre = (p + z²/2n) / (1 + z²/n)       half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)
"""
from __future__ import annotations

import math
from typing import NamedTuple

Z_95 = 1.959963984540054  # the 97.5th percentile of the standard normal


class Interval(NamedTuple):
    low: float
    high: float


def wilson_interval(successes: float, n: float, z: float = Z_95) -> Interval | None:
    """The Wilson score interval of `successes` out of `n` (fractional successes allowed: a tie is half);
    None when n is 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"expected 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(max(0.0, centre - half), min(1.0, centre + half))
