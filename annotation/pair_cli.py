"""`python -m annotation pairs ...`: build, import, report, export and judge blind pairwise studies.

    python -m annotation pairs build --name poles --prompts prompts.txt --poles \\
        --condition experts+prompt@1.0 --condition prompt [--lora_weights DIR|default|none ...]
    python -m annotation pairs import pairs.jsonl --name elsewhere --design preference [--ties | --no-ties]
    python -m annotation pairs report [--study NAME] [--json] [--chart FILE.png]
    python -m annotation pairs export --format csv|jsonl [--study NAME] [--output FILE]
    python -m annotation pairs judge --study NAME [--judge_base_url URL --judge_model M]

`build` stores the study and its pairs first, then generates the missing replies through the engine's
scheduler, storing each as it finishes; run the same command again to continue a build that stopped.
Exit status 2: bad arguments or a file that cannot be imported (nothing stored).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hirpf.model_options import add_model_arguments, model_options

DESIGN_HELP = "discrimination (two opposite identities, one condition) or preference (two conditions)"


def add_pairs_parser(commands, common: argparse.ArgumentParser) -> None:
    pairs = commands.add_parser("pairs", help="blind pairwise studies: build, import, report, export, judge")
    actions = pairs.add_subparsers(dest="pairs_command", required=True)

    build = actions.add_parser("build", parents=[common], help="store a study and generate its replies")
    build.add_argument("--name", required=True, help="the study's name (a rerun with it continues the build)")
    build.add_argument("--prompts", type=Path, required=True, help="a text file, one user message a line")
    who = build.add_mutually_exclusive_group(required=True)
    who.add_argument("--poles", action="store_true", help="each trait's high pole against its low pole")
    who.add_argument("--professions", action="store_true", help="each profession against each other one")
    who.add_argument("--identities", nargs="+", metavar="SET", help="identity sets, e.g. Doctor,AGR_high "
                     "(preference: each compared under every two conditions)")
    build.add_argument("--condition", action="append", required=True, metavar="MODE[@STRENGTH]",
                       help="experts+prompt@1.0, experts, prompt ...; repeat for each condition")
    build.add_argument("--lora_weights", action="append", metavar="DIR",
                       help="expert checkpoint per condition, in --condition order (one for all, or one each); "
                            "'none' for no experts (default: the shipped experts of the embedded model)")
    add_model_arguments(build, ("base_model",))  # --lora_weights above is this command's own
    build.add_argument("--design", choices=["discrimination", "preference"],
                       help=f"{DESIGN_HELP}; default: discrimination for --poles/--professions, else preference")
    build.add_argument("--question", help="the question, {target} where the pair's target goes")
    build.add_argument("--ties", action=argparse.BooleanOptionalAction, default=None,
                       help="allow 'about the same' (default: for preference only)")
    build.add_argument("--seed", type=int, default=0, help="decoding seed, stored with each condition")
    build.add_argument("--max_new_tokens", type=int, default=96)

    imports = actions.add_parser("import", parents=[common], help="pairs made elsewhere (JSONL, all or nothing)")
    imports.add_argument("file", type=Path)
    imports.add_argument("--name", required=True, help="the new study's name")
    imports.add_argument("--design", choices=["discrimination", "preference"], required=True, help=DESIGN_HELP)
    imports.add_argument("--question", help="the study's question wording (each line has its own question)")
    imports.add_argument("--ties", action=argparse.BooleanOptionalAction, default=None,
                         help="allow 'about the same' (default: for preference only)")

    reports = actions.add_parser("report", parents=[common], help="accuracy / Bradley-Terry, bias, agreement")
    reports.add_argument("--study", help="one study (default: every study)")
    reports.add_argument("--json", action="store_true", help="the full report as JSON")
    reports.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (Bradley-Terry)")
    reports.add_argument("--chart", type=Path, metavar="FILE.png", help="with --study: the humans' result as a chart")

    exports = actions.add_parser("export", parents=[common], help="every answer, unblinded")
    exports.add_argument("--format", choices=["csv", "jsonl"], required=True)
    exports.add_argument("--study", help="one study (default: every study)")
    exports.add_argument("--output", type=Path, help="default: standard output")

    judges = actions.add_parser("judge", parents=[common], help="an LLM judge on a study's pairs, both orders")
    judges.add_argument("--study", required=True)
    from annotation.pair_judge import add_judge_arguments

    add_judge_arguments(judges)


def run_pairs(db, args) -> int:
    from annotation.pair_studies import PairStudyError
    from hirpf.llm_client import LLMError

    try:
        return ACTIONS[args.pairs_command](db, args)
    except (PairStudyError, ValueError, OSError, LLMError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _build(db, args) -> int:
    from annotation.pair_generation import PairBuildJob, check_engine
    from annotation.pair_studies import parse_condition, plan_pairs, poles, professions, save_study
    from hirpf.identities import PROFESSIONS, TRAIT_POLES
    from hirpf.sampling import Sampling

    weights = args.lora_weights or ["default"]
    if len(weights) not in (1, len(args.condition)):
        raise ValueError(f"--lora_weights: give one for every condition or one per condition "
                         f"({len(args.condition)}), not {len(weights)}")
    weights = weights * len(args.condition) if len(weights) == 1 else weights
    base_model = model_options(args).base_model
    conditions = [parse_condition(text, base_model=base_model, checkpoint=_checkpoint(base_model, w),
                                  seed=args.seed) for text, w in zip(args.condition, weights)]
    design = args.design or ("preference" if args.identities else "discrimination")
    if args.identities:
        identities = args.identities
    elif design == "discrimination":
        identities = poles() if args.poles else professions()
    else:  # preference over single identities: each pole or profession on its own
        identities = [[name] for name in (TRAIT_POLES if args.poles else PROFESSIONS)]
    plan = plan_pairs(design, identities, conditions, read_prompts(args.prompts), args.question, args.ties)
    engines = {}

    def engine_for(condition):
        key = (condition.base_model, condition.checkpoint)
        if key not in engines:
            from hirpf.engine import Engine

            engines[key] = Engine.load(condition.base_model, lora_weights=condition.checkpoint,
                                       load_in_8bit=False, dtype="float32")
        return engines[key]

    for condition in conditions:  # a model that cannot serve a condition fails before anything is stored
        check_engine(condition, engine_for(condition))
    save_study(db, args.name, plan)

    def show(done: int, total: int) -> None:
        print(f"\rreplies {done} of {total}", end="", file=sys.stderr, flush=True)

    job = PairBuildJob(db, args.name, engine_for, sampling=Sampling(max_new_tokens=args.max_new_tokens,
                                                                    do_sample=False), on_progress=show)
    try:
        done, total = job.start().wait()
    except KeyboardInterrupt:
        job.stop()
        done, total = job.wait()
        print(f"\nstopped at {done} of {total} replies: run the same command again to continue", file=sys.stderr)
        return 130
    print(f"\nstudy {args.name!r}: {len(plan.pairs)} pairs, {done} of {total} replies", file=sys.stderr)
    return 0


def _checkpoint(base_model: str, weights: str) -> str | None:
    """What a condition's `--lora_weights` loads, as stored provenance: a directory, or None for no experts."""
    from hirpf.engine import default_experts

    if weights.lower() == "none":
        return None
    if weights == "default":
        found = default_experts(base_model)
        return str(found) if found else None
    return weights


def read_prompts(path: Path) -> list[str]:
    """One user message a line; blank lines are skipped."""
    prompts = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts (one user message a line)")
    return prompts


def _import(db, args) -> int:
    from annotation.pair_import import read_pair_file
    from annotation.pair_studies import save_study

    plan = read_pair_file(args.file, args.design, args.question, args.ties)
    save_study(db, args.name, plan, new_only=True)
    print(f"study {args.name!r}: {len(plan.pairs)} pairs imported")
    return 0


def _report(db, args) -> int:
    from annotation.pair_report import build_pair_report, format_pair_report, pair_chart
    from annotation.pair_studies import study_names

    if args.chart and not args.study:
        raise ValueError("--chart draws one study: give --study")
    names = [args.study] if args.study else study_names(db)
    reports = [build_pair_report(db, name, resamples=args.resamples) for name in names]
    if args.json:
        print(json.dumps(reports, indent=2, ensure_ascii=False))
    else:
        print("\n".join(format_pair_report(r) for r in reports) or "no pair studies", end="")
    if args.chart:
        print(f"chart: {pair_chart(reports[0], args.chart)}", file=sys.stderr)
    return 0


def _export(db, args) -> int:
    from annotation.pair_report import write_pairs_csv, write_pairs_jsonl

    write = write_pairs_csv if args.format == "csv" else write_pairs_jsonl
    if args.output is None:
        n = write(db, sys.stdout, args.study)
    else:
        with open(args.output, "w", encoding="utf-8", newline="") as out:
            n = write(db, out, args.study)
    print(f"{n} row(s) exported", file=sys.stderr)
    return 0


def _judge(db, args) -> int:
    from annotation.pair_judge import judge_from_args, judge_study

    judge = judge_from_args(args)
    counts = judge_study(db, args.study, judge)
    print(f"judge {judge.name!r}: {counts['judged']} pair(s) judged, {counts['known']} judged before, "
          f"{counts['failed']} failed")
    return 1 if counts["failed"] else 0


ACTIONS = {"build": _build, "import": _import, "report": _report, "export": _export, "judge": _judge}
