"""Field replies: everyday messages answered by a character who brings its profession's field in, for a
profession phase that must carry the field without the prompt.

    python training/field_replies.py --out runs/prof3/field.jsonl [--records 360] [--seed 0] [--gamma 1] \
        [--own_beginnings 0.5]

Why: from the experts alone the profession phase's replies rarely show a field (a reader named it 0.54 of
the time, Programmer 0.19), and the base model writes no better data for it: prompted as a programmer and
amplified (the local synthesis, γ 1), its first replies named the field 3 times in 46. It does write a
field's words when the reply has already turned to the field and it is asked to. So each reply here starts
with one of our openers for the profession (`training/data/field_openers.json`: sentence beginnings such as
"After a day of writing code,", none naming an identity) and the base model writes the rest under the set's
identity prompt and our brief for the field ("In every reply, bring in your daily work with ..."), amplified
against the neutral prompt (`training/local_synthesis.py`'s decoding). The records carry no prompt: the trainer
gives them the usual identity prompt, or, trained without it (`--experts_only_share`), none, so the profession
experts learn to bring the field in themselves.

Own beginnings (`--own_beginnings SHARE`): for that share of the jobs the opener is not ours but the first two
to five words of the base model's own greedy reply to the message under the neutral prompt (up to its first
sentence's end), e.g. "I'm not sure". Why: replies from the experts alone are greedy and begin as the base
model's do ("I'm not sure ...", "I've been working on this project ..."); our openers split the first tokens
among 24 beginnings that greedy decoding rarely reaches, so the turn to the field they teach is seldom taken.
A record that begins as the model's own reply teaches the turn where greedy decoding arrives.

Messages: our dev everyday prompts (`hirpf.eval.everyday_prompts.training_prompts`; the held-out ones are
refused) and the first user turn of every dialogue without a profession in the trainer's training split of
`--data` (the HIS dialogues: everyday scenes, no field of their own), drawn evenly. Sets: the professions in
turn, each with none to two trait poles (one to three identities, half of them one). One reply per record;
a reply that names an identity or adds fewer than `MIN_WORDS` words to its opener is resampled up to
`--attempts` times, then left out (counted in the summary). Records have the trainer's format plus
`synthesis` (backend `field-opener`, job id, opener and its source, γ, seeds, sampling, openers version,
message source) and go to the trainer as `--extra_data`. A rerun skips the jobs already in `--out`. Beside the file,
`<out>.summary.json` holds the command that remakes it.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from hirpf.base_model import load_base_model
from hirpf.dialogues import holdout_split, load_dialogues, validate
from hirpf.eval.discriminate import REPETITION_PENALTY  # the evaluated greedy replies' penalty
from hirpf.eval.everyday_prompts import refuse_held_out, training_prompts
from hirpf.identities import PROFESSIONS, TRAIT_POLES, IdentitySet, trait_of
from hirpf.model_options import add_model_arguments, command_line, model_options
from hirpf.paths import his_file
from hirpf.prompts import NEUTRAL_SYSTEM_MESSAGE, identity_system_message
from hirpf.sampling import Sampling
from training.local_synthesis import SENTENCE_END, chat_ids, finished_turn, sample_replies
from training.synthesis_records import append_record, finished_jobs, named_identity

log = logging.getLogger("hirpf.field_replies")
BACKEND = "field-opener"
OPENERS = Path(__file__).resolve().parent / "data" / "field_openers.json"
SIZE_WEIGHTS = {1: 0.5, 2: 0.3, 3: 0.2}  # by number of identities, as the self-reports draw them
MIN_WORDS = 4  # words the model must add to its opener: an opener alone teaches a formula, not a reply
OWN_WORDS = (2, 5)  # an own beginning's words, at least and at most: the turn comes before the habit goes on
OWN_TOKENS = 16  # greedy tokens drawn for an own beginning (five words fit)


@dataclass(frozen=True)
class FieldJob:
    id: str
    identities: IdentitySet
    message: str
    source: str  # "everyday" (our dev prompts) or "his" (a HIS training-split opening)
    opener: str | None  # None: the base model's own beginning, drawn before the reply (`own_beginnings`)
    own_words: int = 0  # an own beginning's words at most; 0: an opener from our bank

    @property
    def opener_source(self) -> str:
        return "bank" if self.own_words == 0 else "own"


@dataclass(frozen=True)
class FieldBank:
    """Our openers and briefs (`training/data/field_openers.json`)."""

    openers: dict[str, list[str]]  # profession -> sentence beginnings
    briefs: dict[str, str]  # profession -> what the synthesis prompt adds: keep the reply in the field
    version: int


def load_bank(path: Path = OPENERS) -> FieldBank:
    """The bank; an unknown profession, a missing one or an opener that names an identity is an error naming
    it."""
    data = json.loads(Path(path).read_text())
    openers, briefs = data.get("professions", {}), data.get("briefs", {})
    for name in (*openers, *briefs):
        if name not in PROFESSIONS:
            raise ValueError(f"{path}: unknown profession {name!r}; expected one of {', '.join(PROFESSIONS)}")
    for name in PROFESSIONS:
        if not openers.get(name) or not briefs.get(name):
            raise ValueError(f"{path}: no openers or no brief for {name}")
        for opener in openers[name]:
            named = next((w for identity in (name, *TRAIT_POLES)
                          if (w := named_identity(opener, IdentitySet((identity,))))), None)
            if named:
                raise ValueError(f"{path}: the {name} opener {opener!r} names an identity ({named!r})")
    return FieldBank(openers, briefs, data["version"])


def everyday_messages(data: str, eval_fraction: float, seed: int) -> dict[str, list[str]]:
    """Messages by source: our dev everyday prompts, and the first user turn of each dialogue without a
    profession in the trainer's training split of `data` (its held-out split stays unread)."""
    dialogues, _ = load_dialogues(data, on_invalid="skip")
    train, _ = holdout_split(dialogues, eval_fraction, seed)
    his = sorted({d.turns[0]["content"].strip() for d in train
                  if not d.identities.profession and d.turns and d.turns[0]["role"] == "user"})
    messages = {"everyday": training_prompts(), "his": his}
    refuse_held_out(messages["everyday"] + messages["his"])
    return messages


def takes_own_beginning(i: int, share: float) -> bool:
    """Whether job `i` begins as the model's own reply: spread evenly, `share` of the jobs (independent of the
    draws, so a share of 0 gives the jobs it gave before)."""
    return int((i + 1) * share) > int(i * share)


def plan(records: int, seed: int, messages: dict[str, list[str]], openers: dict[str, list[str]],
         own_share: float = 0.0) -> list[FieldJob]:
    """`records` jobs: professions in turn, each with none to two trait poles, a message drawn from the sources
    evenly and an opener of the profession's (for `own_share` of them, the model's own beginning instead);
    the same seed gives the same jobs."""
    rng = random.Random(seed)
    sources = [s for s in sorted(messages) if messages[s]]
    if not sources:
        raise ValueError("no messages to answer")
    jobs = []
    for i in range(records):
        profession = PROFESSIONS[i % len(PROFESSIONS)]
        size = rng.choices(list(SIZE_WEIGHTS), list(SIZE_WEIGHTS.values()))[0]
        traits = rng.sample(sorted({trait_of(p) for p in TRAIT_POLES}), size - 1)
        poles = tuple(f"{t}_{rng.choice(('high', 'low'))}" for t in traits)
        identities = IdentitySet((*poles, profession))
        source = sources[i % len(sources)]
        message, opener = rng.choice(messages[source]), rng.choice(openers[profession])
        job_id = f"{'+'.join(identities.names)}/{i}/seed{seed}"
        if takes_own_beginning(i, own_share):
            job_id += "/own"
            opener, own_words = None, OWN_WORDS[0] + zlib.crc32(job_id.encode()) % (OWN_WORDS[1] - OWN_WORDS[0] + 1)
        else:
            own_words = 0
        jobs.append(FieldJob(job_id, identities, message, source, opener, own_words))
    return jobs


def beginning(text: str, words: int) -> str:
    """The first `words` words of `text`, ending early with its first sentence."""
    kept = []
    for word in text.split()[:words]:
        kept.append(word)
        if SENTENCE_END.search(word):
            break
    return " ".join(kept)


def own_beginnings(jobs: list[FieldJob], model, tokenizer) -> list[FieldJob]:
    """`jobs` with each own-beginning job's opener drawn: the start of the base model's greedy reply to its
    message under the neutral prompt (the experts-alone condition's prompt), with the evaluated replies'
    repetition penalty."""
    own = [job for job in jobs if job.opener is None]
    if not own:
        return jobs
    ids = [chat_ids(tokenizer, [{"role": "system", "content": NEUTRAL_SYSTEM_MESSAGE},
                                {"role": "user", "content": job.message}]) for job in own]
    greedy = Sampling(max_new_tokens=OWN_TOKENS, do_sample=False, repetition_penalty=REPETITION_PENALTY)
    replies = sample_replies(model, tokenizer, ids, greedy, [torch.Generator() for _ in own])
    drawn = {job.id: beginning(tokenizer.decode(tokens, skip_special_tokens=True), job.own_words)
             for job, (tokens, _) in zip(own, replies)}
    return [replace(job, opener=drawn[job.id]) if job.id in drawn else job for job in jobs]


def reply_problem(text: str, opener: str, identities: IdentitySet) -> str | None:
    if len(text.split()) - len(opener.split()) < MIN_WORDS:
        return "too short"
    if named_identity(text, identities):
        return "identity named"
    return None


def synthesis_prompt(job: FieldJob, briefs: dict[str, str]) -> str:
    """The set's identity message and its field's brief (training sees the identity message alone)."""
    return f"{identity_system_message(job.identities)} {briefs[job.identities.profession]}"


def write_batch(jobs: list[FieldJob], model, tokenizer, sampling: Sampling, gamma: float, attempts: int,
                seed: int, briefs: dict[str, str]) -> tuple[list[tuple[FieldJob, str, int]], Counter]:
    """([(job, reply, resampled)], failures by reason) for one batch: rows under the synthesis prompt and
    under the neutral one, with the opener already in the assistant turn, the rest drawn from the amplified
    logits."""
    generators = {job.id: torch.Generator().manual_seed(zlib.crc32(job.id.encode()) ^ seed) for job in jobs}
    done, failed, resampled = [], Counter(), Counter()
    pending = own_beginnings(list(jobs), model, tokenizer)
    for attempt in range(attempts):
        opener_ids = [tokenizer(job.opener, add_special_tokens=False)["input_ids"] for job in pending]
        views = [[{"role": "system", "content": system}, {"role": "user", "content": job.message}]
                 for job in pending for system in (synthesis_prompt(job, briefs), NEUTRAL_SYSTEM_MESSAGE)]
        ids = [chat_ids(tokenizer, view) + opener_ids[i // 2] for i, view in enumerate(views)]
        replies = sample_replies(model, tokenizer, ids[0::2], sampling, [generators[j.id] for j in pending],
                                 neutral=ids[1::2], gamma=gamma)
        retry = []
        for job, prefix, (tokens, ended) in zip(pending, opener_ids, replies):
            text = finished_turn(tokenizer.decode(prefix + tokens, skip_special_tokens=True), ended)
            problem = reply_problem(text, job.opener, job.identities)
            if problem is None:
                done.append((job, text, resampled[job.id]))
            elif attempt + 1 < attempts:
                resampled[job.id] += 1
                retry.append(job)
            else:
                failed[problem] += 1
        pending = retry
        if not pending:
            break
    return done, failed


def record_of(job: FieldJob, reply: str, resampled: int, model, sampling: Sampling, gamma: float, seed: int,
              version: int) -> dict:
    record = {"dialog": [{"role": "user", "content": job.message}, {"role": "assistant", "content": reply}],
              "active_adapters": list(job.identities.names), "synthesis": {
                  "job": job.id, "backend": BACKEND, "base_model": getattr(model, "hirpf_base_model", None),
                  "gamma": gamma, "seed": seed, "opener": job.opener, "opener_source": job.opener_source,
                  "openers_version": version,
                  "message_source": job.source, "resampled": resampled,
                  "sampling": {k: getattr(sampling, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k",
                                                                 "repetition_penalty")}}}
    validate(record, "field replies", 0)  # the loader's own check: what we write is what training reads
    return record


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="JSONL file; appended to, finished jobs skipped")
    ap.add_argument("--records", type=int, default=360)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gamma", type=float, default=1.0, help="amplification against the neutral prompt (0: none)")
    ap.add_argument("--max_new_tokens", type=int, default=48, help="tokens after the opener at most")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top_p", type=float, default=0.9)
    ap.add_argument("--attempts", type=int, default=3)
    ap.add_argument("--own_beginnings", type=float, default=0.0, metavar="SHARE",
                    help="share of the jobs whose reply begins as the base model's own greedy reply (0 to 1)")
    ap.add_argument("--batch_size", type=int, default=16, help="records per batch (two rows each)")
    ap.add_argument("--data", default=str(his_file("identity_dialogues.json")),
                    help="dialogues whose training split gives openings without a profession")
    ap.add_argument("--eval_fraction", type=float, default=0.1, help="the trainer's --eval_fraction")
    ap.add_argument("--split_seed", type=int, default=42, help="the trainer's --seed")
    add_model_arguments(ap, ("base_model",))
    return ap


def main(argv=None) -> dict:
    ap = build_parser()
    args = ap.parse_args(argv)
    for name in ("records", "max_new_tokens", "attempts", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be positive, got {getattr(args, name)}")
    if not args.gamma >= 0:
        ap.error(f"--gamma must be 0 or more, got {args.gamma}")
    if not 0 <= args.own_beginnings <= 1:
        ap.error(f"--own_beginnings must be a share from 0 to 1, got {args.own_beginnings}")
    try:
        bank = load_bank()
        jobs = plan(args.records, args.seed, everyday_messages(args.data, args.eval_fraction, args.split_seed),
                    bank.openers, args.own_beginnings)
    except (OSError, ValueError) as err:
        ap.error(str(err))
    base_model = model_options(args).base_model
    model, tokenizer = load_base_model(base_model)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=args.temperature,
                        top_p=args.top_p, repetition_penalty=1.1)
    started, written, failed = time.time(), 0, Counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    todo = [job for job in jobs if job.id not in finished_jobs(args.out)]
    with open(args.out, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), args.batch_size):
            done, batch_failed = write_batch(todo[start:start + args.batch_size], model, tokenizer, sampling,
                                             args.gamma, args.attempts, args.seed, bank.briefs)
            for job, reply, resampled in done:
                append_record(out, record_of(job, reply, resampled, model, sampling, args.gamma, args.seed,
                                             bank.version))
            written, failed = written + len(done), failed + batch_failed
            log.info("[%d/%d] records done", min(start + args.batch_size, len(todo)), len(todo))
    summary = {"backend": BACKEND, "command": command_line("training/field_replies.py", ap, vars(args)),
               "base_model": base_model, "jobs": len(jobs),
               "skipped": len(jobs) - len(todo), "written": written, "failed": sum(failed.values()),
               "failed_by_reason": dict(failed), "openers_version": bank.version,
               "seconds": round(time.time() - started, 1)}
    args.out.with_name(args.out.name + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
