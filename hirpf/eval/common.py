"""What every evaluation command shares: model options, engine loading, identity-set options, progress bars,
logs and output files.

Conventions: logs and progress bars go to stderr; with `--json` stdout carries exactly one JSON document
(the command's result); files of a run go to `--output_dir`. Bad input raises `EvalError` with a message
that names what is wrong; the CLI prints it and exits with status 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

from ..identities import IdentityError, IdentitySet, all_combinations, single_poles
from ..model_options import add_model_arguments, model_options
from ..paths import PROJECT_ROOT
from ..prompts import Conditioning
from ..sampling import Sampling

log = logging.getLogger("hirpf.eval")
DEFAULT_OUTPUT_ROOT = PROJECT_ROOT / "runs" / "eval"
EMPTY_NAMES = ("", "none", "(none)", "empty", "[]")  # how a command line spells the empty set


class EvalError(ValueError):
    """Bad input to an evaluation (a file, an option, an identity set); the message names it."""


# --- options every command takes ---------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and output (every command)")
    add_model_arguments(group)
    group.add_argument("--conditioning", default="experts+prompt", choices=[c.value for c in Conditioning],
                       help="how identities reach the model")
    group.add_argument("--seed", type=int, default=0, help="seed for sampling and --sample (default 0)")
    group.add_argument("--batch_size", type=int, default=16, help="rows per forward pass (default 16)")
    group.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")
    group.add_argument("--output_dir", default=None,
                       help="where this run's files go (default: runs/eval/<command>-<time>)")


def load_engine(args):
    """The Engine the model options describe; a missing or mismatched model becomes an EvalError."""
    from ..engine import Engine

    model = model_options(args)
    log.info("loading %s (experts: %s)", model.base_model, model.lora_weights)
    try:
        engine = Engine.load(model.base_model, lora_weights=model.lora_weights, load_in_8bit=model.load_in_8bit,
                             dtype=model.dtype)
    except (OSError, ValueError) as err:  # CheckpointError is a ValueError
        raise EvalError(str(err)) from err
    return engine


def conditioning_for(args, engine) -> Conditioning:
    """The conditioning asked for, or prompt-only (with a note) when the engine has no experts."""
    asked = Conditioning.parse(args.conditioning)
    effective = engine.effective_conditioning(asked)
    if effective is not asked:
        log.info("no experts loaded: conditioning %s falls back to %s", asked.value, effective.value)
    return effective


def run_config(args, engine=None) -> dict:
    """The settings that produced a result, for the JSON document."""
    model = model_options(args)
    config = {"base_model": model.base_model,
              "lora_weights": "none" if model.lora_weights is None else str(model.lora_weights),
              "conditioning": args.conditioning, "seed": args.seed}
    if engine is not None:
        config |= engine_config(engine, Conditioning.parse(args.conditioning), args.seed)
    return config


def engine_config(engine, conditioning: Conditioning, seed: int) -> dict:
    """What a loaded engine says about a run: its experts and the conditioning it really applies."""
    return {"base_model": engine.model.name_or_path,
            "experts": str(getattr(engine.model, "hirpf_expert_dir", None)) if engine.has_experts else None,
            "conditioning": engine.effective_conditioning(conditioning).value, "seed": seed}


def check_positive(name: str, value: int) -> int:
    if value < 1:
        raise EvalError(f"{name} must be at least 1, got {value}")
    return value


# --- identity sets -----------------------------------------------------------------------------------
def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    """`--identities SET [SET ...]` | `--poles` | `--combinations all|FILE`, and `--sample N` (alone: a sample
    of all 971 combinations). A missing choice is `identity_sets_from_args`'s error (or a command's default)."""
    group = parser.add_argument_group("identity sets")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--identities", nargs="+", metavar="SET",
                        help="identity sets, each a comma list such as AGR_high,Doctor ('none' = the empty set)")
    choice.add_argument("--poles", action="store_true",
                        help="the ten single-pole sets plus the empty set as a reference")
    choice.add_argument("--combinations", metavar="all|FILE",
                        help="'all' = the 971 non-empty sets, or a file: one set per line (comma list) or a "
                             "JSON list of lists of names")
    group.add_argument("--sample", type=int, default=None, metavar="N",
                       help="a random sample of N of the chosen sets, or of all 971 when none are chosen "
                            "(seeded by --seed)")


def parse_identity_set(text: str, where: str = "") -> IdentitySet:
    """One set from the command line or a file; strict (unknown names and broken rules are errors)."""
    if isinstance(text, str) and text.strip().lower() in EMPTY_NAMES:
        return IdentitySet()
    try:
        return IdentitySet.parse(text)
    except IdentityError as err:
        raise EvalError(f"{where}{err}") from None


def read_combinations_file(path: str | Path) -> list[IdentitySet]:
    """A JSON list of sets (each a list of names or a comma string), or text with one set per line
    ('#' starts a comment)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise EvalError(f"cannot read combinations file {path}: {err.strerror}") from None
    if text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise EvalError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        if not isinstance(entries, list):
            raise EvalError(f"{path}: expected a JSON list of identity sets")
        return [parse_identity_set(e if isinstance(e, str) else list(e) if isinstance(e, list) else e,
                                   f"{path}: set {i}: ") for i, e in enumerate(entries)]
    sets = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            sets.append(parse_identity_set(line, f"{path}: line {number}: "))
    if not sets:
        raise EvalError(f"{path}: no identity sets in the file")
    return sets


def choose_identity_sets(*, identities: Sequence[str | Sequence[str]] | None = None, poles: bool = False,
                         combinations: str | Path | None = None, sample: int | None = None, seed: int = 0,
                         reference: bool = False) -> list[IdentitySet]:
    """The identity sets a choice names, without duplicates, in order: `identities` (each a comma list such
    as "AGR_high,Doctor", a list of names, or "none" for the empty set), `poles` (the ten single poles and
    the empty set), or `combinations` ("all" = the 971 non-empty sets, or a file, see
    `read_combinations_file`); at most one of the three. `sample` keeps a random N of them (seeded by
    `seed`), or of all 971 when nothing else is chosen. `reference=True` appends the empty set to any
    choice (commands that compare against the base). The CLI's options and the app both call this."""
    chosen = [name for name, value in (("identities", identities), ("poles", poles),
                                       ("combinations", combinations)) if value]
    if len(chosen) > 1:
        raise EvalError(f"choose identity sets one way, not with {' and '.join(chosen)}")
    if poles:
        sets = single_poles() + [IdentitySet()]
    elif combinations:
        sets = list(all_combinations()) if combinations == "all" else read_combinations_file(combinations)
    elif identities:
        sets = [parse_identity_set(s, f"--identities {s!r}: ") for s in identities]
    elif sample is not None:
        sets = list(all_combinations())
    else:
        raise EvalError("choose identity sets with --identities, --poles, --combinations or --sample")
    sets = list(dict.fromkeys(sets))
    if sample is not None:
        check_positive("--sample", sample)
        if sample < len(sets):
            sets = random.Random(seed).sample(sets, sample)
    if reference and IdentitySet() not in sets:
        sets.append(IdentitySet())
    return sets


def identity_sets_from_args(args, reference: bool = False) -> list[IdentitySet]:
    """`choose_identity_sets` with the options of `add_identity_arguments` (absent options count as not
    given)."""
    return choose_identity_sets(identities=getattr(args, "identities", None), poles=getattr(args, "poles", False),
                                combinations=getattr(args, "combinations", None),
                                sample=getattr(args, "sample", None), seed=getattr(args, "seed", 0),
                                reference=reference)


# --- generation options (situations and debate) ------------------------------------------------------
def add_generation_arguments(parser, max_new_tokens: int = 96) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help="tokens per turn")
    group.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    group.add_argument("--top_p", type=float, default=0.9)
    group.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")


def sampling_from_args(args) -> Sampling:
    check_positive("--max_new_tokens", args.max_new_tokens)
    return Sampling(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy, temperature=args.temperature,
                    top_p=args.top_p, seed=args.seed)


# --- progress, files ---------------------------------------------------------------------------------
def progress(total: int, desc: str):
    """A progress bar on stderr (shown on a terminal, silent otherwise); use as a context manager and
    call `.update(n)`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=None, leave=False, dynamic_ncols=True)


def batches(items: Sequence, size: int) -> Iterable[Sequence]:
    check_positive("--batch_size", size)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def output_dir(args, command: str) -> Path:
    """This run's output directory (created): `--output_dir` or `runs/eval/<command>-<time>`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(args.output_dir) if args.output_dir else DEFAULT_OUTPUT_ROOT / f"{command}-{stamp}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EvalError(f"cannot create output directory {path}: {err.strerror}") from None
    return path


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Rows of dicts as CSV; columns default to the keys of the first row."""
    columns = list(columns or (rows[0].keys() if rows else []))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
