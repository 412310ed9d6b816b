"""Failed secret attempts per key: exponential backoff, then a lockout.

After a key's k-th failure in a row it must wait `base_delay_s · 2^(k-1)` seconds (at most `max_delay_s`)
before its next attempt is even checked; after `lockout_after` failures within `lockout_s` it is locked out
for `lockout_s` (failures older than that are forgotten). `succeeded` clears a record: call it only for a
key that the success vouches for (the name signed in, never an address that other names share). Refusals
are answered at once, without sleeping, so a guesser ties up no worker and never delays anybody else (the
real admin included). Times come from `clock`, which tests replace.

A key is what attempts are counted against: a client's address, or the account a secret is tried for
(`subject` in the message says which). A client is its address as the server sees it
(`request.client.host`): uvicorn takes it from `X-Forwarded-For` only when the request comes from a trusted
proxy (by default 127.0.0.1; see uvicorn's `FORWARDED_ALLOW_IPS`).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable


class Throttled(Exception):
    """The client must wait; `message` says how long."""

    def __init__(self, wait_s: float, locked_out: bool, subject: str = "from your address"):
        self.wait_s, self.locked_out = wait_s, locked_out
        wait = f"{math.ceil(wait_s)} s" if wait_s < 120 else f"{math.ceil(wait_s / 60)} minutes"
        super().__init__(f"Too many failed attempts {subject}: locked out; try again in {wait}."
                         if locked_out else f"Too many failed attempts {subject}: wait {wait} before the next one.")


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0


class Throttle:
    def __init__(self, *, base_delay_s: float = 1.0, max_delay_s: float = 60.0, lockout_after: int = 10,
                 lockout_s: float = 900.0, clock: Callable[[], float] = time.monotonic):
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.lockout_after, self.lockout_s = lockout_after, lockout_s
        self.clock = clock
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def _delay(self, failures: int) -> float:
        if failures >= self.lockout_after:
            return self.lockout_s
        return 0.0 if failures == 0 else min(self.base_delay_s * 2 ** (failures - 1), self.max_delay_s)

    def wait_s(self, client: str) -> float:
        """Seconds before `client` may try again (0: now)."""
        with self._lock:
            record = self._records.get(client)
            if record is None:
                return 0.0
            return max(0.0, record.last_failure + self._delay(record.failures) - self.clock())

    def check(self, client: str, subject: str = "from your address") -> None:
        """Raises Throttled when `client` must wait; call before looking at the secret. `subject`: what the
        key is, for the message."""
        wait = self.wait_s(client)
        if wait > 0:
            with self._lock:
                record = self._records.get(client)
                locked = record is not None and record.failures >= self.lockout_after
            raise Throttled(wait, locked, subject)

    def failed(self, client: str) -> int:
        """Record a failure; returns the attempts left before a lockout."""
        now = self.clock()
        with self._lock:
            record = self._records.setdefault(client, _Record())
            # A lockout served, or the last failure older than the window: start over.
            if record.failures >= self.lockout_after or now - record.last_failure > self.lockout_s:
                record.failures = 0
            record.failures += 1
            record.last_failure = now
            self._forget_idle(now)
            return max(0, self.lockout_after - record.failures)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._records.pop(client, None)

    def _forget_idle(self, now: float) -> None:
        # Records whose wait is long over say nothing more than no record: keep memory bounded.
        idle = [c for c, r in self._records.items() if now - r.last_failure > max(self.lockout_s, self.max_delay_s)]
        for client in idle:
            del self._records[client]


def client_of(request) -> str:
    """The throttling key of a `gr.Request` (its address), "unknown" without one."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "unknown"
