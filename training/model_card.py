"""Package a training run as shipped experts: float16 weights, the config, charts and a model card, every
figure taken from the run's own summary and from `training/evaluate_experts.py` results.

    python training/model_card.py --run RUN --evaluation EVAL.json --out models/smollm2-135m-experts \\
        [--compare OTHER_RUN=OTHER_EVAL.json ...] [--previous models/smollm2-135m-experts]

`--compare` adds rows to the recipe table (other runs, each with its own evaluation). `--previous DIR` keeps
the recipe rows of the card in DIR (runs measured before, whose files may be gone): the rows are carried as
that card's generator wrote them, from its `recipes.json` (which this script writes beside every card).
A run that started from earlier experts (`train.py --init_experts`) needs `--init_run DIR`, the run (or
`RUN/checkpoint-N`) holding the `training_summary.json` of the run that made them, and when that run did too,
the whole chain, oldest first: the card gives every command, each reading the one before's output.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hirpf.charts import line_chart
from hirpf.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from hirpf.dialogues import holdout_split, load_dialogues
from hirpf.identities import PROFESSIONS, TRAIT_POLES
from hirpf.model_options import command_line
from training.train_options import build_parser, extra_data_files

MODE_WORDS = {"experts+prompt": "experts + prompt", "experts": "experts alone", "prompt": "prompt alone"}
# Issue 10's targets, as the card compares the figures with them.
TARGETS = {"experts+prompt": 0.75, "over_prompt": 0.25, "2": 0.60, "3": 0.40, "poles": 8, "professions": 3}
# Issue 26's targets on generated replies (`python -m hirpf.eval discriminate`).
DISCRIMINATION_TARGETS = {"poles_composed": 0.80, "profession_experts": 0.70}
MEASURE_WORDS = {"pole_discrimination": "a trait's poles told apart", "profession_naming": "profession named"}


def training_command(args: dict) -> str:
    """The trainer command that reproduces the run: every option that differs from the trainer's default."""
    return command_line("training/train.py", build_parser(), args)


RECIPES_FILE = "recipes.json"
SHIPPED = " **shipped** |"  # how the shipped run's row ends; other rows end with " |"


def recipe(args: dict) -> str:
    """The recipe in a few words, for the comparison table."""
    targets = args["target_modules"].replace("_proj", "")
    words = (f"{args.get('gate', 'softmax')} gate, lr {args['learning_rate']:g}, {args['num_epochs']:g} epochs, "
             f"r{args['rank']}, {targets}, max_length {args['max_length']}")
    if args.get("shared_expert"):
        words += ", shared expert"
    if args.get("router_learning_rate"):
        words += f", router lr {args['router_learning_rate']:g}"
    if args.get("extra_data"):
        words += ", plus " + ", ".join(f"`{Path(path).name}`" for path in extra_data_files(args["extra_data"]))
    if args.get("neighbour_weight"):
        words += f", neighbour contrast {args['neighbour_weight']:g} (beta {args.get('neighbour_beta', 0.1):g})"
    if args.get("init_experts"):
        words += ", started from the experts of an earlier run"
    return words


def training_commands(args: dict, init_runs: list[Path]) -> tuple[list[str], list[dict]]:
    """The commands that make the run's experts, oldest first: one, or one per run of the chain of runs that
    started from each other's experts (`init_runs`, oldest first, each a run or one of its checkpoints); and
    the earlier runs' summaries."""
    if not args.get("init_experts"):
        if init_runs:
            raise SystemExit("--init_run is for a run trained with --init_experts; this one started from scratch")
        return [*extra_data_commands(args.get("extra_data")), training_command(args)], []
    if not init_runs:
        raise SystemExit(f"the run started from the experts in {args['init_experts']}: pass --init_run with the "
                         "directory of the run that made them (its training_summary.json; oldest first when that "
                         "run itself started from earlier experts), so that the card can say how to make them")
    commands, summaries, made = [], [], None  # `made`: where the previous command's experts end up
    for path in init_runs:
        summary, step = run_summary(path)
        if bool(summary["args"].get("init_experts")) != (made is not None):
            raise SystemExit(f"--init_run {path}: " + (
                "it started from earlier experts: give the runs that made them first, oldest first"
                if made is None else "it started from scratch, so it cannot follow the runs before it"))
        commands += [*extra_data_commands(summary["args"].get("extra_data")),
                     training_command({**summary["args"], "init_experts": made})]
        summaries.append(summary)
        made = summary["args"]["output_dir"] + ("" if step is None else f"/checkpoint-{step}")
    commands += [*extra_data_commands(args.get("extra_data")), training_command({**args, "init_experts": made})]
    return commands, summaries


def previous_rows(directory: Path) -> list[str]:
    """The recipe rows of the card in `directory`, without its "shipped" mark: from its `recipes.json`, or,
    for a card written before that file existed, from the recipe table of its README.md."""
    if (directory / RECIPES_FILE).exists():
        rows = json.loads((directory / RECIPES_FILE).read_text())
    else:
        section = (directory / "README.md").read_text().partition("## Recipes tried")[2].partition("\n## ")[0]
        rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| recipe |")]
    if not rows:
        raise SystemExit(f"--previous {directory}: no recipe rows found")
    return [row.replace(SHIPPED, " |") for row in rows]


def run_summary(path: Path) -> tuple[dict, int | None]:
    """A run's training summary, and the step when `path` is one of its `checkpoint-N` directories."""
    if path.name.startswith("checkpoint-") and not (path / "training_summary.json").exists():
        return json.loads((path.parent / "training_summary.json").read_text()), int(path.name.split("-")[1])
    return json.loads((path / "training_summary.json").read_text()), None


def held_out_loss_at(summary: dict, step: int) -> float | None:
    """The held-out loss the run logged at `step` (its final one at its last step); None when it logged none
    there (its --eval_steps did not fall on that checkpoint)."""
    if step == summary["steps"]:
        return float(summary["final_eval_loss"])
    logged = [h["eval_loss"] for h in summary["log_history"] if h["step"] == step and "eval_loss" in h]
    return float(logged[0]) if logged else None


def loss_text(loss: float | None) -> str:
    return "–" if loss is None else f"{loss:.3f}"


def minutes_text(summary: dict) -> str:
    """A run's minutes; a run resumed from a checkpoint that did not keep its time says so."""
    minutes = f"{summary['seconds'] / 60:.1f} minutes"
    if summary.get("seconds_known", True):
        return minutes
    return f"{minutes} after its resume (the time before was not kept)"


def recipe_row(summary: dict, evaluation: dict, step: int | None = None) -> str:
    """A row of the recipe table; for a checkpoint of a longer run, its step's held-out loss and the time
    to reach it (the run's time in proportion to its steps)."""
    rec = evaluation["recognition"]
    acc, by_count = rec["accuracy_by_mode"], rec["accuracy_by_count"]["experts+prompt"]
    counts = " / ".join(f"{by_count[k]['accuracy']:.2f}" if k in by_count else "–" for k in ("1", "2", "3"))
    loss, minutes, what = summary["final_eval_loss"], summary["seconds"] / 60, recipe(summary["args"])
    if step is not None:
        loss = held_out_loss_at(summary, step)
        minutes *= step / summary["steps"]
        what += f", its step {step} of {summary['steps']}"
    return (f"| {what} | {loss_text(loss)} | {acc['experts+prompt']:.3f} | {acc.get('experts', float('nan')):.3f} | "
            f"{acc['prompt']:.3f} | {counts} | {minutes:.0f} |")


def dose_response_chart(curves: dict, path: Path) -> Path | None:
    if not curves:
        return None
    strengths = [float(s) for s in curves]
    margin = {p: [curves[s]["mean_margin"].get(p) for s in curves] for p in TRAIT_POLES + PROFESSIONS}
    panels = [("recognition margin (nats), dialogues holding the identity", margin)]
    for judge in next(iter(curves.values()))["questionnaire_shift"]:
        shift = {p: [curves[s]["questionnaire_shift"][judge].get(p) for s in curves] for p in TRAIT_POLES}
        panels.append((f"factor score minus the empty set's, judge {judge}", shift))
    return line_chart(path, strengths, panels, x_label="strength (0 = prompt alone, 1 = as trained)")


def targets_table(evaluation: dict) -> str:
    acc = evaluation["recognition"]["accuracy_by_mode"]
    by_count = evaluation["recognition"]["accuracy_by_count"]["experts+prompt"]
    rows = [("recognition, experts + prompt", f"{acc['experts+prompt']:.3f}", f"≥ {TARGETS['experts+prompt']}"),
            ("… minus prompt alone", f"{acc['experts+prompt'] - acc['prompt']:+.3f}", f"≥ +{TARGETS['over_prompt']}")]
    for k in ("1", "2", "3"):
        if k in by_count:
            target = f"≥ {TARGETS[k]}" if k in TARGETS else ""
            rows.append((f"… dialogues of {k} identit{'y' if k == '1' else 'ies'} ({by_count[k]['dialogues']})",
                         f"{by_count[k]['accuracy']:.3f}", target))
    if "discrimination" in evaluation:
        rows += discrimination_rows(evaluation["discrimination"])
    for judge in evaluation.get("personality", {}):
        p = evaluation["personality"][judge]["experts+prompt"]
        rows.append((f"personality bank, judge `{judge}`: poles on their side of the empty set",
                     f"{p['right_side']} of {p['of']}", f"≥ {TARGETS['poles']} of 10"))
        q = evaluation["profession"][judge]["experts+prompt"]
        rows.append((f"profession bank, judge `{judge}`: own field above the others", f"{q['hits']} of {q['of']}",
                     f"{TARGETS['professions']} of 3"))
    return "\n".join(["| measure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def discrimination_cell(figures: dict, measure: str, k, mode: str) -> str:
    f = figures.get((measure, k, mode))
    if not f or not f["n"]:
        return "–"
    return f"{f['accuracy']:.2f} [{f['interval'][0]:.2f}–{f['interval'][1]:.2f}] ({f['n']})"


def discrimination_rows(discrimination: dict) -> list[tuple[str, str, str]]:
    """Issue 26's targets as rows of the targets table."""
    figures = {(f["measure"], f["k"], f["condition"]): f for f in discrimination["figures"]}
    poles = figures.get(("pole_discrimination", "composed", "experts+prompt"))
    named = {m: figures.get(("profession_naming", "all", m)) for m in ("experts", "experts+prompt", "prompt")}
    rows = []
    if poles:
        rows.append(("poles told apart within composed sets (2–3 identities), experts + prompt",
                     f"{poles['accuracy']:.3f}", f"≥ {DISCRIMINATION_TARGETS['poles_composed']}"))
    if named["experts"]:
        rows.append(("profession named from experts-only replies", f"{named['experts']['accuracy']:.3f}",
                     f"≥ {DISCRIMINATION_TARGETS['profession_experts']}"))
    if named["experts+prompt"] and named["prompt"]:
        rows.append(("profession named, experts + prompt minus prompt alone",
                     f"{named['experts+prompt']['accuracy'] - named['prompt']['accuracy']:+.3f}", "≥ 0"))
    return rows


def discrimination_section(discrimination: dict) -> str:
    """The figures per measure and number of identities, one column per condition, and the judge's validation."""
    settings, validation = discrimination["settings"], discrimination.get("validation")
    figures = {(f["measure"], f["k"], f["condition"]): f for f in discrimination["figures"]}
    modes = settings["modes"]
    lines = ["| measure | identities | " + " | ".join(MODE_WORDS.get(m, m) for m in modes) + " |",
             "|---|---|" + "---|" * len(modes)]
    for measure, words in MEASURE_WORDS.items():
        for k in (1, 2, 3, "composed", "all"):
            cells = [discrimination_cell(figures, measure, k, m) for m in modes]
            if any(c != "–" for c in cells):
                lines.append(f"| {words} | {k} | " + " | ".join(cells) + " |")
    text = (f"Greedy replies ({settings['max_new_tokens']} new tokens at most) to our {len(settings['prompts'])} "
            f"`{settings['split']}` everyday prompts (`hirpf/data/everyday_prompts.json`), judged by "
            f"`{settings['judge']}`: accuracy [Wilson 95% interval] (n). Chance: 0.50 for the poles, 0.33 for "
            "the professions.\n\n" + "\n".join(lines))
    if validation:
        for what, chance in (("poles", 0.5), ("professions", 1 / 3)):
            f = validation[what]
            interval = f"[{f['interval'][0]:.2f}–{f['interval'][1]:.2f}]" if f["interval"] else ""
            verdict = ("above chance" if validation[f"{what}_above_chance"] else
                       f"**not above chance: the {what} figures above mean little**")
            text += (f"\n\nThe judge on the {what} of dialogues no model of ours wrote ({validation['material']}): "
                     f"{f['accuracy']} {interval} ({f['n']}), chance {chance:.2f}; {verdict}.")
    else:
        text += "\n\nThe judge was not validated in this evaluation."
    return text


def questionnaire_table(evaluation: dict, judge: str) -> str:
    lines = ["| pole | experts + prompt | prompt alone |", "|---|---|---|"]
    for pole in TRAIT_POLES:
        cells = []
        for mode in ("experts+prompt", "prompt"):
            p = evaluation["personality"][judge][mode]["poles"][pole]
            cells.append(f"{p['score']:.3f} vs {p['empty_set']:.3f} {'✓' if p['right_side'] else '✗'}")
        lines.append(f"| {pole} | " + " | ".join(cells) + " |")
    for name in PROFESSIONS:
        cells = []
        for mode in ("experts+prompt", "prompt"):
            p = evaluation["profession"][judge][mode]["professions"][name]
            cells.append(f"own {p['own_field']:.3f} vs others {p['other_fields']:.3f} {'✓' if p['hit'] else '✗'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


JUDGE_WORDS = {"likelihood": "the five option texts scored as the agent's reply to a rating question",
               "statement": "the statement itself scored as the agent's reply to three neutral requests about "
                            "itself, 1 + 4 · sigmoid of its per-token log-likelihood ratio against the empty set "
                            "(the empty set scores 3; `hirpf/eval/statement_likelihood.py`)"}


def questionnaire_section(evaluation: dict) -> str:
    """One table per local judge, each pole against the empty set on the same items."""
    parts = []
    for judge in evaluation.get("personality", {}):
        parts.append(f"Judge `{judge}`: {JUDGE_WORDS.get(judge, judge)}.\n\n{questionnaire_table(evaluation, judge)}")
    return "\n\n".join(parts)


def data_lines(args: dict) -> str:
    dialogues, report = load_dialogues(args["data"], on_invalid=args["on_invalid"])
    train, held_out = holdout_split(dialogues, args["eval_fraction"], args["seed"])
    return (f"`{args['data']}` (read from there, not copied): {report.describe()}. Held out for evaluation: "
            f"{len(held_out)} dialogues ({args['eval_fraction']:.0%}, shuffled with seed {args['seed']}); "
            f"trained on {len(train)}. Dialogues longer than {args['max_length']} tokens lose whole turns "
            "from the end." + extra_data_line(args.get("extra_data")))


def extra_data_line(extra_data: str | list | None) -> str:
    lines = []
    for path in extra_data_files(extra_data):
        records = sum(1 for line in Path(path).read_text().splitlines() if line.strip())
        how = ("its command is under Training" if synthesis_command(path) else
               "no summary beside it says how it was made")
        lines.append(f" Also trained on `{path}` (`--extra_data`, {records} records, never held out; {how}).")
    return "".join(lines)


def extra_data_commands(extra_data: str | list | None) -> list[str]:
    """The commands that made a run's `--extra_data` files, as their generators left them in
    `<file>.summary.json` (`training/self_report.py`, `training/synthesize.py`, `training/field_replies.py`):
    one per file that has such a command."""
    return [command for path in extra_data_files(extra_data) if (command := synthesis_command(path))]


def synthesis_command(path: str) -> str | None:
    """The command in `<path>.summary.json`, or None where there is no such file or command."""
    summary = Path(path).with_name(Path(path).name + ".summary.json")
    return json.loads(summary.read_text()).get("command") if summary.exists() else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="the trainer's --output_dir, or one of its checkpoint-N directories")
    ap.add_argument("--evaluation", required=True, help="JSON written by training/evaluate_experts.py --json")
    ap.add_argument("--compare", nargs="*", default=[], metavar="RUN=EVAL.json",
                    help="other runs (or RUN/checkpoint-N) for the recipe table, each with its evaluation")
    ap.add_argument("--previous", default=None, type=Path,
                    help="a card directory whose recipe rows (its recipes.json) the new card keeps")
    ap.add_argument("--init_run", nargs="+", default=[], type=Path,
                    help="for a run trained with --init_experts: the run (or RUN/checkpoint-N) that made those "
                         "experts, with its summary; when that run too started from earlier experts, the whole "
                         "chain, oldest first")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    carried = previous_rows(args.previous) if args.previous else []  # read before --out (maybe the same) is rewritten
    out.mkdir(parents=True, exist_ok=True)
    summary, step = run_summary(run)  # a checkpoint ships the weights of its step; the summary is its run's
    evaluation = json.loads(Path(args.evaluation).read_text())
    config = json.loads((run / CONFIG_FILE).read_text())
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    weights = {k: v.to(torch.float16) for k, v in load_file(str(run / WEIGHTS_FILE)).items()}
    save_file(weights, str(out / WEIGHTS_FILE), metadata={"format": "hirpf-experts"})
    line_chart(out / "loss_curve.png", None, [("loss", {
        "train": [(h["step"], float(h["loss"])) for h in summary["log_history"] if "loss" in h],
        "held out": [(h["step"], float(h["eval_loss"])) for h in summary["log_history"] if "eval_loss" in h]})],
        x_label="optimizer step")
    chart = dose_response_chart(evaluation.get("dose_response"), out / "dose_response.png")
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    a = summary["args"]
    commands, earlier = training_commands(a, args.init_run)
    started = "".join(
        f"Run {i + 1} ({s['steps']} optimizer steps, {minutes_text(s)}, final held-out loss "
        f"{s['final_eval_loss']:.3f}) makes the experts that run {i + 2} starts from.\n"
        for i, s in enumerate(earlier))
    if earlier:
        started += f"The shipped run read them from `{a['init_experts']}`.\n"
    rows = [recipe_row(summary, evaluation, step) + SHIPPED]
    checkpoint = "" if step is None else (
        f"Shipped: the experts of its checkpoint at step {step} of {summary['steps']} (about "
        f"{summary['seconds'] / 60 * step / summary['steps']:.0f} minutes in; held-out loss there: "
        f"{loss_text(held_out_loss_at(summary, step))}, – where the run did not evaluate). The loss curve and "
        "the figures above are the whole run's; the recipe table and the measured figures below are the "
        "shipped checkpoint's.\n")
    for pair in args.compare:
        other_run, _, other_eval = pair.partition("=")
        other, step = run_summary(Path(other_run))
        rows.append(recipe_row(other, json.loads(Path(other_eval).read_text()), step) + " |")
    measured_now = {row.replace(SHIPPED, " |") for row in rows}
    rows += [row for row in carried if row not in measured_now]
    (out / RECIPES_FILE).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    router = ("routers trained jointly"
              + (f" (learning rate {a['router_learning_rate']:g})" if a.get("router_learning_rate") else "")
              if a["train_router"] else "routers frozen (uniform mixing)")
    hard_mask = "on" if config["hard_mask"] else "off"
    recipes_header = ("| recipe | held-out loss | experts + prompt | experts alone | prompt alone "
                      "| by 1 / 2 / 3 identities (experts + prompt) | minutes | |")
    shared = (", plus a shared expert in every layer that any identity set switches on"
              if config.get("shared_expert") else "")
    what = textwrap.fill(
        f"Thirteen LoRA identity experts (ten Big Five trait poles, three professions){shared}, in the "
        f"`{config['layout']}` layout on `{','.join(config['target_modules'])}`, rank {config['rank']}, alpha "
        f"{config['alpha']:g}, dropout {config['dropout']}, `{config.get('gate', 'softmax')}` gate, {router}, "
        f"hard mask {hard_mask}.", width=110, break_on_hyphens=False)
    card = f"""# HIRPF identity experts for {config['base_model']}

{what}
Stored in float16 ({(out / WEIGHTS_FILE).stat().st_size / 2**20:.1f} MiB); they load into the float32 model.
The app and `python -m hirpf chat` use them by default on the embedded model.

## Data and split
{data_lines(a)}

## Training
    {(chr(10) + "    ").join(commands)}

{started}{summary['steps']} optimizer steps, {minutes_text(summary)} on this machine
({summary['tokens_per_s']:.0f} tokens/s), {summary['trainable_parameters']:,} trainable parameters.
Mean train loss over the run {summary['mean_train_loss']:.3f}; final held-out loss {summary['final_eval_loss']:.3f}.
{checkpoint}
![loss curve](loss_curve.png)

## Recipes tried
Each row is a training run (or one checkpoint of it) evaluated by `training/evaluate_experts.py` on the
same held-out split (pole removal on). Recognition: is the true identity set likelier than every single-edit neighbour?

{recipes_header}
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Measured against the targets
{targets_table(evaluation)}

Questionnaires use two local judges that need no digits, each pole against the empty set on the same items.

{questionnaire_section(evaluation)}
"""
    if "discrimination" in evaluation:
        card += f"""
## What readers see: poles and professions in generated replies
{discrimination_section(evaluation["discrimination"])}
"""
    if chart is not None:
        card += f"""
## Strength: the dose-response
The strength dial scales each chosen expert's mixed contribution (0 = the prompt alone, 1 = as trained).

![dose-response]({chart.name})
"""
    card += f"""
## Reproduce
    {(chr(10) + "    ").join(commands)}
    python training/evaluate_experts.py --experts {args.run} --dose_response --json {args.evaluation}
    {shlex.join(["python", "training/model_card.py", "--run", args.run, "--evaluation", args.evaluation]
                + (["--init_run", *map(str, args.init_run)] if args.init_run else []) + ["--out", args.out])}
"""
    (out / "README.md").write_text(card)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
