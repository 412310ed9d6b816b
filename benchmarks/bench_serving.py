"""Serving concurrent clients: the scheduler's running batch against a serial queue, in one run.

    python benchmarks/bench_serving.py [--json] [--clients 1,2,4,8] [--window 40] [--max_new_tokens 64]
                                       [--threads N] [--spread 1.0] [--no_gradio] [--quick]

The embedded model with the shipped experts (float32, CPU). Each client has its own identity set and asks
short questions, one after another (a new request as soon as its reply ends: a closed loop). Two ways to
serve them, with the same clients, arrivals, prompts and seeds:

- `serial`: one request at a time through `Engine.stream`, the others waiting first come first served (a
  queue; the app before the scheduler);
- `scheduler`: `engine.scheduler()`: every request joins the running batch (`HIRPF_MAX_BATCH`, default 8),
  which runs, as in the app, in a process of its own (`hirpf.engine_process`) unless `HIRPF_ENGINE_PROCESS=0`.

and the same two through the served app (`app.build.build_app` on loopback, in this process), each client a
`gradio_client.Client` in a process of its own (`gradio_visitor.py`, as a visitor's browser is: in this process
the clients would take the server's interpreter lock) calling `/chat` (and `/clear` before each request, so
every prompt is one question, as above): `gradio_serial` (the app built with `scheduler=False`,
`HIRPF_SCHEDULER=0`: replies wait in the model queue of one) and `gradio_scheduler` (the app as it ships).

Clients arrive spread over one lone request's duration (client i starts at i/n of it; `--spread`), as
visitors do, not all in the same instant. What is measured is the steady state with n clients: the
`--window` seconds that follow the last arrival, during which every client always has a request open. (A
fixed number of requests per client would also time the arrival ramp and the drain at the end, when the
clients that drew short replies have gone and fewer than n remain: the batch is then part empty whatever
the scheduler does.) Reported per configuration: aggregate tokens/s (the tokens generated in the window ÷
its length), time to first token p50/p95 of the requests sent in the window (from sending, queue wait
included, to the first text received) and, apart, the p95 of those sent during the arrival ramp,
per-client tokens/s (mean and slowest), the mean length of the replies that ended. Tokens are counted by
re-tokenizing each reply's text, the same way for every path. The scheduler reuses earlier prompts' keys
and values (`hirpf.prefix_cache`); every run starts with its store empty, so each client's first request
is prefilled in full and its later ones find their identity prompt; the hits, misses and reused tokens
are reported per run.

`HIRPF_DECODE_DTYPE` (default `auto`: `hirpf.fast_inference.choose_decode_dtype`) sets the batch-decoding
copies of both paths; the document gives the setting, what it resolved to (`decode_dtype`) and
`torch.backends.cpu.get_cpu_capability()` (`cpu_capability`).

Torch runs with the app's thread counts unless `--threads` says otherwise (`hirpf.serving_threads`): this
process one fewer than the cores, the engine process as it chooses at its load (`engine_process_threads`).
Measured in the same run besides: the model's own batch-8 decode throughput, a bare `model(...)` step over a
100-token cache (`hirpf/decode_timing.py`), with the experts and the 8 clients' identity sets and without
experts, in a process of its own that does nothing else (as the served batch runs in the engine process) with
every thread count from 1 to the cores, the best count's figures kept; measured just before and just after the
scheduler's window at the most clients, and `serving_efficiency_8` divides by their mean (`model_decode_8`:
the mean, `before` and `after`; this machine's speed drifts by a fifth within minutes, and a reference taken
minutes earlier moved the ratio with it); and the join case (`--join_tokens`, default 1500): while a prompt of
that many tokens joins a running batch of 7 kept full (each running client asks again when its reply ends),
the running rows' time between text updates, steady, during the join (to the joiner's first token) and in the
three steps after it (`--join_only N`: only this case, N times in one engine, a JSON line each).

Top level: `speedup_8` (scheduler ÷ serial aggregate tokens/s at 8 clients), `ttft_p95_ratio_8` (the
scheduler's p95 time to first token at 8 clients ÷ its p50 with one client, a lone request),
`gradio_speedup_8` (the same speedup through the served app with `gradio_client`: `gradio_scheduler` ÷
`gradio_serial`; null with `--no_gradio`). Targets: speedup_8 >= 3.5, ttft_p95_ratio_8 <= 3,
gradio_speedup_8 >= 3; `serving_efficiency_8` (the scheduler's aggregate tokens/s at 8 clients ÷ the
experts' bare batch-8 throughput) >= 0.75; `join_itl_p95_ratio` (the running rows' p95 time between updates
during the join ÷ the steady p95) <= 2; `after_join_itl_p95_ratio` (the same in the three steps after the
join, the long row in the batch; reported, no target).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from hirpf import environment  # noqa: E402
from hirpf.base_model import load_base_model  # noqa: E402
from hirpf.decode_timing import decode_step_seconds  # noqa: E402
from hirpf.engine import Engine, Sampling  # noqa: E402
from hirpf.fast_inference import decode_dtype_in_use, fold_reach_in_use  # noqa: E402
from hirpf.identities import PROFESSIONS, IdentitySet  # noqa: E402
from hirpf.prompts import Conditioning, expert_identities  # noqa: E402
from hirpf.routing import Routing  # noqa: E402
from hirpf.serving_threads import available_cores, serving_threads  # noqa: E402

CLIENT_SETS = [IdentitySet.parse(s) for s in (
    "AGR_high", "AGR_low,Doctor", "CON_high,EXT_low,Artist", "NEU_high,OPE_low", "Programmer",
    "AGR_high,CON_low,EXT_high,NEU_low,OPE_high,Doctor", "EXT_high,Artist", "OPE_high,NEU_low,Programmer")]
QUESTIONS = ["What do you do on a Sunday?", "Tell me about your work.", "What is your favourite food?",
             "How do you deal with stress?", "Describe your home town.", "What makes a good friend?",
             "What did you learn this year?", "Do you like to travel?"]


def percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile of `values`, interpolated; None for no values (e.g. no request sent in a window)."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


class SerialQueue:
    """The app before the scheduler: one generation at a time; the others wait their turn, first come first
    served, as in Gradio's queue. (A plain lock is not fair: the client that just released it, already
    running, takes it again before the waiting ones wake.)"""

    def __init__(self, engine: Engine):
        self.engine, self.turns = engine, threading.Condition()
        self.tickets = self.serving = 0

    def client(self):
        return self.stream

    def stream(self, history, identities, sampling):
        with self.turns:
            ticket, self.tickets = self.tickets, self.tickets + 1
            self.turns.wait_for(lambda: self.serving == ticket)
        try:
            yield from self.engine.stream(history, identities, sampling=sampling)
        finally:
            with self.turns:
                self.serving += 1
                self.turns.notify_all()


class SchedulerPath:
    def __init__(self, engine: Engine):
        self.scheduler = engine.scheduler()

    def client(self):
        return self.stream

    def stream(self, history, identities, sampling):
        return self.scheduler.stream(history, identities, sampling=sampling)


class ServedApp:
    """The app around `engine`, served on loopback; each client is a `gradio_client.Client` of its own (its
    own session, as a visitor's browser) calling `/chat`, in a process of its own (`gradio_visitor.py`): in
    this process the eight clients' HTTP and stream parsing would take the server's interpreter lock, which
    no visitor's browser does."""

    def __init__(self, engine: Engine, scheduler: bool):
        from app.build import build_app
        from app.launching import launch

        self.data_dir = tempfile.TemporaryDirectory(prefix="hirpf-bench-app-")
        self.demo = build_app(engine, data_dir=self.data_dir.name, scheduler=scheduler)
        _, self.url, _ = launch(self.demo, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
        self.visitors: list[subprocess.Popen] = []

    def client(self):
        visitor = subprocess.Popen([sys.executable, str(Path(__file__).with_name("gradio_visitor.py")), self.url],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.visitors.append(visitor)
        if json.loads(visitor.stdout.readline()) != {"ready": True}:
            raise RuntimeError("a visitor process did not connect")

        def stream(history, identities, sampling):
            request = {"message": history[-1]["content"],
                       "traits": [n for n in identities.names if n not in PROFESSIONS],
                       "profession": [n for n in identities.names if n in PROFESSIONS],
                       "max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                       "top_p": sampling.top_p, "seed": sampling.seed}
            visitor.stdin.write(json.dumps(request) + "\n")
            ended = False
            try:
                for line in visitor.stdout:
                    update = json.loads(line)
                    if update.get("end"):
                        ended = True
                        break
                    yield update["text"]
            finally:
                # a reply the visitor stopped reading ends on the server too (no-op when done)
                visitor.stdin.write("done\n" if ended else "cancel\n")
                while not ended and not json.loads(visitor.stdout.readline()).get("end"):
                    pass

        return stream

    def close(self) -> None:
        for visitor in self.visitors:
            visitor.stdin.close()
            visitor.wait(timeout=30)
        with contextlib.redirect_stdout(sys.stderr):  # Gradio prints "Closing server ...": --json owns stdout
            self.demo.blocks.close()
        self.data_dir.cleanup()


def one_request(path, max_new_tokens: int) -> float:
    """Seconds for one whole request through `path`, alone (a warm-up, and the arrival spread's unit)."""
    start = time.perf_counter()
    for _ in path.client()([{"role": "user", "content": QUESTIONS[0]}], CLIENT_SETS[0],
                           Sampling(max_new_tokens=max_new_tokens, seed=1)):
        pass
    return time.perf_counter() - start


def run_clients(path, engine: Engine, clients: int, max_new_tokens: int, spread_s: float, window_s: float) -> dict:
    """`clients` threads, each sending requests back to back through `path` (a closed loop: a visitor asks
    again as soon as a reply ends). Client i arrives at `spread_s * i / clients`; the measured window is the
    `window_s` seconds after `spread_s`, once every client has arrived, so that `clients` requests are open
    all through it. At the window's end every client stops reading (its open request is cancelled).

    Counted in the window: the tokens of every reply's text as it stood at the window's end, less what it
    held at its start (each reply's text is re-tokenized, the same way for every path); the time to first
    token of the requests sent inside it (from sending, queue wait included, to the first text received,
    which for a request still waiting at the window's end comes after it).
    Requests sent during the arrival ramp are reported apart (`ramp_ttft_p95_s`): they meet a batch that
    is still filling and each brings a whole prompt. Every run starts with an empty prefix store, so each
    client's first request is prefilled in full and its later ones find their identity prompt."""
    scheduler = engine.scheduler()  # the one scheduler: the Python API's and the served app's
    scheduler.clear_prefixes()
    before = scheduler.prefix_counters()
    requests: list[dict] = []
    lock = threading.Lock()
    streams = [path.client() for _ in range(clients)]  # connected before the clock starts
    start = time.perf_counter()
    window_start, window_end = spread_s, spread_s + window_s

    def client(i: int):
        time.sleep(spread_s * i / clients)
        j = 0
        while time.perf_counter() - start < window_end:
            history = [{"role": "user", "content": QUESTIONS[(i + j) % len(QUESTIONS)]}]
            # Seeds from 1: the app reads seed 0 as "a random one".
            sampling = Sampling(max_new_tokens=max_new_tokens, seed=1 + 1000 * i + j)
            sent = time.perf_counter() - start
            events = []  # (seconds since start, the reply's text then)
            reply = streams[i](history, CLIENT_SETS[i % len(CLIENT_SETS)], sampling)
            try:
                for text in reply:
                    events.append((time.perf_counter() - start, text))
                    if events[-1][0] >= window_end:
                        break
            finally:
                reply.close()  # a request still open at the window's end is cancelled
            with lock:
                requests.append({"client": i, "sent": sent, "events": events, "ended": time.perf_counter() - start})
            j += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def tokens_at(events, moment: float) -> int:
        held = [text for at, text in events if at <= moment]
        return len(engine.tokenizer(held[-1], add_special_tokens=False)["input_ids"]) if held else 0

    counted = [tokens_at(r["events"], window_end) - tokens_at(r["events"], window_start) for r in requests]
    per_client = [sum(n for r, n in zip(requests, counted) if r["client"] == i) / window_s for i in range(clients)]
    # A reply that ended before any text (an end-of-sequence first) counts from sending to its end.
    ttft = [next((at for at, text in r["events"] if text), r["ended"]) - r["sent"] for r in requests]
    in_window = [t for r, t in zip(requests, ttft) if window_start <= r["sent"] < window_end]
    ramp = [t for r, t in zip(requests, ttft) if r["sent"] < window_start]
    ended = [r for r in requests if r["events"] and r["events"][-1][0] < window_end]
    return {
        "clients": clients, "window_s": window_s, "tokens": sum(counted),
        "aggregate_tokens_per_s": round(sum(counted) / window_s, 2),
        "requests_in_window": len(in_window),
        "ttft_p50_s": rounded(percentile(in_window, 0.5)), "ttft_p95_s": rounded(percentile(in_window, 0.95)),
        "ramp_ttft_p95_s": rounded(percentile(ramp, 0.95)),
        "per_client_tokens_per_s_mean": round(statistics.mean(per_client), 2),
        "per_client_tokens_per_s_min": round(min(per_client), 2),
        "mean_reply_tokens": round(statistics.mean(tokens_at(r["events"], float("inf")) for r in ended), 1)
        if ended else None,
        "prefix_hits_misses_reused_tokens": [now - then for now, then in zip(
            engine.scheduler().prefix_counters(), before)],
    }


class ModelDecodeReference:
    """The model's own batch-8 decode throughput, no serving code around it: a bare `model(...)` step over a
    100-token cache, with the experts and the 8 clients' identity sets (one per row), and without experts
    (the base model, loaded beside). The two take turns step by step (`hirpf/decode_timing.py`), in the main thread
    of a process of its own that does nothing else (this script again, `--reference_steps`), as the served
    batch runs in the engine process: not in this process, which holds the served apps' web servers, the
    clients' connections and the thread teams of every path measured. Every torch thread count from 1 to
    the cores is tried; the best count's figures are the model's own (`threads`), so that serving with
    fewer threads is not compared with a slowed model."""

    def __init__(self, steps: int):
        self.steps = steps

    def measure(self) -> dict:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--reference_steps", str(self.steps)],
                              capture_output=True, text=True, timeout=900)
        if done.returncode:
            raise RuntimeError(f"the decode reference failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout)


def reference_in_this_process(steps: int) -> dict:
    """`ModelDecodeReference`'s measurement, run in the process it starts."""
    engine = Engine.load("embedded", load_in_8bit=False, dtype="float32")  # with the shipped experts
    bare, _ = load_base_model("embedded", load_in_8bit=False, dtype="float32")
    rows = Routing([expert_identities(s, Conditioning.EXPERTS_AND_PROMPT) for s in CLIENT_SETS])
    by_threads = {}
    for threads in range(1, available_cores() + 1):
        torch.set_num_threads(threads)
        cases = {"experts_mixed_8": (engine.model, rows), "base": (bare, None)}
        seconds = decode_step_seconds(cases, batch=len(CLIENT_SETS), context=100, steps=steps)
        by_threads[threads] = {f"{name}_tokens_per_s": round(len(CLIENT_SETS) / s, 2) for name, s in seconds.items()}
    best = max(by_threads, key=lambda t: by_threads[t]["experts_mixed_8_tokens_per_s"])
    return {**by_threads[best], "threads": best, "by_threads": by_threads}


def bracketed(before: dict, after: dict) -> dict:
    """The reference measured just before and just after the window it is compared with: their mean, to first
    order what the model could do during the window (this machine's speed drifts by a fifth within minutes)."""
    keys = ("experts_mixed_8_tokens_per_s", "base_tokens_per_s")
    return {**{k: round((before[k] + after[k]) / 2, 2) for k in keys}, "before": before, "after": after}


def long_message(engine: Engine, identities: IdentitySet, tokens: int) -> list[dict]:
    """A one-message chat whose whole prompt (system message and chat template included) is at least `tokens`
    tokens: a visitor's long paste."""
    sentences: list[str] = []
    while True:
        history = [{"role": "user", "content": "Please read my notes and tell me what you think. "
                    + " ".join(sentences)}]
        length = prompt_length(engine, history, identities)
        if length >= tokens:
            return history
        # about 8 tokens a sentence: add what is missing in one go, then top up
        sentences += [QUESTIONS[(len(sentences) + i) % len(QUESTIONS)] for i in range(max(1, (tokens - length) // 8))]


def prompt_length(engine: Engine, history: list[dict], identities: IdentitySet) -> int:
    messages = engine.chat_messages(history, identities, Conditioning.EXPERTS_AND_PROMPT)
    return engine.encode([messages])["input_ids"].shape[1]


def join_case(engine: Engine, prompt_tokens: int, running: int, steady_s: float) -> dict:
    """While a `prompt_tokens`-token prompt joins a running batch of `running` rows, the running rows' time
    between text updates (what their visitors see), p50 and p95, in the steady state before the join and
    while it joins (from its submission to its first token); `join_itl_p95_ratio` = the join's p95 ÷ the
    steady p95. Apart, the same for the three steps after its first token (`after_join_*`): the batch then
    holds the long row, and every row's step reads its width (`hirpf.batch_cache` pads the rows to the
    longest), a cost of the long conversation, not of its joining.

    The batch is kept full as a busy server's is: each running client asks again as soon as its reply ends
    (the experts' replies to one question end after 15-45 tokens, sooner than a long prompt's prefill on a
    fast machine; a batch that had emptied measured nothing). Gaps are counted within a reply, never from
    one reply's last update to the next one's first (that is a time to first token)."""
    scheduler = engine.scheduler()
    scheduler.clear_prefixes()
    gaps: list[tuple[float, float]] = []  # (when, seconds since the same reply's previous update)
    streaming = [0] * running  # updates so far, by client
    lock, stop = threading.Lock(), threading.Event()
    history = [{"role": "user", "content": "Tell me a long story about your week, day by day, in detail."}]

    def client(i):
        for j in itertools.count():
            reply = scheduler.submit(history, CLIENT_SETS[i], sampling=Sampling(max_new_tokens=400,
                                                                                 seed=1 + i + 1000 * j))
            previous = None
            for _ in reply:
                now = time.perf_counter()
                with lock:
                    streaming[i] += 1
                    if previous is not None:
                        gaps.append((now, now - previous))
                previous = now
                if stop.is_set():
                    reply.close()
                    return

    clients = [threading.Thread(target=client, args=(i,)) for i in range(running)]
    for thread in clients:
        thread.start()
    while min(streaming) < 8:
        time.sleep(0.05)  # every client streaming
    steady_from = time.perf_counter()
    time.sleep(steady_s)
    joiner_set = CLIENT_SETS[running % len(CLIENT_SETS)]
    joiner_history = long_message(engine, joiner_set, prompt_tokens)
    joined_at = time.perf_counter()
    joiner = scheduler.submit(joiner_history, joiner_set, sampling=Sampling(max_new_tokens=8, seed=99))
    joiner.result(timeout=600)
    first_token = joiner.first_token_at or time.perf_counter()
    with lock:
        steady = [g for at, g in gaps if steady_from <= at - g and at < joined_at]
    while True:  # three steps of the batch that now holds the long row (the joiner reads nothing more)
        with lock:
            after = [g for at, g in gaps if at > first_token]
        if len(after) >= 3 * running or time.perf_counter() - first_token > 60:
            break
        time.sleep(0.05)
    stop.set()
    for thread in clients:
        thread.join()
    joining = [g for at, g in gaps if joined_at < at <= first_token]
    after = sorted((at, g) for at, g in gaps if at > first_token)[:3 * running]
    result = {"running": running, "prompt_tokens": prompt_length(engine, joiner_history, joiner_set),
              "steady_s": steady_s, "join_prefill_s": round(first_token - joined_at, 3),
              **{f"{name}_itl_p{int(q * 100)}_s": rounded(percentile(gaps, q))
                 for name, gaps in (("steady", steady), ("join", joining), ("after_join", [g for _, g in after]))
                 for q in (0.5, 0.95)}}
    for name in ("join", "after_join"):
        result[f"{name}_itl_p95_ratio"] = (round(result[f"{name}_itl_p95_s"] / result["steady_itl_p95_s"], 3)
                                           if result[f"{name}_itl_p95_s"] and steady else None)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--clients", default="1,2,4,8", help="comma list of concurrent client counts")
    parser.add_argument("--window", type=float, default=40.0,
                        help="seconds measured, once every client has arrived")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads while serving (default: as the app, hirpf.serving_threads)")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="clients arrive spread over this many lone-request durations (0: all at once, a burst)")
    parser.add_argument("--no_gradio", action="store_true", help="the Python API only, not the served app")
    parser.add_argument("--quick", action="store_true", help="a smoke run: clients 1 and 8, a 10 s window, 32 tokens")
    parser.add_argument("--join_tokens", type=int, default=1500, help="the joining prompt's length (0: no join case)")
    parser.add_argument("--join_only", type=int, default=0, metavar="N",
                        help="only the join case, N times in one engine (a JSON line each; quicker than whole runs "
                             "for its spread)")
    parser.add_argument("--decode_steps", type=int, default=30,
                        help="steps timed for the model's own batch-8 decode throughput")
    parser.add_argument("--reference_steps", type=int, default=None,
                        help=argparse.SUPPRESS)  # internal: measure ModelDecodeReference in this process, print JSON
    args = parser.parse_args(argv)
    if args.reference_steps:
        print(json.dumps(reference_in_this_process(args.reference_steps)))
        return 0
    if args.quick:
        args.clients, args.window, args.max_new_tokens = "1,8", 10.0, 32
    counts = [int(c) for c in args.clients.split(",")]
    if args.threads:  # the engine process's threads too; else it chooses them as in the app
        os.environ["HIRPF_SERVING_THREADS"] = str(args.threads)
    args.threads = args.threads or serving_threads()
    torch.set_num_threads(args.threads)

    def log(*a):
        print(*a, file=sys.stderr, flush=True)

    engine = Engine.load("embedded", load_in_8bit=False, dtype="float32")  # with the shipped experts
    engine_process = engine.serve_in_a_process(environment.HIRPF_ENGINE_PROCESS)  # as app.py does
    if args.join_only:
        for _ in range(args.join_only):
            running = min(7, engine.scheduler().max_batch - 1)
            print(json.dumps(join_case(engine, args.join_tokens, running, steady_s=3.0)), flush=True)
        engine.scheduler().close()
        return 0
    reference = ModelDecodeReference(args.decode_steps)
    top = max(counts)
    model_decode = None
    paths = {"serial": SerialQueue(engine), "scheduler": SchedulerPath(engine)}
    if not args.no_gradio:
        paths["gradio_serial"] = ServedApp(engine, scheduler=False)
        paths["gradio_scheduler"] = ServedApp(engine, scheduler=True)
    batched = paths["scheduler"]
    load_before = os.getloadavg()
    # Warm up every path (plans, mask tables, allocator, the app's first requests), and time a lone request
    # for the arrival spread.
    for path in paths.values():
        one_request(path, args.max_new_tokens)
    lone = one_request(batched, args.max_new_tokens)
    spread = lone * args.spread
    log(f"lone request: {lone:.2f} s; arrivals spread over {spread:.2f} s")

    table = []
    for n in counts:
        for name, path in paths.items():
            compared = name == "scheduler" and n == top  # serving_efficiency's window: bracketed by the reference
            before = reference.measure() if compared else None
            row = {"path": name, **run_clients(path, engine, n, args.max_new_tokens, spread, args.window)}
            if compared:
                model_decode = bracketed(before, reference.measure())
                log(f"the model's own batch-8 decode: {model_decode}")
            table.append(row)
            log(f"{name:16s} {n} clients: {row['aggregate_tokens_per_s']:7.2f} tokens/s, ttft p50 "
                f"{row['ttft_p50_s']:.3f} s p95 {row['ttft_p95_s']:.3f} s, "
                f"per client {row['per_client_tokens_per_s_mean']:.2f}")
    for path in paths.values():
        if isinstance(path, ServedApp):
            path.close()
    join = None
    if args.join_tokens:
        join = join_case(engine, args.join_tokens, min(7, batched.scheduler.max_batch - 1), steady_s=3.0)
        log(f"join: {join}")
    max_batch = batched.scheduler.max_batch
    # The engine process's torch threads and why (`hirpf.serving_threads.engine_threads`).
    engine_threads = getattr(batched.scheduler, "threads", None)
    batched.scheduler.close()

    def find(path, n):
        return next((r for r in table if r["path"] == path and r["clients"] == n), None)

    def speedup_at(n, serial, batched):
        if not (find(serial, n) and find(batched, n)):
            return None
        return round(find(batched, n)["aggregate_tokens_per_s"] / find(serial, n)["aggregate_tokens_per_s"], 3)

    speedup = speedup_at(top, "serial", "scheduler")
    gradio_speedup = speedup_at(top, "gradio_serial", "gradio_scheduler")
    ratio = None
    if find("scheduler", 1) and find("scheduler", top):
        if find("scheduler", top)["ttft_p95_s"] is not None and find("scheduler", 1)["ttft_p50_s"]:
            ratio = round(find("scheduler", top)["ttft_p95_s"] / find("scheduler", 1)["ttft_p50_s"], 3)
    efficiency = None
    if find("scheduler", top) and model_decode:
        efficiency = round(find("scheduler", top)["aggregate_tokens_per_s"]
                           / model_decode["experts_mixed_8_tokens_per_s"], 3)
    document = {
        f"speedup_{top}": speedup,
        f"ttft_p95_ratio_{top}": ratio,
        f"gradio_speedup_{top}": gradio_speedup,
        f"serving_efficiency_{top}": efficiency,
        "join_itl_p95_ratio": join["join_itl_p95_ratio"] if join else None,
        "after_join_itl_p95_ratio": join["after_join_itl_p95_ratio"] if join else None,  # no target: reported
        "decode_dtype": decode_dtype_in_use(engine.model),
        "fold_reach": fold_reach_in_use(engine.model),  # this process's calibration (an engine process makes its own)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "targets": {"speedup_8": 3.5, "ttft_p95_ratio_8": 3.0, "gradio_speedup_8": 3.0, "serving_efficiency_8": 0.75,
                    "join_itl_p95_ratio": 2.0},
        "model_decode_8": model_decode,
        "join": join,
        "settings": {"clients": counts, "window_s": args.window, "max_new_tokens": args.max_new_tokens,
                     "torch_threads": args.threads, "max_batch": max_batch, "quick": args.quick,
                     "model": "embedded + shipped experts, float32, CPU", "arrival_spread_s": round(spread, 3),
                     "decode_dtype_setting": environment.HIRPF_DECODE_DTYPE, "engine_process": engine_process,
                     "engine_process_threads": engine_threads and engine_threads._asdict()},
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "table": table,
    }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        for key in (f"speedup_{top}", f"ttft_p95_ratio_{top}", f"gradio_speedup_{top}", f"serving_efficiency_{top}",
                    "join_itl_p95_ratio", "after_join_itl_p95_ratio", "decode_dtype", "cpu_capability"):
            print(f"{key}: {document[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
