"""The open-situation test: agents meet another character in everyday scenarios, and a judge reads each
dialogue blind and labels the agent on all six identity slots.

    python -m hirpf.eval situations --sample 20 --judge_base_url URL --judge_model M [--turns 4]

For each identity set and each scenario (an episode): the other character opens, then the agent and the
other character alternate until the agent has spoken `--turns` times. The agent is the identity-composed
model, every batch row routed through its own identity set's experts; the other character is the base model
without experts (its own system message from the scenario brief) or an OpenAI-compatible model. All agent
turns of a step, across identity sets and scenarios, run as batched `generate` calls; so do the local other
character's. Every dialogue is written to `dialogues.jsonl` in the record format the human evaluation
imports (`python -m annotation import FILE --kind jsonl`), with the target slots and the judge's labels.
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from transformers import set_seed

from ..engine import Engine, Sampling
from ..identities import IdentitySet
from ..labels import slots_from_identities
from ..llm_client import LLMError
from ..prompts import Conditioning
from ..routing import use_identities
from ..scenarios import Scenario, ScenarioError, load_scenarios, select
from ..transcripts import reverse
from .common import (
    EvalError,
    add_generation_arguments,
    add_identity_arguments,
    check_positive,
    conditioning_for,
    identity_sets_from_args,
    load_engine,
    log,
    output_dir,
    progress,
    run_config,
    sampling_from_args,
    write_json,
)
from .slot_judge import JudgeUnavailable, add_judge_arguments, chat_client, judge_dialogues, slot_accuracy

# What the other character is told before its first line (ours).
OPENING_CUE = "(The person described above is now in front of you. Say your opening line to them.)"
SOURCE = "simulator"


@dataclass
class Episode:
    """One identity set in one scenario. `turns` are the spoken lines: the other character's as `user`, the
    agent's as `assistant` (the other character speaks first)."""

    identities: IdentitySet
    scenario: Scenario
    turns: list[dict] = field(default_factory=list)

    def agent_view(self) -> list[dict]:
        """What the agent reads: the situation, then the conversation (its own lines as the assistant's)."""
        if not self.turns:
            return []
        first = {"role": "user", "content": f"(Situation: {self.scenario.setting})\n\n{self.turns[0]['content']}"}
        return [first] + [dict(t) for t in self.turns[1:]]

    def other_view(self) -> list[dict]:
        """What the other character reads: its brief as the system message and the conversation reversed
        (its own lines as the assistant's)."""
        return ([{"role": "system", "content": self.scenario.other_system_message()},
                 {"role": "user", "content": OPENING_CUE}] + (reverse(self.turns) if self.turns else []))

    @property
    def agent_turns(self) -> int:
        return sum(t["role"] == "assistant" for t in self.turns)


# --- the other character -----------------------------------------------------------------------------
class LocalOther:
    """The other character played by the local base model, experts off."""

    def __init__(self, engine: Engine, sampling: Sampling, batch_size: int = 16):
        self.engine, self.sampling, self.batch_size = engine, sampling, batch_size
        self.name = "local base model (no experts)"

    def respond(self, conversations: Sequence[list[dict]], seed: int | None = None) -> list[str]:
        out = []
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start:start + self.batch_size]
            out += generate_without_identity(self.engine, chunk, replace(self.sampling, seed=_seed(seed, start)))
        return out


class RemoteOther:
    """The other character played by an OpenAI-compatible model."""

    def __init__(self, client, sampling: Sampling, workers: int = 4):
        self.client, self.sampling, self.workers = client, sampling, workers
        self.name = f"{client.model} at {client.base_url}"

    def respond(self, conversations: Sequence[list[dict]], seed: int | None = None) -> list[str]:
        temperature = self.sampling.temperature if self.sampling.do_sample else 0.0

        def one(conversation):
            return self.client.complete(conversation, temperature=temperature,
                                        max_tokens=self.sampling.max_new_tokens, seed=seed)[0].strip()

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return list(pool.map(one, conversations))


def generate_without_identity(engine: Engine, conversations: Sequence[list[dict]], sampling: Sampling) -> list[str]:
    """Continue conversations that bring their own system message on the plain base model. `Engine.generate`
    writes the identity system message itself, which is right for agents and wrong for the other character."""
    fitted = []  # each keeps its system message and its newest turns that fit the context
    for conversation in conversations:
        system = [m for m in conversation if m["role"] == "system"]
        turns = [m for m in conversation if m["role"] != "system"]
        fitted.append(system + engine.fit_turns(system, turns, sampling.max_new_tokens).history)
    batch = engine.encode(fitted)
    if sampling.seed is not None:
        set_seed(sampling.seed)
    with torch.no_grad(), use_identities([IdentitySet()] * len(conversations)):
        out = engine.model.generate(**batch, **sampling.generate_kwargs())
    new = out[:, batch["input_ids"].shape[1]:]
    return [text.strip() for text in engine.tokenizer.batch_decode(new, skip_special_tokens=True)]


def _seed(seed: int | None, offset: int) -> int | None:
    # Each generate call reseeds the global generator: a fresh seed per call keeps chunks from repeating
    # one random stream, and the run stays reproducible.
    return None if seed is None else seed + offset


# --- the simulation ----------------------------------------------------------------------------------
def simulate(engine: Engine, episodes: Sequence[Episode], other, turns: int = 4,
             conditioning: Conditioning = Conditioning.EXPERTS_AND_PROMPT, sampling: Sampling | None = None,
             batch_size: int = 16, on_step: Callable[[int], None] | None = None) -> list[Episode]:
    """Play every episode to `turns` agent turns, step by step: all episodes' agent turns of a step are
    batched (each row with its own identity set), then all other-character turns. One opening per scenario,
    shared by its episodes, so every identity set meets the same first line. `on_step(n)` counts turns."""
    sampling = sampling or Sampling()
    seed = sampling.seed
    scenarios = list(dict.fromkeys(e.scenario for e in episodes))
    openings = other.respond([Episode(IdentitySet(), s).other_view() for s in scenarios], seed=_seed(seed, 0))
    opening_of = dict(zip(scenarios, openings))
    for episode in episodes:
        if not episode.turns:
            episode.turns.append({"role": "user", "content": opening_of[episode.scenario]})
    if on_step:
        on_step(len(scenarios))
    for step in range(1, turns + 1):
        waiting = [e for e in episodes if e.agent_turns < step]
        for start in range(0, len(waiting), batch_size):
            chunk = waiting[start:start + batch_size]
            replies = engine.generate([e.agent_view() for e in chunk], [e.identities for e in chunk], conditioning,
                                      replace(sampling, seed=_seed(seed, 1000 * step + start)))
            for episode, reply in zip(chunk, replies):
                episode.turns.append({"role": "assistant", "content": reply[0]})
            if on_step:
                on_step(len(chunk))
        if step == turns:
            break
        answers = other.respond([e.other_view() for e in waiting], seed=_seed(seed, 1000 * step + 500))
        for episode, answer in zip(waiting, answers):
            episode.turns.append({"role": "user", "content": answer})
        if on_step:
            on_step(len(waiting))
    return list(episodes)


def record(episode: Episode, system: str, judgment=None, judge_name: str | None = None) -> dict:
    """An episode as a dialogue record the human evaluation imports (`annotation/store_io.py`): the HIS
    record format plus `system`, `source` and the judge's prediction (`judge`, absent when there is none;
    `judge_error` says why a judged dialogue has none), with the target slots and the scenario."""
    out = {"dialog": episode.agent_view(), "active_adapters": list(episode.identities.names), "system": system,
           "source": SOURCE, "scenario": episode.scenario.id, "scenario_target": episode.scenario.target,
           "target": slots_from_identities(episode.identities)}
    if judgment is not None and judgment.ok:
        out["judge"] = {"name": judge_name, "slots": judgment.slots}
    elif judgment is not None:
        out["judge_error"] = judgment.error
    return out


def score(records: Sequence[dict]) -> dict:
    """Identity recall, accuracy per slot (with its always-none chance line) and exact match over the judged
    records (`judges.slot_accuracy`); the same by number of identities and by scenario."""
    judged = [r for r in records if "judge" in r]
    by_count, by_scenario = defaultdict(list), defaultdict(list)
    for r in judged:
        pair = (r["target"], r["judge"]["slots"])
        by_count[len(r["active_adapters"])].append(pair)
        by_scenario[r["scenario"]].append(pair)
    failures = Counter(r["judge_error"].split(":")[0] for r in records if r.get("judge_error"))
    return slot_accuracy([(r["target"], r["judge"]["slots"]) for r in judged]) | {
        "episodes": len(records), "judged": len(judged), "judge_failed": sum(failures.values()),
        "judge_failures_by_reason": dict(failures),
        "accuracy_by_count": {str(k): slot_accuracy(v) for k, v in sorted(by_count.items())},
        "accuracy_by_scenario": {k: slot_accuracy(v) for k, v in by_scenario.items()},
    }


# --- the command -------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    add_identity_arguments(parser)
    parser.add_argument("--scenario_file", default=None,
                        help="scenarios in our format or the HIS format (default: hirpf/data/scenarios.json)")
    parser.add_argument("--scenarios", default=None, help="comma list of scenario ids or targets (default: all)")
    parser.add_argument("--turns", type=int, default=4, help="agent turns per dialogue (default 4)")
    add_generation_arguments(parser)
    other = parser.add_argument_group("other character (default: the local base model without experts)")
    other.add_argument("--other_base_url", default=None, help="an OpenAI-compatible endpoint plays it instead")
    other.add_argument("--other_model", default=None, help="model name at --other_base_url")
    add_judge_arguments(parser)
    parser.add_argument("--system_name", default=None,
                        help="the system's name in the dialogue records (default: hirpf/<conditioning>)")


def run(args) -> dict:
    check_positive("--turns", args.turns)
    sampling = sampling_from_args(args)
    try:
        scenarios = select(load_scenarios(args.scenario_file), args.scenarios)
    except ScenarioError as err:
        raise EvalError(str(err)) from None
    sets = identity_sets_from_args(args)
    if bool(args.other_base_url) != bool(args.other_model):
        raise EvalError("--other_base_url and --other_model go together")
    engine = load_engine(args)
    conditioning = conditioning_for(args, engine)
    system = args.system_name or f"hirpf/{conditioning.value}"
    other = (RemoteOther(chat_client(args, args.other_base_url, args.other_model), sampling, args.judge_workers)
             if args.other_base_url else LocalOther(engine, sampling, args.batch_size))
    episodes = [Episode(s, sc) for s in sets for sc in scenarios]
    log.info("%d identity sets x %d scenarios = %d dialogues of %d agent turns; other character: %s",
             len(sets), len(scenarios), len(episodes), args.turns, other.name)
    out = output_dir(args, "situations")

    start = time.perf_counter()
    turns_total = len(scenarios) + len(episodes) * (2 * args.turns - 1)
    with progress(turns_total, "situations (turns)") as bar:
        try:
            simulate(engine, episodes, other, args.turns, conditioning, sampling, args.batch_size, bar.update)
        except LLMError as err:  # a dialogue cannot go on without the other character's line
            raise EvalError(f"the other character's endpoint failed: {err}") from None
    simulated = time.perf_counter() - start

    judgments = [None] * len(episodes)
    if args.judge_base_url:
        check_positive("--judge_attempts", args.judge_attempts)
        check_positive("--judge_workers", args.judge_workers)
        client = chat_client(args, args.judge_base_url, args.judge_model)
        with progress(len(episodes), "situations (judge)") as bar:
            try:
                judgments = judge_dialogues(client, [e.agent_view() for e in episodes], attempts=args.judge_attempts,
                                            seed=args.seed, workers=args.judge_workers, on_done=bar.update)
            except JudgeUnavailable as err:
                raise EvalError(f"judge: {err}") from None
    else:
        log.info("no --judge_base_url: dialogues are simulated and written, not judged")
    judged = time.perf_counter() - start - simulated

    records = [record(e, system, j, args.judge_model) for e, j in zip(episodes, judgments)]
    path = out / "dialogues.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    scores = score(records)
    document = {"command": "situations", **{k: scores.pop(k) for k in ("identity_recall", "accuracy",
                                                                        "accuracy_always_none")},
                "config": run_config(args, engine),
                "system": system, "identity_sets": len(sets), "scenarios": [s.id for s in scenarios],
                "turns": args.turns, "other_character": other.name,
                "judge": f"{args.judge_model} at {args.judge_base_url}" if args.judge_base_url else None,
                "seconds": {"simulation": round(simulated, 1), "judging": round(judged, 1)}} | scores
    document["files"] = {"dialogues": str(path), "result": str(out / "situations.json")}
    write_json(out / "situations.json", document)
    return document


def summarize(document: dict) -> str:
    lines = [f"{document['episodes']} dialogues ({document['identity_sets']} identity sets x "
             f"{len(document['scenarios'])} scenarios), {document['judged']} judged, "
             f"{document['judge_failed']} judge failures"]
    if document["accuracy"] is not None:
        recall = document["identity_recall"]
        slots = ", ".join(f"{s} {v:.2f}" for s, v in document["accuracy_by_slot"].items())
        lines.append(f"identity recall {'-' if recall is None else f'{recall:.3f}'}; six-slot accuracy "
                     f"{document['accuracy']:.3f} against {document['accuracy_always_none']:.3f} for a judge "
                     f"that answers always none (per slot: {slots}); exact match {document['exact_match']:.3f}")
    lines.append(f"dialogues: {document['files']['dialogues']}")
    return "\n".join(lines)
