"""Synthesize identity dialogues: `python training/synthesize.py --output F.jsonl ...` or
`python -m training.synthesize ...`, with one of two backends:

- `--backend openai` (default, `--model M`): any OpenAI-compatible chat endpoint writes each dialogue, as below;
- `--backend local-contrastive`: the base model (`--base_model`, default the embedded one) role-plays both
  speakers here, no network, with the identity amplified by `--gamma` (see `training/local_synthesis.py`).
  Same plans, jobs, record format, resumption and summary; its records carry their provenance in
  `synthesis` (backend, base model, γ, seeds, sampling, prompt version, creation time).

The OpenAI backend works in two stages per dialogue, as in the HIRPF paper, with our own prompts:
  (a) plot: a short outline of a scene for the identity set (who the other speaker is, what happens);
  (b) dialogue: the scene as alternating turns; the other speaker opens, the character's identity shows in
      behaviour and is never named; a share of profession dialogues (`--outside_share`) is deliberately
      outside the profession, and there the character admits not knowing.

What to generate comes from `--kinds` (single identities, trait pairs, trait-profession pairs, trait triples,
trait pairs with a profession) with `--per_identity` (and `--sample_sets N`: N sets drawn evenly across the
kinds, seeded), or from a plan file (`--plan`, format below). Every finished record is one JSONL line in the
HIS record format plus a `synthesis` field that `hirpf.dialogues` ignores:

    {"dialog": [{"role": "user", ...}, {"role": "assistant", ...}, ...], "active_adapters": ["AGR_high"],
     "synthesis": {"job": "AGR_high/0/seed0", "model": ..., "scene": ..., "outside_topic": null, "plot": ...}}

Lines are flushed and fsynced one by one, so a crash loses no finished record; a rerun skips the jobs already
in the output (by `synthesis.job`). A reply that breaks the rules (not JSON, wrong shape, roles not
alternating from the other speaker, wrong turn count, an identity named) is resampled up to `--attempts`
times, then counted as failed by reason in the summary (`<output>.summary.json`). An endpoint that gives up
after all retries stops the run (the summary says why); rerun to continue.

Plan file (JSON); `count` defaults to 1, `turns` (exchanges) to `--turns`, `scene` to one from our bank:

    {"entries": [{"identities": ["AGR_high"], "count": 2},
                 {"identities": ["CON_low", "Programmer"], "turns": 6, "scene": "a code review that runs late"}]}
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import sys
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hirpf import environment
from hirpf.base_model import EMBEDDED, load_base_model
from hirpf.dialogues import validate
from hirpf.identities import PROFESSIONS, TRAIT_POLES, IdentityError, IdentitySet, trait_of
from hirpf.llm_client import ChatClient, EndpointError, MalformedReply
from hirpf.model_options import add_model_arguments, command_line, model_options
from hirpf.sampling import Sampling
from training.local_synthesis import LocalSettings, run_local
from training.synthesis_records import Job, append_record, finished_jobs, forbidden_words, named_identity

log = logging.getLogger("hirpf.synthesize")
BACKENDS = ("openai", "local-contrastive")
KINDS = ("single", "trait_pairs", "trait_profession", "trait_triples", "pair_profession")

# What each identity looks like in behaviour: the writer model sees this, never a label to repeat.
BEHAVIOUR = {
    "AGR_high": "warm and considerate: assumes good intentions, offers help, gives way to keep the peace",
    "AGR_low": "blunt and sceptical: questions other people's motives, argues to win, puts their own interest first",
    "CON_high": "careful and organised: plans ahead, keeps promises, checks details before acting",
    "CON_low": "easy-going and disorganised: improvises, forgets commitments, leaves things half done",
    "EXT_high": "outgoing and energetic: talks a lot, enjoys company, likes being at the centre of things",
    "EXT_low": "reserved and quiet: gives short answers, prefers time alone, avoids the spotlight",
    "NEU_high": "tense and easily upset: worries about what could go wrong, takes setbacks hard",
    "NEU_low": "calm and steady: stays relaxed under pressure, shrugs off setbacks, rarely worries",
    "OPE_high": "curious and imaginative: loves new ideas and unusual experiences, wonders 'what if'",
    "OPE_low": "conventional and practical: prefers the familiar, distrusts abstract ideas, keeps to routine",
    "Doctor": "works in medicine: reasons about symptoms, risks and treatments from daily clinical practice",
    "Artist": "works in the visual arts: notices colour, form and composition, talks about making and showing work",
    "Programmer": "works in software: thinks in systems, bugs and trade-offs, knows tools and code from practice",
}
SCENES = (
    "a crowded train platform after a cancelled connection",
    "the first meeting of a new book club in a town library",
    "a shared kitchen the morning after a party",
    "a hiking trail where two walkers have lost the marked path",
    "a small shop where a customer wants to return a broken lamp",
    "a wedding reception table where two strangers are seated together",
    "a community garden where one plot has overgrown its neighbour's",
    "an airport gate during a long weather delay",
    "a volunteer shift at a food bank that is short of helpers",
    "a rural road where a car has broken down and only one phone has signal",
    "a job interview that starts half an hour late",
    "a family dinner where a relative announces a big decision",
    "a flat viewing with a landlord who is in a hurry",
    "a night bus where a stranger asks for directions",
    "a museum café at closing time",
    "a neighbour knocking about noise from a renovation",
)
# Questions a profession cannot answer from its own field: the character must admit not knowing.
OUTSIDE_TOPICS = {
    "Doctor": ("how to fix a leaking car radiator", "the tax rules for selling a small business",
               "which programming language to learn for building a website",
               "how to restore an oil painting damaged by water"),
    "Artist": ("whether a recurring chest pain needs a specialist", "why a database query suddenly became slow",
               "how mortgage interest rates are set", "how to wire a new light switch safely"),
    "Programmer": ("whether two prescription medicines can be taken together",
                   "how to price a large canvas for a gallery show", "how to treat a badly sprained ankle",
                   "how inheritance law splits an estate without a will"),
}

PLOT_SYSTEM = ("You plan short two-person scenes for a collection of character dialogues. You answer with one "
               "JSON object and nothing else.")
DIALOGUE_SYSTEM = ("You write realistic spoken dialogues between two people from a scene plan. You answer with "
                   "one JSON object and nothing else.")


@dataclass(frozen=True)
class PlanEntry:
    identities: IdentitySet
    count: int = 1
    turns: int | None = None
    scene: str | None = None


# --- planning ---------------------------------------------------------------------------------------
def sets_of_kind(kind: str) -> list[tuple[str, ...]]:
    """single: 10 poles and 3 professions; trait_pairs: two poles of different traits (40); trait_profession:
    a pole and a profession (30); trait_triples: three poles of different traits (80); pair_profession: two
    poles of different traits and a profession (120)."""
    def poles(k):
        return [c for c in itertools.combinations(TRAIT_POLES, k) if len({trait_of(p) for p in c}) == k]

    if kind == "single":
        return [(name,) for name in TRAIT_POLES + PROFESSIONS]
    if kind == "trait_pairs":
        return poles(2)
    if kind == "trait_profession":
        return list(itertools.product(TRAIT_POLES, PROFESSIONS))
    if kind == "trait_triples":
        return poles(3)
    if kind == "pair_profession":
        return [pair + (p,) for pair in poles(2) for p in PROFESSIONS]
    raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")


def entries_for_kinds(kinds: list[str], per_identity: int, sample: int | None = None,
                      seed: int = 0) -> list[PlanEntry]:
    """Every set of the kinds, or with `sample`, that many drawn evenly across the kinds: each kind's sets
    in a seeded random order, taken from the kinds in turn (so a small sample still covers pairs and
    triples alike)."""
    by_kind = [sets_of_kind(kind) for kind in kinds]
    if sample is None:
        sets = [names for kind_sets in by_kind for names in kind_sets]
    else:
        for kind, kind_sets in zip(kinds, by_kind):
            random.Random(f"{seed}/{kind}").shuffle(kind_sets)
        turns = itertools.zip_longest(*by_kind)
        sets = [names for row in turns for names in row if names is not None][:sample]
    return [PlanEntry(IdentitySet.parse(names), per_identity) for names in sets]


def read_plan(path: str | Path) -> list[PlanEntry]:
    """The entries of a plan file; a bad entry raises ValueError naming it."""
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"plan {path} is not valid JSON (line {err.lineno}): {err.msg}") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("entries"), list):
        raise ValueError(f"plan {path} must be an object with an 'entries' list")
    entries = []
    for i, entry in enumerate(plan["entries"]):
        where = f"plan {path} entry {i}"
        if not isinstance(entry, dict) or set(entry) - {"identities", "count", "turns", "scene"}:
            raise ValueError(f"{where}: an object with identities, count, turns, scene only")
        try:
            identities = IdentitySet.parse(entry.get("identities"))
        except IdentityError as err:
            raise ValueError(f"{where}: {err}") from None
        count, turns, scene = entry.get("count", 1), entry.get("turns"), entry.get("scene")
        if not identities or not _positive_int(count) or (turns is not None and not _positive_int(turns)) \
                or (scene is not None and not (isinstance(scene, str) and scene.strip())):
            raise ValueError(f"{where}: needs a non-empty identity list, a positive count and turns, a text scene")
        entries.append(PlanEntry(identities, count, turns, scene))
    return entries


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def expand(entries: list[PlanEntry], *, turns: int, outside_share: float, seed: int) -> list[Job]:
    """One job per dialogue. Scene and outside-profession choice depend only on the seed and the job id, so a
    rerun plans the same jobs."""
    seen, jobs = set(), []
    for entry in entries:
        if entry.identities in seen:
            raise ValueError(f"identity set {entry.identities} is planned twice; give it one entry with a count")
        seen.add(entry.identities)
        for k in range(entry.count):
            job_id = f"{'+'.join(entry.identities)}/{k}/seed{seed}"
            rng = random.Random(job_id)
            profession = entry.identities.profession
            outside = profession is not None and rng.random() < outside_share
            jobs.append(Job(job_id, entry.identities, entry.turns or turns, entry.scene or rng.choice(SCENES),
                            rng.choice(OUTSIDE_TOPICS[profession]) if outside else None))
    return jobs


# --- prompts and checks -----------------------------------------------------------------------------
def persona(identities: IdentitySet) -> str:
    return "\n".join(f"- {BEHAVIOUR[name]}" for name in identities)


def plot_messages(job: Job) -> list[dict]:
    if job.outside_topic:
        task = (f"In this scene the other speaker asks the main character about {job.outside_topic}. That lies "
                "outside the main character's line of work: they say honestly that they do not know much about "
                "it and do not invent an answer.")
    elif job.identities.profession:
        task = "Give the main character a moment where their line of work shows in what they know and notice."
    else:
        task = "Give the main character moments where their temperament shapes what they say and do."
    prompt = (f"Plan a short scene between the main character and one other person.\n\nThe main character is\n"
              f"{persona(job.identities)}\n\nSetting: {job.scene}.\n{task}\n\nThe other person speaks first. "
              "Let the main character's nature show through behaviour; never state it outright.\n\n"
              'Answer with this JSON object: {"other_speaker": "who the other person is, in a few words", '
              '"plot": "the scene in four to six sentences: the opening, what happens, how it ends"}')
    return [{"role": "system", "content": PLOT_SYSTEM}, {"role": "user", "content": prompt}]


def dialogue_messages(job: Job, other_speaker: str, plot: str) -> list[dict]:
    outside = (f"\n- When asked about {job.outside_topic}, the main character admits not knowing it well and "
               "does not make up an answer." if job.outside_topic else "")
    words = ", ".join(f'"{w}"' for w in forbidden_words(job.identities))
    prompt = (f"Write the dialogue of this scene.\n\nMain character:\n{persona(job.identities)}\n"
              f"Other speaker: {other_speaker}\nPlot: {plot}\n\nRules:\n"
              f"- Exactly {2 * job.exchanges} turns: the other speaker speaks first, then the two alternate, so "
              f"each speaks {job.exchanges} times and the main character has the last word.\n"
              "- The main character's personality and work show only in what they say and how they say it; "
              f"they never describe their own traits and never use the words {words}.{outside}\n"
              "- Natural spoken language, one to four sentences per turn, no stage directions, no names "
              "before the lines.\n\n"
              'Answer with this JSON object: {"turns": [{"speaker": "other", "text": "..."}, '
              '{"speaker": "character", "text": "..."}, ...]}')
    return [{"role": "system", "content": DIALOGUE_SYSTEM}, {"role": "user", "content": prompt}]


def parse_plot(obj: dict) -> tuple[str, str]:
    other, plot = obj.get("other_speaker"), obj.get("plot")
    if not all(isinstance(v, str) and v.strip() for v in (other, plot)):
        raise ValueError("shape: needs non-empty 'other_speaker' and 'plot' strings")
    return other.strip(), plot.strip()


def parse_dialogue(obj: dict, job: Job) -> list[dict]:
    """The reply's turns as HIS dialog turns (other speaker = user, character = assistant), or ValueError
    whose text before the first colon is the failure reason counted in the summary."""
    turns = obj.get("turns")
    if not isinstance(turns, list):
        raise ValueError("shape: 'turns' must be a list")
    if len(turns) != 2 * job.exchanges:
        raise ValueError(f"turn count: expected {2 * job.exchanges} turns, got {len(turns)}")
    dialog = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("text"), str) or not turn["text"].strip():
            raise ValueError(f"shape: turn {k} needs a non-empty 'text'")
        speaker = "other" if k % 2 == 0 else "character"
        if turn.get("speaker") != speaker:
            raise ValueError(f"alternation: turn {k} must be by {speaker!r}, got {turn.get('speaker')!r}")
        text = turn["text"].strip()
        named = named_identity(text, job.identities) if speaker == "character" else None
        if named:
            raise ValueError(f"identity named: turn {k} says {named!r}")
        dialog.append({"role": "user" if speaker == "other" else "assistant", "content": text})
    return dialog


# --- running ----------------------------------------------------------------------------------------
@dataclass
class Settings:
    """Sampling of both stages; `attempts` bounds the samples per stage before a job fails."""

    temperature: float = 0.9
    attempts: int = 3
    plot_tokens: int = 400
    dialogue_tokens: int = 2000


class JobFailed(Exception):
    """A job whose replies stayed bad after every attempt; `reason` is what the summary counts."""

    def __init__(self, job: Job, stage: str, err: MalformedReply):
        self.reason = f"{stage}: {err.errors[-1].split(':')[0]}"
        super().__init__(f"{job.id}: {stage}: {err.errors[-1]}")
        self.job, self.raw_replies = job, err.raw_replies


def synthesize_one(job: Job, client: ChatClient, settings: Settings) -> dict:
    """The finished, validated record of a job, or JobFailed."""
    seed = zlib.crc32(job.id.encode())  # a per-job seed for endpoints that honour one
    sampling = {"temperature": settings.temperature, "attempts": settings.attempts, "seed": seed}
    try:
        other, plot = client.complete_json(plot_messages(job), parse_plot, max_tokens=settings.plot_tokens,
                                           **sampling)
    except MalformedReply as err:
        raise JobFailed(job, "plot", err) from None
    try:
        dialog = client.complete_json(dialogue_messages(job, other, plot), lambda obj: parse_dialogue(obj, job),
                                      max_tokens=settings.dialogue_tokens, **sampling)
    except MalformedReply as err:
        raise JobFailed(job, "dialogue", err) from None
    record = {"dialog": dialog, "active_adapters": list(job.identities),
              "synthesis": {"job": job.id, "model": client.model, "scene": job.scene,
                            "outside_topic": job.outside_topic, "other_speaker": other, "plot": plot}}
    validate(record, "synthesized", 0)  # the loader's own check: what we write is what training reads
    return record


def run(jobs: list[Job], client: ChatClient, output: Path, settings: Settings, concurrency: int = 4) -> dict:
    """Synthesize every job not yet in `output`, appending each finished record at once. Returns the summary."""
    started = time.time()
    output.parent.mkdir(parents=True, exist_ok=True)
    done = finished_jobs(output)
    todo = [job for job in jobs if job.id not in done]
    written, failed, failures, stopped = 0, Counter(), [], None
    stop = threading.Event()

    def work(job: Job) -> dict | None:
        return None if stop.is_set() else synthesize_one(job, client, settings)

    # Workers only talk to the endpoint; this thread is the one writer of the output file.
    with open(output, "a", encoding="utf-8") as out, ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = {pool.submit(work, job): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            if future.cancelled():  # not started when the run stopped
                continue
            try:
                record = future.result()
            except JobFailed as err:
                failed[err.reason] += 1
                failures.append({"job": job.id, "reason": str(err),
                                 "raw_replies": [r[:1000] for r in err.raw_replies]})
                log.warning("failed %s", err)
                continue
            except EndpointError as err:
                if not stop.is_set():
                    stopped = str(err)
                    log.error("stopping: %s", err)
                    stop.set()
                    for pending in futures:
                        pending.cancel()
                continue
            if record is None:
                continue
            append_record(out, record)
            written += 1
            log.info("[%d/%d] wrote %s", written + sum(failed.values()), len(todo), job.id)
    stats = dict(client.stats)
    return {"output": str(output), "model": client.model, "jobs": len(jobs), "skipped": len(jobs) - len(todo),
            "written": written, "failed": sum(failed.values()), "failed_by_reason": dict(failed),
            "not_started": len(todo) - written - sum(failed.values()), "stopped": stopped,
            "requests": stats.get("requests", 0), "cache_hits": stats.get("cache_hits", 0),
            "retries_by_reason": {k[len("retry: "):]: v for k, v in stats.items() if k.startswith("retry: ")},
            "seconds": round(time.time() - started, 1), "failures": failures}


# --- command line -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Synthesize identity dialogues with an OpenAI-compatible endpoint "
                                             "or locally with the base model (contrastive amplification)")
    ap.add_argument("--backend", choices=BACKENDS, default="openai",
                    help="openai: an OpenAI-compatible endpoint writes them; local-contrastive: the base model here")
    ap.add_argument("--output", required=True, type=Path, help="JSONL file; appended to, finished jobs skipped")
    ap.add_argument("--plan", default=None, help="plan file (JSON, see the module help); replaces --kinds")
    ap.add_argument("--kinds", default="single,trait_pairs,trait_profession",
                    help=f"comma-separated, from {', '.join(KINDS)}")
    ap.add_argument("--per_identity", type=int, default=1, help="dialogues per identity set (with --kinds)")
    ap.add_argument("--sample_sets", type=int, default=None,
                    help="only N identity sets of the kinds, drawn evenly across them (seeded by --seed)")
    ap.add_argument("--turns", type=int, default=4, help="exchanges per dialogue (each: other speaker, character)")
    ap.add_argument("--outside_share", type=float, default=0.25,
                    help="share of profession dialogues about a question outside the profession")
    ap.add_argument("--seed", type=int, default=0, help="picks scenes and outside topics; part of every job id")
    ap.add_argument("--limit", type=int, default=None, help="only the first N planned jobs")
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--attempts", type=int, default=3, help="samples per stage (openai) or per turn (local) "
                                                          "before a job counts as failed")
    ap.add_argument("--summary", type=Path, default=None, help="summary JSON (default <output>.summary.json)")
    openai = ap.add_argument_group("--backend openai")
    openai.add_argument("--base_url", default=environment.OPENAI_BASE_URL or "https://api.openai.com/v1",
                        help="the endpoint (default $OPENAI_BASE_URL or OpenAI's); the key comes from $OPENAI_API_KEY")
    openai.add_argument("--model", default=None, help="the model name the endpoint serves (required)")
    openai.add_argument("--concurrency", type=int, default=4, help="parallel requests (worker threads)")
    openai.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    openai.add_argument("--max_retries", type=int, default=6, help="retries of a request on 429, 5xx, timeouts")
    openai.add_argument("--cache_dir", default=None, help="response cache: reruns of the same requests are free")
    local = ap.add_argument_group("--backend local-contrastive")
    add_model_arguments(local, ("base_model",))
    local.add_argument("--gamma", type=float, default=1.0,
                       help="amplification: logits l_identity + gamma*(l_identity - l_neutral); 0 = none")
    local.add_argument("--max_new_tokens", type=int, default=96, help="tokens per turn at most")
    local.add_argument("--top_p", type=float, default=0.9)
    local.add_argument("--top_k", type=int, default=50)
    local.add_argument("--repetition_penalty", type=float, default=1.1)
    local.add_argument("--greedy", action="store_true", help="no sampling (the same dialogue for every seed)")
    local.add_argument("--batch_size", type=int, default=8, help="dialogues per batch (character turns: 2 rows each)")
    return ap


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.turns < 1 or args.per_identity < 1 or args.concurrency < 1 or args.attempts < 1 \
            or not 0 <= args.outside_share <= 1:
        raise SystemExit("--turns, --per_identity, --concurrency and --attempts must be positive; "
                         "--outside_share between 0 and 1")
    if args.sample_sets is not None and args.sample_sets < 1:
        raise SystemExit("--sample_sets must be positive")
    if args.backend == "openai" and not args.model:
        raise SystemExit("synthesize: --backend openai needs --model (the model name the endpoint serves)")
    try:
        entries = read_plan(args.plan) if args.plan else entries_for_kinds(
            [k.strip() for k in args.kinds.split(",") if k.strip()], args.per_identity, args.sample_sets, args.seed)
        jobs = expand(entries, turns=args.turns, outside_share=args.outside_share, seed=args.seed)
    except (ValueError, OSError) as err:
        raise SystemExit(f"synthesize: {err}") from None
    jobs = jobs[:args.limit] if args.limit is not None else jobs
    if args.backend == "local-contrastive":
        summary = run_local_backend(args, jobs)
    else:
        settings = Settings(temperature=args.temperature, attempts=args.attempts)
        with ChatClient(args.base_url, args.model, timeout=args.timeout, max_retries=args.max_retries,
                        cache_dir=args.cache_dir) as client:
            summary = run(jobs, client, args.output, settings, args.concurrency)
    # the command that remakes the file (a model card of a run trained on it quotes this)
    summary["command"] = command_line("training/synthesize.py", build_parser(), vars(args))
    summary_path = args.summary or args.output.with_name(args.output.name + ".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    brief = {k: v for k, v in summary.items() if k != "failures"}
    print(json.dumps(brief, indent=2, ensure_ascii=False))
    log.info("summary in %s", summary_path)
    return summary


def run_local_backend(args, jobs: list[Job]) -> dict:
    """Check the local settings, load the base model, write the dialogues."""
    try:
        sampling = Sampling(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            repetition_penalty=args.repetition_penalty)
        settings = LocalSettings(gamma=args.gamma, sampling=sampling, attempts=args.attempts,
                                 batch_size=args.batch_size)
        settings.check()
    except ValueError as err:
        raise SystemExit(f"synthesize: {err}") from None
    name = model_options(args).base_model
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1  # a hub id is "name" or "org/name"
    if name != EMBEDDED and looks_like_path and not Path(name).expanduser().is_dir():
        raise SystemExit(f"synthesize: --base_model {name}: no such directory")
    try:
        model, tokenizer = load_base_model(name)
    except (OSError, ValueError) as err:
        raise SystemExit(f"synthesize: cannot load --base_model {name!r}: {err}") from None
    return run_local(jobs, model, tokenizer, args.output, settings, args.seed)


if __name__ == "__main__":
    summary = main()
    sys.exit(0 if summary["failed"] == 0 and summary["stopped"] is None else 1)
