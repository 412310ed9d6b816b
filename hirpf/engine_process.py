"""The scheduler's loop in a process of its own, beside the app's process: vLLM's split of its engine core
from its API server, for the same reason.

A decode step is thousands of torch calls; each lets go of the interpreter lock while it runs and must take
it back after, and a thread of the same process with Python to run keeps the lock until it blocks or the
switch interval ends. So the web server's interpreter time comes out of the scheduler's loop thread's, on any
number of cores: at 8 visitors the served app's loop thread got 0.69-0.84 of a core beside the web server's
0.14-0.20, and a bare batch-8 decode step took 1.24 times as long beside a thread running a tenth of a core
of Python, 1.48 times beside a fifth (`benchmarks/bench_interpreter_lock.py`, docs/serving.md).

    app's process                                        engine process (`python -m hirpf.engine_process`)
    EngineProcess.submit: check, fit, tokenize    ──►    its own copy of the model and a `Scheduler`
      (in the caller's thread, errors raise there)       ForwardedStream: each token and each end, sent
    a receiver thread feeds each ReplyStream      ◄──      from the loop thread as it happens
    a caller's stop event, forwarded              ──►    sets that request's stop event there

The app's side keeps its own engine: it checks, fits and tokenizes each request before sending it (a bad
one fails in its caller's thread, as with the in-process scheduler), decodes the tokens into text in the
reader's thread, and serves everything that is not a streamed reply (Compare, questionnaires) itself. The
price is a second copy of the model in memory and its load at start. `Engine.scheduler()` starts one once
`Engine.serve_in_a_process()` said so (the app does, from `HIRPF_ENGINE_PROCESS`, where the model is on the
CPU and the engine knows how it was loaded: `Engine.load_again`); if the engine process dies, its requests
end with the error and the next `Engine.scheduler()` starts a fresh one, as for a dead loop thread.

The two processes talk over a socket pair (`multiprocessing.connection`); the engine process is started with
`subprocess`, not `multiprocessing`'s spawn, which would re-run the app's main module (app.py builds the
whole app at import) in the new process.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from typing import Callable, Sequence

import torch

from . import environment
from .paths import PROJECT_ROOT
from .prompts import Conditioning
from .reply_stream import FinishReason, ReplyStream
from .row_sampling import RowSampler
from .sampling import Message, Sampling
from .scheduler import PreparedRequest, SchedulerClosed, prepared_request

log = logging.getLogger(__name__)
# What the app's side may ask of the engine process's scheduler beside requests (its methods of these names).
CALLS = frozenset({"prefix_counters", "clear_prefixes"})
STOP_POLL_S = 0.05  # how often the app's side looks for callers' stop events to forward
_LIVE: "weakref.WeakSet[EngineProcess]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for process in list(_LIVE):
        process.close(timeout=5.0)


class EngineProcessError(RuntimeError):
    """The engine process failed: its model did not load, or it died."""


class EngineProcess:
    """A `ReplySource` whose running batch lives in a process of its own (see the module's docstring);
    `submit` and `stream` have the `Scheduler`'s signatures and return `ReplyStream`s."""

    def __init__(self, engine, load: Callable[[], object]):
        """`engine`: this process's engine (it prepares requests and decodes their tokens); `load`:
        a picklable callable that loads the same model in the engine process (`Engine.load_again`)."""
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.max_batch = environment.HIRPF_MAX_BATCH  # the engine process's scheduler reads the same setting
        self.failure: BaseException | None = None
        self.threads = None  # its torch threads and why (`hirpf.serving_threads.ThreadChoice`), once it serves
        self._closed = False
        self._streams: dict[int, ReplyStream] = {}  # by request id, until they end
        self._stops_sent: set[int] = set()
        self._calls: dict[int, dict] = {}  # by call id: each waiting caller's answer, when it comes
        self._ids = itertools.count()
        self._send_lock, self._lock = threading.Lock(), threading.Lock()
        ours, theirs = socket.socketpair()
        # Started in the project's root, whatever the app's working directory, so that `-m` finds the package
        # (and `load` the project's modules); it moves to the app's working directory before loading.
        self._process = subprocess.Popen([sys.executable, "-m", "hirpf.engine_process", str(theirs.fileno()),
                                          os.getcwd()], pass_fds=[theirs.fileno()], cwd=PROJECT_ROOT)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._send(("load", load))
        self._receiver = threading.Thread(target=self._receive, name="hirpf-engine-process", daemon=True)
        self._receiver.start()
        _LIVE.add(self)

    # --- requests --------------------------------------------------------------------------------
    def submit(self, history: Sequence[Message], identities, conditioning=Conditioning.EXPERTS_AND_PROMPT,
               sampling: Sampling | None = None, stop_event: threading.Event | None = None) -> ReplyStream:
        """As `Scheduler.submit`: checked, fitted and tokenized here, decoded there; returns the reply's stream
        at once."""
        request = prepared_request(self.engine, history, identities, conditioning, sampling, stop_event, "cpu")
        stream = ReplyStream(self.tokenizer, stop_event or threading.Event())
        stream.left_out = request.left_out
        with self._lock:
            if self.closed or self._streams is None:
                raise self._refusal()
            request_id = next(self._ids)
            self._streams[request_id] = stream
        try:
            # Prepared here: the engine process's threads only decode (its receiver would otherwise fit and
            # tokenize each prompt again, holding the interpreter lock its loop thread needs).
            # The token ids as a list: `Connection.send` would pass a tensor through torch's shared-memory
            # sharing, which needs the two processes to be `multiprocessing`'s own.
            self._send(("submit", request_id, request.prompt[0].tolist(), request.experts, request.sampling))
        except OSError:  # the engine process is gone; the receiver ends the stream, if it has not already
            with self._lock:
                if self._streams is not None:
                    self._streams.pop(request_id, None)
            raise self._refusal() from None
        return stream

    def stream(self, history: Sequence[Message], identities, conditioning=Conditioning.EXPERTS_AND_PROMPT,
               sampling: Sampling | None = None, stop_event: threading.Event | None = None) -> ReplyStream:
        """`Engine.stream`'s signature, served by the engine process's running batch."""
        return self.submit(history, identities, conditioning, sampling, stop_event)

    def _refusal(self) -> SchedulerClosed:
        return SchedulerClosed("the engine process is closed" if self.failure is None else
                               f"the engine process failed ({self.failure}); Engine.scheduler() starts a new one")

    def prefix_counters(self) -> tuple[int, int, int]:
        """The engine process's prefix store: hits, misses and reused tokens so far (for benchmarks)."""
        return tuple(self._call("prefix_counters"))

    def clear_prefixes(self) -> None:
        self._call("clear_prefixes")

    def _call(self, name: str, timeout: float = 60.0):
        """Ask the engine process's scheduler for one of `CALLS`; its answer (or its error, raised here)."""
        answer: dict = {"done": threading.Event()}
        with self._lock:
            if self.closed or self._streams is None:
                raise self._refusal()
            call_id = next(self._ids)
            self._calls[call_id] = answer
        self._send(("call", call_id, name))
        if not answer["done"].wait(timeout):
            raise TimeoutError(f"the engine process did not answer {name} within {timeout} s")
        if "error" in answer:
            raise answer["error"]
        return answer["value"]

    @property
    def closed(self) -> bool:
        """True once it serves no more: closed, failed, or its process ended."""
        return self._closed or self.failure is not None or self._process.poll() is not None

    def close(self, timeout: float | None = 10.0) -> None:
        """End the engine process; unfinished requests end with `SchedulerClosed`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._send(("close",))
        except OSError:
            pass  # already gone
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._receiver.join(timeout)
        self._end_all(SchedulerClosed("the engine process was closed"))

    # --- the receiver thread -----------------------------------------------------------------------
    def _receive(self) -> None:
        """Feed each request's stream from the engine process's messages, and forward callers' stops."""
        try:
            while True:
                if self._conn.poll(STOP_POLL_S):
                    self._handle(self._conn.recv())
                self._forward_stops()
        except (EOFError, OSError):  # the engine process ended
            if not self._closed:
                self.failure = self.failure or EngineProcessError(
                    f"the engine process ended (exit code {self._process.wait()})")
        except BaseException as err:
            log.exception("the engine process's receiver died")
            self.failure = err
        finally:
            self._end_all(self.failure or SchedulerClosed("the engine process was closed"))

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        with self._lock:
            streams = self._streams
        if kind == "token" and streams is not None:
            _, request_id, token = message
            streams[request_id]._push(token)
        elif kind == "end" and streams is not None:
            _, request_id, reason, error = message
            with self._lock:
                stream = streams.pop(request_id)
                self._stops_sent.discard(request_id)
            stream._finish(FinishReason(reason), error)
        elif kind == "answer":
            _, call_id, key, value = message
            with self._lock:
                answer = self._calls.pop(call_id)
            answer[key] = value
            answer["done"].set()
        elif kind == "failed":  # the model did not load; the process ends
            self.failure = EngineProcessError(f"the engine process could not load the model: {message[1]}")
        elif kind == "ready":
            self.threads = message[1]
            log.info("the engine process is serving (pid %d)", self._process.pid)

    def _forward_stops(self) -> None:
        with self._lock:
            stopped = [i for i, s in (self._streams or {}).items()
                       if s.stop_event.is_set() and i not in self._stops_sent]
            self._stops_sent.update(stopped)
        for request_id in stopped:
            self._send(("stop", request_id))

    def _end_all(self, error: BaseException) -> None:
        """End every request still open (when the receiver stops, or at `close`); from then on `_streams` is
        None and `submit` refuses."""
        with self._lock:
            streams, self._streams = list((self._streams or {}).values()), None
            calls, self._calls = list(self._calls.values()), {}
        for stream in streams:
            if not stream.done:
                stream._finish(FinishReason.ERROR, error)
        for answer in calls:
            answer["error"] = error
            answer["done"].set()

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._conn.send(message)


class ForwardedStream(ReplyStream):
    """The engine process's side of a request: each token and the end go to the app's process, from the loop
    thread as they happen (a few microseconds each), rather than from a thread per reader."""

    def __init__(self, tokenizer, stop_event: threading.Event, request_id: int, send: Callable[[tuple], None],
                 ended: Callable[[int], None]):
        super().__init__(tokenizer, stop_event)
        self.request_id, self._send, self._ended = request_id, send, ended

    def _push(self, token: int) -> None:
        self._send(("token", self.request_id, token))

    def _finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        super()._finish(reason, error)
        self._ended(self.request_id)
        self._send(("end", self.request_id, reason.value, _picklable(error)))


def _picklable(error: BaseException | None) -> BaseException | None:
    """`error` if it survives pickling, else a RuntimeError that says what it was."""
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def serve(conn: Connection) -> int:
    """The engine process: load the model as told, then serve requests until the app's side closes or goes."""
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            conn.send(message)

    from .scheduler import Scheduler
    from .serving_threads import engine_threads, release_thread_team, use_serving_threads

    _, load = conn.recv()
    use_serving_threads()
    try:
        engine = load()
        threads = engine_threads(engine.model) if engine.model.device.type == "cpu" else None
    except Exception as err:
        log.exception("the engine process could not load its model")
        send(("failed", f"{type(err).__name__}: {err}"))
        return 1
    if threads is not None:
        torch.set_num_threads(threads.threads)
        log.info("the engine process runs the model on %d thread(s): %s", *threads)
    # From here on only the loop thread runs the model: the main thread's OpenMP team (the load, the timing)
    # would make the process hold more OpenMP threads than cores (`hirpf.serving_threads`).
    release_thread_team()
    scheduler = Scheduler(engine)
    stops: dict[int, threading.Event] = {}
    send(("ready", threads))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the app's process is gone
                break
            if message[0] == "submit":
                _, request_id, prompt, experts, sampling = message
                stop = stops[request_id] = threading.Event()
                stream = ForwardedStream(engine.tokenizer, stop, request_id, send, ended=lambda i: stops.pop(i, None))
                try:
                    device = scheduler.runner.device
                    sampler = RowSampler(sampling, device=device)  # its own generator, on this side's device
                    ids = torch.tensor([prompt], dtype=torch.long, device=device)
                    scheduler.enqueue(PreparedRequest(ids, experts, sampling, sampler, 0), stream)
                except Exception as err:  # checked on the app's side already; said all the same
                    stream._finish(FinishReason.ERROR, err)
            elif message[0] == "call":
                _, call_id, name = message
                try:
                    if name not in CALLS:
                        raise ValueError(f"the engine process answers {sorted(CALLS)}, not {name!r}")
                    send(("answer", call_id, "value", getattr(scheduler, name)()))
                except Exception as err:
                    send(("answer", call_id, "error", _picklable(err)))
            elif message[0] == "stop":
                event = stops.get(message[1])
                if event is not None:
                    event.set()
            elif message[0] == "close":
                break
    finally:
        scheduler.close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine process %(levelname)s %(message)s")
    sys.path.insert(0, str(PROJECT_ROOT))  # absolute: it stays right after the move below
    os.chdir(sys.argv[2])  # the app's working directory: relative paths in `load` mean what they meant there
    sys.exit(serve(Connection(int(sys.argv[1]))))
