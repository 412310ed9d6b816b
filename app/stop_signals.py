"""Per-session stop flags for running generations.

A Stop click cancels the Gradio event, which drops work still queued; a generation already running sits
in a model thread that cancelling does not reach. Each running generation therefore registers a
`StopHandle` under its session, and Stop sets the handles of that session only: the model thread ends at
its next token (`hirpf.engine.StopOnEvent` watches `handle.event`).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class StopHandle:
    """`event` is what the model watches (the engine also sets it when a stream ends normally);
    `requested` says whether a person asked to stop."""

    def __init__(self):
        self.event = threading.Event()
        self.requested = False

    def stop(self) -> None:
        self.requested = True
        self.event.set()


class StopSignals:
    def __init__(self):
        self._handles: dict[str, set[StopHandle]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def armed(self, session: str | None) -> Iterator[StopHandle]:
        """A fresh handle for one generation of `session`, registered while the block runs."""
        handle = StopHandle()
        key = session or f"anonymous-{id(handle)}"  # no session: nobody can stop it but cancellation
        with self._lock:
            self._handles.setdefault(key, set()).add(handle)
        try:
            yield handle
        finally:
            with self._lock:
                handles = self._handles.get(key, set())
                handles.discard(handle)
                if not handles:
                    self._handles.pop(key, None)

    def stop(self, session: str | None) -> int:
        """Stop every running generation of `session`; returns how many there were."""
        with self._lock:
            handles = list(self._handles.get(session or "", ()))
        for handle in handles:
            handle.stop()
        return len(handles)

    def running(self, session: str | None) -> int:
        with self._lock:
            return len(self._handles.get(session or "", ()))
