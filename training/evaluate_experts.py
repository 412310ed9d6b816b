"""Do trained experts carry identity? The figures of the model card and of issue 10's targets, in one run.

    python training/evaluate_experts.py --experts DIR --json OUT [--dose_response] [--split_of RUN]

1. Recognition on the trainer's held-out split (`--eval_fraction`, `--seed`, as the trainer split the data):
   each dialogue's assistant tokens are scored under its true identity set and every single-edit neighbour
   (a pole flipped or removed, the profession changed or removed); a hit when the true set scores highest.
   Three conditionings on one base model: experts + identity prompt, experts alone, the prompt alone.
   (`python -m hirpf.eval recognize --on_invalid skip --held_out_fraction 0.1` gives the same figures.)
2. Questionnaires with both local judges that need no digits (`likelihood`: the option texts scored as the
   reply; `statement`: the statement itself as the agent's words, against the empty set's): our 100-item
   personality bank put to the ten single poles, each compared with the empty set on the same items (is the
   pole's factor score on its side of the empty set's?), and our profession bank put to the three
   professions (is the own field scored above the others?).
3. With `--dose_response`: both measures against the strength of the experts, 0 to 2 (0 = the prompt alone,
   1 = as trained): the mean recognition margin of the dialogues holding each pole, and each pole's factor
   score minus the empty set's (each judge).
4. Discrimination of generated replies (`--discrimination held_out`, the default; `quick`: two prompts, no
   judge validation; `none`): greedy replies to our held-out everyday prompts under all three conditionings,
   a trait's two poles told apart within composed sets and professions named, per number of identities, with
   the judge's validation (`python -m hirpf.eval discriminate` with its defaults gives the same figures).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import mean

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hirpf.dialogues import holdout_split, load_dialogues
from hirpf.engine import Engine
from hirpf.eval.discriminate import default_args, evaluate
from hirpf.eval.discriminate import table as discrimination_table
from hirpf.eval.questionnaire import REFERENCE, factor_scores
from hirpf.eval.questionnaire_judges import answer
from hirpf.eval.recognize import recognize
from hirpf.identities import PROFESSIONS, TRAIT_POLES, IdentitySet
from hirpf.model_options import add_model_arguments, model_options
from hirpf.paths import his_file
from hirpf.prompts import Conditioning
from hirpf.scales import Scale, default_scale

MODES = (Conditioning.EXPERTS_AND_PROMPT, Conditioning.EXPERTS, Conditioning.PROMPT)
STRENGTHS = (0.0, 0.5, 1.0, 1.5, 2.0)
JUDGES = ("likelihood", "statement")  # the local judges that need no digits (the 135M model rarely gives one)
QUESTIONNAIRE_MODES = (Conditioning.EXPERTS_AND_PROMPT, Conditioning.PROMPT)


def held_out_dialogues(data: str, fraction: float, seed: int) -> list:
    dialogues, _ = load_dialogues(data, on_invalid="skip")
    return holdout_split(dialogues, fraction, seed)[1]


def recognition(engine, dialogues, args, modes=MODES, strength=None) -> dict:
    scored = recognize(engine.model, engine.tokenizer, dialogues, modes, remove_poles=True,
                       max_length=args.max_length, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                       strength=strength)
    return summary_of(scored, [m.value for m in modes])


def summary_of(scored: dict, modes: list[str]) -> dict:
    """What the card needs of a `recognize` result (this script's, or `python -m hirpf.eval recognize --json`)."""
    return {k: scored[k] for k in ("dialogues", "accuracy_by_mode", "mean_margin_by_mode", "accuracy_by_count",
                                   "accuracy_by_identity")} | {
        "margins": [{"identities": d["identities"]} | {m: round(d[m]["margin"], 4) for m in modes}
                    for d in scored["details"]]}


def personality(engine, conditioning: Conditioning, batch_size: int, strength: float | None = None,
                judge: str = "likelihood") -> dict:
    """Each pole's factor score beside the empty set's, on the items of that factor only (a pole's set
    answers its own factor's items: all a factor score needs, a fifth of the rows)."""
    scale = default_scale("personality")
    out = {}
    for trait in scale.factors:
        items = Scale(scale.name, scale.kind, tuple(i for i in scale.items if i.factor == trait))
        sets = [IdentitySet((f"{trait}_{pole}",)).with_strengths(strength) for pole in ("high", "low")]
        scores = factor_scores(answer(judge, engine, items, sets + [REFERENCE], conditioning, batch_size))
        empty = scores[REFERENCE][trait]
        for s in sets:
            pole, shift = s.names[0], scores[s][trait] - empty
            out[pole] = {"score": round(scores[s][trait], 4), "empty_set": round(empty, 4), "shift": round(shift, 4),
                         "right_side": shift > 0 if pole.endswith("_high") else shift < 0}
    return {"poles": out, "right_side": sum(p["right_side"] for p in out.values()), "of": len(out)}


def profession(engine, conditioning: Conditioning, batch_size: int, judge: str = "likelihood") -> dict:
    scale = default_scale("profession")
    sets = [IdentitySet((p,)) for p in PROFESSIONS] + [REFERENCE]
    scores = factor_scores(answer(judge, engine, scale, sets, conditioning, batch_size))
    out = {}
    for s in sets[:-1]:
        own = scores[s][s.profession]
        others = mean(v for f, v in scores[s].items() if f != s.profession)
        out[s.profession] = {"own_field": round(own, 4), "other_fields": round(others, 4),
                             "empty_set_own_field": round(scores[REFERENCE][s.profession], 4), "hit": own > others}
    return {"professions": out, "hits": sum(p["hit"] for p in out.values()), "of": len(out)}


def dose_response(engine, dialogues, args, measured: dict) -> dict:
    """Recognition margin (experts + prompt) per identity and questionnaire shift per pole, against strength.
    Strength 1 is the trained experts and strength 0 the prompt alone (exactly: every expert's contribution
    is scaled to zero), so those two points are the `measured` experts+prompt and prompt figures (recognition,
    and the questionnaires where they ran: the same numbers, measured once)."""
    curves = {}
    for strength in STRENGTHS:
        mode = {0.0: "prompt", 1.0: "experts+prompt"}.get(strength)
        if mode:
            margins = [{"identities": m["identities"], "margin": m[mode]} for m in measured["recognition"]["margins"]]
            accuracy = measured["recognition"]["accuracy_by_mode"][mode]
        else:
            scored = recognition(engine, dialogues, args, modes=(Conditioning.EXPERTS_AND_PROMPT,), strength=strength)
            margins = [{"identities": m["identities"], "margin": m["experts+prompt"]} for m in scored["margins"]]
            accuracy = scored["accuracy_by_mode"]["experts+prompt"]
        per_identity = {name: [m["margin"] for m in margins if name in m["identities"].split(",")]
                        for name in TRAIT_POLES + PROFESSIONS}
        shifts = {judge: measured["personality"][judge][mode]["poles"] if mode and "personality" in measured else
                  personality(engine, Conditioning.EXPERTS_AND_PROMPT, args.batch_size, strength, judge)["poles"]
                  for judge in JUDGES}
        curves[str(strength)] = {
            "recognition_accuracy": accuracy,
            "mean_margin": {p: round(mean(v), 4) if v else None for p, v in per_identity.items()},
            "questionnaire_shift": {judge: {p: v["shift"] for p, v in poles.items()}
                                    for judge, poles in shifts.items()}}
        print(f"strength {strength}: recognition {accuracy:.3f}", file=sys.stderr)
    return curves


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", required=True, help="expert checkpoint directory")
    add_model_arguments(ap, ("base_model",))
    ap.add_argument("--data", default=str(his_file("identity_dialogues.json")))
    ap.add_argument("--eval_fraction", type=float, default=0.1, help="the trainer's --eval_fraction")
    ap.add_argument("--seed", type=int, default=42, help="the trainer's --seed (the split)")
    ap.add_argument("--max_length", type=int, default=384)
    ap.add_argument("--batch_size", type=int, default=16, help="rows per forward pass")
    ap.add_argument("--batch_tokens", type=int, default=2048, help="padded tokens per forward pass")
    ap.add_argument("--dose_response", action="store_true", help="also the curves against strength 0-2")
    ap.add_argument("--skip_questionnaires", action="store_true", help="recognition only (quick recipe checks)")
    ap.add_argument("--recognition", default=None,
                    help="reuse this result of `python -m hirpf.eval recognize --json` (same experts, split and "
                         "all three modes) instead of scoring again")
    ap.add_argument("--discrimination", choices=("held_out", "quick", "none"), default="held_out",
                    help="poles told apart and professions named in generated replies: on the held-out prompts "
                         "with the judge's validation (default; the validation is computed once per judge and "
                         "cached), on two of them without validation (quick: tests), or none")
    ap.add_argument("--discrimination_judge", choices=("likelihood", "reader"), default="likelihood",
                    help="who judges those replies (`python -m hirpf.eval discriminate --judge`): reader names "
                         "professions from the replies' words, where the likelihood judge was at chance")
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args(argv)

    base_model = model_options(args).base_model
    engine = Engine.load(base_model, lora_weights=args.experts, load_in_8bit=False, dtype="float32")
    dialogues = held_out_dialogues(args.data, args.eval_fraction, args.seed)
    start = time.perf_counter()
    result = {"experts": args.experts, "split": {"data": args.data, "eval_fraction": args.eval_fraction,
                                                 "seed": args.seed, "dialogues": len(dialogues)},
              "recognition": (summary_of(json.loads(Path(args.recognition).read_text()), [m.value for m in MODES])
                              if args.recognition else recognition(engine, dialogues, args))}
    print(json.dumps({"recognition": {k: result["recognition"][k] for k in ("accuracy_by_mode", "accuracy_by_count")}},
                     indent=1), file=sys.stderr)
    if not args.skip_questionnaires:
        result["personality"] = {judge: {m.value: personality(engine, m, args.batch_size, judge=judge)
                                         for m in QUESTIONNAIRE_MODES} for judge in JUDGES}
        result["profession"] = {judge: {m.value: profession(engine, m, args.batch_size, judge)
                                        for m in QUESTIONNAIRE_MODES} for judge in JUDGES}
    if args.dose_response:
        result["dose_response"] = dose_response(engine, dialogues, args, result)
    if args.discrimination != "none":
        quick = args.discrimination == "quick"
        settings = {"quick": quick, "judge": args.discrimination_judge} | (
            {"validation_dialogues": "none"} if quick else {})
        result["discrimination"] = evaluate(engine, default_args(batch_size=args.batch_size, **settings), MODES)
    result["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k not in ("recognition", "dose_response", "discrimination")}
    summary["recognition"] = {k: result["recognition"][k] for k in ("accuracy_by_mode", "accuracy_by_count")}
    print(json.dumps(summary, indent=2))
    if "discrimination" in result:
        print(discrimination_table(result["discrimination"]), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
