"""Do readers see the identities in generated replies? Pole discrimination within composed sets and
profession naming, per number of identities and per level, for experts alone, experts + prompt and the prompt.

    python -m hirpf.eval discriminate [--split held_out|dev] [--modes experts+prompt,experts,prompt]
        [--judge likelihood|reader|endpoint] [--max_new_tokens 48] [--all_labels] [--quick]

Material: our everyday prompts (`everyday_prompts`, the `--split`; held-out by default, for reports). For
each prompt and each number of identities k = 1, 2, 3:

- *trait level, pole discrimination*: one trait (rotating over the prompts) and a pair of sets that differ
  in its pole only, e.g. `AGR_high,Doctor` / `AGR_low,Doctor`; the k − 1 other identities are drawn from the
  other traits' poles and the professions, seeded by (prompt, k), so they vary across prompts. The judge
  sees both replies to the prompt and picks the high pole; chance 0.5.
- *profession level, profession naming*: one profession (rotating) with k − 1 trait poles drawn the same
  way; the judge names the profession of the reply among the three; chance 1/3.

`--all_labels`: every trait and every profession per prompt and k (5 and 3 times the replies). Replies are
greedy (`--max_new_tokens`, repetition penalty 1.1), generated in batches through the engine, each row
under its own set and conditioning. Accuracy with its Wilson 95% interval per (measure, k, condition), all k
together, and per trait and profession. Judges: `likelihood` (the base model under our descriptions),
`reader` (the same for poles; professions from the replies' words, `profession_reader`), `endpoint` (the
pair-study LLM judge). The judge is validated on the assistant turns of HIS dialogues that no model of ours
wrote (`--validation_dialogues`: the trainer's held-out split, or all of them): matched
pairs of dialogues holding a trait's two poles, and dialogues holding a profession, judged the same way on
about as many reply tokens as a generated reply has (their first assistant turns, each after the message
it answers). The validation depends on the judge only, never on the experts: it is cached by its settings.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..dialogues import holdout_split, load_dialogues
from ..identities import PROFESSIONS, TRAITS, IdentitySet
from ..paths import his_file
from ..prompts import Conditioning
from ..sampling import Sampling
from .common import (
    DEFAULT_OUTPUT_ROOT,
    EvalError,
    check_positive,
    load_engine,
    log,
    output_dir,
    progress,
    run_config,
    write_json,
)
from .discrimination_judges import EndpointJudge, LikelihoodJudge, ReaderJudge, pair_credit
from .everyday_prompts import EverydayPrompt, load_prompts
from .intervals import wilson_interval
from .profession_reader import ProfessionReader
from .reply_judge import POLE_DESCRIPTIONS, PROFESSION_DESCRIPTIONS, Evidence

COUNTS = (1, 2, 3)
K_BUCKETS = (*COUNTS, "composed", "all")
MEASURES = {"pole_discrimination": ("trait", 0.5), "profession_naming": ("profession", 1 / 3)}
QUICK_PROMPTS = 2
REPETITION_PENALTY = 1.1  # as the pair studies' greedy replies (annotation.pair_generation)
DEFAULT_VALIDATION_CACHE = DEFAULT_OUTPUT_ROOT / "judge-validation"


@dataclass(frozen=True)
class PolePair:
    prompt: EverydayPrompt
    trait: str
    high: IdentitySet
    low: IdentitySet

    @property
    def k(self) -> int:
        return len(self.high)


@dataclass(frozen=True)
class ProfessionItem:
    prompt: EverydayPrompt
    profession: str
    identities: IdentitySet

    @property
    def k(self) -> int:
        return len(self.identities)


# --- the material ------------------------------------------------------------------------------------
def companions(seed: str, count: int, traits: Sequence[str], profession: bool) -> tuple[str, ...]:
    """`count` identities drawn (seeded by `seed`) from the poles of `traits` and, when `profession`, one
    profession: at most one per trait and one profession, so the set stays valid."""
    rng = random.Random(seed)
    slots = list(traits) + (["profession"] if profession else [])
    return tuple(rng.choice(PROFESSIONS) if slot == "profession" else f"{slot}_{rng.choice(('high', 'low'))}"
                 for slot in rng.sample(slots, count))


def pole_pairs(prompts: Sequence[EverydayPrompt], all_labels: bool = False) -> list[PolePair]:
    pairs = []
    for i, prompt in enumerate(prompts):
        for k in COUNTS:
            for trait in TRAITS if all_labels else (TRAITS[(i + k) % len(TRAITS)],):
                others = companions(f"pole|{prompt.id}|{trait}|{k}", k - 1, [t for t in TRAITS if t != trait], True)
                pairs.append(PolePair(prompt, trait, IdentitySet(others + (f"{trait}_high",)),
                                      IdentitySet(others + (f"{trait}_low",))))
    return pairs


def profession_items(prompts: Sequence[EverydayPrompt], all_labels: bool = False) -> list[ProfessionItem]:
    items = []
    for i, prompt in enumerate(prompts):
        for k in COUNTS:
            for profession in PROFESSIONS if all_labels else (PROFESSIONS[(i + k) % len(PROFESSIONS)],):
                others = companions(f"profession|{prompt.id}|{profession}|{k}", k - 1, TRAITS, False)
                items.append(ProfessionItem(prompt, profession, IdentitySet(others + (profession,))))
    return items


def generate_replies(engine, rows: Sequence[tuple[str, IdentitySet, Conditioning]], max_new_tokens: int,
                     batch_rows: int, bar=None) -> dict[tuple, str]:
    """Greedy replies to each (prompt, set, conditioning), many rows per `Engine.generate` call."""
    sampling = Sampling(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=REPETITION_PENALTY)
    unique = sorted(set(rows), key=lambda r: (len(r[0]), r[0], str(r[1]), r[2].value))
    replies = {}
    for start in range(0, len(unique), batch_rows):
        chunk = unique[start:start + batch_rows]
        out = engine.generate([[{"role": "user", "content": p}] for p, _, _ in chunk], [s for _, s, _ in chunk],
                              [c for _, _, c in chunk], sampling)
        replies.update({row: texts[0] for row, texts in zip(chunk, out)})
        log.info("replies: %d of %d", len(replies), len(unique))  # long runs log where they are
        if bar is not None:
            bar.update(len(chunk))
    return replies


# --- the figures -------------------------------------------------------------------------------------
def accuracy(credits: Sequence[float], chance: float) -> dict:
    n = len(credits)
    interval = wilson_interval(sum(credits), n)
    return {"accuracy": round(sum(credits) / n, 4) if n else None, "n": n, "chance": round(chance, 4),
            "interval": [round(v, 4) for v in interval] if interval else None}


def in_bucket(k: int, bucket: int | str) -> bool:
    """k identities fall in `bucket`: a number of identities, "composed" (two or more) or "all"."""
    return bucket == "all" or (bucket == "composed" and k >= 2) or k == bucket


def figures(outcomes: Sequence[dict], modes: Sequence[Conditioning]) -> list[dict]:
    """One row per (measure, k, condition), for k = 1, 2, 3, "composed" (2 and 3) and "all": accuracy, n and
    interval."""
    rows = []
    for measure, (level, chance) in MEASURES.items():
        for k in K_BUCKETS:
            for mode in modes:
                credits = [o["credit"] for o in outcomes if o["measure"] == measure and o["condition"] == mode.value
                           and in_bucket(o["k"], k)]
                if credits:
                    rows.append({"measure": measure, "level": level, "k": k, "condition": mode.value}
                                | accuracy(credits, chance))
    return rows


def by_label(outcomes: Sequence[dict], modes: Sequence[Conditioning]) -> dict:
    """Accuracy per trait (pole discrimination) and per profession (naming), per condition, all k."""
    out = {}
    for measure, (_, chance) in MEASURES.items():
        labels = sorted({o["label"] for o in outcomes if o["measure"] == measure})
        out[measure] = {mode.value: {label: accuracy([o["credit"] for o in outcomes if o["measure"] == measure
                                                      and o["condition"] == mode.value and o["label"] == label],
                                                     chance) for label in labels} for mode in modes}
    return out


# --- the judge's validation --------------------------------------------------------------------------
def validation_material(dialogues, tokenizer, reply_tokens: int) -> tuple[list, list]:
    """(trait items, profession items) of dialogues no model of ours wrote: (evidence, trait, pole) for every
    pole a dialogue holds, (evidence, profession) for every dialogue with a profession."""
    evidence = [Evidence.from_dialogue(d, tokenizer, reply_tokens) for d in dialogues]
    traits = [(e, *name.split("_")) for d, e in zip(dialogues, evidence) for name in d.identities.traits if e.pieces]
    professions = [(e, d.identities.profession) for d, e in zip(dialogues, evidence)
                   if d.identities.profession and e.pieces]
    return traits, professions


def matched_pairs(traits: list) -> list[tuple[int, int]]:
    """Indices (high, low) into `traits`: per trait, its high-pole items matched in order with its low-pole
    ones (each item in at most one pair, so the pairs are independent)."""
    pairs = []
    for trait in TRAITS:
        high = [i for i, (_, t, pole) in enumerate(traits) if t == trait and pole == "high"]
        low = [i for i, (_, t, pole) in enumerate(traits) if t == trait and pole == "low"]
        pairs += list(zip(high, low))
    return pairs


def validate_judge(judge, dialogues, tokenizer, reply_tokens: int, described: str) -> dict:
    traits, items = validation_material(dialogues, tokenizer, reply_tokens)
    pairs = matched_pairs(traits)
    poles = {}
    if isinstance(judge, LikelihoodJudge):  # margins once per item: the matched pairs and every combination
        margins = judge.margins([e for e, _, _ in traits], [t for _, t, _ in traits])
        pole_credits = [pair_credit(margins[h], margins[lo]) for h, lo in pairs]
        every = [pair_credit(margins[h], margins[lo]) for h, (_, t, p) in enumerate(traits) if p == "high"
                 for lo, (_, t2, p2) in enumerate(traits) if t2 == t and p2 == "low"]
        poles["all_combinations"] = {"accuracy": round(sum(every) / len(every), 4) if every else None,
                                     "n": len(every)}
    else:
        pole_credits = judge.pole_outcomes([(traits[h][0], traits[lo][0], traits[h][1]) for h, lo in pairs])
    naming_credits = judge.profession_outcomes(items)
    pair_traits = [traits[h][1] for h, _ in pairs]
    poles = accuracy(pole_credits, 0.5) | poles | {"by_trait": {
        t: accuracy([c for c, trait in zip(pole_credits, pair_traits) if trait == t], 0.5)
        for t in TRAITS if t in pair_traits}}
    professions = accuracy(naming_credits, 1 / 3) | {"by_profession": {
        p: accuracy([c for c, (_, name) in zip(naming_credits, items) if name == p], 1 / 3)
        for p in PROFESSIONS if any(name == p for _, name in items)}}
    return {"material": described, "poles": poles, "professions": professions,
            "poles_above_chance": _above(poles, 0.5), "professions_above_chance": _above(professions, 1 / 3)}


def _above(figure: dict, chance: float) -> bool:
    return figure["interval"] is not None and figure["interval"][0] > chance


def validation_key(engine, judge_name: str, args) -> str:
    """What the validation depends on: the base model, the judge and its wording, the material."""
    text = json.dumps([engine.model.name_or_path, judge_name, POLE_DESCRIPTIONS, PROFESSION_DESCRIPTIONS,
                       args.validation_dialogues, args.max_new_tokens, str(args.validation_data),
                       args.validation_fraction, args.validation_seed,
                       args.judge_model if judge_name.startswith("llm:") else None], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def validation(engine, judge, args) -> dict | None:
    if args.validation_dialogues == "none":
        return None
    cache = None if str(args.validation_cache).lower() == "none" else Path(args.validation_cache)
    path = cache / f"{validation_key(engine, judge.name, args)}.json" if cache else None
    if path and path.exists():
        log.info("judge validation from %s", path)
        return json.loads(path.read_text()) | {"cached": str(path)}
    dialogues, report = known_dialogues(args)
    if args.validation_dialogues == "held_out":
        dialogues = holdout_split(dialogues, args.validation_fraction, args.validation_seed)[1]
    described = (f"{args.validation_data}: {len(dialogues)} dialogues ({args.validation_dialogues}"
                 + (f", fraction {args.validation_fraction}, seed {args.validation_seed}"
                    if args.validation_dialogues == "held_out" else "") + f"; {report.describe()})")
    result = validate_judge(judge, dialogues, engine.tokenizer, args.max_new_tokens, described)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
    return result


# --- the run -----------------------------------------------------------------------------------------
def discriminate(engine, judge, prompts: Sequence[EverydayPrompt], modes: Sequence[Conditioning],
                 max_new_tokens: int, batch_rows: int, all_labels: bool = False) -> dict:
    pairs, items = pole_pairs(prompts, all_labels), profession_items(prompts, all_labels)
    rows = [(p.prompt.text, s, m) for p in pairs for s in (p.high, p.low) for m in modes]
    rows += [(i.prompt.text, i.identities, m) for i in items for m in modes]
    started = time.perf_counter()
    with progress(len(set(rows)), "discriminate: replies") as bar:
        replies = generate_replies(engine, rows, max_new_tokens, batch_rows, bar)
    generated = time.perf_counter() - started

    def evidence(prompt, identities, mode) -> Evidence:
        return Evidence.reply(prompt.text, replies[prompt.text, identities, mode])

    log.info("judging %d pairs and %d replies to name", len(pairs) * len(modes), len(items) * len(modes))
    pole_cases = [(p, m) for p in pairs for m in modes]
    naming_cases = [(i, m) for i in items for m in modes]
    pole_credits = judge.pole_outcomes([(evidence(p.prompt, p.high, m), evidence(p.prompt, p.low, m), p.trait)
                                        for p, m in pole_cases])
    naming_credits = judge.profession_outcomes([(evidence(i.prompt, i.identities, m), i.profession)
                                                for i, m in naming_cases])
    outcomes = [{"measure": "pole_discrimination", "k": p.k, "condition": m.value, "label": p.trait,
                 "prompt": p.prompt.id, "high": str(p.high), "low": str(p.low), "credit": c,
                 "reply_high": replies[p.prompt.text, p.high, m], "reply_low": replies[p.prompt.text, p.low, m]}
                for (p, m), c in zip(pole_cases, pole_credits)]
    outcomes += [{"measure": "profession_naming", "k": i.k, "condition": m.value, "label": i.profession,
                  "prompt": i.prompt.id, "identities": str(i.identities), "credit": c,
                  "reply": replies[i.prompt.text, i.identities, m]} for (i, m), c in zip(naming_cases, naming_credits)]
    return {"figures": figures(outcomes, modes), "by_label": by_label(outcomes, modes), "outcomes": outcomes,
            "replies_generated": len(replies), "seconds_generating": round(generated, 1),
            "seconds_judging": round(time.perf_counter() - started - generated, 1)}


def add_arguments(parser) -> None:
    from .interview import add_endpoint_arguments

    parser.add_argument("--split", choices=("held_out", "dev"), default="held_out",
                        help="which of our everyday prompts (default held_out: for reports; dev for tuning)")
    parser.add_argument("--modes", default=None,
                        help="comma list of conditions (default: experts,experts+prompt,prompt; prompt only "
                             "without experts)")
    parser.add_argument("--max_new_tokens", type=int, default=48, help="reply length, greedy (default 48)")
    parser.add_argument("--generation_batch", type=int, default=32, help="rows per generate call (default 32)")
    parser.add_argument("--all_labels", action="store_true",
                        help="every trait and profession per prompt and k, not one rotating (5 and 3 times the "
                             "replies)")
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_PROMPTS} prompts only (tests)")
    parser.add_argument("--judge", choices=("likelihood", "reader", "endpoint"), default="likelihood",
                        help="likelihood: the base model without experts scores each reply under our "
                             "descriptions; reader: the same for poles, and professions named from the replies' "
                             "words by a reader learnt from the validation data's training split "
                             "(hirpf/eval/profession_reader.py); endpoint: the pair-study LLM judge")
    group = parser.add_argument_group("endpoint judge (--judge endpoint)")
    add_endpoint_arguments(group)
    group.add_argument("--judge_workers", type=int, default=4, help="requests in flight at once")
    group = parser.add_argument_group("the judge's validation")
    group.add_argument("--validation_dialogues", choices=("held_out", "all", "none"), default="held_out",
                       help="HIS dialogues to validate the judge on: the trainer's held-out split (default), "
                            "all of them, or none")
    group.add_argument("--validation_data", default=str(his_file("identity_dialogues.json")),
                       help="dialogues with known identities (default: the HIS identity dialogues)")
    group.add_argument("--validation_fraction", type=float, default=0.1, help="the trainer's --eval_fraction")
    group.add_argument("--validation_seed", type=int, default=42, help="the trainer's --seed")
    group.add_argument("--validation_cache", default=str(DEFAULT_VALIDATION_CACHE),
                       help="where validations are kept by their settings ('none': always recompute)")


def judge_for(args, engine, bar=None):
    if args.judge == "likelihood":
        return LikelihoodJudge(engine, args.batch_size, bar)
    if args.judge == "reader":
        return ReaderJudge(engine, profession_reader(args), args.batch_size, bar)
    from .interview import endpoint_client
    from .pair_question import PairJudge

    check_positive("--judge_workers", args.judge_workers)
    return EndpointJudge(PairJudge(endpoint_client(args, args.judge_model), f"llm:{args.judge_model}",
                                   args.judge_workers))


def profession_reader(args) -> ProfessionReader:
    """The reader learnt from the validation data's training split: the dialogues the judge is validated on
    (the held-out split) stay unseen by it."""
    if args.validation_dialogues == "all":
        raise EvalError("--judge reader learns from the dialogues outside the held-out split, so it is validated "
                        "on the held-out split only: use --validation_dialogues held_out (or none)")
    dialogues, _ = known_dialogues(args)
    return ProfessionReader.learn_training_split(dialogues, args.validation_fraction, args.validation_seed)


def known_dialogues(args):
    """The dialogues with known identities (`--validation_data`) and their load report."""
    try:
        return load_dialogues(args.validation_data, on_invalid="skip")
    except (OSError, ValueError) as err:
        raise EvalError(f"--validation_data: {err}") from None


def default_args(**settings) -> argparse.Namespace:
    """The command's options at their defaults, with `settings` changed (for callers that hold an engine,
    such as `training/evaluate_experts.py`)."""
    from .common import add_common_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    add_common_arguments(parser)
    args = parser.parse_args([])
    unknown = sorted(set(settings) - set(vars(args)))
    if unknown:
        raise EvalError(f"unknown discriminate settings: {', '.join(unknown)}")
    return argparse.Namespace(**(vars(args) | settings))


def evaluate(engine, args, modes: Sequence[Conditioning]) -> dict:
    """The document's figures, validation, settings and replies for a loaded engine (no files written)."""
    check_positive("--max_new_tokens", args.max_new_tokens)
    check_positive("--generation_batch", args.generation_batch)
    prompts = load_prompts(args.split)[:QUICK_PROMPTS if args.quick else None]
    judge = judge_for(args, engine)
    log.info("%d %s prompts; conditions: %s; judge: %s", len(prompts), args.split,
             ", ".join(m.value for m in modes), judge.name)
    started = time.perf_counter()
    result = discriminate(engine, judge, prompts, modes, args.max_new_tokens, args.generation_batch, args.all_labels)
    judge_validation = validation(engine, judge, args)
    settings = {"split": args.split, "prompts": [p.id for p in prompts], "modes": [m.value for m in modes],
                "judge": judge.name, "max_new_tokens": args.max_new_tokens, "all_labels": args.all_labels,
                "repetition_penalty": REPETITION_PENALTY}
    document = {"figures": result.pop("figures"), "validation": judge_validation, "settings": settings,
                "seconds": round(time.perf_counter() - started, 1)} | result
    if isinstance(judge, EndpointJudge):
        document["judge_failed"] = judge.failed
    return document


def run(args) -> dict:
    from .recognize import modes_for, parse_modes

    check_positive("--max_new_tokens", args.max_new_tokens)
    asked = parse_modes(args.modes)
    engine = load_engine(args)
    document = evaluate(engine, args, modes_for(engine, asked))
    config = run_config(args, engine)
    config.pop("conditioning")  # --modes decides here
    document = {"command": "discriminate"} | document
    document["settings"] = config | document["settings"]
    document["files"] = {"result": str(output_dir(args, "discriminate") / "discriminate.json")}
    write_json(Path(document["files"]["result"]), document)
    return document


def table(document: dict) -> str:
    """Accuracy [interval] per measure and k, one column per condition."""
    modes = document["settings"]["modes"]
    cells = {(f["measure"], f["k"], f["condition"]): f for f in document["figures"]}
    lines = [f"{'measure':<22}{'k':>4}  " + "".join(f"{m:>24}" for m in modes)]
    for measure in MEASURES:
        for k in K_BUCKETS:
            row = [cells.get((measure, k, m)) for m in modes]
            if any(row):
                lines.append(f"{measure:<22}{k!s:>4}  " + "".join(
                    f"{_cell(f):>24}" for f in row))
    return "\n".join(lines)


def _cell(figure: dict | None) -> str:
    if not figure or not figure["n"]:
        return "–"
    low, high = figure["interval"]
    return f"{figure['accuracy']:.2f} [{low:.2f}-{high:.2f}] n={figure['n']}"


def validation_lines(validation: dict | None) -> list[str]:
    if validation is None:
        return ["judge not validated (--validation_dialogues none)"]
    lines = []
    for what, chance in (("poles", 0.5), ("professions", 1 / 3)):
        figure = validation[what]
        above = validation[f"{what}_above_chance"]
        lines.append(f"judge on the {what} of {validation['material']}: {_cell(figure)}, chance {chance:.2f}"
                     + ("" if above else f" — NOT above chance: its {what} figures above mean little"))
    return lines


def summarize(document: dict) -> str:
    return "\n".join([table(document), *validation_lines(document["validation"]),
                      f"{document['replies_generated']} replies in {document['seconds']} s; "
                      f"details: {document['files']['result']}"])
