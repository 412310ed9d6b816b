"""Whole-number settings read from the environment (the scheduler's batch size, the prefix store's budget)."""
from __future__ import annotations

import os


def whole_number_setting(name: str, default: int, minimum: int, meaning_of_minimum: str = "") -> int:
    """The environment variable `name` as a whole number of at least `minimum`; `default` when unset or
    blank. A bad value raises ValueError naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}{meaning_of_minimum}, got {value}")
    return value


ENV_MAX_BATCH = "HIRPF_MAX_BATCH"
DEFAULT_MAX_BATCH = 8


def max_batch_setting() -> int:
    """`HIRPF_MAX_BATCH` (default 8): rows the scheduler decodes together; later requests wait in a queue.
    Here, not in `hirpf.scheduler`, because the app sizes its reply queue with it before torch is imported."""
    return whole_number_setting(ENV_MAX_BATCH, DEFAULT_MAX_BATCH, minimum=1)
