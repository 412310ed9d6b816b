"""The one model of the process, loaded once in a background thread so the page is up before it is.

`ModelSlot(load).start()` runs `load()` (imports torch and transformers, reads the weights) on a daemon
thread; model events call `get()`, which waits for it (and starts it if nobody has). `app.py` starts it once
the page is served: importing torch in one thread slows the page's imports in the other (one interpreter
lock). A failed load is kept and reported to every caller, so a broken model directory gives a clear
message in the page instead of a dead server.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why."""


class ModelSlot:
    def __init__(self, load: Callable[[], object], description: str = "model"):
        self._load = load
        self.description = description
        self._engine = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.seconds: float | None = None  # how long the load took

    @classmethod
    def ready(cls, engine, description: str = "model") -> "ModelSlot":
        """A slot holding an engine that is already loaded (tests, notebooks)."""
        slot = cls(lambda: engine, description)
        slot._engine = engine
        slot._done.set()
        return slot

    def start(self) -> "ModelSlot":
        """Begin loading (once; later calls do nothing)."""
        with self._lock:
            if self._thread is None and not self._done.is_set():
                self._thread = threading.Thread(target=self._run, name="hirpf-model-load", daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        began = time.perf_counter()
        try:
            self._engine = self._load()
        except BaseException as err:  # kept and re-raised, with its cause, to every caller of get()
            self._error = err
        finally:
            self.seconds = time.perf_counter() - began
            self._done.set()

    def get(self, timeout: float | None = None):
        """The engine, waiting for the load to finish (starting it if nobody has)."""
        self.start()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None):
        """The engine once the load has finished, without starting it: for work that should follow the load
        (a build to resume), not start it before the page is served."""
        if not self._done.wait(timeout):
            raise ModelLoadError(f"the {self.description} is still loading after {timeout:.0f} s")
        if self._error is not None:
            raise ModelLoadError(f"the {self.description} failed to load: {self._error}") from self._error
        return self._engine

    @property
    def finished(self) -> bool:
        """True once the load has ended, well or not."""
        return self._done.is_set()

    @property
    def failed(self) -> bool:
        return self._error is not None

    def status(self) -> str:
        """One line for people: loading, ready or failed."""
        if not self._done.is_set():
            return f"Loading the {self.description}… (the page works already; replies start once it is ready)"
        if self._error is not None:
            return f"The {self.description} failed to load: {self._error}"
        took = f" (loaded in {self.seconds:.1f} s)" if self.seconds is not None else ""
        return f"Model ready: {self.description}{took}.{_restarts(self._engine)}"


def _restarts(engine) -> str:
    """Said out loud when the engine's reply scheduler had to be restarted (its loop thread died)."""
    restarts = getattr(engine, "scheduler_restarts", 0)
    if not restarts:
        return ""
    times = "once" if restarts == 1 else f"{restarts} times"
    return f" The reply scheduler restarted {times} after a failure (last: {engine.scheduler_failure!r})."
