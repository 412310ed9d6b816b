"""Which dialogues an annotator gets next, and in which order: pure functions of the counts.

- Overlap: every item should get `overlap` annotators; an item never gets more than `cap` (default: the
  overlap), so least-annotated items go first and coverage stays even as annotators come and go.
- Shared items: a `shared_fraction` of the items goes to every annotator, whatever the cap, so that
  inter-annotator agreement has a common set to stand on.
- Order: a per-annotator seeded shuffle. Every choice comes from a hash of (seed, annotator, item), so it is
  stable across calls and processes and does not move when other items are added.
- Presentation side: the role-playing agent is shown as X or Y, also by that hash, so an annotator cannot
  learn "the agent is always Y".
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

from db.models import KINDS, SIDES


@dataclass(frozen=True)
class AssignmentPolicy:
    overlap: int = 1                 # annotators every item should get
    cap: int | None = None           # most annotators an item ever gets (shared items excepted); None: overlap
    shared_fraction: float = 0.0     # fraction of items every annotator gets
    batch: int = 20                  # tasks `Store.next_task` hands out when an annotator's queue runs dry
    seed: int = 0                    # one study, one seed: the orders and the shared set follow from it
    kinds: tuple[str, ...] = KINDS   # which kinds of dialogue to hand out

    def __post_init__(self):
        if self.overlap < 1:
            raise ValueError(f"overlap must be >= 1, got {self.overlap}")
        if self.cap is not None and self.cap < self.overlap:
            raise ValueError(f"cap ({self.cap}) must be >= overlap ({self.overlap})")
        if not 0.0 <= self.shared_fraction <= 1.0:
            raise ValueError(f"shared_fraction must be within [0, 1], got {self.shared_fraction}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be some of {KINDS}, got {self.kinds}")

    @property
    def limit(self) -> int:
        return self.overlap if self.cap is None else self.cap


def _hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def order_key(seed: int, annotator: str, item: str) -> int:
    """Where `item` falls in `annotator`'s seeded shuffle."""
    return _hash(seed, "order", annotator, item)


def side_for(seed: int, annotator: str, item: str) -> str:
    return SIDES[_hash(seed, "side", annotator, item) % 2]


def shared_items(policy: AssignmentPolicy, items: list[str] | set[str]) -> set[str]:
    """The round(fraction x N) items with the lowest seeded hash: every annotator gets these."""
    n = round(policy.shared_fraction * len(items))
    return set(sorted(items, key=lambda item: _hash(policy.seed, "shared", item))[:n])


def plan_assignment(policy: AssignmentPolicy, annotator: str, counts: Mapping[str, int], held: set[str],
                    count: int | None = None) -> list[tuple[str, str]]:
    """New tasks for `annotator`: (item, side) in presentation order.

    `counts`: every item -> how many annotators have it now; `held`: the items this annotator already has.
    Shared items they lack come first, then the least-annotated items below the cap (ties broken by the
    annotator's shuffle); up to `count` of them, then ordered by the annotator's shuffle."""
    shared = shared_items(policy, list(counts))
    mine = sorted((item for item in shared if item not in held),
                  key=lambda item: order_key(policy.seed, annotator, item))
    others = sorted((item for item, n in counts.items()
                     if item not in held and item not in shared and n < policy.limit),
                    key=lambda item: (counts[item], order_key(policy.seed, annotator, item)))
    chosen = (mine + others)[:count] if count is not None else mine + others
    chosen.sort(key=lambda item: order_key(policy.seed, annotator, item))
    return [(item, side_for(policy.seed, annotator, item)) for item in chosen]
