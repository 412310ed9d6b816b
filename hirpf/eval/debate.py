"""Two identity-composed agents debate a motion: opening statements, rebuttal rounds, closing statements.

    python -m hirpf.eval debate --topic "Cities should ban cars from their centres" --a AGR_high,Doctor \\
        --b AGR_low,Programmer --rounds 2

Agent A argues for the motion and B against; A speaks first in every stage. Each agent has its own identity
set and its own view of the transcript: its own statements are the assistant's turns, the opponent's
statements (with the moderator's cue for the next stage) arrive as user turns. Every cue ends by restating
the motion and the agent's side in plain words ("You argue FOR the motion ...: you support it"): the system
message belongs to the identity, and a small model that heard its side once, at the start, often argued
the other one (tests/test_debate_stance.py measures how often the side is kept). Many debates run together in
one batched pass (`run_debates`): at every step, the current speakers of all debates form one `generate`
batch, each row under its own identity set. `stream_debate` plays one debate turn by turn for the UI,
each statement streamed by the engine or by its scheduler (the app's visitors share the scheduler's batch).
"""
from __future__ import annotations

import json
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ..identities import IdentitySet
from ..prompts import Conditioning
from ..reply_stream import ReplySource
from ..sampling import Sampling
from .common import (
    EvalError,
    add_generation_arguments,
    check_positive,
    conditioning_for,
    load_engine,
    log,
    output_dir,
    parse_identity_set,
    progress,
    run_config,
    sampling_from_args,
    write_json,
)

if TYPE_CHECKING:  # the app's debate tab imports this module before torch, which the engine's module imports
    from ..engine import Engine

SPEAKERS = ("A", "B")
SIDES = {"A": "for", "B": "against"}
STANCES = {"A": "support", "B": "oppose"}  # the verb that says a side's position in the first person
STAGES = ("opening", "rebuttal", "closing")
# The moderator's cues (ours); {stance} is the speaker's verb, so each cue asks for its side once more.
CUES = {
    "opening": "Give your opening statement: say that you {stance} the motion, then give your main reasons, in a "
               "few sentences.",
    "rebuttal": "Rebut your opponent's last statement: answer their points directly and show again why you "
                "{stance} the motion, in a few sentences.",
    "closing": "Give your closing statement: sum up why you {stance} the motion and why your side should win, in "
               "a few sentences.",
}


@dataclass(frozen=True)
class DebateSpec:
    """What to debate and who debates it."""

    topic: str
    a: IdentitySet
    b: IdentitySet
    rounds: int = 2  # rebuttal rounds between the openings and the closings

    def identities(self, speaker: str) -> IdentitySet:
        return self.a if speaker == "A" else self.b


@dataclass(frozen=True)
class Turn:
    speaker: str  # "A" or "B"
    stage: str  # opening, rebuttal, closing
    round: int  # 1.. for rebuttals, 0 otherwise
    content: str


def schedule(rounds: int) -> list[tuple[str, str, int]]:
    """(speaker, stage, round) of every turn, in order."""
    stages = [("opening", 0)] + [("rebuttal", r) for r in range(1, rounds + 1)] + [("closing", 0)]
    return [(speaker, stage, r) for stage, r in stages for speaker in SPEAKERS]


@dataclass
class Debate:
    spec: DebateSpec
    turns: list[Turn] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return len(self.turns) >= len(schedule(self.spec.rounds))

    def next_turn(self) -> tuple[str, str, int]:
        return schedule(self.spec.rounds)[len(self.turns)]

    def view(self, speaker: str) -> list[dict]:
        """The conversation `speaker` continues for its next turn: its own statements as the assistant's, the
        opponent's (and the moderator's cue for each of its stages) as the user's."""
        messages, pending = [], []
        for turn in self.turns:
            if turn.speaker == speaker:
                messages += [{"role": "user", "content": self._cue(speaker, turn.stage, pending)},
                             {"role": "assistant", "content": turn.content}]
                pending = []
            else:
                pending.append(f"Your opponent's {_stage_name(turn)}: {turn.content}")
        _, stage, _ = self.next_turn()
        messages.append({"role": "user", "content": self._cue(speaker, stage, pending)})
        return messages

    def _cue(self, speaker: str, stage: str, opponent: list[str]) -> str:
        # The motion and the side come last, after the opponent's words, where a small model still reads them.
        side = (f"This is a debate on the motion \"{self.spec.topic}\" You argue {SIDES[speaker].upper()} the "
                f"motion, in your own voice: you {STANCES[speaker]} it. {CUES[stage].format(stance=STANCES[speaker])}")
        return "\n\n".join(opponent + [side])

    def to_dict(self) -> dict:
        return {"topic": self.spec.topic, "rounds": self.spec.rounds, "finished": self.finished,
                "a": {"identities": list(self.spec.a.names), "describe": self.spec.a.describe(), "side": SIDES["A"]},
                "b": {"identities": list(self.spec.b.names), "describe": self.spec.b.describe(), "side": SIDES["B"]},
                "turns": [{"speaker": t.speaker, "stage": t.stage, "round": t.round, "content": t.content}
                          for t in self.turns]}

    def to_markdown(self) -> str:
        lines = [f"# Debate: {self.spec.topic}", "",
                 f"- **A** ({SIDES['A']} the motion): {self.spec.a.describe()} (`{self.spec.a}`)",
                 f"- **B** ({SIDES['B']} the motion): {self.spec.b.describe()} (`{self.spec.b}`)", ""]
        for turn in self.turns:
            lines += [f"## {turn.speaker}: {_stage_name(turn)}", "", turn.content, ""]
        return "\n".join(lines)


def _stage_name(turn: Turn) -> str:
    return f"rebuttal {turn.round}" if turn.stage == "rebuttal" else f"{turn.stage} statement"


def run_debates(engine: Engine, specs: Sequence[DebateSpec],
                conditioning: Conditioning = Conditioning.EXPERTS_AND_PROMPT, sampling: Sampling | None = None,
                batch_size: int | None = None, stop_event: threading.Event | None = None,
                on_turn: Callable[[int], None] | None = None) -> list[Debate]:
    """Play many debates at once. At each step every unfinished debate's current speaker is one row of a
    `generate` batch (rows of `batch_size` at most), under that speaker's identity set. Setting `stop_event`
    ends the run after the current step; the debates come back as far as they got."""
    for spec in specs:
        check_positive("rounds", spec.rounds)
    sampling = sampling or Sampling()
    debates = [Debate(spec) for spec in specs]
    step = 0
    while not (stop_event is not None and stop_event.is_set()):
        waiting = [d for d in debates if not d.finished]
        if not waiting:
            break
        size = batch_size or len(waiting)
        for start in range(0, len(waiting), size):
            chunk = waiting[start:start + size]
            speakers = [d.next_turn() for d in chunk]
            seed = None if sampling.seed is None else sampling.seed + 1000 * step + start
            replies = engine.generate([d.view(s) for d, (s, _, _) in zip(chunk, speakers)],
                                      [d.spec.identities(s) for d, (s, _, _) in zip(chunk, speakers)],
                                      conditioning, replace(sampling, seed=seed), stop_event=stop_event)
            for debate, (speaker, stage, r), reply in zip(chunk, speakers, replies):
                debate.turns.append(Turn(speaker, stage, r, reply[0]))
            if on_turn is not None:
                on_turn(len(chunk))
        step += 1
    return debates


class TurnStop(threading.Event):
    """One statement's stop flag: set when the statement ends (`Engine.stream` sets it then) or when the
    whole debate's `debate_stop` is set. The model side only asks `is_set()`, so a Stop reaches a statement
    still waiting for a place in the scheduler's batch, not only one that is streaming."""

    def __init__(self, debate_stop: threading.Event | None):
        super().__init__()
        self.debate_stop = debate_stop

    def is_set(self) -> bool:
        return super().is_set() or (self.debate_stop is not None and self.debate_stop.is_set())


def stream_debate(model: ReplySource, spec: DebateSpec,
                  conditioning: Conditioning = Conditioning.EXPERTS_AND_PROMPT, sampling: Sampling | None = None,
                  stop_event: threading.Event | None = None) -> Iterator[Debate]:
    """Play one debate, yielding it as it grows: after each new piece of the current statement (the last turn
    still growing) and after each finished turn. `model` writes each statement with `stream`: an `Engine`, or
    its scheduler (`Engine.scheduler()`), whose running batch the statement then joins. Setting `stop_event`
    stops at the next token; the statement cut short stays in the transcript."""
    check_positive("rounds", spec.rounds)
    sampling = sampling or Sampling()
    debate = Debate(spec)
    stopped = lambda: stop_event is not None and stop_event.is_set()  # noqa: E731
    while not debate.finished and not stopped():
        speaker, stage, r = debate.next_turn()
        seed = None if sampling.seed is None else sampling.seed + 1000 * len(debate.turns)
        text = ""
        # Each turn streams under its own stop flag (the engine sets it when the turn ends, which must not
        # end the debate); the flag also reads the debate's, so a Stop ends the turn at the next token.
        with closing(model.stream(debate.view(speaker), spec.identities(speaker), conditioning,
                                  replace(sampling, seed=seed), TurnStop(stop_event))) as pieces:
            for text in pieces:
                if stopped():
                    break
                yield Debate(spec, debate.turns + [Turn(speaker, stage, r, text)])
        debate.turns.append(Turn(speaker, stage, r, text))
        yield Debate(spec, list(debate.turns))


# --- the command -------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--topic", help="the motion; agent A argues for it, B against")
    parser.add_argument("--a", metavar="SET", help="agent A's identities, e.g. AGR_high,Doctor ('none': no identity)")
    parser.add_argument("--b", metavar="SET", help="agent B's identities")
    parser.add_argument("--rounds", type=int, default=2, help="rebuttal rounds (default 2)")
    parser.add_argument("--debates", metavar="FILE",
                        help="many debates in one batched run instead: a JSON list of {\"topic\", \"a\", \"b\", "
                             "\"rounds\"} (rounds optional, default --rounds)")
    add_generation_arguments(parser, max_new_tokens=128)


def specs_from_args(args) -> list[DebateSpec]:
    if args.debates:
        if args.topic or args.a or args.b:
            raise EvalError("give either --debates FILE or --topic/--a/--b, not both")
        try:
            entries = json.loads(Path(args.debates).read_text(encoding="utf-8"))
        except OSError as err:
            raise EvalError(f"cannot read {args.debates}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise EvalError(f"{args.debates}: not valid JSON ({err.msg}, line {err.lineno})") from None
        if not isinstance(entries, list) or not entries:
            raise EvalError(f"{args.debates}: expected a non-empty JSON list of debates")
        return [_spec(e, args.rounds, f"{args.debates}: debate {i}: ") for i, e in enumerate(entries)]
    missing = [name for name in ("topic", "a", "b") if not getattr(args, name)]
    if missing:
        raise EvalError(f"missing --{', --'.join(missing)} (or give --debates FILE)")
    return [_spec({"topic": args.topic, "a": args.a, "b": args.b}, args.rounds, "")]


def _spec(entry, rounds: int, where: str) -> DebateSpec:
    if not isinstance(entry, dict):
        raise EvalError(f"{where}expected an object with topic, a and b")
    topic = entry.get("topic")
    if not isinstance(topic, str) or not topic.strip():
        raise EvalError(f"{where}the topic is missing or empty")
    sides = []
    for key in ("a", "b"):
        value = entry.get(key, "")
        sides.append(parse_identity_set(",".join(value) if isinstance(value, list) else str(value),
                                        f"{where}{key}: "))
    rounds = entry.get("rounds", rounds)
    if not isinstance(rounds, int) or rounds < 1:
        raise EvalError(f"{where}rounds must be a whole number of at least 1, got {rounds!r}")
    return DebateSpec(topic.strip(), sides[0], sides[1], rounds)


def run(args) -> dict:
    specs = specs_from_args(args)
    sampling = sampling_from_args(args)
    engine = load_engine(args)
    conditioning = conditioning_for(args, engine)
    turns = sum(len(schedule(s.rounds)) for s in specs)
    log.info("%d debate(s), %d turns in all", len(specs), turns)
    start = time.perf_counter()
    with progress(turns, "debate (turns)") as bar:
        debates = run_debates(engine, specs, conditioning, sampling, args.batch_size, on_turn=bar.update)
    seconds = time.perf_counter() - start
    out = output_dir(args, "debate")
    markdown = []
    for i, debate in enumerate(debates, 1):
        path = out / f"debate-{i}.md"
        path.write_text(debate.to_markdown() + "\n", encoding="utf-8")
        markdown.append(str(path))
    document = {"command": "debate", "config": run_config(args, engine), "seconds": round(seconds, 1),
                "debates": [d.to_dict() for d in debates],
                "files": {"transcripts": str(out / "debates.json"), "markdown": markdown}}
    write_json(out / "debates.json", document)
    return document


def summarize(document: dict) -> str:
    lines = []
    for debate in document["debates"]:
        lines.append(f"Debate: {debate['topic']}  (A: {', '.join(debate['a']['identities']) or 'none'} for; "
                     f"B: {', '.join(debate['b']['identities']) or 'none'} against)")
        for turn in debate["turns"]:
            stage = f"rebuttal {turn['round']}" if turn["stage"] == "rebuttal" else turn["stage"]
            lines.append(f"\n[{turn['speaker']}, {stage}] {turn['content']}")
        lines.append("")
    lines.append(f"transcripts: {document['files']['transcripts']}; "
                 f"markdown: {', '.join(document['files']['markdown'])}")
    return "\n".join(lines)
