"""Soak test: many `gradio_client` visitors for minutes against the served app, on loopback only.

The app runs as a subprocess on 127.0.0.1 on a free port: `python app.py` (the embedded model and the shipped
experts) by default, or with `--tiny` this script itself serving the whole app around the tiny random model the
tests use (`app.tiny_model`). Each visitor is a thread with a seeded mix of actions: chats, stops mid-stream,
disconnects mid-stream (the job cancelled and the client dropped, as a closed tab), regenerates, long pastes
(past the context: the app trims old turns or refuses the message), bad identity sets and debates.

Phases: a warm-up with the same mix, an idle settle, the server's RSS; then the soak for `--minutes`, an idle
settle, the RSS again. Checked on every reply:
  ended    every started reply ends (finished, stopped, or a clear `gr.Error`) within `--reply-timeout`;
           a timeout or a broken connection counts as lost.
  crossed  the transcript holds only this visitor's own messages, in order (each carries a visitor and
           session tag), each reply's caption has this visitor's identity set and seed (seeds are unique per
           visitor), a debate's transcript file has this visitor's topic and agents.
  memory   RSS after the soak within 10% of RSS after the warm-up.

    .venv/bin/python benchmarks/bench_soak.py [--tiny] [--minutes 10] [--visitors 16] [--json]
        [--results benchmarks/results-soak-NAME.json]

Bounded: every loop ends by its deadline, every wait has a timeout, the server is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from bench_app_startup import cpu_seconds, free_port, page_answers  # noqa: E402

from hirpf.identities import PROFESSIONS, TRAITS  # noqa: E402

MEMORY_GROWTH_TARGET = 0.10
IDLE_CPU = 0.1  # cores: what an idle server may use (heartbeats), far below one decoding row
ACTIONS = {  # action: weight in a visitor's mix
    "chat": 30, "stop": 12, "disconnect": 10, "regenerate": 14, "long_paste": 8, "bad_identity": 8,
    "debate": 8, "clear": 5, "debate_stop": 5,
}
BAD_IDENTITY_SETS = [  # (panel arguments, what the error must name)
    ({"traits": ["AGR_high", "AGR_low"]}, "both poles of AGR"),
    ({"traits": ["NEU_low", "NEU_high", "OPE_high"]}, "both poles of NEU"),
    ({"profession": ["Doctor", "Artist"]}, "more than one profession"),
    ({"traits": ["EXT_high", "Kindness"]}, "'Kindness'"),
    ({"profession": ["Astronaut"]}, "'Astronaut'"),
]
QUESTIONS = ["How was your day?", "What do you do at work?", "Describe your ideal weekend.", "Do you like music?",
             "What annoys you most?", "Tell me about a friend.", "Why?", "What would you change about your city?"]
PASTE_LINE = "The quarterly report lists revenue, costs, staff changes and the plans for the next year. "
CONTEXT_ERROR = "tokens, more than the"  # what the app's context-limit error says (hirpf/context_limit.py)


# --- the server ---------------------------------------------------------------------------------------------

def serve_tiny(port: int, data_dir: str) -> None:
    """The whole app around the tiny random model (what the tests use), in this process, until killed."""
    from app.build import build_app
    from app.launching import launch
    from app.model_slot import ModelSlot
    from app.tiny_model import tiny_engine
    from hirpf import environment

    def load():
        engine = tiny_engine()
        engine.serve_in_a_process(environment.HIRPF_ENGINE_PROCESS)  # as app.py does
        return engine

    launch(build_app(ModelSlot(load, "tiny random model").start(), data_dir=data_dir), "127.0.0.1", port)


@contextmanager
def served(tiny: bool, max_context: int | None, log_path: Path):
    """The app in a subprocess on a free loopback port; yields (url, pid). Its output goes to `log_path`."""
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="hirpf-soak-data-")  # the annotation database, sent debates
    command = ([sys.executable, __file__, "--serve_tiny", str(port), "--data_dir", data_dir] if tiny else
               [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), "--data_dir", data_dir])
    env = dict(os.environ)
    if max_context:
        env["HIRPF_MAX_CONTEXT"] = str(max_context)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while not page_answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start (see {log_path})")
            time.sleep(0.5)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


def server_processes(pid: int) -> list[int]:
    """The server process and its descendants: the engine process (`hirpf.engine_process`) decodes there."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for child in children:
            found += server_processes(int(child))
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of the server and its engine process (VmRSS, summed)."""
    return sum(_rss(p) for p in server_processes(pid))


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_share(pid: int, seconds: float) -> float:
    """The server's and its engine process's CPU use over `seconds`, in cores: near 0 once no reply is being
    decoded (so a reply whose visitor disconnected has really ended)."""
    before = {p: cpu_seconds(p) for p in server_processes(pid)}
    time.sleep(seconds)
    after = {p: cpu_seconds(p) for p in server_processes(pid)}
    return sum(used - (before.get(p) or 0.0) for p, used in after.items() if used is not None) / seconds


def wait_until_ready(url: str, timeout_s: float) -> str:
    """Wait for the model to load (`/model_status`); returns its status line."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.predict(api_name="/model_status")
        status = status[0] if isinstance(status, (list, tuple)) else status
        if status.startswith("Model ready"):
            return status
        if "failed to load" in status or time.monotonic() > deadline:
            raise RuntimeError(f"the model is not ready: {status}")
        time.sleep(1)


# --- what the app returns ---------------------------------------------------------------------------------

def transcript(result) -> list[dict]:
    """The chatbot value an endpoint returned (chat, regenerate, stop and clear return it alone)."""
    if not isinstance(result, list):
        raise TypeError(f"expected the chatbot's messages, got {type(result).__name__}: {result!r}")
    return result


def text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def user_messages(messages: list[dict]) -> list[str]:
    return [text(m) for m in messages if m["role"] == "user"]


def caption_details(messages: list[dict]) -> list[str]:
    """The text inside each reply's caption: `identities: A, B · conditioning: … · seed N …`."""
    return [text(m) for m in messages if m.get("metadata")]


def replies(messages: list[dict]) -> list[str]:
    return [text(m) for m in messages if m["role"] == "assistant" and not m.get("metadata")]


def caption_identities_and_seed(details: str) -> tuple[list[str], int | None]:
    names = re.match(r"identities: (.*?) · ", details)
    seed = re.search(r" · seed (\d+)", details)
    found = [] if not names or names.group(1) == "none" else names.group(1).split(", ")
    return found, int(seed.group(1)) if seed else None


class Crossed(AssertionError):
    """A reply carried something that is not this visitor's."""


# --- a visitor ----------------------------------------------------------------------------------------------

@dataclass
class Tally:
    """Outcomes of every action, shared by the visitors."""
    outcomes: Counter = field(default_factory=Counter)  # (action, outcome) -> count
    problems: list[str] = field(default_factory=list)  # lost and crossed replies, unexpected errors, in words
    errors: Counter = field(default_factory=Counter)  # the clear errors the app gave, by first words
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, action: str, outcome: str, note: str = "") -> None:
        with self.lock:
            self.outcomes[(action, outcome)] += 1
            if outcome in ("lost", "crossed", "unexpected"):
                self.problems.append(f"{action}: {outcome}: {note}"[:400])
            elif outcome == "error" and note:
                self.errors[note[:80]] += 1

    def count(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.outcomes.items() if o == outcome)


class Conversation:
    """What one session of a visitor sent, and the seeds of its replies: all that its transcripts may hold."""

    def __init__(self, visitor: int):
        self.visitor = visitor
        self.sent: list[tuple[str, bool]] = []  # user messages, (text, surely recorded)
        self.seeds: set[int] = set()

    def check(self, messages: list[dict], identities: dict | None, seed: int | None) -> None:
        """Only this session's messages, in order; the last caption has this request's set and seed; every
        caption's seed is one of this session's. Raises `Crossed`."""
        own = [m for m, _ in self.sent]
        users = user_messages(messages)
        at = 0
        for message in users:  # a subsequence of what was sent, in order...
            while at < len(own) and own[at] != message:
                at += 1
            if at == len(own):
                raise Crossed(f"visitor {self.visitor} got a user message not its own (or out of order): "
                              f"{message[:60]!r}")
            at += 1
        missing = [m for m, sure in self.sent if sure and m not in users]  # ...holding every surely recorded one
        if missing:
            raise Crossed(f"visitor {self.visitor}'s messages went missing: {missing[0][:60]!r}")
        details = caption_details(messages)
        for caption in details:
            _, caption_seed = caption_identities_and_seed(caption)
            if caption_seed not in self.seeds:
                raise Crossed(f"visitor {self.visitor} got a reply with a seed not its own: {caption!r}")
        if identities is not None:
            if not details:
                raise Crossed(f"visitor {self.visitor}'s reply has no caption")
            names, caption_seed = caption_identities_and_seed(details[-1])
            expected = sorted(identities.get("traits", []) + identities.get("profession", []))
            if sorted(names) != expected or caption_seed != seed:
                raise Crossed(f"visitor {self.visitor} asked for {expected} seed {seed}, got {details[-1]!r}")


class Visitor:
    """One `gradio_client` visitor: a session (a conversation) that it drops on a disconnect."""

    def __init__(self, number: int, url: str, rng: random.Random, settings: dict, tally: Tally):
        self.number, self.url, self.rng, self.settings, self.tally = number, url, rng, settings, tally
        self.session = 0
        self.client = None
        self.own = Conversation(number)
        self.requests = 0
        self.new_session()

    def new_session(self) -> None:
        from gradio_client import Client

        if self.client is not None:  # a dropped session: its heartbeat ends with it
            self.client.close()
        self.session += 1
        self.client = Client(self.url, verbose=False, httpx_kwargs={"timeout": 120})
        self.own = Conversation(self.number)

    def tag(self) -> str:
        return f"[v{self.number}.{self.session}.{self.requests}]"

    def next_seed(self) -> int:  # unique to this visitor: the visitor's number in the low digits
        self.requests += 1
        return self.requests * 1000 + self.number

    def identity_set(self) -> dict:
        traits = self.rng.sample(TRAITS, self.rng.randint(0, 2))
        names = [f"{t}_{self.rng.choice(['high', 'low'])}" for t in traits]
        profession = [self.rng.choice(PROFESSIONS)] if self.rng.random() < 0.5 else []
        return {"traits": names, "profession": profession}

    def sampling(self, seed: int) -> dict:
        return {"max_new_tokens": self.settings["max_new_tokens"], "temperature": 0.8, "seed": seed}

    # the actions --------------------------------------------------------------------------------------------

    def reply(self, action: str, api_name: str, arguments: dict, message: str | None, identities: dict,
              interrupt: str | None = None) -> None:
        """Start a streamed reply, maybe stop or drop it once it streams, and check how it ended."""
        from gradio_client.exceptions import AppError

        seed = arguments["seed"]
        self.own.seeds.add(seed)
        if message is not None:
            self.own.sent.append((message, interrupt is None))
        timeout = self.settings["reply_timeout"]
        job = self.client.submit(**arguments, api_name=api_name)
        started = time.monotonic()
        try:
            if interrupt:
                while not job.done() and not any(replies(transcript(o)) and replies(transcript(o))[-1]
                                                  for o in job.outputs()):
                    if time.monotonic() - started > timeout:
                        job.cancel()
                        return self.tally.add(action, "lost", f"never started streaming in {timeout:.0f} s")
                    time.sleep(0.05)
                if interrupt == "disconnect":
                    job.cancel()
                    self.tally.add(action, "disconnected")
                    return self.new_session()
                self.client.predict(api_name="/stop")
            messages = transcript(job.result(timeout=max(1.0, timeout - (time.monotonic() - started))))
        except AppError as err:
            if message is not None:
                self.own.sent[-1] = (message, False)
            if action == "long_paste" and CONTEXT_ERROR in str(err):
                return self.tally.add(action, "refused")
            return self.tally.add(action, "unexpected" if "Generation failed" in str(err) else "error", str(err))
        except TimeoutError:
            return self.drop_late(job, action, timeout)
        except Exception as err:  # a broken stream: the reply never ended properly
            self.new_session()
            return self.tally.add(action, "lost", f"{type(err).__name__}: {err}")
        try:
            self.own.check(messages, identities, seed)
        except Crossed as err:
            return self.tally.add(action, "crossed", str(err))
        if message is not None:  # a stop can come before the message was recorded
            self.own.sent[-1] = (message, message in user_messages(messages))
        last = replies(messages)[-1] if replies(messages) else ""
        left_out = " earlier turns left out" in (caption_details(messages) or [""])[-1]
        self.tally.add(action, "stopped" if last.endswith("*(stopped)*") else
                       "trimmed" if left_out else "finished")

    def drop_late(self, job, action: str, timeout: float) -> None:
        """A reply with no end in time is lost; the note says whether it was still waiting in the queue (the
        machine too slow for the crowd) or being generated (a hang, or a very slow model)."""
        state = job.status().code.value  # IN_QUEUE, PROCESSING, ITERATING, …
        job.cancel()
        self.new_session()
        self.tally.add(action, "lost", f"no end within {timeout:.0f} s (the job was {state})")

    def chat(self, action: str) -> None:
        identities = self.identity_set()
        seed = self.next_seed()
        question = self.rng.choice(QUESTIONS)
        if action == "long_paste":  # past the context alone, or long enough to push earlier turns out
            words = self.settings["max_context"] * (self.rng.choice([0.6, 1.5]))
            question = "Summarise this: " + PASTE_LINE * max(1, int(words / 16))
        message = f"{self.tag()} {question}".strip()  # as the app records it
        interrupt = {"stop": "stop", "disconnect": "disconnect"}.get(action)
        self.reply(action, "/chat", {"message": message, **identities, **self.sampling(seed)}, message, identities,
                   interrupt)

    def regenerate(self) -> None:
        if not self.own.sent:
            return self.chat("chat")
        identities = self.identity_set()
        seed = self.next_seed()
        self.reply("regenerate", "/regenerate", {**identities, **self.sampling(seed)}, None, identities)

    def bad_identity(self) -> None:
        from gradio_client.exceptions import AppError

        identities, named = self.rng.choice(BAD_IDENTITY_SETS)
        message = f"{self.tag()} {self.rng.choice(QUESTIONS)}"
        try:
            self.client.predict(message=message, **identities, **self.sampling(self.next_seed()), api_name="/chat")
        except AppError as err:
            outcome = "refused" if named in str(err) else "unexpected"
            return self.tally.add("bad_identity", outcome, f"{identities}: {err}")
        self.tally.add("bad_identity", "unexpected", f"{identities} was accepted")

    def clear(self) -> None:
        result = self.client.predict(api_name="/clear")
        if transcript(result):
            return self.tally.add("clear", "crossed", f"visitor {self.number}'s cleared chat is not empty")
        self.own = Conversation(self.number)
        self.tally.add("clear", "finished")

    def debate(self, stop: bool) -> None:
        """A debate with this visitor's topic; its transcript file must hold that topic and these agents."""
        from gradio_client.exceptions import AppError

        action = "debate_stop" if stop else "debate"
        a, b = self.identity_set(), self.identity_set()
        topic = f"{self.tag()} Cities should ban cars from their centres"
        arguments = {"topic": topic, "rounds": 1, "a_traits": a["traits"], "a_profession": a["profession"],
                     "b_traits": b["traits"], "b_profession": b["profession"],
                     "max_new_tokens": self.settings["max_new_tokens"], "temperature": 0.8, "seed": self.next_seed()}
        timeout = self.settings["reply_timeout"] * 2  # four statements, two at a time at most
        job = self.client.submit(**arguments, api_name="/debate")
        started = time.monotonic()
        try:
            if stop:
                while not job.done() and not any(o and o[0] for o in job.outputs()):
                    if time.monotonic() - started > timeout:
                        job.cancel()
                        return self.tally.add(action, "lost", f"never started in {timeout:.0f} s")
                    time.sleep(0.05)
                self.client.predict(api_name="/debate_stop")
            side_a, side_b, status, files, _ = job.result(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except AppError as err:
            return self.tally.add(action, "error", str(err))
        except TimeoutError:
            return self.drop_late(job, action, timeout)
        except Exception as err:
            self.new_session()
            return self.tally.add(action, "lost", f"{type(err).__name__}: {err}")
        if not status.startswith(("Finished", "Stopped")):
            return self.tally.add(action, "lost", f"the debate ended as {status!r}")
        record = next((json.loads(Path(f).read_text()) for f in (files or []) if str(f).endswith(".json")), None)
        if record is None:  # none only when stopped before the first statement
            if status.startswith("Finished"):
                return self.tally.add(action, "lost", "a finished debate came without its transcript file")
        elif (record["topic"], record["seed"], sorted(record["a"]["identities"]), sorted(record["b"]["identities"])) \
                != (topic, arguments["seed"], sorted(a["traits"] + a["profession"]),
                    sorted(b["traits"] + b["profession"])):
            return self.tally.add(action, "crossed", f"visitor {self.number} asked for a debate on {topic!r} "
                                                     f"with seed {arguments['seed']}, got {record}"[:400])
        self.tally.add(action, "stopped" if status.startswith("Stopped") else "finished")

    def act(self, action: str) -> None:
        if action in ("chat", "stop", "disconnect", "long_paste"):
            self.chat(action)
        elif action == "regenerate":
            self.regenerate()
        elif action == "bad_identity":
            self.bad_identity()
        elif action == "clear":
            self.clear()
        else:
            self.debate(stop=action == "debate_stop")

    def run_until(self, deadline: float) -> None:
        names, weights = zip(*ACTIONS.items())
        while time.monotonic() < deadline:
            action = self.rng.choices(names, weights)[0]
            try:
                self.act(action)
            except Exception as err:  # an action the visitor could not even start (e.g. a refused connection)
                self.tally.add(action, "unexpected", f"{type(err).__name__}: {err}")
                self.new_session()
            time.sleep(self.rng.uniform(0.0, 1.0))  # a visitor reads a little before the next action


def run_visitors(url: str, visitors: int, seconds: float, seed: int, settings: dict) -> Tally:
    """`visitors` threads acting until `seconds` have passed; each finishes its last action (bounded by the
    reply timeout) before the call returns."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    crowd = [Visitor(n, url, random.Random(seed * 1000 + n), settings, tally) for n in range(1, visitors + 1)]
    threads = [threading.Thread(target=v.run_until, args=(deadline,), name=f"visitor-{v.number}") for v in crowd]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 3 * settings["reply_timeout"] + 60)
    if any(thread.is_alive() for thread in threads):
        tally.add("visitor", "lost", "a visitor thread did not finish its last action in time")
    return tally


# --- the run ------------------------------------------------------------------------------------------------

def soak(tiny: bool, minutes: float, visitors: int = 16, seed: int = 0, warmup_s: float = 60.0,
         settle_s: float = 20.0, max_new_tokens: int = 24, reply_timeout: float = 300.0,
         max_context: int | None = 1024, log=print) -> dict:
    """Serve the app, warm it up, soak it; returns the summary."""
    settings = {"max_new_tokens": max_new_tokens, "reply_timeout": reply_timeout, "max_context": max_context or 1024}
    log_path = Path(tempfile.mkdtemp(prefix="hirpf-soak-")) / "server.log"
    load_before = os.getloadavg()
    with served(tiny, max_context, log_path) as (url, pid):
        status = wait_until_ready(url, reply_timeout)
        log(f"serving at {url} (pid {pid}): {status}")
        warm = run_visitors(url, visitors, warmup_s, seed + 1, settings)
        time.sleep(settle_s)
        rss_warm = rss_bytes(pid)
        log(f"warmed up: {dict(sorted(Counter({f'{a}/{o}': n for (a, o), n in warm.outcomes.items()}).items()))}; "
            f"RSS {rss_warm / 2**20:.0f} MiB")
        peak = [rss_warm]
        stop_sampling = threading.Event()

        def sample_rss():
            while not stop_sampling.wait(5):
                peak[0] = max(peak[0], rss_bytes(pid))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        began = time.monotonic()
        tally = run_visitors(url, visitors, minutes * 60, seed, settings)
        ran_s = time.monotonic() - began
        stop_sampling.set()
        load_during = os.getloadavg()
        time.sleep(settle_s)
        rss_after = rss_bytes(pid)
        idle_cpu = cpu_share(pid, 5.0)
        processes = len(server_processes(pid))  # 2 with the running batch in an engine process
    growth = rss_after / rss_warm - 1
    started = sum(n for (a, o), n in tally.outcomes.items() if a != "bad_identity" and a != "clear")
    summary = {
        "model": "tiny random model" if tiny else status.removeprefix("Model ready: "),
        "visitors": visitors, "minutes": minutes, "ran_s": round(ran_s, 1), "seed": seed,
        "server_processes": processes,
        "max_new_tokens": max_new_tokens, "reply_timeout_s": reply_timeout, "max_context": max_context,
        "actions": sum(tally.outcomes.values()), "replies_started": started,
        "outcomes": {f"{a}/{o}": n for (a, o), n in sorted(tally.outcomes.items())},
        "lost": tally.count("lost"), "crossed": tally.count("crossed"), "unexpected": tally.count("unexpected"),
        "clear_errors": dict(tally.errors.most_common(10)),
        "problems": tally.problems[:50],
        "warmup": {"seconds": warmup_s, "lost": warm.count("lost"), "crossed": warm.count("crossed"),
                   "unexpected": warm.count("unexpected"), "problems": warm.problems[:20]},
        "rss_after_warmup_mib": round(rss_warm / 2**20, 1), "rss_after_soak_mib": round(rss_after / 2**20, 1),
        "rss_peak_mib": round(peak[0] / 2**20, 1), "memory_growth": round(growth, 4),
        "memory_within_target": growth <= MEMORY_GROWTH_TARGET,
        "server_cpu_after_settle_cores": round(idle_cpu, 3),  # > IDLE_CPU: something still decoding
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_at_end": [round(x, 2) for x in load_during],
        "cpu_count": os.cpu_count(), "server_log": str(log_path),
    }
    summary["passed"] = (summary["lost"] == summary["crossed"] == summary["unexpected"] == 0
                         and warm.count("lost") == warm.count("crossed") == warm.count("unexpected") == 0
                         and summary["memory_within_target"] and idle_cpu < IDLE_CPU)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny random model instead of the embedded one")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--visitors", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of the same mix before measuring RSS")
    parser.add_argument("--settle", type=float, default=20.0, help="idle seconds before each RSS reading")
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--reply_timeout", type=float, default=300.0, help="seconds after which a reply is lost")
    parser.add_argument("--max_context", type=int, default=1024,
                        help="HIRPF_MAX_CONTEXT for the server (so long pastes are trimmed or refused cheaply); "
                             "0: the model's own context")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    parser.add_argument("--results", type=Path, help="also write the summary to this file")
    parser.add_argument("--serve_tiny", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_tiny:
        serve_tiny(args.serve_tiny, args.data_dir)
        return 0
    summary = soak(args.tiny, args.minutes, args.visitors, args.seed, args.warmup, args.settle, args.max_new_tokens,
                   args.reply_timeout, args.max_context or None,
                   log=(lambda *a: print(*a, file=sys.stderr)) if args.json else print)
    if args.results:
        args.results.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
